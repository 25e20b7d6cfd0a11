"""The mock's Gemini answers: generateContent (body), streamGenerateContent (alt=sse) and
countTokens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metering.mock.common import DUMP, WORDS, Plan, next_id, prompt_tokens
from metering.providers.base import ParsedRequest

if TYPE_CHECKING:
    from metering.mock.server import Connection

FINISH = {"tool": "STOP", "json": "STOP"}


def usage(plan: Plan, visible: int, *, final: bool = True) -> dict[str, Any]:
    """`usageMetadata`: the prompt includes its cached part; thoughts are apart from the
    candidates. Mid-stream chunks carry the counts so far (no thoughts until the end)."""
    thoughts = plan.reasoning_tokens if final else 0
    result: dict[str, Any] = {
        "promptTokenCount": plan.prompt_tokens,
        "candidatesTokenCount": visible,
        "totalTokenCount": plan.prompt_tokens + visible + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": plan.prompt_tokens}],
    }
    if plan.cached_tokens:
        result["cachedContentTokenCount"] = plan.cached_tokens
    if thoughts:
        result["thoughtsTokenCount"] = thoughts
    return result


def _finish(plan: Plan) -> str:
    if plan.kind in FINISH:
        return FINISH[plan.kind]
    return "MAX_TOKENS" if plan.truncated else "STOP"


def _parts(plan: Plan) -> list[dict[str, Any]]:
    answer = plan.answer
    if answer is not None and answer.kind == "tool":
        return [{"functionCall": {"name": answer.tool_name, "args": answer.tool_input or {}}}]
    if answer is not None and answer.kind == "json":
        return [{"text": answer.json_text}]
    return [{"text": plan.text()}]


def _response(
    plan: Plan, response_id: str, parts: list[dict[str, Any]], *, finish: str | None, visible: int
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    return {
        "candidates": [candidate],
        "usageMetadata": usage(plan, visible, final=finish is not None),
        "modelVersion": plan.model,
        "responseId": response_id,
    }


def generate_body(parsed: ParsedRequest, plan: Plan) -> bytes:
    obj = _response(
        plan,
        f"mockresp{next_id()}",
        _parts(plan),
        finish=_finish(plan),
        visible=plan.visible_tokens,
    )
    return DUMP(obj).encode()


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + DUMP(obj).encode() + b"\r\n\r\n"


async def generate_stream(conn: Connection, parsed: ParsedRequest, plan: Plan) -> None:
    delay = plan.chunk_delay
    response_id = f"mockresp{next_id()}"
    if plan.kind != "text":
        await conn.chunk(
            _sse(
                _response(
                    plan,
                    response_id,
                    _parts(plan),
                    finish=_finish(plan),
                    visible=plan.visible_tokens,
                )
            ),
            delay,
        )
        plan.produced += plan.visible_tokens
        return
    last = plan.visible_tokens - 1
    for i in range(plan.visible_tokens):
        if plan.stream_error and i == plan.stream_error_at:
            error = {
                "code": 503,
                "message": "The mock upstream is overloaded.",
                "status": "UNAVAILABLE",
            }
            await conn.chunk(_sse({"error": error}), delay)
            return
        finish = _finish(plan) if i == last else None
        part = {"text": WORDS[i % len(WORDS)]}
        obj = _response(plan, response_id, [part], finish=finish, visible=i + 1)
        await conn.chunk(_sse(obj), delay)
        plan.produced += 1
    if plan.visible_tokens == 0:
        obj = _response(plan, response_id, [{"text": ""}], finish=_finish(plan), visible=0)
        await conn.chunk(_sse(obj), delay)


def count_tokens_body(parsed: ParsedRequest) -> bytes:
    """`models/{model}:countTokens`: the prompt the same generateContent request would be
    charged for (a CountTokensResponse)."""
    return DUMP({"totalTokens": prompt_tokens(parsed)}).encode()
