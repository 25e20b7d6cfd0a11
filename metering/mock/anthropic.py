"""The mock's Anthropic answers: messages (body and stream) and messages/count_tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metering.mock.common import DUMP, SIGNATURE, WORDS, Plan, next_id, prompt_tokens, sse
from metering.providers.base import ParsedRequest

if TYPE_CHECKING:
    from metering.mock.server import Connection


def usage(plan: Plan, output_tokens: int) -> dict[str, Any]:
    result: dict[str, Any] = {
        "input_tokens": plan.prompt_tokens - plan.cached_tokens - plan.cache_write_tokens,
        "cache_creation_input_tokens": plan.cache_write_tokens,
        "cache_read_input_tokens": plan.cached_tokens,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }
    if plan.reasoning_tokens:
        result["output_tokens_details"] = {"thinking_tokens": plan.reasoning_tokens}
    return result


def _message_object(plan: Plan, message_id: str, *, content: list, stop: str | None, out: int):
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage(plan, out),
    }


def _stop(plan: Plan) -> str:
    if plan.kind == "tool":
        return "tool_use"
    return "max_tokens" if plan.truncated else "end_turn"


def _tool_id(plan: Plan) -> str:
    return f"toolu_mock_{plan.prompt_tokens}"


def _content(plan: Plan) -> list[dict[str, Any]]:
    answer = plan.answer
    blocks: list[dict[str, Any]] = []
    if answer is not None and answer.thinking and plan.reasoning_tokens:
        blocks.append(
            {"type": "thinking", "thinking": plan.thinking_text(), "signature": SIGNATURE}
        )
    if answer is not None and answer.kind == "tool":
        tool = {
            "type": "tool_use",
            "id": _tool_id(plan),
            "name": answer.tool_name,
            "input": answer.tool_input or {},
        }
        blocks.append(tool)
    elif answer is not None and answer.kind == "json":
        blocks.append({"type": "text", "text": answer.json_text})
    else:
        blocks.append({"type": "text", "text": plan.text()})
    return blocks


def messages_body(parsed: ParsedRequest, plan: Plan) -> bytes:
    obj = _message_object(
        plan,
        f"msg_mock{next_id()}",
        content=_content(plan),
        stop=_stop(plan),
        out=plan.output_tokens,
    )
    return DUMP(obj).encode()


async def messages_stream(conn: Connection, parsed: ParsedRequest, plan: Plan) -> None:
    delay = plan.chunk_delay

    async def emit(kind: str, wait: float = 0, **fields: Any) -> None:
        await conn.chunk(sse({"type": kind, **fields}, kind), wait)

    start = _message_object(plan, f"msg_mock{next_id()}", content=[], stop=None, out=1)
    await emit("message_start", message=start)
    answer = plan.answer
    index = 0
    if answer is not None and answer.thinking and plan.reasoning_tokens:
        block = {"type": "thinking", "thinking": "", "signature": ""}
        await emit("content_block_start", index=index, content_block=block)
        delta = {"type": "thinking_delta", "thinking": plan.thinking_text()}
        await emit("content_block_delta", delay, index=index, delta=delta)
        await emit(
            "content_block_delta",
            index=index,
            delta={"type": "signature_delta", "signature": SIGNATURE},
        )
        await emit("content_block_stop", index=index)
        index += 1
    if answer is not None and answer.kind == "tool":
        block = {"type": "tool_use", "id": _tool_id(plan), "name": answer.tool_name, "input": {}}
        await emit("content_block_start", index=index, content_block=block)
        text = answer.arguments
        for part in (text[: len(text) // 2], text[len(text) // 2 :]):
            delta = {"type": "input_json_delta", "partial_json": part}
            await emit("content_block_delta", delay, index=index, delta=delta)
        plan.produced += plan.visible_tokens
    else:
        await emit("content_block_start", index=index, content_block={"type": "text", "text": ""})
        await emit("ping")
        if answer is not None and answer.kind == "json":
            text = answer.json_text
            for part in (text[: len(text) // 2], text[len(text) // 2 :]):
                await emit(
                    "content_block_delta",
                    delay,
                    index=index,
                    delta={"type": "text_delta", "text": part},
                )
            plan.produced += plan.visible_tokens
        else:
            for i in range(plan.visible_tokens):
                if plan.stream_error and i == plan.stream_error_at:
                    error = {
                        "type": "overloaded_error",
                        "message": "The mock upstream is overloaded.",
                    }
                    await emit("error", delay, error=error)
                    return
                delta = {"type": "text_delta", "text": WORDS[i % len(WORDS)]}
                await emit("content_block_delta", delay, index=index, delta=delta)
                plan.produced += 1
    await emit("content_block_stop", index=index)
    final = usage(plan, plan.output_tokens)
    final.pop("service_tier")
    await emit(
        "message_delta", delta={"stop_reason": _stop(plan), "stop_sequence": None}, usage=final
    )
    await emit("message_stop")


def count_tokens_body(parsed: ParsedRequest) -> bytes:
    """POST /v1/messages/count_tokens: the input the same request would be charged for."""
    return DUMP({"input_tokens": prompt_tokens(parsed)}).encode()
