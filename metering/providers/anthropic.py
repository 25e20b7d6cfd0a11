"""Anthropic Messages wire protocol, `/v1/messages` (pure: no I/O, no Django).

Anthropic's `input_tokens` excludes cache reads and cache writes (CONVENTIONS §1.5), so the
normalised input is the sum of the three; the cache counts are kept apart to be priced at their
own rates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from metering.providers.base import (
    EncodedBody,
    ModuleProvider,
    ParsedRequest,
    PassThroughMeter,
    RequestError,
    Usage,
)
from metering.providers.openai import (
    TextCollector,
    decode_body,
    intent_of,
    optional_bool,
    optional_int,
    strip_intent,
)

ENDPOINTS = ("messages",)
MIN_OUTPUT_TOKENS = {"messages": 1}

_DUMP = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def parse_request(endpoint: str, body: bytes) -> ParsedRequest:
    """Parse a client `/v1/messages` request.

    Raises RequestError for a body that is not a JSON object, a missing or empty model, missing
    or empty messages, a missing, non-integer or non-positive `max_tokens` (Anthropic requires
    it), or a non-boolean `stream`.
    """
    if endpoint != "messages":
        raise ValueError(f"unknown Anthropic endpoint {endpoint!r}")
    data = decode_body(body)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(
            "messages: Field required (a non-empty array of messages).", param="messages"
        )
    if data.get("max_tokens") is None:
        raise RequestError("max_tokens: Field required.", param="max_tokens")
    max_tokens = optional_int(data, "max_tokens", minimum=1)
    system = data.get("system")
    if system is not None and not isinstance(system, (str, list)):
        raise RequestError("system: must be a string or an array of text blocks.", param="system")
    text = TextCollector()
    text.add(system)
    text.add(messages)
    text.add_json(data.get("tools"))
    text.add_json(data.get("output_format"))
    return ParsedRequest(
        endpoint="messages",
        model=data["model"],
        body=data,
        stream=optional_bool(data, "stream"),
        max_output_tokens=max_tokens,
        intent=intent_of(data),
        prompt_text=text.text(),
        message_count=len(messages),
        extra_prompt_tokens=text.extra_tokens,
    )


def encode_upstream_body(
    parsed: ParsedRequest, *, force_include_usage: bool = False, **_: object
) -> EncodedBody:
    """The body to send upstream, encoded now; `finish` it with the upstream model and
    `max_tokens` (the clamp) once the hold is taken. `parsed.body` is not modified.

    Removes the proxy's own `metadata.intent` tag, which Anthropic would reject as an unknown
    metadata field. `force_include_usage` is accepted for a uniform call and ignored: Anthropic
    streams always carry usage. Raises BodyEncodingError for a body that cannot be encoded."""
    del force_include_usage
    body = dict(parsed.body)
    strip_intent(body)
    return EncodedBody.of(body, ("max_tokens",))


VERTEX_VERSION = "vertex-2023-10-16"


@dataclass(frozen=True)
class VertexMessagesBody(EncodedBody):
    """A Messages body for Claude on Vertex AI: the model is in the URL (`:rawPredict`), and
    the body names the API version instead (`anthropic_version`); `stream` stays."""

    with_model: bool = False  # Vertex's count-tokens names the model in the body

    def head(self, upstream_model: str) -> dict[str, Any]:
        head: dict[str, Any] = {"anthropic_version": VERTEX_VERSION}
        if self.with_model:
            head["model"] = upstream_model
        return head


def encode_vertex_body(
    parsed: ParsedRequest, *, with_model: bool = False, **_: object
) -> VertexMessagesBody:
    """`encode_upstream_body` for an Anthropic-on-Vertex upstream (a client's own
    `anthropic_version` gives way to Vertex's; `with_model` for the count-tokens body, which
    keeps the model). Raises BodyEncodingError as it does."""
    body = dict(parsed.body)
    strip_intent(body)
    body.pop("anthropic_version", None)
    encoded = EncodedBody.of(body, ("max_tokens",))
    return VertexMessagesBody(encoded.rest, encoded.limit_fields, encoded.kept, with_model)


BEDROCK_VERSION = "bedrock-2023-05-31"


@dataclass(frozen=True)
class BedrockMessagesBody(EncodedBody):
    """A Messages body for Claude on AWS Bedrock (InvokeModel): the model and the streaming
    are in the URL (`/invoke`, `/invoke-with-response-stream`), and the body names the API
    version instead (`anthropic_version`)."""

    def head(self, upstream_model: str) -> dict[str, Any]:
        return {"anthropic_version": BEDROCK_VERSION}


def encode_bedrock_body(parsed: ParsedRequest, **_: object) -> BedrockMessagesBody:
    """`encode_upstream_body` for an Anthropic-on-Bedrock upstream: no `model`, no `stream`,
    and Bedrock's `anthropic_version` (a client's own gives way to it). Raises
    BodyEncodingError as it does."""
    body = dict(parsed.body)
    strip_intent(body)
    body.pop("anthropic_version", None)
    body.pop("stream", None)
    encoded = EncodedBody.of(body, ("max_tokens",))
    return BedrockMessagesBody(encoded.rest, encoded.limit_fields, encoded.kept)


def build_upstream_body(
    parsed: ParsedRequest,
    *,
    upstream_model: str,
    max_output_tokens: int | None,
    force_include_usage: bool = False,
) -> bytes:
    """The JSON body to send upstream in one step (see `encode_upstream_body`)."""
    encoded = encode_upstream_body(parsed, force_include_usage=force_include_usage)
    return encoded.finish(upstream_model=upstream_model, max_output_tokens=max_output_tokens)


# --- usage ---------------------------------------------------------------------------------


def _count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


class _Counts:
    """Anthropic's raw counters, updated field by field as a stream reports them."""

    __slots__ = ("cache_read", "cache_write", "input", "output", "thinking")

    def __init__(self) -> None:
        self.input = 0
        self.cache_write = 0
        self.cache_read = 0
        self.output = 0
        self.thinking = 0

    def update(self, usage: dict[str, Any]) -> None:
        """Present fields replace earlier values (message_delta counts are cumulative)."""
        if usage.get("input_tokens") is not None:
            self.input = _count(usage["input_tokens"])
        if usage.get("cache_creation_input_tokens") is not None:
            self.cache_write = _count(usage["cache_creation_input_tokens"])
        if usage.get("cache_read_input_tokens") is not None:
            self.cache_read = _count(usage["cache_read_input_tokens"])
        if usage.get("output_tokens") is not None:
            self.output = _count(usage["output_tokens"])
        details = usage.get("output_tokens_details")
        if isinstance(details, dict) and details.get("thinking_tokens") is not None:
            self.thinking = _count(details["thinking_tokens"])

    def usage(self) -> Usage:
        return Usage(
            input_tokens=self.input + self.cache_write + self.cache_read,
            output_tokens=self.output,
            cached_input_tokens=self.cache_read,
            cache_write_tokens=self.cache_write,
            reasoning_tokens=min(self.output, self.thinking),
        )


def messages_usage(usage: dict[str, Any]) -> Usage:
    """Normalise an Anthropic `usage` object."""
    counts = _Counts()
    counts.update(usage)
    return counts.usage()


def usage_from_body(endpoint: str, data: dict[str, Any]) -> Usage | None:
    """The normalised usage in a non-streamed Message body, None when it carries none."""
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    return messages_usage(usage)


# --- streams -------------------------------------------------------------------------------


class MessagesStreamMeter(PassThroughMeter):
    """Meters a Messages stream (named events: message_start, content_block_*, message_delta,
    message_stop, ping, error). Relays the bytes unchanged.

    `message_start.message.usage` has the exact input counts but a placeholder output count
    (`output_tokens: 1`): it goes to `state.partial_usage` only. The usage is final once a
    `message_delta.usage` arrives (cumulative counts that replace the earlier ones field by
    field); a stream cut before that has no `state.usage`, and its output is counted from the
    text relayed. An `error` event sets `state.error` (the error's type) and keeps what was
    seen so far.
    """

    def __init__(self, *, strip_usage_chunk: bool = False) -> None:
        del strip_usage_chunk  # nothing is ever stripped from an Anthropic stream
        super().__init__()
        self._counts = _Counts()

    def on_object(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind == "content_block_delta":
            self._on_delta(obj.get("delta"))
        elif kind == "content_block_start":
            block = obj.get("content_block")
            # A text block may start with text already in it; tool blocks start with a name.
            if isinstance(block, dict):
                for key in ("text", "name"):
                    value = block.get(key)
                    if isinstance(value, str) and value:
                        self.state.output_text.append(value)
                        self.state.saw_output = True
        elif kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict) and isinstance(message.get("usage"), dict):
                start = {k: v for k, v in message["usage"].items() if k != "output_tokens"}
                self._counts.update(start)
                self.state.partial_usage = self._counts.usage()
        elif kind == "message_delta":
            if isinstance(obj.get("usage"), dict):
                self._counts.update(obj["usage"])
                self.state.usage = self._counts.usage()
        elif kind == "message_stop":
            self.state.finished = True
        elif kind == "error":
            error = obj.get("error")
            error = error if isinstance(error, dict) else {}
            # The type is what the record keeps ("overloaded_error"); the message may be long.
            named = [v for v in (error.get("type"), error.get("message")) if isinstance(v, str)]
            self.state.error = next((v for v in named if v), "stream_error")

    def _on_delta(self, delta: Any) -> None:
        if not isinstance(delta, dict):
            return
        for key in ("text", "thinking", "partial_json"):
            value = delta.get(key)
            if isinstance(value, str) and value:
                self.state.output_text.append(value)
                self.state.saw_output = True
                return


def stream_meter(endpoint: str, *, strip_usage_chunk: bool = False) -> MessagesStreamMeter:
    """A fresh meter for one upstream `/v1/messages` stream."""
    if endpoint != "messages":
        raise ValueError(f"endpoint {endpoint!r} is not an Anthropic endpoint")
    return MessagesStreamMeter(strip_usage_chunk=strip_usage_chunk)


# --- errors --------------------------------------------------------------------------------

# Anthropic names its error types after the HTTP status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_body(
    status: int,
    message: str,
    type: str | None = None,  # the wire name; shadows the builtin here only
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    """An error response body in Anthropic's shape: {"type": "error", "error": {type, message}}.

    Without `type`, the type Anthropic uses for `status` is chosen. Anthropic has no `code` or
    `param` fields; a `code` (e.g. which budget ran out) is added to the error object because the
    SDK keeps unknown fields and a client can read it there."""
    del param
    error: dict[str, Any] = {
        "type": type or ERROR_TYPES.get(status, "api_error"),
        "message": message,
    }
    if code is not None:
        error["code"] = code
    return _DUMP({"type": "error", "error": error}).encode()


PROVIDER = ModuleProvider(
    "anthropic",
    endpoints=ENDPOINTS,
    min_output_tokens=MIN_OUTPUT_TOKENS,
    parse=parse_request,
    encode=encode_upstream_body,
    usage=usage_from_body,
    meter=stream_meter,
    error=error_body,
)
