"""Protocol types shared by the provider modules (pure: no I/O, no Django).

The proxy's hot path works only through these shapes: it parses a client request, lets the
provider module rewrite the body for the upstream, and feeds the upstream's answer (a JSON body
or an SSE stream, chunk by chunk) to a meter that finds the usage.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from metering.jsonwire import dumps_bytes
from metering.sse import SSESplitter


class RequestError(ValueError):
    """The client's request is malformed; `param` names the field when there is one."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class Usage:
    """Normalised usage (see CONVENTIONS: cached is part of input, reasoning part of output)."""

    input_tokens: int = 0  # all input: plain + cache reads + cache writes
    output_tokens: int = 0  # all output, reasoning included
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class ParsedRequest:
    """What the proxy needs to know about a client request."""

    endpoint: str  # "chat", "responses", "embeddings", "messages"
    model: str
    body: dict  # the decoded JSON body (forwarded after rewriting)
    stream: bool = False
    max_output_tokens: int | None = None  # as the client asked; None when absent
    include_usage_requested: bool = False  # OpenAI chat: client set stream_options.include_usage
    intent: str = ""  # from metadata.intent
    # Parallel answers to one prompt (chat `n`): each may use the whole output limit, so the
    # worst case is prompt + choices x limit.
    choices: int = 1
    prompt_text: str = ""  # text used to estimate prompt tokens locally
    message_count: int = 0  # messages / input items, for the per-message token overhead
    extra_prompt_tokens: int = 0  # images, files and pre-tokenised input not in prompt_text


_DUMP = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class BodyEncodingError(ValueError):
    """The body cannot be encoded for the upstream (a lone surrogate, or nesting too deep)."""


@dataclass(frozen=True)
class EncodedBody:
    """An upstream body encoded before the hold is taken, without the fields only the hold and
    the routing decide (the upstream model, the output limit); `finish` puts them in front.

    Encoding first means a body that cannot be encoded is refused before anything is held, and
    what is left after the hold cannot fail: two small fields of known types."""

    rest: bytes  # a JSON object without `model` and the limit fields
    limit_fields: tuple[str, ...]  # where an output limit goes
    kept: tuple[tuple[str, Any], ...] = ()  # the client's own limits, sent when none is given

    @classmethod
    def of(cls, body: dict[str, Any], limit_fields: tuple[str, ...]) -> EncodedBody:
        rest = {k: v for k, v in body.items() if k != "model" and k not in limit_fields}
        kept = tuple((f, body[f]) for f in limit_fields if f in body)
        try:
            return cls(dumps_bytes(rest), limit_fields, kept)
        except (UnicodeEncodeError, RecursionError, ValueError) as exc:
            raise BodyEncodingError(str(exc)) from None

    def with_fields(self, updates: dict[str, Any]) -> EncodedBody:
        """The body with top-level `updates` merged in (limit fields go through `finish`).
        Re-encodes the rest: for the rare call whose dependent limits a clamp lowers."""
        extra = {k: v for k, v in updates.items() if k not in self.limit_fields and k != "model"}
        if not extra:
            return self
        rest = {**json.loads(self.rest), **extra}
        return dataclasses.replace(self, rest=dumps_bytes(rest))

    def head(self, upstream_model: str) -> dict[str, Any]:
        """The fields `finish` writes before the limit: the model (a variant may name it in
        the URL instead, and write fields of its own)."""
        return {"model": upstream_model}

    def finish(self, *, upstream_model: str, max_output_tokens: int | None) -> bytes:
        head = self.head(upstream_model)
        if max_output_tokens is None:
            head.update(self.kept)
        else:
            head.update(dict.fromkeys(self.limit_fields, max_output_tokens))
        start = _DUMP(head).encode()[:-1]
        if self.rest == b"{}":
            return start + b"}"
        return start + b"," + self.rest[1:]


@dataclass
class StreamState:
    """What a stream meter has seen so far."""

    usage: Usage | None = None  # the provider's final usage, once it has said it
    # The provider's counts known before its final usage (Anthropic's message_start: input
    # exact, output a placeholder), for the charge of a stream cut before the final usage.
    partial_usage: Usage | None = None
    output_text: list[str] = field(default_factory=list)  # for an estimate when no usage came
    saw_output: bool = False
    error: str | None = None  # an error event mid-stream
    finished: bool = False  # the provider's end-of-stream marker arrived


class StreamMeter(Protocol):
    """Fed the upstream SSE bytes as they arrive; returns the bytes to relay to the client.

    The returned bytes equal the input, except for OpenAI chat streams where the proxy added
    `include_usage` itself: the usage-only chunk is removed before it reaches the client.
    Must cope with events split across chunks, CRLF line ends, and several events per chunk.
    """

    state: StreamState

    def feed(self, chunk: bytes) -> bytes: ...

    def close(self) -> bytes: ...


class PassThroughMeter:
    """A stream meter that relays the bytes unchanged and hands each event's JSON object to
    `on_object` (subclasses read usage and output text there). Events that are not JSON
    objects (comments, pings without data, garbage) are ignored, never fatal."""

    def __init__(self) -> None:
        self.state = StreamState()
        self._sse = SSESplitter(keep_raw=False)

    def feed(self, chunk: bytes) -> bytes:
        for event in self._sse.feed(chunk):
            self._on_data(event.data)
        return chunk

    def close(self) -> bytes:
        for event in self._sse.close():
            self._on_data(event.data)
        return b""

    def _on_data(self, data: str | None) -> None:
        if data is None:
            return
        try:
            obj = json.loads(data)
        except ValueError:
            return
        if isinstance(obj, dict):
            self.on_object(obj)

    def on_object(self, obj: dict[str, Any]) -> None:
        raise NotImplementedError


class RequestParser(Protocol):
    """What parses a client request: every `Provider`, and parsers of their own (the count
    endpoint's, which takes a body without an output limit)."""

    def parse_request(self, endpoint: str, body: bytes) -> ParsedRequest: ...


class Provider(Protocol):
    """One provider's wire protocol, as the proxy uses it (each provider module offers one
    instance, `PROVIDER`). Pure: parsing, encoding, metering and error shapes, no I/O."""

    name: str  # "openai" or "anthropic": the error shape and its types
    endpoints: tuple[str, ...]
    min_output_tokens: Mapping[str, int]  # the least output limit each endpoint accepts

    def parse_request(self, endpoint: str, body: bytes) -> ParsedRequest: ...

    def encode_upstream_body(
        self, parsed: ParsedRequest, *, force_include_usage: bool, default_limit_field: str | None
    ) -> EncodedBody: ...

    def usage_from_body(self, endpoint: str, data: dict[str, Any]) -> Usage | None: ...

    def stream_meter(self, endpoint: str, *, strip_usage_chunk: bool) -> StreamMeter: ...

    def error_body(
        self,
        status: int,
        message: str,
        type: str,
        code: str | None = None,
        param: str | None = None,
    ) -> bytes: ...


class ModuleProvider:
    """A provider module's pure functions as a `Provider`: each module builds its `PROVIDER`
    from its own `parse_request`, `encode_upstream_body`, `usage_from_body`, `stream_meter`
    and `error_body`. `for_call` binds the model and the streaming that a call's path names
    (the Gemini and Bedrock surfaces), so its parsed request carries them; on the other
    protocols the body names both and nothing is bound."""

    def __init__(
        self,
        name: str,
        *,
        endpoints: tuple[str, ...],
        min_output_tokens: Mapping[str, int],
        parse: Callable[[str, bytes], ParsedRequest],
        encode: Callable[..., EncodedBody],
        usage: Callable[[str, dict[str, Any]], Usage | None],
        meter: Callable[..., StreamMeter],
        error: Callable[..., bytes],
    ) -> None:
        self.name = name
        self.endpoints = endpoints
        self.min_output_tokens = min_output_tokens
        self._parse, self._encode, self._usage = parse, encode, usage
        self._meter, self._error = meter, error
        self.model, self.stream = "", False

    def for_call(self, model: str, stream: bool) -> ModuleProvider:
        bound = copy.copy(self)
        bound.model, bound.stream = model, stream
        return bound

    def parse_request(self, endpoint: str, body: bytes) -> ParsedRequest:
        parsed = self._parse(endpoint, body)
        if self.model:
            parsed.model, parsed.stream = self.model, self.stream
        return parsed

    def encode_upstream_body(
        self, parsed: ParsedRequest, *, force_include_usage: bool, default_limit_field: str | None
    ) -> EncodedBody:
        # No field given: the module's own default limit field.
        field = {"default_limit_field": default_limit_field} if default_limit_field else {}
        return self._encode(parsed, force_include_usage=force_include_usage, **field)

    def usage_from_body(self, endpoint: str, data: dict[str, Any]) -> Usage | None:
        return self._usage(endpoint, data)

    def stream_meter(self, endpoint: str, *, strip_usage_chunk: bool) -> StreamMeter:
        return self._meter(endpoint, strip_usage_chunk=strip_usage_chunk)

    def error_body(
        self,
        status: int,
        message: str,
        type: str,  # the wire name; shadows the builtin here only
        code: str | None = None,
        param: str | None = None,
    ) -> bytes:
        return self._error(status, message, type, code=code, param=param)
