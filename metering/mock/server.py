"""The mock's HTTP/1.1 server on raw asyncio streams, its dispatch, and how to run it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import deque
from http import HTTPStatus
from typing import Any

from metering import tokens
from metering.mock import anthropic as anthropic_answers
from metering.mock import bedrock as bedrock_answers
from metering.mock import gemini as gemini_answers
from metering.mock import openai as openai_answers
from metering.mock import vertex
from metering.mock.common import (
    DUMP,
    MockSettings,
    make_plan,
    models_body,
    prompt_tokens,
    request_id,
)
from metering.mock.ledger import Ledger, Record
from metering.providers import anthropic as anthropic_protocol
from metering.providers import bedrock as bedrock_protocol
from metering.providers import gemini as gemini_protocol
from metering.providers import openai as openai_protocol
from metering.providers.base import RequestError

_request_id = request_id


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

    def start_stream(self, content_type: str = "text/event-stream; charset=utf-8") -> None:
        self.writer.write(
            self.head(
                200,
                [
                    ("content-type", content_type),
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


class MockUpstream:
    """The request handlers. One instance per server; keeps the recent request records."""

    def __init__(self, settings: MockSettings | None = None) -> None:
        self.settings = settings or MockSettings()
        self.book = Ledger()
        self.google = vertex.GoogleAuth()
        self.writers: set[asyncio.StreamWriter] = set()  # open connections, closed on shutdown

    @property
    def records(self) -> deque[Record]:
        return self.book.records

    @property
    def ledger(self) -> dict[str, tuple[int, int]]:
        return self.book.served

    @property
    def cut(self) -> dict[str, tuple[int, int, str]]:
        return self.book.cut

    @property
    def last(self) -> Record | None:
        return self.book.last

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
            self._introspect(conn, method, path, body)
            return
        if path == vertex.TOKEN_PATH and method == "POST":
            self._grant(conn, body)
            return
        record = Record(method, path, headers, _decode(body))
        self.book.saw(record)
        anthropic = path.endswith("/messages") or path.endswith("/messages/count_tokens")
        if (
            _gemini_call(path)
            or _gemini_count(path)
            or bedrock_answers.converse_call(path) is not None
        ):
            anthropic = None  # Google's or Amazon's shapes
        if vertex.anthropic_call(path) is not None or bedrock_answers.invoke_call(path):
            anthropic = True
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
        anthropic: bool | None,
    ) -> None:
        invoke_call = bedrock_answers.invoke_call(path)

        def fail(status: int, message: str, kind: str, param: str | None = None) -> None:
            record.status = status
            if bedrock_answers.converse_call(path) is not None or invoke_call is not None:
                conn.send(status, bedrock_protocol.error_body(status, message))
            elif anthropic is None:
                conn.send(status, gemini_protocol.error_body(status, message))
            elif anthropic:
                conn.send(status, anthropic_protocol.error_body(status, message, kind))
            else:
                conn.send(status, openai_protocol.error_body(status, message, kind, None, param))

        if vertex.is_vertex(path):
            if not self.google.accepts(headers):
                fail(401, "Request had invalid authentication credentials.", "authentication_error")
                return
        elif invoke_call is not None and not headers.get("authorization", "").startswith(
            "AWS4-HMAC-SHA256 Credential="
        ):
            fail(403, "Missing Authentication Token", "permission_error")
            return
        elif not self._authorised(headers):
            fail(401, "Incorrect API key provided to the mock upstream.", "authentication_error")
            return
        claude_call = vertex.anthropic_call(path)
        if claude_call is not None:
            try:
                if claude_call[0] == vertex.COUNT_TOKENS:
                    body = vertex.count_body(body)
                else:
                    body = vertex.messages_body(body, *claude_call)
            except ValueError as exc:
                fail(400, str(exc), "invalid_request_error")
                return
        count_model = bedrock_answers.count_call(path)
        if count_model is not None:
            self._bedrock_count(conn, record, headers, body, count_model)
            return
        if invoke_call is not None:
            try:
                body = bedrock_answers.invoke_body(body, *invoke_call)
            except ValueError as exc:
                fail(400, str(exc), "invalid_request_error")
                return
        if method == "GET" and path.endswith("/models"):
            record.status = 200
            conn.send(200, models_body())
            return
        endpoint = _endpoint(path)
        if method != "POST" or endpoint is None:
            fail(404, f"No mock route for {method} {path}.", "not_found_error")
            return
        if endpoint == "count_tokens":
            try:
                parsed = anthropic_protocol.parse_request("messages", _with_limit(body))
            except RequestError as exc:
                fail(400, exc.message, "invalid_request_error", exc.param)
                return
            record.status = 200
            self.book.counted += 1
            conn.send(200, anthropic_answers.count_tokens_body(parsed))
            return
        if endpoint == gemini_protocol.COUNT_ENDPOINT:
            if vertex.is_vertex(path):
                body = vertex.gemini_count_body(body)
            try:
                parsed = gemini_protocol.parse_count_request(endpoint, body)
            except RequestError as exc:
                fail(400, exc.message, "invalid_request_error", exc.param)
                return
            record.status = 200
            self.book.counted += 1
            conn.send(200, gemini_answers.count_tokens_body(parsed))
            return
        protocol: Any = anthropic_protocol if anthropic else openai_protocol
        gemini_call = _gemini_call(path)
        if gemini_call is not None:
            protocol = gemini_protocol.PROVIDER.for_call(*gemini_call)
        bedrock_call = bedrock_answers.converse_call(path)
        if bedrock_call is not None:
            protocol = bedrock_protocol.PROVIDER.for_call(*bedrock_call)
        try:
            parsed = protocol.parse_request(endpoint, body)
        except RequestError as exc:
            fail(400, exc.message, "invalid_request_error", exc.param)
            return
        plan = make_plan(parsed, headers)
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
            body = _BODIES[endpoint](parsed, plan)
            self.book.served[request_id] = served  # in the book before a reader can see it
            conn.send(200, body)
            return
        plan.chunk_delay = max(plan.chunk_delay, self.settings.chunk_latency_ms / 1000)
        writer: Any = conn
        if bedrock_call is not None or invoke_call is not None:
            conn.start_stream(bedrock_protocol.CONTENT_TYPE_STREAM)
            if invoke_call is not None:
                writer = bedrock_answers.InvokeStream(conn, plan)
        else:
            conn.start_stream()
        try:
            await _STREAMS[endpoint](writer, parsed, plan)
            await conn.end_stream()
        except ClientGone:
            if plan.produced:
                self.book.cut[request_id] = (plan.prompt_tokens, plan.produced, "client_gone")
            raise
        if plan.stream_error:
            if plan.produced:
                self.book.cut[request_id] = (plan.prompt_tokens, plan.produced, "stream_error")
        else:
            self.book.served[request_id] = served

    def _bedrock_count(
        self, conn: Connection, record: Record, headers: dict[str, str], body: bytes, model: str
    ) -> None:
        """Bedrock's CountTokens: the input the same InvokeModel or Converse call is charged."""

        def fail(status: int, message: str) -> None:
            record.status = status
            conn.send(status, bedrock_protocol.error_body(status, message))

        if not headers.get("authorization", "").startswith("AWS4-HMAC-SHA256 Credential="):
            fail(403, "Missing Authentication Token")
            return
        try:
            endpoint, request = bedrock_answers.count_request(body, model)
            if endpoint == "messages":
                parsed = anthropic_protocol.parse_request("messages", request)
            else:
                parsed = bedrock_protocol.PROVIDER.for_call(model, False).parse_request(
                    bedrock_protocol.ENDPOINT, request
                )
        except ValueError as exc:
            fail(400, str(exc))
            return
        except RequestError as exc:
            fail(400, exc.message)
            return
        if "claude" not in model:  # CountTokens serves some models only, Claude among them
            fail(400, "The provided model doesn't support counting tokens.")
            return
        status = make_plan(parsed, headers).error_status
        if status is not None:
            fail(status, "The mock upstream failed as asked.")
            return
        record.status = 200
        self.book.counted += 1
        conn.send(200, json.dumps({"inputTokens": prompt_tokens(parsed)}).encode())

    def _authorised(self, headers: dict[str, str]) -> bool:
        expected = self.settings.expected_key
        if not expected:
            return True
        auth = headers.get("authorization", "")
        offered = auth[7:] if auth[:7].lower() == "bearer " else ""
        given = (offered, headers.get("x-api-key"), headers.get("api-key"))
        if auth.startswith("AWS4-HMAC-SHA256 Credential="):
            # Bedrock's SigV4: the access key id stands for the key.
            offered = auth.removeprefix("AWS4-HMAC-SHA256 Credential=").split("/", 1)[0]
            given = (offered, *given[1:])
        return expected in (*given, headers.get("x-goog-api-key"))

    def _grant(self, conn: Connection, body: bytes) -> None:
        try:
            conn.send(200, self.google.grant(body))
        except vertex.GrantRefused as exc:
            answer = {"error": exc.error, "error_description": exc.message}
            conn.send(400, DUMP(answer).encode())

    def _introspect(self, conn: Connection, method: str, path: str, body: bytes = b"") -> None:
        if path == "/_mock/google/keys" and method == "POST":
            try:
                self.google.register(_decode(body))
            except vertex.GrantRefused as exc:
                conn.send(400, DUMP({"error": exc.message}).encode())
                return
            conn.send(200, b"{}")
        elif path == "/_mock/google":
            conn.send(200, DUMP(self.google.as_dict()).encode())
        elif path == "/_mock/last":
            last = self.book.last
            conn.send(200, DUMP(last.as_dict() if last else None).encode())
        elif path == "/_mock/requests" and method == "DELETE":
            self.book.clear_records()
            conn.send(200, b"[]")
        elif path == "/_mock/requests":
            conn.send(200, DUMP([r.as_dict() for r in self.book.records]).encode())
        elif path == "/_mock/ledger" and method == "DELETE":
            self.book.clear()
            conn.send(200, b"{}")
        elif path == "/_mock/ledger":
            conn.send(200, DUMP(self.book.as_dict()).encode())
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


def _with_limit(body: bytes) -> bytes:
    """A count_tokens body has no max_tokens; the messages parser wants one."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, dict):
        data.setdefault("max_tokens", 1)
        return json.dumps(data).encode()
    return body


def _gemini_call(path: str) -> tuple[str, bool] | None:
    """(model, stream) of a Gemini API path `.../models/{model}:generateContent`."""
    head, sep, method = path.rpartition(":")
    if not sep or method not in ("generateContent", "streamGenerateContent"):
        return None
    return head.rpartition("/models/")[2], method == "streamGenerateContent"


def _gemini_count(path: str) -> bool:
    """A Gemini API path `.../models/{model}:countTokens`."""
    head, sep, method = path.rpartition(":")
    return bool(sep) and method == "countTokens" and "/models/" in head


def _endpoint(path: str) -> str | None:
    claude_call = vertex.anthropic_call(path)
    if claude_call is not None:
        return "count_tokens" if claude_call[0] == vertex.COUNT_TOKENS else "messages"
    if bedrock_answers.invoke_call(path) is not None:
        return "messages"
    if _gemini_call(path) is not None:
        return gemini_protocol.ENDPOINT
    if _gemini_count(path):
        return gemini_protocol.COUNT_ENDPOINT
    if bedrock_answers.converse_call(path) is not None:
        return bedrock_protocol.ENDPOINT
    for suffix, endpoint in (
        ("/chat/completions", "chat"),
        ("/responses", "responses"),
        ("/embeddings", "embeddings"),
        ("/messages/count_tokens", "count_tokens"),
        ("/messages", "messages"),
    ):
        if path.endswith(suffix):
            return endpoint
    return None


_BODIES = {
    "chat": openai_answers.chat_body,
    "responses": openai_answers.responses_body,
    "embeddings": openai_answers.embeddings_body,
    "messages": anthropic_answers.messages_body,
    gemini_protocol.ENDPOINT: gemini_answers.generate_body,
    bedrock_protocol.ENDPOINT: bedrock_answers.converse_body,
}
_STREAMS = {
    "chat": openai_answers.chat_stream,
    "responses": openai_answers.responses_stream,
    "embeddings": openai_answers.no_stream,
    "messages": anthropic_answers.messages_stream,
    gemini_protocol.ENDPOINT: gemini_answers.generate_stream,
    bedrock_protocol.ENDPOINT: bedrock_answers.converse_stream,
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
