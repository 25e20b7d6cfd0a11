"""What the mock will answer: the plan worked out from a request and the test hooks.

Shared by both protocols' answer writers (`openai.py`, `anthropic.py`); no I/O.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

from metering import tokens
from metering.providers.base import ParsedRequest

# Each word with its leading space is exactly one o200k token, so a reply of N words is N
# tokens by the proxy's own count too (what an estimated charge relies on).
WORDS = (
    " the", " quick", " brown", " fox", " jumps", " over", " a", " lazy",
    " dog", " and", " then", " runs", " back", " home", " to", " sleep",
)  # fmt: skip
DEFAULT_OUTPUT_TOKENS = 20
SLOW_STREAM_TOKENS = 100
SLOW_STREAM_DELAY_MS = 100
THINKING_TOKENS = 8  # thinking before a tool call or a JSON answer, when thinking is on
MODELS = (
    "mock-gpt",
    "mock-gpt-cached",
    "mock-gpt-reasoning",
    "mock-claude",
    "mock-claude-cached",
    "mock-gemini",
    "mock-gemini-cached",
    "mock-gemini-reasoning",
    "mock-embedding",
    "mock-error-500",
    "mock-timeout",
    "mock-slow-stream",
    "mock-stream-error",
)
CREATED = 1_760_000_000  # a fixed timestamp keeps bodies byte-for-byte reproducible
SIGNATURE = "bW9jay1zaWduYXR1cmU="  # the thinking block's signature (opaque to clients)
_ERROR_STATUS = re.compile(r"error-(\d{3})")
# `mock-tool: NAME {json arguments}` in the prompt picks the tool and its input.
_TOOL_DIRECTIVE = re.compile(r"mock-tool:\s*([A-Za-z0-9_.:-]+)[ \t]*(\{[^\n]*\})?")
DUMP = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

_ids = itertools.count(1)


def next_id() -> int:
    return next(_ids)


def request_id() -> str:
    return f"req_mock_{next(_ids)}"


@dataclass
class MockSettings:
    latency_ms: int = 0  # before the response head (time to first byte)
    chunk_latency_ms: int = 0  # between stream chunks
    expected_key: str | None = None


@dataclass
class Answer:
    """What the reply says: words, a tool call, or a JSON document (structured output)."""

    kind: str = "text"  # "text", "tool", "json"
    tool_name: str = ""
    tool_input: dict[str, Any] | None = None
    json_text: str = ""
    thinking: bool = False  # the request turned thinking on: a thinking block comes first

    @property
    def arguments(self) -> str:
        return DUMP(self.tool_input or {})

    @property
    def payload(self) -> str:
        """The text the reply's tokens are counted on, for tool calls and JSON."""
        return self.tool_name + self.arguments if self.kind == "tool" else self.json_text


@dataclass
class Plan:
    """What one request will produce, worked out from the request and the hooks."""

    model: str
    prompt_tokens: int
    output_tokens: int  # all output of one choice, reasoning included
    reasoning_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    truncated: bool  # stopped by the request's output limit
    chunk_delay: float
    error_status: int | None = None
    hang: bool = False
    stream_error_at: int | None = None  # streamed output tokens before an error event
    no_usage: bool = False
    choices: int = 1
    produced: int = 0  # output tokens streamed so far, all choices
    answer: Answer | None = None

    @property
    def stream_error(self) -> bool:
        if self.kind != "text":
            return False  # tool calls and JSON answers are sent whole
        return self.stream_error_at is not None and self.stream_error_at < self.visible_tokens

    @property
    def total_output(self) -> int:
        return self.output_tokens * self.choices

    @property
    def visible_tokens(self) -> int:
        return self.output_tokens - self.reasoning_tokens

    @property
    def kind(self) -> str:
        return self.answer.kind if self.answer else "text"

    def text(self, start: int = 0, stop: int | None = None) -> str:
        stop = self.visible_tokens if stop is None else stop
        return "".join(WORDS[i % len(WORDS)] for i in range(start, stop))

    def thinking_text(self) -> str:
        return "".join(WORDS[i % len(WORDS)] for i in range(self.reasoning_tokens))


def sse(data: dict[str, Any], event: str | None = None) -> bytes:
    payload = DUMP(data).encode()
    if event is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


def models_body() -> bytes:
    data = [{"id": m, "object": "model", "created": CREATED, "owned_by": "mock"} for m in MODELS]
    return DUMP({"object": "list", "data": data}).encode()


def prompt_tokens(parsed: ParsedRequest) -> int:
    return (
        tokens.count_text_tokens(parsed.prompt_text)
        + parsed.extra_prompt_tokens
        + 3 * parsed.message_count
    )


def hook(parsed: ParsedRequest, headers: dict[str, str], name: str) -> int | None:
    value = headers.get("x-mock-" + name)
    if value is None:
        metadata = parsed.body.get("metadata")
        if isinstance(metadata, dict):
            value = metadata.get("mock_" + name.replace("-", "_"))
    if value is None:
        return None
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return None


def make_plan(parsed: ParsedRequest, headers: dict[str, str]) -> Plan:
    from metering.mock.script import answer_for  # the scripted answers, by request shape

    model = parsed.model
    prompt = prompt_tokens(parsed)
    answer = answer_for(parsed)
    slow = "slow-stream" in model
    wanted = hook(parsed, headers, "output-tokens")
    if wanted is None:
        wanted = SLOW_STREAM_TOKENS if slow else DEFAULT_OUTPUT_TOKENS
    limit = parsed.max_output_tokens
    reasoning = hook(parsed, headers, "reasoning-tokens")
    if answer.kind != "text":
        # A tool call or a JSON answer is as long as it is; its tokens are counted on it.
        if reasoning is None:
            reasoning = THINKING_TOKENS if answer.thinking or "reasoning" in model else 0
        wanted = reasoning + tokens.count_text_tokens(answer.payload)
    output = wanted if limit is None else min(wanted, limit)
    if parsed.endpoint == "embeddings":
        output = 0
    if reasoning is None:
        reasoning = output // 2 if "reasoning" in model or answer.thinking else 0
    cached = hook(parsed, headers, "cached-tokens")
    if cached is None:
        cached = prompt // 2 if "cached" in model else 0
    cache_write = hook(parsed, headers, "cache-write-tokens")
    if cache_write is None:
        cache_write = prompt // 4 if "cached" in model and parsed.endpoint == "messages" else 0
    cached = min(cached, prompt)
    cache_write = min(cache_write, prompt - cached)
    delay_ms = hook(parsed, headers, "chunk-delay-ms")
    if delay_ms is None:
        delay_ms = SLOW_STREAM_DELAY_MS if slow else 0
    status = hook(parsed, headers, "error")
    if status is None and (match := _ERROR_STATUS.search(model)):
        status = int(match.group(1))
    error_at = hook(parsed, headers, "stream-error-at")
    if error_at is None and "stream-error" in model:
        error_at = (output - min(reasoning, output)) // 2
    return Plan(
        model=model,
        prompt_tokens=prompt,
        output_tokens=output,
        reasoning_tokens=min(reasoning, output),
        cached_tokens=cached,
        cache_write_tokens=cache_write,
        truncated=limit is not None and wanted > limit,
        chunk_delay=delay_ms / 1000,
        error_status=status if status and 400 <= status <= 599 else None,
        hang="timeout" in model,
        stream_error_at=error_at,
        no_usage="no-usage" in model,
        choices=parsed.choices if parsed.endpoint == "chat" else 1,
        answer=answer,
    )


def tool_directive(text: str) -> tuple[str, dict[str, Any] | None] | None:
    """The last `mock-tool: NAME {json}` in the prompt, if any."""
    matches = _TOOL_DIRECTIVE.findall(text)
    if not matches:
        return None
    name, raw = matches[-1]
    arguments = None
    if raw:
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        arguments = value if isinstance(value, dict) else None
    return name, arguments
