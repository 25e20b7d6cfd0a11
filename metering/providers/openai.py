"""OpenAI wire protocol: chat completions, responses, embeddings (pure: no I/O, no Django).

Also used for OpenAI-compatible upstreams (Azure OpenAI, vLLM, Ollama), whose framing is the
same. Usage is normalised per CONVENTIONS §1.6: OpenAI's cached tokens are part of its prompt
tokens and reasoning tokens part of its completion tokens, so nothing is added on top.
"""

from __future__ import annotations

import json
from typing import Any

from metering import validation
from metering.providers.base import (
    EncodedBody,
    ModuleProvider,
    ParsedRequest,
    PassThroughMeter,
    RequestError,
    StreamState,
    Usage,
)
from metering.sse import SSESplitter

ENDPOINTS = ("chat", "responses", "embeddings")

# Tokens reserved for a non-text input part. The real count depends on the image size and the
# model (OpenAI high detail is at most ~1.1k per image, Anthropic ~1.6k); the reservation takes
# the high end and settlement uses the provider's own count.
IMAGE_TOKENS = 1600
FILE_TOKENS = 4000
AUDIO_TOKENS = 1600

# OpenAI refuses a responses call whose max_output_tokens is below 16.
MIN_OUTPUT_TOKENS = {"chat": 1, "responses": 16, "embeddings": 0}

_IMAGE_TYPES = frozenset({"image_url", "input_image", "image"})
_FILE_TYPES = frozenset({"file", "input_file", "document"})
_AUDIO_TYPES = frozenset({"input_audio", "audio"})
# Keys whose values are identifiers, enums or binary payloads, not text the model reads.
_SKIP_KEYS = frozenset(
    {
        "type",
        "role",
        "id",
        "call_id",
        "tool_call_id",
        "status",
        "image_url",
        "file_data",
        "file_id",
        "file_url",
        "url",
        "data",
        "detail",
        "format",
        "media_type",
        "cache_control",
        "signature",
        "encrypted_content",
    }
)
_DUMP = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


# --- requests ------------------------------------------------------------------------------


def decode_body(body: bytes) -> dict[str, Any]:
    """The JSON object in `body`, or RequestError (shared with the Anthropic module)."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(
            f"We could not parse the JSON body of your request ({exc}). "
            "The body must be a JSON object."
        ) from None
    if not isinstance(data, dict):
        raise RequestError("The request body must be a JSON object.")
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        raise RequestError("You must provide a model parameter.", param="model")
    # Refused here, before anything is held: these strings are stored or looked up.
    validation.label_check(model, param="model")
    validation.metadata_check(data)
    validation.body_check(data, body)
    return data


def optional_int(data: dict[str, Any], name: str, *, minimum: int = 0) -> int | None:
    """`data[name]` as an int >= minimum, None when absent or null; RequestError otherwise."""
    value = data.get(name)
    if value is None:
        return None
    # bool is an int subclass: `true` is not a token count.
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(f"Invalid type for '{name}': expected an integer.", param=name)
    if value < minimum:
        raise RequestError(f"Invalid '{name}': integer below minimum value {minimum}.", param=name)
    return value


def optional_bool(data: dict[str, Any], name: str, *, param: str | None = None) -> bool:
    value = data.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(
            f"Invalid type for '{param or name}': expected a boolean.", param=param or name
        )
    return value


def intent_of(data: dict[str, Any]) -> str:
    """`metadata.intent` as a string of at most 100 characters ("" when absent)."""
    metadata = data.get("metadata")
    if isinstance(metadata, dict):
        intent = metadata.get("intent")
        if isinstance(intent, str):
            return intent[:100]
    return ""


class TextCollector:
    """Gathers the text a model reads from a JSON request fragment, for a local token estimate.

    Identifiers, enums and binary payloads are skipped; images, files and audio count a fixed
    number of tokens each (see IMAGE_TOKENS) instead of their base64 length."""

    __slots__ = ("extra_tokens", "parts")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.extra_tokens = 0

    def add(self, value: Any) -> None:
        if isinstance(value, str):
            self.parts.append(value)
        elif isinstance(value, list):
            for item in value:
                self.add(item)
        elif isinstance(value, dict):
            kind = value.get("type")
            if kind in _IMAGE_TYPES:
                self.extra_tokens += IMAGE_TOKENS
                return
            if kind in _FILE_TYPES:
                self.extra_tokens += FILE_TOKENS
                return
            if kind in _AUDIO_TYPES:
                self.extra_tokens += AUDIO_TOKENS
                return
            for key, item in value.items():
                if key not in _SKIP_KEYS:
                    self.add(item)

    def add_json(self, value: Any) -> None:
        """Tool definitions and response formats reach the model as JSON text."""
        if value is not None:
            self.parts.append(_DUMP(value))

    def text(self) -> str:
        return "\n".join(self.parts)


def parse_request(endpoint: str, body: bytes) -> ParsedRequest:
    """Parse a client request for `endpoint` ("chat", "responses" or "embeddings").

    Raises RequestError (with `param` when a field is at fault) for a body that is not a JSON
    object, a missing or empty model, missing messages/input, a non-integer or negative output
    limit, or a non-boolean `stream`. Anything else is left for the upstream to judge.
    """
    data = decode_body(body)
    if endpoint == "chat":
        return _parse_chat(data)
    if endpoint == "responses":
        return _parse_responses(data)
    if endpoint == "embeddings":
        return _parse_embeddings(data)
    raise ValueError(f"unknown OpenAI endpoint {endpoint!r}")


def _parse_chat(data: dict[str, Any]) -> ParsedRequest:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(
            "'messages' is required and must be a non-empty array.", param="messages"
        )
    max_tokens = optional_int(data, "max_tokens")
    max_completion = optional_int(data, "max_completion_tokens")
    stream = optional_bool(data, "stream")
    include_usage = False
    options = data.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise RequestError("'stream_options' must be an object.", param="stream_options")
        include_usage = optional_bool(
            options, "include_usage", param="stream_options.include_usage"
        )
    # `n` answers, each up to the limit; an OpenAI-compatible server's `best_of` generates that
    # many and returns `n`, so the larger of the two bounds the output.
    n = optional_int(data, "n", minimum=1) or 1
    best_of = optional_int(data, "best_of", minimum=1) or 1
    text = TextCollector()
    text.add(messages)
    text.add_json(data.get("tools"))
    text.add_json(data.get("functions"))
    text.add_json(data.get("response_format"))
    return ParsedRequest(
        endpoint="chat",
        model=data["model"],
        body=data,
        stream=stream,
        # max_completion_tokens supersedes the deprecated max_tokens when both are given.
        max_output_tokens=max_completion if max_completion is not None else max_tokens,
        include_usage_requested=include_usage,
        intent=intent_of(data),
        choices=max(n, best_of),
        prompt_text=text.text(),
        message_count=len(messages),
        extra_prompt_tokens=text.extra_tokens,
    )


def _parse_responses(data: dict[str, Any]) -> ParsedRequest:
    items = data.get("input")
    # A responses call may continue a stored conversation or use a stored prompt instead.
    has_context = any(data.get(k) for k in ("previous_response_id", "conversation", "prompt"))
    if items is None and not has_context:
        raise RequestError("'input' is required.", param="input")
    if items is not None and not isinstance(items, (str, list)):
        raise RequestError("'input' must be a string or an array of items.", param="input")
    text = TextCollector()
    text.add(items)
    instructions = data.get("instructions")
    if isinstance(instructions, str):
        text.add(instructions)
    text.add_json(data.get("tools"))
    text.add_json(data.get("text"))
    return ParsedRequest(
        endpoint="responses",
        model=data["model"],
        body=data,
        stream=optional_bool(data, "stream"),
        max_output_tokens=optional_int(data, "max_output_tokens"),
        intent=intent_of(data),
        prompt_text=text.text(),
        message_count=len(items) if isinstance(items, list) else 1,
        extra_prompt_tokens=text.extra_tokens,
    )


def _parse_embeddings(data: dict[str, Any]) -> ParsedRequest:
    items = data.get("input")
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list) or not items:
        raise RequestError(
            "'input' is required: a string, an array of strings or of token arrays.",
            param="input",
        )
    parts: list[str] = []
    pre_tokenised = 0
    for item in items:
        if isinstance(item, str):
            parts.append(item)
        elif isinstance(item, int):
            pre_tokenised += 1  # an array of token ids is one input
        elif isinstance(item, list):
            pre_tokenised += len(item)
        else:
            raise RequestError("Invalid 'input' item.", param="input")
    return ParsedRequest(
        endpoint="embeddings",
        model=data["model"],
        body=data,
        intent=intent_of(data),
        prompt_text="\n".join(parts),
        extra_prompt_tokens=pre_tokenised,
    )


def encode_upstream_body(
    parsed: ParsedRequest,
    *,
    force_include_usage: bool,
    default_limit_field: str = "max_completion_tokens",
) -> EncodedBody:
    """The body to send upstream, encoded now; `finish` it with the upstream model and the
    output limit once the hold is taken. `parsed.body` is not modified.

    The limit goes into the output limit field the client used (chat: `max_completion_tokens`
    and/or `max_tokens`; responses: `max_output_tokens`), or, when the client set none, into
    `default_limit_field` (pass "max_tokens" for OpenAI-compatible servers that predate
    `max_completion_tokens`). For a chat stream with `force_include_usage`, sets
    `stream_options.include_usage = true`. Removes the proxy's own `metadata.intent` tag.
    Raises BodyEncodingError for a body that cannot be encoded.
    """
    body = dict(parsed.body)
    endpoint = parsed.endpoint
    if endpoint == "embeddings":
        fields: tuple[str, ...] = ()
    elif endpoint == "responses":
        fields = ("max_output_tokens",)
    else:
        used = tuple(f for f in ("max_completion_tokens", "max_tokens") if body.get(f) is not None)
        fields = used or (default_limit_field,)
    if force_include_usage and endpoint == "chat" and parsed.stream:
        options = body.get("stream_options")
        body["stream_options"] = {**(options or {}), "include_usage": True}
    strip_intent(body)
    return EncodedBody.of(body, fields)


def build_upstream_body(
    parsed: ParsedRequest,
    *,
    upstream_model: str,
    max_output_tokens: int | None,
    force_include_usage: bool,
    default_limit_field: str = "max_completion_tokens",
) -> bytes:
    """The JSON body to send upstream in one step (see `encode_upstream_body`); without
    `max_output_tokens` the client's own limits are kept."""
    encoded = encode_upstream_body(
        parsed, force_include_usage=force_include_usage, default_limit_field=default_limit_field
    )
    return encoded.finish(upstream_model=upstream_model, max_output_tokens=max_output_tokens)


def strip_intent(body: dict[str, Any]) -> None:
    """Remove `metadata.intent` (the proxy's tag) from a body copy; drop an emptied metadata."""
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and "intent" in metadata:
        rest = {k: v for k, v in metadata.items() if k != "intent"}
        if rest:
            body["metadata"] = rest
        else:
            del body["metadata"]


# --- usage ---------------------------------------------------------------------------------


def _count(value: Any) -> int:
    """A token count from untrusted JSON: non-negative int, anything else (null, missing) 0."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def _details(usage: dict[str, Any], key: str) -> dict[str, Any]:
    value = usage.get(key)
    return value if isinstance(value, dict) else {}


def chat_usage(usage: dict[str, Any]) -> Usage:
    """Normalise a chat completions / embeddings `usage` object."""
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    prompt_details = _details(usage, "prompt_tokens_details")
    reasoning = _count(_details(usage, "completion_tokens_details").get("reasoning_tokens"))
    # Some OpenAI-compatible layers (Gemini's) leave thinking tokens out of completion_tokens
    # but count them in total_tokens; they are billed as output, so the gap is output too.
    hidden = _count(usage.get("total_tokens")) - prompt - completion
    if hidden > 0:
        completion += hidden
        reasoning += hidden
    return Usage(
        input_tokens=prompt,
        output_tokens=completion,
        cached_input_tokens=min(prompt, _count(prompt_details.get("cached_tokens"))),
        cache_write_tokens=min(prompt, _count(prompt_details.get("cache_write_tokens"))),
        reasoning_tokens=min(completion, reasoning),
    )


def responses_usage(usage: dict[str, Any]) -> Usage:
    """Normalise a responses API `usage` object."""
    inp = _count(usage.get("input_tokens"))
    out = _count(usage.get("output_tokens"))
    details = _details(usage, "input_tokens_details")
    reasoning = _count(_details(usage, "output_tokens_details").get("reasoning_tokens"))
    return Usage(
        input_tokens=inp,
        output_tokens=out,
        cached_input_tokens=min(inp, _count(details.get("cached_tokens"))),
        cache_write_tokens=min(inp, _count(details.get("cache_write_tokens"))),
        reasoning_tokens=min(out, reasoning),
    )


def usage_from_body(endpoint: str, data: dict[str, Any]) -> Usage | None:
    """The normalised usage in a non-streamed response body, None when it carries none."""
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    if endpoint == "responses":
        return responses_usage(usage)
    return chat_usage(usage)


# --- streams -------------------------------------------------------------------------------


def _error_message(error: Any) -> str:
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str) and message:
            return message
        code = error.get("code") or error.get("type")
        if isinstance(code, str) and code:
            return code
    if isinstance(error, str) and error:
        return error
    return "An error occurred during streaming."


class ChatStreamMeter:
    """Meters a chat completions SSE stream (`data:` lines, `data: [DONE]` at the end).

    Usage comes from the chunk whose `usage` is an object; when several chunks carry one
    (vLLM's continuous usage stats, cumulative) the last wins. With `strip_usage_chunk` (the
    proxy added `include_usage` itself) the usage-only chunk (`choices: []`) is removed from the
    relayed bytes; then events are relayed only once complete. Otherwise `feed` returns its
    input unchanged and parses alongside.
    """

    def __init__(self, *, strip_usage_chunk: bool = False) -> None:
        self.state = StreamState()
        self._strip = strip_usage_chunk
        self._sse = SSESplitter(keep_raw=strip_usage_chunk)

    def feed(self, chunk: bytes) -> bytes:
        events = self._sse.feed(chunk)
        if not self._strip:
            for event in events:
                self._on_event(event.data)
            return chunk
        return self._relay(events)

    def close(self) -> bytes:
        events = self._sse.close()
        if not self._strip:
            for event in events:
                self._on_event(event.data)
            return b""
        return self._relay(events)

    def _relay(self, events: list) -> bytes:
        kept = [event.raw for event in events if not self._on_event(event.data)]
        return b"".join(kept)

    def _on_event(self, data: str | None) -> bool:
        """Record what the event says; True when it is the usage-only chunk to drop."""
        if data is None:
            return False
        if data.startswith("[DONE]"):
            self.state.finished = True
            return False
        try:
            obj = json.loads(data)
        except ValueError:
            return False
        if not isinstance(obj, dict):
            return False
        if obj.get("error") is not None:
            self.state.error = _error_message(obj["error"])
            return False
        choices = obj.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict):
                    self._on_delta(choice.get("delta"))
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.state.usage = chat_usage(usage)
            return self._strip and not choices
        return False

    def _on_delta(self, delta: Any) -> None:
        if not isinstance(delta, dict):
            return
        out = self.state.output_text
        before = len(out)
        for key in ("content", "reasoning_content", "reasoning", "refusal"):
            value = delta.get(key)
            if isinstance(value, str) and value:
                out.append(value)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    for key in ("name", "arguments"):
                        value = function.get(key)
                        if isinstance(value, str) and value:
                            out.append(value)
        if len(out) > before:
            self.state.saw_output = True


_RESPONSES_TEXT_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.audio.transcript.delta",
        "response.code_interpreter_call_code.delta",
    }
)
_RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class ResponsesStreamMeter(PassThroughMeter):
    """Meters a responses API stream (named events; usage in the terminal
    `response.completed` / `response.incomplete` / `response.failed` event). Relays unchanged."""

    def on_object(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind in _RESPONSES_TEXT_DELTAS:
            delta = obj.get("delta")
            if isinstance(delta, str) and delta:
                self.state.output_text.append(delta)
                self.state.saw_output = True
        elif kind in _RESPONSES_TERMINAL:
            self.state.finished = True
            response = obj.get("response")
            if isinstance(response, dict):
                usage = usage_from_body("responses", response)
                if usage is not None:
                    self.state.usage = usage
                if kind == "response.failed":
                    self.state.error = _error_message(response.get("error"))
        elif kind == "error":
            self.state.error = _error_message(obj.get("error", obj))


def stream_meter(
    endpoint: str, *, strip_usage_chunk: bool = False
) -> ChatStreamMeter | ResponsesStreamMeter:
    """A fresh meter for one upstream stream of `endpoint` ("chat" or "responses")."""
    if endpoint == "chat":
        return ChatStreamMeter(strip_usage_chunk=strip_usage_chunk)
    if endpoint == "responses":
        return ResponsesStreamMeter()
    raise ValueError(f"endpoint {endpoint!r} does not stream")


# --- errors --------------------------------------------------------------------------------


def error_body(
    status: int,
    message: str,
    type: str,  # the wire name; shadows the builtin here only
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    """An error response body in OpenAI's shape: {"error": {message, type, param, code}}.

    `status` is accepted for symmetry with the Anthropic module; OpenAI does not echo it."""
    del status
    return _DUMP(
        {"error": {"message": message, "type": type, "param": param, "code": code}}
    ).encode()


PROVIDER = ModuleProvider(
    "openai",
    endpoints=ENDPOINTS,
    min_output_tokens=MIN_OUTPUT_TOKENS,
    parse=parse_request,
    encode=encode_upstream_body,
    usage=usage_from_body,
    meter=stream_meter,
    error=error_body,
)
