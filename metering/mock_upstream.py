"""A fast, deterministic stand-in for the OpenAI and Anthropic APIs (demo, tests, benchmark).

A small HTTP/1.1 server on raw asyncio streams (keep-alive, Content-Length and chunked bodies);
no framework, no database, so it serves thousands of requests per second on one core and can
be the benchmark's upstream. Start it with `manage.py mock_upstream --port 8001`, or in tests
with `start_in_thread()`.

Endpoints (matched by path suffix, so `/v1/...`, Azure's `/openai/deployments/<d>/...` and a
bare prefix all work):
  POST .../chat/completions   stream and not; `stream_options.include_usage` honoured as
                              OpenAI does (usage chunk with `choices: []` before [DONE])
  POST .../responses          stream (named events, usage in response.completed) and not
  POST .../embeddings         float or base64 vectors
  GET  .../models             the mock model list
  POST .../messages           Anthropic Messages, stream and not, with cache usage fields
  GET  /_mock/last            the last API request seen: method, path, headers, body, outcome
  GET  /_mock/requests        the last 200 of them, oldest first; DELETE clears the list
  GET  /_mock/ledger          every answer served in full, by the x-request-id it came with:
                              count and token totals (what a metering proxy must have recorded);
                              and under "cut" every stream that stopped early after producing
                              output (the client left, or a stream error), with the tokens
                              produced until then and why; DELETE clears both

Usage is deterministic. Input tokens = o200k count of the prompt text (metering.tokens) +
fixed image/file allowances + 3 per message. The reply is N tokens of fixed words, exactly one
o200k token each, where N = min(output limit from the request, wanted length; 20 unless asked).

Test hooks, by upstream model name (so they work through a proxy route) or per request:
  model contains "error-NNN"    HTTP NNN with the provider's error body, nothing produced
  model contains "timeout"      accept the request and never answer (until the client leaves)
  model contains "slow-stream"  100 tokens, 100 ms between stream chunks
  model contains "stream-error" an error event after half the output (HTTP 200 stream)
  chat `n`                      n choices, each of the reply's length; usage counts them all
  model contains "no-usage"     chat streams never send the usage chunk (old compatible servers)
  model contains "cached"       half the input is cache reads (Anthropic: plus a quarter cache
                                writes)
  model contains "reasoning"    half the output is reasoning / thinking tokens
  header x-mock-<name> or body metadata.mock_<name> (string or int), <name> one of:
    output-tokens, cached-tokens, cache-write-tokens, reasoning-tokens, chunk-delay-ms, error,
    stream-error-at (an error event once that many output tokens were streamed; 0: before any)
    (header spelling with dashes, metadata with underscores)

With `expected_key` set, `Authorization: Bearer <key>`, `x-api-key` or `api-key` must carry it,
otherwise 401: this proves a proxy sends the provider key, not the client's own key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from metering import tokens
from metering.providers import anthropic as anthropic_protocol
from metering.providers import openai as openai_protocol
from metering.providers.base import ParsedRequest, RequestError

# Each word with its leading space is exactly one o200k token, so a reply of N words is N
# tokens by the proxy's own count too (what an estimated charge relies on).
WORDS = (
    " the", " quick", " brown", " fox", " jumps", " over", " a", " lazy",
    " dog", " and", " then", " runs", " back", " home", " to", " sleep",
)  # fmt: skip
DEFAULT_OUTPUT_TOKENS = 20
SLOW_STREAM_TOKENS = 100
SLOW_STREAM_DELAY_MS = 100
MODELS = (
    "mock-gpt",
    "mock-gpt-cached",
    "mock-gpt-reasoning",
    "mock-claude",
    "mock-claude-cached",
    "mock-embedding",
    "mock-error-500",
    "mock-timeout",
    "mock-slow-stream",
    "mock-stream-error",
)
CREATED = 1_760_000_000  # a fixed timestamp keeps bodies byte-for-byte reproducible
_ERROR_STATUS = re.compile(r"error-(\d{3})")
_DUMP = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass
class MockSettings:
    latency_ms: int = 0  # before the response head (time to first byte)
    chunk_latency_ms: int = 0  # between stream chunks
    expected_key: str | None = None


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

    @property
    def stream_error(self) -> bool:
        return self.stream_error_at is not None and self.stream_error_at < self.visible_tokens

    @property
    def total_output(self) -> int:
        return self.output_tokens * self.choices

    @property
    def visible_tokens(self) -> int:
        return self.output_tokens - self.reasoning_tokens

    def text(self, start: int = 0, stop: int | None = None) -> str:
        stop = self.visible_tokens if stop is None else stop
        return "".join(WORDS[i % len(WORDS)] for i in range(start, stop))


@dataclass
class Record:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int = 0
    completed: bool = False
    disconnected: bool = False
    received_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": self.body,
            "status": self.status,
            "completed": self.completed,
            "disconnected": self.disconnected,
            "received_at": self.received_at,
        }


class ClientGone(Exception):
    """The client closed the connection while we were answering."""


class Connection:
    """One client connection: reads requests, writes responses."""

    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
        lines.extend(f"{k}: {v}" for k, v in headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send(self, status: int, body: bytes, *, content_type: str = "application/json") -> None:
        self.writer.write(
            self.head(
                status,
                [
                    ("content-type", content_type),
                    ("content-length", str(len(body))),
                    ("x-request-id", _request_id()),
                    ("request-id", _request_id()),
                ],
            )
            + body
        )

    def start_stream(self) -> None:
        self.writer.write(
            self.head(
                200,
                [
                    ("content-type", "text/event-stream; charset=utf-8"),
                    ("cache-control", "no-cache"),
                    ("transfer-encoding", "chunked"),
                    ("x-request-id", _request_id()),
                    ("request-id", _request_id()),
                ],
            )
        )

    async def chunk(self, data: bytes, delay: float) -> None:
        """Write one chunk of a chunked body; with a delay, flush and wait first."""
        if delay:
            await asyncio.sleep(delay)
        # A client that closed its end is gone: nothing more is produced for it.
        if self.writer.is_closing() or self.reader.at_eof():
            raise ClientGone
        self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        if delay:
            try:
                await self.writer.drain()
            except ConnectionError as exc:
                raise ClientGone from exc

    async def end_stream(self) -> None:
        if self.writer.is_closing():
            raise ClientGone
        self.writer.write(b"0\r\n\r\n")
        try:
            await self.writer.drain()
        except ConnectionError as exc:
            raise ClientGone from exc


_ids = itertools.count(1)


def _request_id() -> str:
    return f"req_mock_{next(_ids)}"


class MockUpstream:
    """The request handlers. One instance per server; keeps the recent request records."""

    def __init__(self, settings: MockSettings | None = None) -> None:
        self.settings = settings or MockSettings()
        self.records: deque[Record] = deque(maxlen=200)
        # request id -> (input, output) tokens of every answer served in full
        self.ledger: dict[str, tuple[int, int]] = {}
        # request id -> (input, output produced, why) of every stream cut after some output
        self.cut: dict[str, tuple[int, int, str]] = {}
        self.last: Record | None = None
        self.writers: set[asyncio.StreamWriter] = set()  # open connections, closed on shutdown

    # -- connection loop ----------------------------------------------------------------

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer)
        self.writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                request_line, _, header_block = head[:-4].decode("latin-1").partition("\r\n")
                method, target, version = request_line.split(" ", 2)
                headers: dict[str, str] = {}
                for line in header_block.split("\r\n"):
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    body = await _read_chunked(reader)
                else:
                    length = int(headers.get("content-length") or 0)
                    body = await reader.readexactly(length) if length else b""
                path = target.split("?", 1)[0]
                await self.dispatch(conn, method, path, headers, body)
                if headers.get("connection", "").lower() == "close" or version == "HTTP/1.0":
                    return
        except (ClientGone, ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def dispatch(
        self, conn: Connection, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> None:
        if path.startswith("/_mock/"):
            self._introspect(conn, method, path)
            return
        record = Record(method, path, headers, _decode(body))
        self.records.append(record)
        self.last = record
        anthropic = path.endswith("/messages")
        try:
            await self._answer(conn, record, method, path, headers, body, anthropic)
            record.completed = True
        except ClientGone:
            record.disconnected = True
            raise

    async def _answer(
        self,
        conn: Connection,
        record: Record,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        anthropic: bool,
    ) -> None:
        def fail(status: int, message: str, kind: str, param: str | None = None) -> None:
            record.status = status
            if anthropic:
                conn.send(status, anthropic_protocol.error_body(status, message, kind))
            else:
                conn.send(status, openai_protocol.error_body(status, message, kind, None, param))

        if not self._authorised(headers):
            fail(401, "Incorrect API key provided to the mock upstream.", "authentication_error")
            return
        if method == "GET" and path.endswith("/models"):
            record.status = 200
            conn.send(200, _models_body())
            return
        endpoint = _endpoint(path)
        if method != "POST" or endpoint is None:
            fail(404, f"No mock route for {method} {path}.", "not_found_error")
            return
        protocol = anthropic_protocol if anthropic else openai_protocol
        try:
            parsed = protocol.parse_request(endpoint, body)
        except RequestError as exc:
            fail(400, exc.message, "invalid_request_error", exc.param)
            return
        plan = _plan(parsed, headers)
        if self.settings.latency_ms:
            await asyncio.sleep(self.settings.latency_ms / 1000)
        if plan.hang:
            await _wait_for_disconnect(conn)
            raise ClientGone
        if plan.error_status is not None:
            fail(plan.error_status, "The mock upstream failed as asked.", "server_error")
            return
        record.status = 200
        request_id = headers.get("x-request-id", str(id(record)))
        served = (plan.prompt_tokens, plan.total_output)
        if not parsed.stream:
            conn.send(200, _BODIES[endpoint](parsed, plan))
            self.ledger[request_id] = served
            return
        plan.chunk_delay = max(plan.chunk_delay, self.settings.chunk_latency_ms / 1000)
        conn.start_stream()
        try:
            await _STREAMS[endpoint](conn, parsed, plan)
            await conn.end_stream()
        except ClientGone:
            if plan.produced:
                self.cut[request_id] = (plan.prompt_tokens, plan.produced, "client_gone")
            raise
        if plan.stream_error:
            if plan.produced:
                self.cut[request_id] = (plan.prompt_tokens, plan.produced, "stream_error")
        else:
            self.ledger[request_id] = served

    def _authorised(self, headers: dict[str, str]) -> bool:
        expected = self.settings.expected_key
        if not expected:
            return True
        auth = headers.get("authorization", "")
        offered = auth[7:] if auth[:7].lower() == "bearer " else ""
        return expected in (offered, headers.get("x-api-key"), headers.get("api-key"))

    def _introspect(self, conn: Connection, method: str, path: str) -> None:
        if path == "/_mock/last":
            conn.send(200, _DUMP(self.last.as_dict() if self.last else None).encode())
        elif path == "/_mock/requests" and method == "DELETE":
            self.records.clear()
            self.last = None
            conn.send(200, b"[]")
        elif path == "/_mock/requests":
            conn.send(200, _DUMP([r.as_dict() for r in self.records]).encode())
        elif path == "/_mock/ledger" and method == "DELETE":
            self.ledger.clear()
            self.cut.clear()
            conn.send(200, b"{}")
        elif path == "/_mock/ledger":
            body = {
                "count": len(self.ledger),
                "input_tokens": sum(i for i, _ in self.ledger.values()),
                "output_tokens": sum(o for _, o in self.ledger.values()),
                "requests": {rid: list(used) for rid, used in self.ledger.items()},
                "cut": {rid: list(used) for rid, used in self.cut.items()},
            }
            conn.send(200, _DUMP(body).encode())
        else:
            conn.send(404, b'{"error":"unknown mock endpoint"}')


# --- request handling helpers --------------------------------------------------------------


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            # Trailers (rare) end with an empty line.
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def _wait_for_disconnect(conn: Connection) -> None:
    """Hold the request open until the client goes away (a hung upstream)."""
    while await conn.reader.read(65536):
        pass


def _decode(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


def _endpoint(path: str) -> str | None:
    for suffix, endpoint in (
        ("/chat/completions", "chat"),
        ("/responses", "responses"),
        ("/embeddings", "embeddings"),
        ("/messages", "messages"),
    ):
        if path.endswith(suffix):
            return endpoint
    return None


def _hook(parsed: ParsedRequest, headers: dict[str, str], name: str) -> int | None:
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


def _plan(parsed: ParsedRequest, headers: dict[str, str]) -> Plan:
    model = parsed.model
    prompt = (
        tokens.count_text_tokens(parsed.prompt_text)
        + parsed.extra_prompt_tokens
        + 3 * parsed.message_count
    )
    slow = "slow-stream" in model
    wanted = _hook(parsed, headers, "output-tokens")
    if wanted is None:
        wanted = SLOW_STREAM_TOKENS if slow else DEFAULT_OUTPUT_TOKENS
    limit = parsed.max_output_tokens
    output = wanted if limit is None else min(wanted, limit)
    if parsed.endpoint == "embeddings":
        output = 0
    reasoning = _hook(parsed, headers, "reasoning-tokens")
    if reasoning is None:
        reasoning = output // 2 if "reasoning" in model else 0
    cached = _hook(parsed, headers, "cached-tokens")
    if cached is None:
        cached = prompt // 2 if "cached" in model else 0
    cache_write = _hook(parsed, headers, "cache-write-tokens")
    if cache_write is None:
        cache_write = prompt // 4 if "cached" in model and parsed.endpoint == "messages" else 0
    cached = min(cached, prompt)
    cache_write = min(cache_write, prompt - cached)
    delay_ms = _hook(parsed, headers, "chunk-delay-ms")
    if delay_ms is None:
        delay_ms = SLOW_STREAM_DELAY_MS if slow else 0
    status = _hook(parsed, headers, "error")
    if status is None and (match := _ERROR_STATUS.search(model)):
        status = int(match.group(1))
    error_at = _hook(parsed, headers, "stream-error-at")
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
    )


def _sse(data: dict[str, Any], event: str | None = None) -> bytes:
    payload = _DUMP(data).encode()
    if event is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


def _models_body() -> bytes:
    data = [{"id": m, "object": "model", "created": CREATED, "owned_by": "mock"} for m in MODELS]
    return _DUMP({"object": "list", "data": data}).encode()


# --- OpenAI chat completions ---------------------------------------------------------------


def _chat_usage(plan: Plan) -> dict[str, Any]:
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.total_output,
        "total_tokens": plan.prompt_tokens + plan.total_output,
        "prompt_tokens_details": {"cached_tokens": plan.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": plan.reasoning_tokens * plan.choices,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_body(parsed: ParsedRequest, plan: Plan) -> bytes:
    return _DUMP(
        {
            "id": f"chatcmpl-mock-{next(_ids)}",
            "object": "chat.completion",
            "created": CREATED,
            "model": plan.model,
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": plan.text(), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "length" if plan.truncated else "stop",
                }
                for index in range(plan.choices)
            ],
            "usage": _chat_usage(plan),
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
        }
    ).encode()


async def _chat_stream(conn: Connection, parsed: ParsedRequest, plan: Plan) -> None:
    options = parsed.body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    include_usage = include_usage and not plan.no_usage
    base = {
        "id": f"chatcmpl-mock-{next(_ids)}",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": plan.model,
        "system_fingerprint": "fp_mock",
    }
    if include_usage:
        # OpenAI: with include_usage every chunk carries "usage": null except the last one.
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    delay = plan.chunk_delay
    for index in range(plan.choices):
        role = {"role": "assistant", "content": "", "refusal": None}
        await conn.chunk(chunk(role, index=index), 0)
    visible = plan.visible_tokens
    for i in range(visible):
        if plan.stream_error and i == plan.stream_error_at:
            error = {"message": "The mock upstream failed mid-stream.", "type": "server_error"}
            await conn.chunk(_sse({"error": {**error, "param": None, "code": None}}), delay)
            return
        for index in range(plan.choices):
            await conn.chunk(chunk({"content": WORDS[i % len(WORDS)]}, index=index), delay)
            plan.produced += 1
    for index in range(plan.choices):
        await conn.chunk(chunk({}, "length" if plan.truncated else "stop", index), delay)
    if include_usage:
        await conn.chunk(_sse({**base, "choices": [], "usage": _chat_usage(plan)}), 0)
    await conn.chunk(b"data: [DONE]\n\n", 0)


# --- OpenAI responses ----------------------------------------------------------------------


def _responses_usage(plan: Plan) -> dict[str, Any]:
    return {
        "input_tokens": plan.prompt_tokens,
        "input_tokens_details": {"cached_tokens": plan.cached_tokens},
        "output_tokens": plan.output_tokens,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning_tokens},
        "total_tokens": plan.prompt_tokens + plan.output_tokens,
    }


def _response_object(
    plan: Plan, response_id: str, *, status: str, text: str | None, usage: bool
) -> dict[str, Any]:
    output = []
    if text is not None:
        output.append(_message_item(response_id, text, "completed"))
    return {
        "id": response_id,
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": None,
        "model": plan.model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": _responses_usage(plan) if usage else None,
    }


def _message_item(response_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": "msg_" + response_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _responses_body(parsed: ParsedRequest, plan: Plan) -> bytes:
    status = "incomplete" if plan.truncated else "completed"
    obj = _response_object(
        plan, f"resp_mock{next(_ids)}", status=status, text=plan.text(), usage=True
    )
    return _DUMP(obj).encode()


async def _responses_stream(conn: Connection, parsed: ParsedRequest, plan: Plan) -> None:
    response_id = f"resp_mock{next(_ids)}"
    seq = itertools.count()
    delay = plan.chunk_delay

    async def emit(kind: str, wait: float = 0, **fields: Any) -> None:
        await conn.chunk(_sse({"type": kind, "sequence_number": next(seq), **fields}, kind), wait)

    start = _response_object(plan, response_id, status="in_progress", text=None, usage=False)
    await emit("response.created", response=start)
    await emit("response.in_progress", response=start)
    item_id = "msg_" + response_id
    item = {**_message_item(response_id, "", "in_progress"), "content": []}
    await emit("response.output_item.added", output_index=0, item=item)
    part = {"type": "output_text", "text": "", "annotations": []}
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    await emit("response.content_part.added", **where, part=part)
    visible = plan.visible_tokens
    for i in range(visible):
        if plan.stream_error and i == plan.stream_error_at:
            message = "The mock upstream failed mid-stream."
            await emit("error", delay, code="server_error", message=message, param=None)
            return
        await emit("response.output_text.delta", delay, **where, delta=WORDS[i % len(WORDS)])
        plan.produced += 1
    text = plan.text()
    await emit("response.output_text.done", **where, text=text)
    await emit("response.content_part.done", **where, part={**part, "text": text})
    await emit(
        "response.output_item.done",
        output_index=0,
        item=_message_item(response_id, text, "completed"),
    )
    status = "incomplete" if plan.truncated else "completed"
    final = _response_object(plan, response_id, status=status, text=text, usage=True)
    await emit(f"response.{status}", response=final)


# --- OpenAI embeddings ---------------------------------------------------------------------

_DIMENSIONS = 8


def _embeddings_body(parsed: ParsedRequest, plan: Plan) -> bytes:
    items = parsed.body["input"]
    count = 1 if isinstance(items, str) or (items and isinstance(items[0], int)) else len(items)
    as_base64 = parsed.body.get("encoding_format") == "base64"
    data = []
    for index in range(count):
        # Vectors are not money or tokens; a fixed float pattern keeps them deterministic.
        vector = [((index + d) % 8) / 8 for d in range(_DIMENSIONS)]
        embedding: Any = vector
        if as_base64:
            embedding = base64.b64encode(struct.pack(f"<{_DIMENSIONS}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    usage = {"prompt_tokens": plan.prompt_tokens, "total_tokens": plan.prompt_tokens}
    return _DUMP({"object": "list", "data": data, "model": plan.model, "usage": usage}).encode()


async def _no_stream(conn: Connection, parsed: ParsedRequest, plan: Plan) -> None:
    raise AssertionError("embeddings never stream")  # parse_request ignores `stream` there


# --- Anthropic messages --------------------------------------------------------------------


def _anthropic_usage(plan: Plan, output_tokens: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": plan.prompt_tokens - plan.cached_tokens - plan.cache_write_tokens,
        "cache_creation_input_tokens": plan.cache_write_tokens,
        "cache_read_input_tokens": plan.cached_tokens,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }
    if plan.reasoning_tokens:
        usage["output_tokens_details"] = {"thinking_tokens": plan.reasoning_tokens}
    return usage


def _message_object(plan: Plan, message_id: str, *, content: list, stop: str | None, out: int):
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": _anthropic_usage(plan, out),
    }


def _messages_body(parsed: ParsedRequest, plan: Plan) -> bytes:
    stop = "max_tokens" if plan.truncated else "end_turn"
    content = [{"type": "text", "text": plan.text()}]
    obj = _message_object(
        plan, f"msg_mock{next(_ids)}", content=content, stop=stop, out=plan.output_tokens
    )
    return _DUMP(obj).encode()


async def _messages_stream(conn: Connection, parsed: ParsedRequest, plan: Plan) -> None:
    delay = plan.chunk_delay

    async def emit(kind: str, wait: float = 0, **fields: Any) -> None:
        await conn.chunk(_sse({"type": kind, **fields}, kind), wait)

    start = _message_object(plan, f"msg_mock{next(_ids)}", content=[], stop=None, out=1)
    await emit("message_start", message=start)
    await emit("content_block_start", index=0, content_block={"type": "text", "text": ""})
    await emit("ping")
    visible = plan.visible_tokens
    for i in range(visible):
        if plan.stream_error and i == plan.stream_error_at:
            error = {"type": "overloaded_error", "message": "The mock upstream is overloaded."}
            await emit("error", delay, error=error)
            return
        delta = {"type": "text_delta", "text": WORDS[i % len(WORDS)]}
        await emit("content_block_delta", delay, index=0, delta=delta)
        plan.produced += 1
    await emit("content_block_stop", index=0)
    stop = "max_tokens" if plan.truncated else "end_turn"
    usage = _anthropic_usage(plan, plan.output_tokens)
    usage.pop("service_tier")
    await emit("message_delta", delta={"stop_reason": stop, "stop_sequence": None}, usage=usage)
    await emit("message_stop")


_BODIES = {
    "chat": _chat_body,
    "responses": _responses_body,
    "embeddings": _embeddings_body,
    "messages": _messages_body,
}
_STREAMS = {
    "chat": _chat_stream,
    "responses": _responses_stream,
    "embeddings": _no_stream,
    "messages": _messages_stream,
}


# --- running -------------------------------------------------------------------------------


async def serve(
    host: str = "127.0.0.1",
    port: int = 8001,
    settings: MockSettings | None = None,
    *,
    started: threading.Event | None = None,
    holder: dict[str, Any] | None = None,
) -> None:
    """Serve until cancelled. `holder` (if given) receives the bound port, the server and the
    MockUpstream, and `started` is set once the socket listens."""
    tokens.encoding()  # load the tokenizer before the first request, not during it
    mock = MockUpstream(settings)
    server = await asyncio.start_server(mock.serve, host, port, backlog=2048, reuse_address=True)
    if holder is not None:
        holder.update(port=server.sockets[0].getsockname()[1], server=server, mock=mock)
        holder.update(loop=asyncio.get_running_loop(), task=asyncio.current_task())
    if started is not None:
        started.set()
    try:
        # Not serve_forever(): on cancellation it waits for every connection to close before
        # we could close them, and clients keep theirs alive.
        await asyncio.get_running_loop().create_future()
    finally:
        server.close()
        for writer in list(mock.writers):
            writer.close()
        await server.wait_closed()


def run(host: str, port: int, settings: MockSettings) -> None:
    """Serve in the foreground until interrupted (the management command)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host, port, settings))


class MockServer:
    """A mock upstream running on its own event loop thread (for tests)."""

    def __init__(self, settings: MockSettings | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.settings = settings or MockSettings()
        self._holder: dict[str, Any] = {}
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mock-upstream", daemon=True)

    def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(
                serve(self.host, 0, self.settings, started=self._started, holder=self._holder)
            )

    def start(self) -> MockServer:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the mock upstream did not start")
        return self

    @property
    def port(self) -> int:
        return self._holder["port"]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def mock(self) -> MockUpstream:
        return self._holder["mock"]

    def stop(self) -> None:
        loop = self._holder.get("loop")
        if loop is not None and self._thread.is_alive():
            # Cancelling the serving task closes the listener; asyncio.run then cancels the
            # connection tasks still open.
            loop.call_soon_threadsafe(self._holder["task"].cancel)
            self._thread.join(10)


def start_in_thread(settings: MockSettings | None = None) -> MockServer:
    """Start a mock upstream on a free port in a background thread; call `.stop()` after."""
    return MockServer(settings).start()
