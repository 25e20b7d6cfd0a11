"""Usage objects mapped between the protocols, each token kind to its counterpart.

OpenAI counts cache reads (and, on layers that report them, cache writes) inside
`prompt_tokens`; Anthropic reports plain input, cache writes and cache reads apart. Reasoning
tokens sit inside the output on both sides. The mapping moves every kind exactly once, so the
normalised usage (providers' `chat_usage` / `messages_usage`) of the result is the upstream's.
"""

from __future__ import annotations

from typing import Any


def _n(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def _details(usage: dict[str, Any], key: str) -> dict[str, Any]:
    value = usage.get(key)
    return value if isinstance(value, dict) else {}


def anthropic_usage_to_chat(usage: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic `usage` as an OpenAI chat `usage`."""
    cache_read = _n(usage.get("cache_read_input_tokens"))
    cache_write = _n(usage.get("cache_creation_input_tokens"))
    prompt = _n(usage.get("input_tokens")) + cache_read + cache_write
    output = _n(usage.get("output_tokens"))
    thinking = min(output, _n(_details(usage, "output_tokens_details").get("thinking_tokens")))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": cache_read, "cache_write_tokens": cache_write},
        "completion_tokens_details": {"reasoning_tokens": thinking},
    }


def chat_usage_to_anthropic(usage: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat `usage` as an Anthropic `usage`."""
    prompt = _n(usage.get("prompt_tokens"))
    output = _n(usage.get("completion_tokens"))
    # Hidden thinking (counted in total_tokens only) is output, as chat_usage normalises it.
    hidden = _n(usage.get("total_tokens")) - prompt - output
    reasoning = _n(_details(usage, "completion_tokens_details").get("reasoning_tokens"))
    if hidden > 0:
        output += hidden
        reasoning += hidden
    prompt_details = _details(usage, "prompt_tokens_details")
    cache_read = min(prompt, _n(prompt_details.get("cached_tokens")))
    cache_write = min(prompt - cache_read, _n(prompt_details.get("cache_write_tokens")))
    result: dict[str, Any] = {
        "input_tokens": prompt - cache_read - cache_write,
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
        "output_tokens": output,
    }
    if reasoning:
        result["output_tokens_details"] = {"thinking_tokens": min(output, reasoning)}
    return result
