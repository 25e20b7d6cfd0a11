"""The mock's OpenAI answers: chat completions, responses, embeddings (bodies and streams)."""

from __future__ import annotations

import base64
import itertools
import struct
from typing import TYPE_CHECKING, Any

from metering.mock.common import CREATED, DUMP, WORDS, Plan, next_id, sse
from metering.providers.base import ParsedRequest

if TYPE_CHECKING:
    from metering.mock.server import Connection

# --- chat completions ----------------------------------------------------------------------


def chat_usage(plan: Plan) -> dict[str, Any]:
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.total_output,
        "total_tokens": plan.prompt_tokens + plan.total_output,
        "prompt_tokens_details": {"cached_tokens": plan.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": plan.reasoning_tokens * plan.choices,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _finish(plan: Plan) -> str:
    if plan.kind == "tool":
        return "tool_calls"
    return "length" if plan.truncated else "stop"


def _call_id(plan: Plan, index: int) -> str:
    return f"call_mock_{index}_{plan.prompt_tokens}"


def _chat_message(plan: Plan, index: int) -> dict[str, Any]:
    answer = plan.answer
    if answer is not None and answer.kind == "tool":
        call = {
            "id": _call_id(plan, index),
            "type": "function",
            "function": {"name": answer.tool_name, "arguments": answer.arguments},
        }
        return {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}
    content = answer.json_text if answer is not None and answer.kind == "json" else plan.text()
    return {"role": "assistant", "content": content, "refusal": None}


def chat_body(parsed: ParsedRequest, plan: Plan) -> bytes:
    return DUMP(
        {
            "id": f"chatcmpl-mock-{next_id()}",
            "object": "chat.completion",
            "created": CREATED,
            "model": plan.model,
            "choices": [
                {
                    "index": index,
                    "message": _chat_message(plan, index),
                    "logprobs": None,
                    "finish_reason": _finish(plan),
                }
                for index in range(plan.choices)
            ],
            "usage": chat_usage(plan),
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
        }
    ).encode()


async def chat_stream(conn: Connection, parsed: ParsedRequest, plan: Plan) -> None:
    options = parsed.body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    include_usage = include_usage and not plan.no_usage
    base = {
        "id": f"chatcmpl-mock-{next_id()}",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": plan.model,
        "system_fingerprint": "fp_mock",
    }
    if include_usage:
        # OpenAI: with include_usage every chunk carries "usage": null except the last one.
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**base, "choices": [choice]})

    delay = plan.chunk_delay
    for index in range(plan.choices):
        role = {
            "role": "assistant",
            "content": "" if plan.kind != "tool" else None,
            "refusal": None,
        }
        await conn.chunk(chunk(role, index=index), 0)
    if plan.kind == "text":
        for i in range(plan.visible_tokens):
            if plan.stream_error and i == plan.stream_error_at:
                error = {"message": "The mock upstream failed mid-stream.", "type": "server_error"}
                await conn.chunk(sse({"error": {**error, "param": None, "code": None}}), delay)
                return
            for index in range(plan.choices):
                await conn.chunk(chunk({"content": WORDS[i % len(WORDS)]}, index=index), delay)
                plan.produced += 1
    else:
        for index in range(plan.choices):
            for delta in _structured_deltas(plan, index):
                await conn.chunk(chunk(delta, index=index), delay)
            plan.produced += plan.visible_tokens
    for index in range(plan.choices):
        await conn.chunk(chunk({}, _finish(plan), index), delay)
    if include_usage:
        await conn.chunk(sse({**base, "choices": [], "usage": chat_usage(plan)}), 0)
    await conn.chunk(b"data: [DONE]\n\n", 0)


def _halves(text: str) -> list[str]:
    middle = len(text) // 2
    return [part for part in (text[:middle], text[middle:]) if part]


def _structured_deltas(plan: Plan, index: int) -> list[dict[str, Any]]:
    """A tool call (name first, arguments in two pieces) or a JSON answer in two pieces."""
    answer = plan.answer
    assert answer is not None
    if answer.kind == "json":
        return [{"content": part} for part in _halves(answer.json_text)]
    head = {
        "index": 0,
        "id": _call_id(plan, index),
        "type": "function",
        "function": {"name": answer.tool_name, "arguments": ""},
    }
    deltas = [{"tool_calls": [head]}]
    for part in _halves(answer.arguments):
        deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
    return deltas


# --- responses -----------------------------------------------------------------------------


def _responses_usage(plan: Plan) -> dict[str, Any]:
    return {
        "input_tokens": plan.prompt_tokens,
        "input_tokens_details": {"cached_tokens": plan.cached_tokens},
        "output_tokens": plan.output_tokens,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning_tokens},
        "total_tokens": plan.prompt_tokens + plan.output_tokens,
    }


def _response_object(
    plan: Plan, response_id: str, *, status: str, done: bool, usage: bool
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": None,
        "model": plan.model,
        "output": [_output_item(plan, response_id, "completed")] if done else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": _responses_usage(plan) if usage else None,
    }


def _output_item(
    plan: Plan, response_id: str, status: str, *, empty: bool = False
) -> dict[str, Any]:
    answer = plan.answer
    if answer is not None and answer.kind == "tool":
        return {
            "type": "function_call",
            "id": "fc_" + response_id,
            "call_id": "call_" + response_id,
            "name": answer.tool_name,
            "arguments": "" if empty else answer.arguments,
            "status": status,
        }
    text = answer.json_text if answer is not None and answer.kind == "json" else plan.text()
    content = [] if empty else [{"type": "output_text", "text": text, "annotations": []}]
    return {
        "type": "message",
        "id": "msg_" + response_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _status(plan: Plan) -> str:
    return "incomplete" if plan.truncated and plan.kind == "text" else "completed"


def responses_body(parsed: ParsedRequest, plan: Plan) -> bytes:
    obj = _response_object(
        plan, f"resp_mock{next_id()}", status=_status(plan), done=True, usage=True
    )
    return DUMP(obj).encode()


async def responses_stream(conn: Connection, parsed: ParsedRequest, plan: Plan) -> None:
    response_id = f"resp_mock{next_id()}"
    seq = itertools.count()
    delay = plan.chunk_delay

    async def emit(kind: str, wait: float = 0, **fields: Any) -> None:
        await conn.chunk(sse({"type": kind, "sequence_number": next(seq), **fields}, kind), wait)

    start = _response_object(plan, response_id, status="in_progress", done=False, usage=False)
    await emit("response.created", response=start)
    await emit("response.in_progress", response=start)
    item = _output_item(plan, response_id, "in_progress", empty=True)
    await emit("response.output_item.added", output_index=0, item=item)
    if plan.kind == "tool":
        assert plan.answer is not None
        where = {"item_id": item["id"], "output_index": 0}
        for part in _halves(plan.answer.arguments):
            await emit("response.function_call_arguments.delta", delay, **where, delta=part)
        plan.produced += plan.visible_tokens
        await emit(
            "response.function_call_arguments.done", **where, arguments=plan.answer.arguments
        )
    else:
        part = {"type": "output_text", "text": "", "annotations": []}
        where = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        await emit("response.content_part.added", **where, part=part)
        if plan.kind == "json":
            assert plan.answer is not None
            text = plan.answer.json_text
            for piece in _halves(text):
                await emit("response.output_text.delta", delay, **where, delta=piece)
            plan.produced += plan.visible_tokens
        else:
            for i in range(plan.visible_tokens):
                if plan.stream_error and i == plan.stream_error_at:
                    message = "The mock upstream failed mid-stream."
                    await emit("error", delay, code="server_error", message=message, param=None)
                    return
                await emit(
                    "response.output_text.delta", delay, **where, delta=WORDS[i % len(WORDS)]
                )
                plan.produced += 1
            text = plan.text()
        await emit("response.output_text.done", **where, text=text)
        await emit("response.content_part.done", **where, part={**part, "text": text})
    done_item = _output_item(plan, response_id, "completed")
    await emit("response.output_item.done", output_index=0, item=done_item)
    status = _status(plan)
    final = _response_object(plan, response_id, status=status, done=True, usage=True)
    await emit(f"response.{status}", response=final)


# --- embeddings ----------------------------------------------------------------------------

_DIMENSIONS = 8


def embeddings_body(parsed: ParsedRequest, plan: Plan) -> bytes:
    items = parsed.body["input"]
    count = 1 if isinstance(items, str) or (items and isinstance(items[0], int)) else len(items)
    as_base64 = parsed.body.get("encoding_format") == "base64"
    data = []
    for index in range(count):
        # Vectors are not money or tokens; a fixed float pattern keeps them deterministic.
        vector = [((index + d) % 8) / 8 for d in range(_DIMENSIONS)]
        embedding: Any = vector
        if as_base64:
            embedding = base64.b64encode(struct.pack(f"<{_DIMENSIONS}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    usage = {"prompt_tokens": plan.prompt_tokens, "total_tokens": plan.prompt_tokens}
    return DUMP({"object": "list", "data": data, "model": plan.model, "usage": usage}).encode()


async def no_stream(conn: Connection, parsed: ParsedRequest, plan: Plan) -> None:
    raise AssertionError("embeddings never stream")  # parse_request ignores `stream` there
