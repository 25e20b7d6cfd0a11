"""The mock's Bedrock answers: Converse (JSON body) and ConverseStream (AWS binary event
stream), with `frame` encoding one event-stream message."""

from __future__ import annotations

import base64
import binascii
import json
import struct
import urllib.parse
from typing import TYPE_CHECKING, Any

from metering.mock.common import DUMP, WORDS, Plan
from metering.providers.base import ParsedRequest

if TYPE_CHECKING:
    from metering.mock.server import Connection

STOP = {"tool": "tool_use", "json": "end_turn"}
_STRING = 7  # the event-stream header value type of a UTF-8 string


def _headers(headers: dict[str, str]) -> bytes:
    out = b""
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        out += struct.pack("!B", len(raw_name)) + raw_name
        out += struct.pack("!BH", _STRING, len(raw_value)) + raw_value
    return out


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: the prelude (total length, headers length, their CRC32),
    the headers, the payload and the CRC32 of all that comes before it."""
    encoded = _headers(headers)
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack("!II", total, len(encoded))
    prelude += struct.pack("!I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + encoded + payload
    return message + struct.pack("!I", binascii.crc32(message) & 0xFFFFFFFF)


def event(event_type: str, body: dict[str, Any]) -> bytes:
    """An `event` message of `event_type` with a JSON payload."""
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return frame(headers, DUMP(body).encode())


def exception(exception_type: str, message: str) -> bytes:
    """An `exception` message, as Bedrock sends a failure mid-stream."""
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return frame(headers, DUMP({"message": message}).encode())


def usage(plan: Plan) -> dict[str, Any]:
    """Converse `usage`: the fresh input apart from the cache reads and writes."""
    fresh = plan.prompt_tokens - plan.cached_tokens - plan.cache_write_tokens
    result: dict[str, Any] = {
        "inputTokens": fresh,
        "outputTokens": plan.total_output,
        "totalTokens": plan.prompt_tokens + plan.total_output,
    }
    if plan.cached_tokens:
        result["cacheReadInputTokens"] = plan.cached_tokens
    if plan.cache_write_tokens:
        result["cacheWriteInputTokens"] = plan.cache_write_tokens
    return result


def _stop(plan: Plan) -> str:
    if plan.kind in STOP:
        return STOP[plan.kind]
    return "max_tokens" if plan.truncated else "end_turn"


def _content(plan: Plan) -> list[dict[str, Any]]:
    answer = plan.answer
    if answer is not None and answer.kind == "tool":
        tool = {"toolUseId": "tooluse_mock1", "name": answer.tool_name}
        return [{"toolUse": {**tool, "input": answer.tool_input or {}}}]
    if answer is not None and answer.kind == "json":
        return [{"text": answer.json_text}]
    return [{"text": plan.text()}]


def converse_body(parsed: ParsedRequest, plan: Plan) -> bytes:
    obj = {
        "output": {"message": {"role": "assistant", "content": _content(plan)}},
        "stopReason": _stop(plan),
        "usage": usage(plan),
        "metrics": {"latencyMs": 1},
    }
    return DUMP(obj).encode()


async def converse_stream(conn: Connection, parsed: ParsedRequest, plan: Plan) -> None:
    delay = plan.chunk_delay
    await conn.chunk(event("messageStart", {"role": "assistant"}), delay)
    blocks = _content(plan)
    tool = blocks[0].get("toolUse")
    if tool is not None:
        start = {"toolUse": {"toolUseId": tool["toolUseId"], "name": tool["name"]}}
        await conn.chunk(event("contentBlockStart", {"contentBlockIndex": 0, "start": start}), 0)
        delta = {"toolUse": {"input": DUMP(tool["input"])}}
        await conn.chunk(event("contentBlockDelta", {"contentBlockIndex": 0, "delta": delta}), 0)
        plan.produced += plan.visible_tokens
    elif plan.kind != "text":
        delta = {"text": blocks[0]["text"]}
        await conn.chunk(event("contentBlockDelta", {"contentBlockIndex": 0, "delta": delta}), 0)
        plan.produced += plan.visible_tokens
    else:
        for i in range(plan.visible_tokens):
            if plan.stream_error and i == plan.stream_error_at:
                await conn.chunk(
                    exception("serviceUnavailableException", "The mock upstream is overloaded."),
                    delay,
                )
                return
            delta = {"text": WORDS[i % len(WORDS)]}
            body = {"contentBlockIndex": 0, "delta": delta}
            await conn.chunk(event("contentBlockDelta", body), delay)
            plan.produced += 1
    await conn.chunk(event("contentBlockStop", {"contentBlockIndex": 0}), 0)
    await conn.chunk(event("messageStop", {"stopReason": _stop(plan)}), 0)
    metadata = {"usage": usage(plan), "metrics": {"latencyMs": 1}}
    await conn.chunk(event("metadata", metadata), 0)


# --- InvokeModel for Claude (Anthropic's Messages body and events) ---------------------------

INVOKE_ACTIONS = {"invoke": False, "invoke-with-response-stream": True}
_REGION_PREFIXES = ("us.", "eu.", "apac.", "global.")


def model_action(path: str) -> tuple[str, str] | None:
    """(model id, action) of a Bedrock runtime path `.../model/{modelId}/{action}`, the id
    unquoted as botocore quoted it."""
    head, _, action = path.rpartition("/")
    if "/model/" not in head:
        return None
    return urllib.parse.unquote(head.rpartition("/model/")[2]), action


def converse_call(path: str) -> tuple[str, bool] | None:
    """(model, stream) of a Bedrock path `.../model/{modelId}/converse[-stream]`."""
    call = model_action(path)
    if call is None or call[1] not in ("converse", "converse-stream"):
        return None
    return call[0], call[1] == "converse-stream"


def invoke_call(path: str) -> tuple[str, bool] | None:
    """(model, stream) of a Bedrock path `.../model/{modelId}/invoke[-with-response-stream]`
    for a Claude model id (`anthropic.` after an optional cross-region prefix)."""
    call = model_action(path)
    if call is None or call[1] not in INVOKE_ACTIONS:
        return None
    model, action = call
    bare = next((model[len(p) :] for p in _REGION_PREFIXES if model.startswith(p)), model)
    if not bare.startswith("anthropic."):
        return None
    return model, INVOKE_ACTIONS[action]


def invoke_body(body: bytes, model: str, stream: bool) -> bytes:
    """An InvokeModel Claude body as the Messages API body it stands for (`model` and
    `stream` put back from the URL), or ValueError naming what Bedrock would refuse: a
    `model` or `stream` in the body, a missing `anthropic_version`."""
    try:
        data = json.loads(body)
    except ValueError:
        raise ValueError("Malformed input request: the body is not JSON.") from None
    if not isinstance(data, dict):
        raise ValueError("Malformed input request: the body is not a JSON object.")
    for name in ("model", "stream"):
        if name in data:
            raise ValueError(f"Malformed input request: extraneous key [{name}] is not permitted")
    # Bedrock's documented version is bedrock-2023-05-31 (what the proxy sends); the anthropic
    # SDK's AnthropicBedrock sends its own API version: either is taken, none is not.
    version = data.pop("anthropic_version", None)
    if not isinstance(version, str) or not version:
        raise ValueError("Malformed input request: required key [anthropic_version] not found")
    return json.dumps({"model": model, **data, "stream": stream}).encode()


def chunk_frame(event: dict[str, Any]) -> bytes:
    """One Anthropic stream event as InvokeModelWithResponseStream sends it: a `chunk` event
    whose JSON payload has the event's JSON, base64-encoded, in `bytes`."""
    raw = base64.b64encode(DUMP(event).encode()).decode()
    headers = {
        ":event-type": "chunk",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return frame(headers, DUMP({"bytes": raw}).encode())


class InvokeStream:
    """A stand-in for the mock's connection that turns the Anthropic answers' SSE chunks into
    InvokeModelWithResponseStream frames: each event a `chunk` frame (message_stop with
    Bedrock's `amazon-bedrock-invocationMetrics`), an `error` event an `exception` frame."""

    def __init__(self, conn: Connection, plan: Plan) -> None:
        self.conn = conn
        self.plan = plan

    async def chunk(self, data: bytes, delay: float) -> None:
        line = next(x for x in data.split(b"\n") if x.startswith(b"data: "))
        event = json.loads(line[6:])
        if event.get("type") == "error":
            message = event.get("error", {}).get("message", "")
            await self.conn.chunk(exception("serviceUnavailableException", message), delay)
            return
        if event.get("type") == "message_stop":
            plan = self.plan
            event["amazon-bedrock-invocationMetrics"] = {
                "inputTokenCount": plan.prompt_tokens
                - plan.cached_tokens
                - plan.cache_write_tokens,
                "outputTokenCount": plan.total_output,
                "invocationLatency": 1,
                "firstByteLatency": 1,
            }
        await self.conn.chunk(chunk_frame(event), delay)


def count_call(path: str) -> str | None:
    """The model id of a Bedrock CountTokens path `.../model/{modelId}/count-tokens`."""
    call = model_action(path)
    return call[0] if call is not None and call[1] == "count-tokens" else None


def count_request(body: bytes, model: str) -> tuple[str, bytes]:
    """(endpoint, body) of what a CountTokens request counts: an InvokeModel Claude body (as
    the Messages body it stands for) or a Converse request; ValueError for what Bedrock
    refuses."""
    try:
        data = json.loads(body)
    except ValueError:
        raise ValueError("Malformed input request: the body is not JSON.") from None
    asked = data.get("input") if isinstance(data, dict) else None
    if not isinstance(asked, dict) or len(asked) != 1:
        raise ValueError("input: exactly one of invokeModel and converse is required.")
    if isinstance(asked.get("invokeModel"), dict):
        try:
            inner = base64.b64decode(asked["invokeModel"].get("body") or "", validate=True)
        except ValueError:
            raise ValueError("input.invokeModel.body: not base64.") from None
        return "messages", invoke_body(inner, model, False)
    if isinstance(asked.get("converse"), dict):
        return "converse", json.dumps(asked["converse"]).encode()
    raise ValueError("input: exactly one of invokeModel and converse is required.")
