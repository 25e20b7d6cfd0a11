"""Google Gemini API wire protocol, `generateContent` and `streamGenerateContent` (pure: no I/O,
no Django).

The model and whether the call streams are in the URL (`/v1beta/models/{model}:generateContent`,
`:streamGenerateContent?alt=sse`), not in the body: the caller sets `ParsedRequest.model` and
`.stream` from the path. The output limit is `generationConfig.maxOutputTokens`.

`usageMetadata` counts: `promptTokenCount` is all input and includes the cached part
(`cachedContentTokenCount`); `toolUsePromptTokenCount` is input the model read from tool
results, reported apart; `candidatesTokenCount` is the visible output and `thoughtsTokenCount`
the thinking, reported apart and billed as output. Normalised: input = prompt + tool-use
prompt, cached = cachedContent (never more than the input), output = candidates + thoughts,
reasoning = thoughts. Each stream chunk carries the counts so far; the chunk with a
`finishReason` carries the final ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from metering import validation
from metering.providers.base import (
    BodyEncodingError,
    EncodedBody,
    ModuleProvider,
    ParsedRequest,
    PassThroughMeter,
    RequestError,
    Usage,
)
from metering.providers.openai import FILE_TOKENS, IMAGE_TOKENS

ENDPOINT = "generate_content"
ENDPOINTS = (ENDPOINT,)
MIN_OUTPUT_TOKENS = {ENDPOINT: 1}
CONFIG = "generationConfig"
LIMIT = "maxOutputTokens"
_SNAKE = {
    "generation_config": CONFIG,
    "max_output_tokens": LIMIT,
    "candidate_count": "candidateCount",
}

_DUMP = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


# --- requests ------------------------------------------------------------------------------


def _decode(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(
            f"Invalid JSON payload received ({exc}). The body must be a JSON object."
        ) from None
    if not isinstance(data, dict):
        raise RequestError("Invalid JSON payload received: the body must be a JSON object.")
    validation.body_check(data, body)
    return data


def _config(data: dict[str, Any]) -> dict[str, Any]:
    """`generationConfig` with the proto's snake_case spellings read as camelCase."""
    raw = data.get(CONFIG, data.get("generation_config"))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RequestError("generationConfig: must be an object.", param=CONFIG)
    return {str(_SNAKE.get(k) or k): v for k, v in raw.items()}


def _positive(config: dict[str, Any], name: str) -> int | None:
    value = config.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(
            f"generationConfig.{name}: must be a positive integer.", param=f"{CONFIG}.{name}"
        )
    return value


class _Text:
    """The text the model reads from Gemini `contents` and `systemInstruction`, for the
    local estimate; inline and file parts count a fixed number of tokens each."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.extra_tokens = 0

    def content(self, content: Any) -> None:
        if isinstance(content, str):
            self.parts.append(content)
            return
        if not isinstance(content, dict):
            raise RequestError("contents: each content must be an object.", param="contents")
        parts = content.get("parts")
        if isinstance(parts, dict):
            parts = [parts]
        for part in parts if isinstance(parts, list) else []:
            self.part(part)

    def part(self, part: Any) -> None:
        if isinstance(part, str):
            self.parts.append(part)
            return
        if not isinstance(part, dict):
            return
        text = part.get("text")
        if isinstance(text, str):
            self.parts.append(text)
        if "inlineData" in part or "inline_data" in part:
            self.extra_tokens += IMAGE_TOKENS
        if "fileData" in part or "file_data" in part:
            self.extra_tokens += FILE_TOKENS
        for key in ("functionCall", "function_call", "functionResponse", "function_response"):
            if isinstance(part.get(key), dict):
                self.parts.append(_DUMP(part[key]))


def parse_request(endpoint: str, body: bytes) -> ParsedRequest:
    """Parse a client `generateContent` body (the model comes from the path: "" here).

    Raises RequestError for a body that is not a JSON object, missing or empty `contents`, or a
    non-positive `maxOutputTokens` / `candidateCount`."""
    if endpoint != ENDPOINT:
        raise ValueError(f"unknown Gemini endpoint {endpoint!r}")
    data = _decode(body)
    contents = data.get("contents")
    if isinstance(contents, (dict, str)):
        contents = [contents]
    if not isinstance(contents, list) or not contents:
        raise RequestError("contents is not specified (a non-empty array).", param="contents")
    config = _config(data)
    text = _Text()
    system = data.get("systemInstruction", data.get("system_instruction"))
    if system is not None:
        text.content(system)
    for content in contents:
        text.content(content)
    tools = data.get("tools")
    if tools is not None:
        text.parts.append(_DUMP(tools))
    for name in ("responseSchema", "responseJsonSchema", "response_schema"):
        if config.get(name) is not None:
            text.parts.append(_DUMP(config[name]))
    return ParsedRequest(
        endpoint=ENDPOINT,
        model=str(data.get("model") or ""),
        body=data,
        max_output_tokens=_positive(config, LIMIT),
        choices=_positive(config, "candidateCount") or 1,
        prompt_text="\n".join(text.parts),
        message_count=len(contents),
        extra_prompt_tokens=text.extra_tokens,
    )


# --- countTokens ---------------------------------------------------------------------------

COUNT_ENDPOINT = "count_tokens_gemini"
COUNT_REQUEST = "generateContentRequest"


def parse_count_request(endpoint: str, body: bytes) -> ParsedRequest:
    """Parse a `models/{model}:countTokens` body: `contents`, or a whole `generateContentRequest`
    (with its system instruction and tools), never both. The prompt is read as a
    `generateContent` body's; `body` keeps the request as sent (the model is in the path)."""
    if endpoint != COUNT_ENDPOINT:
        raise ValueError(f"unknown Gemini count endpoint {endpoint!r}")
    data = _decode(body)
    inner = data.get(COUNT_REQUEST, data.get("generate_content_request"))
    if inner is not None:
        if data.get("contents") is not None:
            raise RequestError(
                "contents and generateContentRequest are mutually exclusive.", param="contents"
            )
        if not isinstance(inner, dict):
            raise RequestError("generateContentRequest: must be an object.", param=COUNT_REQUEST)
        request = inner
    else:
        request = {"contents": data.get("contents")}
    parsed = parse_request(ENDPOINT, _DUMP(request).encode())
    parsed.endpoint = COUNT_ENDPOINT
    parsed.body = data
    parsed.model = ""
    parsed.max_output_tokens = None
    return parsed


def count_upstream_body(data: dict[str, Any], upstream_model: str) -> bytes:
    """The count request for the upstream: as the client sent it, the model a
    `generateContentRequest` names being the upstream's (`models/{upstream_model}`)."""
    inner = data.get(COUNT_REQUEST, data.get("generate_content_request"))
    if isinstance(inner, dict):
        rest = {
            k: v for k, v in data.items() if k not in (COUNT_REQUEST, "generate_content_request")
        }
        rest[COUNT_REQUEST] = {**inner, "model": f"models/{upstream_model}"}
        data = rest
    try:
        return _DUMP(data).encode()
    except (UnicodeEncodeError, RecursionError, ValueError) as exc:
        raise BodyEncodingError(str(exc)) from None


def vertex_count_body(data: dict[str, Any]) -> bytes:
    """The count request for Gemini on Vertex AI, whose CountTokensRequest carries the
    generate request's fields (`contents`, `systemInstruction`, `tools`, `generationConfig`)
    at its top level: a `generateContentRequest` is unwrapped, its model left out (the model
    is in the path)."""
    inner = data.get(COUNT_REQUEST, data.get("generate_content_request"))
    if isinstance(inner, dict):
        data = {k: v for k, v in inner.items() if k != "model"}
    try:
        return _DUMP(data).encode()
    except (UnicodeEncodeError, RecursionError, ValueError) as exc:
        raise BodyEncodingError(str(exc)) from None


def count_body(total_tokens: int) -> bytes:
    """A CountTokensResponse."""
    return _DUMP({"totalTokens": total_tokens}).encode()


@dataclass(frozen=True)
class GeminiBody(EncodedBody):
    """An upstream Gemini body encoded before the hold: `rest` is everything but
    `generationConfig` (and `model`), which `finish` writes with the limit the hold decided;
    `kept` holds the client's own maxOutputTokens."""

    config: tuple[tuple[str, Any], ...] = ()  # generationConfig without maxOutputTokens

    @classmethod
    def of_gemini(cls, body: dict[str, Any]) -> GeminiBody:
        config = _config(body)
        kept = ((LIMIT, config.pop(LIMIT)),) if LIMIT in config else ()
        rest = {k: v for k, v in body.items() if k not in ("model", CONFIG, "generation_config")}
        try:
            return cls(_DUMP(rest).encode(), (LIMIT,), kept, tuple(config.items()))
        except (UnicodeEncodeError, RecursionError, ValueError) as exc:
            raise BodyEncodingError(str(exc)) from None

    def with_fields(self, updates: dict[str, Any]) -> GeminiBody:
        """Gemini has no limit that must stay below maxOutputTokens: nothing to merge."""
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
        head = b'{"generationConfig":' + _DUMP(config).encode()
        if self.rest == b"{}":
            return head + b"}"
        return head + b"," + self.rest[1:]


def encode_upstream_body(parsed: ParsedRequest, **_: object) -> GeminiBody:
    """The body to send upstream, encoded now; `finish` it with the limit once the hold is
    taken. Raises BodyEncodingError for a body that cannot be encoded."""
    return GeminiBody.of_gemini(parsed.body)


# --- usage ---------------------------------------------------------------------------------


def _count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def gemini_usage(metadata: dict[str, Any]) -> Usage:
    """Normalise a Gemini `usageMetadata` object (see the module's notes)."""
    prompt = _count(metadata.get("promptTokenCount")) + _count(
        metadata.get("toolUsePromptTokenCount")
    )
    thoughts = _count(metadata.get("thoughtsTokenCount"))
    output = _count(metadata.get("candidatesTokenCount")) + thoughts
    return Usage(
        input_tokens=prompt,
        output_tokens=output,
        cached_input_tokens=min(prompt, _count(metadata.get("cachedContentTokenCount"))),
        reasoning_tokens=thoughts,
    )


def usage_from_body(endpoint: str, data: dict[str, Any]) -> Usage | None:
    """The normalised usage of a whole GenerateContentResponse, None when it carries none."""
    metadata = data.get("usageMetadata")
    if not isinstance(metadata, dict):
        return None
    return gemini_usage(metadata)


# --- streams -------------------------------------------------------------------------------


def _finished(obj: dict[str, Any]) -> bool:
    candidates = obj.get("candidates")
    if not isinstance(candidates, list):
        # A prompt blocked before any candidate: the answer ends here.
        return isinstance(obj.get("promptFeedback"), dict) and bool(
            obj["promptFeedback"].get("blockReason")
        )
    return any(isinstance(c, dict) and c.get("finishReason") for c in candidates)


class GenerateStreamMeter(PassThroughMeter):
    """Meters a `streamGenerateContent?alt=sse` stream (each event a GenerateContentResponse).
    Relays the bytes unchanged.

    Every chunk's `usageMetadata` is the count so far (input exact, output growing): the first
    goes to `state.partial_usage`; the usage is final with the chunk that carries a
    `finishReason`. A
    stream cut before that is charged on its input and the text relayed. An `error` object sets
    `state.error` (its status)."""

    def on_object(self, obj: dict[str, Any]) -> None:
        error = obj.get("error")
        if isinstance(error, dict):
            named = [v for v in (error.get("status"), error.get("message")) if isinstance(v, str)]
            self.state.error = next((v for v in named if v), "stream_error")
            return
        for candidate in obj.get("candidates") or []:
            content = candidate.get("content") if isinstance(candidate, dict) else None
            parts = content.get("parts") if isinstance(content, dict) else None
            for part in parts if isinstance(parts, list) else []:
                self._on_part(part)
        metadata = obj.get("usageMetadata")
        if not isinstance(metadata, dict):
            metadata = None
        if _finished(obj):
            final = gemini_usage(metadata) if metadata is not None else None
            self.state.usage = final or self.state.partial_usage
            self.state.finished = True
        elif metadata is not None and self.state.partial_usage is None:
            # The input is known from the first chunk on; a cut stream's output is counted
            # from the text relayed (`call.produced`), so later counts need not be kept.
            self.state.partial_usage = gemini_usage(metadata)

    def _on_part(self, part: Any) -> None:
        if not isinstance(part, dict):
            return
        text = part.get("text")
        if isinstance(text, str) and text:
            self.state.output_text.append(text)
            self.state.saw_output = True
        call = part.get("functionCall")
        if isinstance(call, dict):
            self.state.output_text.append(str(call.get("name", "")) + _DUMP(call.get("args")))
            self.state.saw_output = True


def stream_meter(endpoint: str, *, strip_usage_chunk: bool = False) -> GenerateStreamMeter:
    """A fresh meter for one upstream `streamGenerateContent` stream."""
    del strip_usage_chunk
    if endpoint != ENDPOINT:
        raise ValueError(f"endpoint {endpoint!r} is not a Gemini endpoint")
    return GenerateStreamMeter()


# --- errors --------------------------------------------------------------------------------

# google.rpc.Code names by HTTP status, as the Gemini API answers them.
STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
ERROR_DOMAIN = "tokenbudget"


def error_body(
    status: int,
    message: str,
    type: str | None = None,  # the wire name (a google.rpc.Code name); shadows the builtin
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    """An error body in Google's shape: {"error": {"code", "message", "status"}}.

    `code` (which budget ran out, …) goes in a google.rpc.ErrorInfo detail as its `reason`, the
    field named by `param` in its metadata: the place Google's clients read such facts from."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": type or STATUSES.get(status, "INTERNAL" if status >= 500 else "UNKNOWN"),
    }
    if code is not None:
        info: dict[str, Any] = {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": code,
            "domain": ERROR_DOMAIN,
        }
        if param is not None:
            info["metadata"] = {"param": param}
        error["details"] = [info]
    return _DUMP({"error": error}).encode()


PROVIDER = ModuleProvider(
    "gemini",
    endpoints=ENDPOINTS,
    min_output_tokens=MIN_OUTPUT_TOKENS,
    parse=parse_request,
    encode=encode_upstream_body,
    usage=usage_from_body,
    meter=stream_meter,
    error=error_body,
)
