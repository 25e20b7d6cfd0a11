"""Limits that must stay below the output limit, lowered with it when the proxy clamps it.

Pure: `dependent_limits` looks at a request body and the clamped output limit and answers the
top-level fields to set (the caller merges them into the body it forwards), or a refusal
reason when no valid setting fits. It never changes the body it is given.

Rules (the providers refuse a call that breaks them):
- Anthropic messages: `thinking.budget_tokens` must be below `max_tokens` and at least 1,024.
  A budget at or over the clamped limit is lowered to limit - 1; when that is under 1,024 no
  thinking budget fits and the call is refused rather than sent to fail upstream.
- OpenAI chat: `max_tokens` and `max_completion_tokens` are the same limit under two names;
  whichever the client sent is lowered to the clamp, both when it sent both, so they agree
  (a field the client did not send is left for the caller's own limit field).
  Reasoning output counts inside that limit: under `MIN_REASONING_OUTPUT` tokens a reasoning
  effort above "low" would spend the whole limit thinking, so it is lowered to "low".
- OpenAI responses: `max_output_tokens`, with `reasoning.effort` as for chat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MIN_THINKING_BUDGET = 1024
# Below this many output tokens, "medium"/"high" effort leaves no room for the answer.
MIN_REASONING_OUTPUT = 4096
_HIGH_EFFORTS = frozenset({"medium", "high", "xhigh"})


@dataclass(frozen=True)
class DependentLimits:
    """Fields to set in the forwarded body, or why the call cannot be made at this limit."""

    updates: dict[str, Any] = field(default_factory=dict)
    refusal: str | None = None


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def dependent_limits(endpoint: str, body: dict[str, Any], limit: int) -> DependentLimits:
    """What to change in `body` so every dependent limit fits under the output `limit`.

    `endpoint` is the provider module's name for the call ("messages", "chat", "responses").
    """
    if limit < 1:
        return DependentLimits(refusal="The output limit left for this call is below 1 token.")
    if endpoint == "messages":
        return _anthropic(body, limit)
    if endpoint == "chat":
        updates = {
            name: limit
            for name in ("max_tokens", "max_completion_tokens")
            if name in body and (_int(body[name]) is None or body[name] > limit)
        }
        effort = _lowered_effort(body.get("reasoning_effort"), limit)
        if effort is not None:
            updates["reasoning_effort"] = effort
        return DependentLimits(updates=updates)
    if endpoint == "responses":
        updates: dict[str, Any] = {}
        if "max_output_tokens" in body:
            current = _int(body["max_output_tokens"])
            if current is None or current > limit:
                updates["max_output_tokens"] = limit
        reasoning = body.get("reasoning")
        if isinstance(reasoning, dict):
            effort = _lowered_effort(reasoning.get("effort"), limit)
            if effort is not None:
                updates["reasoning"] = {**reasoning, "effort": effort}
        return DependentLimits(updates=updates)
    return DependentLimits()


def _anthropic(body: dict[str, Any], limit: int) -> DependentLimits:
    updates: dict[str, Any] = {}
    current = _int(body.get("max_tokens"))
    if current is None or current > limit:
        updates["max_tokens"] = limit
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return DependentLimits(updates=updates)  # disabled or adaptive: no budget to keep below
    budget = _int(thinking.get("budget_tokens"))
    if budget is None or budget < limit:
        return DependentLimits(updates=updates)
    lowered = limit - 1
    if lowered < MIN_THINKING_BUDGET:
        return DependentLimits(
            refusal=(
                f"The output limit left for this call ({limit} tokens) leaves no room for a "
                f"thinking budget: it must be at least {MIN_THINKING_BUDGET} and below max_tokens."
            )
        )
    updates["thinking"] = {**thinking, "budget_tokens": lowered}
    return DependentLimits(updates=updates)


def _lowered_effort(effort: Any, limit: int) -> str | None:
    if isinstance(effort, str) and effort in _HIGH_EFFORTS and limit < MIN_REASONING_OUTPUT:
        return "low"
    return None
