"""The mock's Bedrock answers: Converse (JSON body) and ConverseStream (AWS binary event
stream), with `frame` encoding one event-stream message."""

from __future__ import annotations

import binascii
import struct
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
