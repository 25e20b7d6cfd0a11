"""AWS Bedrock Converse wire protocol, `converse` and `converse-stream` (pure: no I/O, no
Django).

The model and whether the call streams are in the URL (`/model/{modelId}/converse`,
`/model/{modelId}/converse-stream`), not in the body: the caller sets `ParsedRequest.model`
and `.stream` from the path. The output limit is `inferenceConfig.maxTokens`.

Converse `usage` counts, as Bedrock bills them: `inputTokens` is the input read fresh, apart
from `cacheReadInputTokens` (read from the prompt cache) and `cacheWriteInputTokens` (written
to it); `outputTokens` is all output; `totalTokens` is the sum of the four. Normalised with no
double counting: input = inputTokens + cacheRead + cacheWrite, cached = cacheRead,
cache_write = cacheWrite, output = outputTokens.

A ConverseStream answer is not SSE but AWS's binary event stream
(`application/vnd.amazon.eventstream`): frames with a prelude, typed headers (`:event-type`,
`:content-type`, `:message-type`) and CRC32 checks, split here with botocore's
`EventStreamBuffer`. The `metadata` event carries the usage; `messageStop` ends the answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from botocore.eventstream import EventStreamBuffer, ParserError

from metering import validation
from metering.providers.base import (
    BodyEncodingError,
    EncodedBody,
    ModuleProvider,
    ParsedRequest,
    RequestError,
    StreamState,
    Usage,
)
from metering.providers.openai import IMAGE_TOKENS

ENDPOINT = "converse"
ENDPOINTS = (ENDPOINT,)
MIN_OUTPUT_TOKENS = {ENDPOINT: 1}
CONFIG = "inferenceConfig"
LIMIT = "maxTokens"
CONTENT_TYPE_STREAM = "application/vnd.amazon.eventstream"

_DUMP = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


# --- requests ------------------------------------------------------------------------------


def _decode(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise RequestError("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise RequestError("The request body must be a JSON object.")
    validation.body_check(data, body)
    return data


def _block_text(block: Any, parts: list[str]) -> int:
    """Append the text a content block carries; the fixed token count of an image or file."""
    if not isinstance(block, dict):
        return 0
    if isinstance(block.get("text"), str):
        parts.append(block["text"])
    for key in ("toolUse", "toolResult", "json"):
        if isinstance(block.get(key), dict):
            parts.append(_DUMP(block[key]))
    if isinstance(block.get("toolResult"), dict):
        for inner in block["toolResult"].get("content") or []:
            _block_text(inner, parts)
    return IMAGE_TOKENS if ("image" in block or "document" in block) else 0


def parse_request(endpoint: str, body: bytes) -> ParsedRequest:
    """Parse a Converse body (the model comes from the path: "" here).

    Raises RequestError for a body that is not a JSON object, missing or empty `messages`, or
    a non-positive `inferenceConfig.maxTokens`."""
    if endpoint != ENDPOINT:
        raise ValueError(f"unknown Bedrock endpoint {endpoint!r}")
    data = _decode(body)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: must be a non-empty array.", param="messages")
    config = data.get(CONFIG) or {}
    if not isinstance(config, dict):
        raise RequestError("inferenceConfig: must be an object.", param=CONFIG)
    limit = config.get(LIMIT)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise RequestError(
            "inferenceConfig.maxTokens: must be a positive integer.", param=f"{CONFIG}.{LIMIT}"
        )
    parts: list[str] = []
    extra = 0
    for block in data.get("system") or []:
        extra += _block_text(block, parts)
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            raise RequestError("messages: each message needs a content array.", param="messages")
        for block in message["content"]:
            extra += _block_text(block, parts)
    if isinstance(data.get("toolConfig"), dict):
        parts.append(_DUMP(data["toolConfig"].get("tools") or []))
    return ParsedRequest(
        endpoint=ENDPOINT,
        model="",
        body=data,
        max_output_tokens=limit,
        prompt_text="\n".join(parts),
        message_count=len(messages),
        extra_prompt_tokens=extra,
    )


@dataclass(frozen=True)
class ConverseBody(EncodedBody):
    """An upstream Converse body encoded before the hold: `rest` is everything but
    `inferenceConfig`, which `finish` writes with the limit the hold decided; `kept` holds the
    client's own maxTokens."""

    config: tuple[tuple[str, Any], ...] = ()  # inferenceConfig without maxTokens

    @classmethod
    def of_converse(cls, body: dict[str, Any]) -> ConverseBody:
        config = dict(body.get(CONFIG) or {})
        kept = ((LIMIT, config.pop(LIMIT)),) if LIMIT in config else ()
        rest = {k: v for k, v in body.items() if k not in ("model", CONFIG)}
        try:
            return cls(_DUMP(rest).encode(), (LIMIT,), kept, tuple(config.items()))
        except (UnicodeEncodeError, RecursionError, ValueError) as exc:
            raise BodyEncodingError(str(exc)) from None

    def with_fields(self, updates: dict[str, Any]) -> ConverseBody:
        """Converse has no limit that must stay below maxTokens: nothing to merge."""
        return self

    def finish(self, *, upstream_model: str, max_output_tokens: int | None) -> bytes:
        """The body; the upstream model goes in the URL, not here."""
        del upstream_model
        config = dict(self.config)
        if max_output_tokens is None:
            config.update(self.kept)
        else:
            config[LIMIT] = max_output_tokens
        if not config:
            return self.rest
        head = b'{"inferenceConfig":' + _DUMP(config).encode()
        if self.rest == b"{}":
            return head + b"}"
        return head + b"," + self.rest[1:]


def encode_upstream_body(parsed: ParsedRequest, **_: object) -> ConverseBody:
    """The body to send upstream, encoded now; `finish` it with the limit once the hold is
    taken. Raises BodyEncodingError for a body that cannot be encoded."""
    return ConverseBody.of_converse(parsed.body)


# --- usage ---------------------------------------------------------------------------------


def _count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def converse_usage(usage: dict[str, Any]) -> Usage:
    """Normalise a Converse `usage` object (see the module's notes)."""
    fresh = _count(usage.get("inputTokens"))
    read = _count(usage.get("cacheReadInputTokens"))
    written = _count(usage.get("cacheWriteInputTokens"))
    return Usage(
        input_tokens=fresh + read + written,
        output_tokens=_count(usage.get("outputTokens")),
        cached_input_tokens=read,
        cache_write_tokens=written,
    )


def usage_from_body(endpoint: str, data: dict[str, Any]) -> Usage | None:
    """The normalised usage of a whole Converse answer, None when it carries none."""
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    return converse_usage(usage)


# --- streams -------------------------------------------------------------------------------


def _header(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


class ConverseStreamMeter:
    """Meters a ConverseStream answer (binary event-stream frames). Relays the bytes
    unchanged.

    `contentBlockDelta` text and tool input are the output relayed; `metadata` carries the
    final usage; `messageStop` ends the answer. An exception frame (`:message-type`
    `exception` or `error`) sets `state.error` to its `:exception-type` / `:error-code`; a
    frame that fails its CRC check sets it to "bad_frame" and stops the parse."""

    def __init__(self) -> None:
        self.state = StreamState()
        self._buffer = EventStreamBuffer()
        self._broken = False

    def feed(self, chunk: bytes) -> bytes:
        if self._broken:
            return chunk
        self._buffer.add_data(chunk)
        try:
            for message in self._buffer:
                self._on_message(message.headers, message.payload)
        except ParserError:
            self._broken = True
            self.state.error = self.state.error or "bad_frame"
        return chunk

    def close(self) -> bytes:
        return b""

    def _on_message(self, headers: dict[str, Any], payload: bytes) -> None:
        kind = _header(headers.get(":message-type"))
        if kind in ("exception", "error"):
            named = headers.get(":exception-type") or headers.get(":error-code")
            self.state.error = _header(named) or "stream_error"
            return
        try:
            obj = json.loads(payload) if payload else {}
        except ValueError:
            return
        if isinstance(obj, dict):
            self.on_event(_header(headers.get(":event-type")), obj)

    def on_event(self, event: str, obj: dict[str, Any]) -> None:
        if event == "contentBlockDelta":
            delta = obj.get("delta")
            if not isinstance(delta, dict):
                return
            text = delta.get("text")
            if isinstance(text, str) and text:
                self.state.output_text.append(text)
                self.state.saw_output = True
            tool = delta.get("toolUse")
            if isinstance(tool, dict) and isinstance(tool.get("input"), str):
                self.state.output_text.append(tool["input"])
                self.state.saw_output = True
            reasoning = delta.get("reasoningContent")
            if isinstance(reasoning, dict) and isinstance(reasoning.get("text"), str):
                self.state.output_text.append(reasoning["text"])
                self.state.saw_output = True
        elif event == "messageStop":
            self.state.finished = True
        elif event == "metadata":
            usage = obj.get("usage")
            if isinstance(usage, dict):
                self.state.usage = converse_usage(usage)
                self.state.finished = True


def stream_meter(endpoint: str, *, strip_usage_chunk: bool = False) -> ConverseStreamMeter:
    """A fresh meter for one upstream ConverseStream answer."""
    del strip_usage_chunk
    if endpoint != ENDPOINT:
        raise ValueError(f"endpoint {endpoint!r} is not a Bedrock endpoint")
    return ConverseStreamMeter()


# --- errors --------------------------------------------------------------------------------

# The exception names Bedrock answers with, by HTTP status (the `x-amzn-errortype` header).
EXCEPTIONS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    413: "ValidationException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}


def error_type(status: int) -> str:
    """The Bedrock exception name for an HTTP status."""
    if status in EXCEPTIONS:
        return EXCEPTIONS[status]
    return "InternalServerException" if status >= 500 else "ValidationException"


def error_body(
    status: int,
    message: str,
    type: str | None = None,  # the exception name; shadows the builtin
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    """An error body in Bedrock's shape: {"message": ...} (its name goes in the
    `x-amzn-errortype` header); `code` and `param` ride along for clients that look."""
    body: dict[str, Any] = {"message": message}
    if code is not None:
        body["code"] = code
    if param is not None:
        body["param"] = param
    del type
    return _DUMP(body).encode()


PROVIDER = ModuleProvider(
    "bedrock",
    endpoints=ENDPOINTS,
    min_output_tokens=MIN_OUTPUT_TOKENS,
    parse=parse_request,
    encode=encode_upstream_body,
    usage=usage_from_body,
    meter=stream_meter,
    error=error_body,
)
