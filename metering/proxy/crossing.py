"""Cross-protocol calls (pure): an OpenAI chat call to a model routed to Anthropic, an
Anthropic messages call to a model routed to an OpenAI-kind upstream, and either to a model
routed to Gemini (`metering.translate.gemini`), and an OpenAI chat or Anthropic messages call to a model
routed to Bedrock Converse (`metering.translate.bedrock`; a messages call goes through the chat
form both ways).

The call is metered as a native one in the upstream's protocol: the upstream body is the
translated request (`metering.translate`), the hold and the dependent limits apply to it, and
the usage comes from the upstream provider's own normaliser (the record and the cost are as
exact as a native call's). Only what the client sees is translated back: the whole answer,
an upstream error (in the client's error shape), and a stream, frame by frame.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import time

from botocore.eventstream import EventStreamBuffer, ParserError

from metering.providers import bedrock, gemini
from metering.providers.anthropic import PROVIDER as ANTHROPIC
from metering.providers.base import ParsedRequest, Provider, StreamMeter, StreamState
from metering.providers.bedrock import PROVIDER as BEDROCK
from metering.providers.gemini import PROVIDER as GEMINI
from metering.providers.openai import PROVIDER as OPENAI
from metering.proxy import errors
from metering.sse import SSESplitter
from metering.translate import TranslationError
from metering.translate.anthropic_to_openai import (
    chat_response_to_messages,
    messages_request_to_chat,
)
from metering.translate.bedrock import (
    ConverseToChat,
    chat_request_to_converse,
    converse_response_to_chat,
)
from metering.translate.gemini import (
    GeminiToChat,
    GeminiToMessages,
    chat_request_to_gemini,
    gemini_response_to_chat,
    gemini_response_to_messages,
    messages_request_to_gemini,
)
from metering.translate.openai_to_anthropic import (
    chat_request_to_messages,
    messages_response_to_chat,
)
from metering.translate.streams import ChatToMessages, MessagesToChat

Translator = MessagesToChat | ChatToMessages | GeminiToChat | GeminiToMessages

OPENAI_KINDS = frozenset({"openai", "openai_compatible", "azure_openai"})
# Upstream kinds by protocol: Vertex AI serves Gemini's and Anthropic's as they are.
GEMINI_KINDS = frozenset({"gemini", "vertex"})
ANTHROPIC_KINDS = frozenset({"anthropic", "vertex_anthropic", "bedrock_anthropic"})
_STATUS_KINDS = {400: "invalid", 401: "auth", 403: "permission", 404: "not_found"}
_STATUS_KINDS |= {413: "too_large", 429: "rate"}
UPSTREAM_REFUSED = "The upstream provider refused the call."


def upstream_endpoint(endpoint: str, kind: str) -> str:
    """The upstream's endpoint for a client `endpoint` on an upstream of `kind` ("" when the
    call is native); a 400 wrong_endpoint when the protocols do not map."""
    if kind == "bedrock":
        if endpoint not in ("chat", "messages"):
            raise errors.wrong_endpoint(
                "This model is served on /v1/chat/completions and /v1/messages only."
            )
        return bedrock.ENDPOINT
    if kind in GEMINI_KINDS:
        if endpoint in ("chat", "messages"):
            return gemini.ENDPOINT
        if endpoint != gemini.ENDPOINT:
            raise errors.wrong_endpoint(
                "This model is served on /v1/chat/completions, /v1/messages and "
                "/v1beta/models/{model}:generateContent only."
            )
        return ""
    if endpoint == gemini.ENDPOINT:
        raise errors.wrong_endpoint(
            "This model is not a Gemini model: call it on /v1/chat/completions or /v1/messages."
        )
    anthropic = kind in ANTHROPIC_KINDS
    if endpoint == "messages" and not anthropic:
        if kind in OPENAI_KINDS:
            return "chat"
        raise errors.wrong_endpoint("This model is not served on /v1/messages.")
    if endpoint == "chat" and anthropic:
        return "messages"
    if endpoint != "messages" and anthropic:
        raise errors.wrong_endpoint(
            "This model is served on /v1/messages and /v1/chat/completions only."
        )
    return ""


def provider_of(endpoint: str) -> Provider:
    if endpoint == gemini.ENDPOINT:
        return GEMINI
    if endpoint == bedrock.ENDPOINT:
        return BEDROCK
    return ANTHROPIC if endpoint == "messages" else OPENAI


def upstream_request(parsed: ParsedRequest, to: str) -> ParsedRequest:
    """The client's request as one in the upstream's protocol (`to`: "messages" or "chat");
    a 400 for what the upstream's protocol cannot carry."""
    try:
        if to == bedrock.ENDPOINT:
            chat = parsed.body
            if parsed.endpoint == "messages":
                chat = messages_request_to_chat(chat)
            body = chat_request_to_converse(chat)
        elif to == gemini.ENDPOINT:
            if parsed.endpoint == "messages":
                body = messages_request_to_gemini(parsed.body)
            else:
                body = chat_request_to_gemini(parsed.body)
        elif to == "messages":
            body = chat_request_to_messages(parsed.body)
        else:
            body = messages_request_to_chat(parsed.body)
    except TranslationError as exc:
        raise errors.invalid_request(exc.message, exc.param) from exc
    return dataclasses.replace(parsed, endpoint=to, body=body)


def whole_answer(endpoint: str, sent: str, content: bytes, model: str) -> bytes:
    """An upstream's whole (2xx) answer (to `sent`) as the client's protocol has it."""
    data = json.loads(content)
    if sent == bedrock.ENDPOINT:
        completion = converse_response_to_chat(data, model=model, created=int(time.time()))
        if endpoint == "messages":
            return json.dumps(chat_response_to_messages(completion)).encode()
        return json.dumps(completion).encode()
    if sent == gemini.ENDPOINT:
        if endpoint == "chat":
            answer = gemini_response_to_chat(data, model=model, created=int(time.time()))
        else:
            answer = gemini_response_to_messages(data, model=model)
        return json.dumps(answer).encode()
    if endpoint == "chat":
        return json.dumps(messages_response_to_chat(data, created=int(time.time()))).encode()
    return json.dumps(chat_response_to_messages(data)).encode()


def error_answer(client: Provider, status: int, content: bytes) -> bytes:
    """An upstream's error in the client's error shape, its message kept."""
    message = UPSTREAM_REFUSED
    try:
        data = json.loads(content)
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"]
        elif isinstance(data.get("message"), str):  # Bedrock's shape
            message = data["message"]
    except (ValueError, AttributeError):
        pass
    kind = _STATUS_KINDS.get(status, "upstream" if status >= 500 else "invalid")
    wire = errors.WIRE_TYPES[client.name][kind]
    return client.error_body(status, message, wire, code="upstream_error")


class CrossingMeter:
    """The upstream's own stream meter (it alone decides the usage), with the client's frames
    made from the same upstream events by a `metering.translate.streams` translator."""

    def __init__(self, inner: StreamMeter, translator: Translator) -> None:
        self.inner = inner
        self.translator = translator
        self.splitter = SSESplitter(keep_raw=False)
        # The inner meter's own state object (made once, updated in place).
        self.state: StreamState = inner.state

    def feed(self, chunk: bytes) -> bytes:
        self.inner.feed(chunk)
        frames: list[bytes] = []
        for event in self.splitter.feed(chunk):
            data = event.data
            if data is None or not data.strip():
                continue
            if data.strip() == "[DONE]":
                if isinstance(self.translator, ChatToMessages):
                    frames += self.translator.done()
                continue
            try:
                decoded = json.loads(data)
            except ValueError:
                continue  # the upstream meter records a broken stream; nothing to translate
            if isinstance(decoded, dict):
                frames += self.translator.feed(decoded)
        return b"".join(frames)

    def close(self) -> bytes:
        self.inner.close()
        return b""


class ConverseCrossingMeter:
    """A ConverseStream (binary event-stream frames) metered by the Bedrock meter, with the
    client's chat SSE frames made from the same events by `ConverseToChat`; for an Anthropic
    client (`messages` given), those chat chunks made into its events by `ChatToMessages`."""

    def __init__(
        self,
        inner: StreamMeter,
        translator: ConverseToChat,
        messages: ChatToMessages | None = None,
    ) -> None:
        self.inner = inner
        self.translator = translator
        self.messages = messages
        self.buffer = EventStreamBuffer()
        self.broken = False
        self.state: StreamState = inner.state

    def feed(self, chunk: bytes) -> bytes:
        self.inner.feed(chunk)
        if self.broken:
            return b""
        frames: list[bytes] = []
        self.buffer.add_data(chunk)
        try:
            for message in self.buffer:
                headers = message.headers
                if headers.get(":message-type") in ("exception", "error"):
                    named = str(
                        headers.get(":exception-type")
                        or headers.get(":error-code")
                        or "stream_error"
                    )
                    if self.messages is not None:
                        self.translator.closed = True
                        frames += self.messages.feed({"error": {"message": named}})
                    else:
                        frames += self.translator.error(named)
                    continue
                try:
                    decoded = json.loads(message.payload or b"{}")
                except ValueError:
                    continue
                if isinstance(decoded, dict):
                    event = str(headers.get(":event-type") or "")
                    frames += self._frames(event, decoded)
        except ParserError:
            self.broken = True  # the inner meter records the broken stream
        return b"".join(frames)

    def _frames(self, event: str, body: dict[str, object]) -> list[bytes]:
        if self.messages is None:
            return self.translator.feed(event, body)
        frames: list[bytes] = []
        for chunk in self.translator.chunks(event, body):
            frames += self.messages.feed(chunk)
        if self.translator.closed:
            frames += self.messages.done()
        return frames

    def close(self) -> bytes:
        self.inner.close()
        return b""


# Bedrock's stream exceptions (`:exception-type`) as Anthropic's error types.
_INVOKE_ERRORS = {
    "throttlingException": "rate_limit_error",
    "serviceUnavailableException": "overloaded_error",
    "validationException": "invalid_request_error",
    "modelTimeoutException": "timeout_error",
}


_EVENT_NAME = re.compile(r"[a-z_]{1,64}")  # message_start, content_block_delta, …


class InvokeStreamMeter:
    """An InvokeModelWithResponseStream answer (Claude on Bedrock): binary event-stream frames,
    each a `chunk` event whose payload's `bytes` is one Anthropic stream event (base64 JSON).
    Each event is re-emitted as Anthropic SSE and fed to `inner` (the Anthropic meter, or a
    crossing meter over it), whose output is relayed; an `exception` frame becomes an
    Anthropic `error` event, so the meter and the client see the failure as Anthropic's."""

    def __init__(self, inner: StreamMeter | CrossingMeter) -> None:
        self.inner = inner
        self.buffer = EventStreamBuffer()
        self.broken = False
        self.state: StreamState = inner.state

    def feed(self, chunk: bytes) -> bytes:
        if self.broken:
            return b""
        events: list[bytes] = []
        self.buffer.add_data(chunk)
        try:
            for message in self.buffer:
                event = self._event(message.headers, message.payload)
                if event is not None:
                    events.append(event)
        except ParserError:
            self.broken = True
            self.state.error = self.state.error or "bad_frame"
        return self.inner.feed(b"".join(events)) if events else b""

    def close(self) -> bytes:
        return self.inner.close()

    @staticmethod
    def _event(headers: dict, payload: bytes) -> bytes | None:
        """One frame as an SSE event (`event: <type>` and `data: <json>`), None to skip it."""
        kind = headers.get(":message-type")
        if kind in ("exception", "error"):
            named = str(headers.get(":exception-type") or headers.get(":error-code") or "")
            try:
                message = json.loads(payload or b"{}").get("message")
            except (ValueError, AttributeError):
                message = None
            error = {
                "type": _INVOKE_ERRORS.get(named, "api_error"),
                "message": message if isinstance(message, str) else named or UPSTREAM_REFUSED,
            }
            data = json.dumps({"type": "error", "error": error}, separators=(",", ":"))
            return f"event: error\ndata: {data}\n\n".encode()
        if headers.get(":event-type") != "chunk":
            return None
        try:
            raw = base64.b64decode(json.loads(payload)["bytes"], validate=True)
            decoded = json.loads(raw)
        except (ValueError, TypeError, KeyError, binascii.Error, RecursionError):
            return None
        if not isinstance(decoded, dict):
            return None
        name = decoded.get("type")
        if not isinstance(name, str) or not _EVENT_NAME.fullmatch(name):
            return None
        # The event's JSON as sent, on one line: a line break can only be whitespace between
        # JSON tokens, so an event that has one is written again (a `data:` line cannot hold it).
        if b"\n" in raw or b"\r" in raw:
            raw = json.dumps(decoded, separators=(",", ":")).encode()
        return b"event: " + name.encode() + b"\ndata: " + raw.strip() + b"\n\n"


def stream_meter(
    endpoint: str, sent: str, model: str, include_usage: bool
) -> CrossingMeter | ConverseCrossingMeter:
    """The meter of a crossing stream: client `endpoint`, upstream endpoint `sent`."""
    if sent == bedrock.ENDPOINT:
        messages = ChatToMessages(model=model) if endpoint == "messages" else None
        return ConverseCrossingMeter(
            BEDROCK.stream_meter(sent, strip_usage_chunk=False),
            ConverseToChat(
                model=model,
                created=int(time.time()),
                # The Anthropic client's message_delta carries the usage the chat form ends with.
                include_usage=include_usage or messages is not None,
            ),
            messages,
        )
    inner = provider_of(sent).stream_meter(sent, strip_usage_chunk=False)
    translator: Translator
    if sent == gemini.ENDPOINT:
        if endpoint == "chat":
            translator = GeminiToChat(
                model=model, created=int(time.time()), include_usage=include_usage
            )
        else:
            translator = GeminiToMessages(model=model)
    elif endpoint == "chat":
        translator = MessagesToChat(
            model=model, created=int(time.time()), include_usage=include_usage
        )
    else:
        translator = ChatToMessages(model=model)
    return CrossingMeter(inner, translator)
