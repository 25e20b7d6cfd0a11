"""No request can stall or crash the proxy: raw HTTP against a real uvicorn process.

The body is read only after the key and the declared size pass, never past TB_MAX_BODY_BYTES;
malformed bodies get a 400 in the provider's shape; and one large prompt does not hold up the
other calls on the same process. After each refusal nothing is recorded, charged or held, and
the process still answers.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import urlsplit

import httpx
import pytest
from django.conf import settings

from budgets.models import Reservation
from metering import tokens
from metering.models import ModelRoute, Upstream, UsageRecord
from tests import servers
from tests.e2e.conftest import World

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
MB = 1024 * 1024


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int  # body bytes the client managed to send before the answer came

    def json(self) -> dict:
        return json.loads(self.body)


def _chunked(pieces: Iterator[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


def raw_post(
    proxy: str,
    path: str,
    *,
    body: Iterator[bytes] | bytes = b"",
    key: str | None = None,
    chunked: bool = False,
    content_length: int | None = None,
) -> RawResponse:
    """POST over a plain socket, sending the body piece by piece and stopping as soon as the
    server answers (or stops reading and closes): what a client sees of an early refusal."""
    where = urlsplit(proxy)
    head = [f"POST {path} HTTP/1.1", f"host: {where.hostname}", "content-type: application/json"]
    if key is not None:
        head.append(f"authorization: Bearer {key}")
    pieces: Iterator[bytes] = iter([body]) if isinstance(body, bytes) else body
    if chunked:
        head.append("transfer-encoding: chunked")
        pieces = _chunked(pieces)
    else:
        assert content_length is not None or isinstance(body, bytes)
        declared = len(body) if content_length is None else content_length
        head.append(f"content-length: {declared}")
    sock = socket.create_connection((where.hostname, where.port), timeout=10)
    sent = 0
    try:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sock.settimeout(0.2)
        for piece in pieces:
            view = memoryview(piece)
            while view:
                if select.select([sock], [], [], 0)[0]:
                    break  # the answer is in
                try:
                    n = sock.send(view)
                except TimeoutError:
                    continue  # the server is not reading: see whether it answered
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += n
                view = view[n:]
            if view:
                break
        return _read_response(sock, sent)
    finally:
        sock.close()


def _read_response(sock: socket.socket, sent: int) -> RawResponse:
    sock.settimeout(20)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return RawResponse(status, headers, rest[:length], sent)


def connection_closed(response: RawResponse) -> bool:
    return response.headers.get("connection", "").lower() == "close"


def assert_untouched(world: World) -> None:
    """Nothing recorded, charged or held, and the process still answers."""
    world.allowance.refresh_from_db()
    assert (world.allowance.used, world.allowance.reserved) == (0, 0)
    assert not UsageRecord.objects.exists()
    assert not Reservation.objects.exists()
    assert httpx.get(f"{world.proxy}/healthz", timeout=5).json() == {"status": "ok"}


def assert_openai_error(response: RawResponse, status: int, kind: str, code: str) -> dict:
    assert response.status == status, (response.status, response.body[:300])
    error = response.json()["error"]
    assert error["type"] == kind and error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    return error


def assert_anthropic_error(response: RawResponse, status: int, kind: str) -> dict:
    assert response.status == status, (response.status, response.body[:300])
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def endless(piece: bytes, total: int) -> Iterator[bytes]:
    for _ in range(total // len(piece)):
        yield piece


# --- the edge: key and size before the body ------------------------------------------------


@pytest.mark.parametrize("key", [None, "tb-not-a-key"])
def test_unauthenticated_chunked_upload_is_refused_without_reading_it(
    world: World, key: str | None
) -> None:
    planned = 300 * MB
    response = raw_post(
        world.proxy, CHAT, body=endless(b"x" * 65536, planned), key=key, chunked=True
    )
    assert_openai_error(response, 401, "invalid_request_error", "invalid_api_key")
    assert response.sent < 32 * MB, f"{response.sent} bytes went in before the answer"
    assert connection_closed(response)
    assert_untouched(world)


def test_unauthenticated_upload_on_messages_gets_anthropic_401(world: World) -> None:
    response = raw_post(
        world.proxy, MESSAGES, body=endless(b"x" * 65536, 300 * MB), key="nope", chunked=True
    )
    error = assert_anthropic_error(response, 401, "authentication_error")
    assert error["message"] == "Invalid API key."
    assert response.sent < 32 * MB
    assert_untouched(world)


@pytest.mark.parametrize(
    ("path", "shape"), [(CHAT, "openai"), ("/v1/embeddings", "openai"), (MESSAGES, "anthropic")]
)
def test_declared_length_over_the_limit_is_413_before_any_body(
    world: World, path: str, shape: str
) -> None:
    # Headers only: the answer must come without the client sending a byte of the body.
    response = raw_post(
        world.proxy,
        path,
        body=iter([]),
        key=world.key,
        content_length=settings.TB_MAX_BODY_BYTES + 1,
    )
    assert response.sent == 0
    if shape == "openai":
        error = assert_openai_error(response, 413, "invalid_request_error", "request_too_large")
    else:
        error = assert_anthropic_error(response, 413, "request_too_large")
    assert error["message"] == f"Request body exceeds {settings.TB_MAX_BODY_BYTES} bytes."
    assert connection_closed(response)
    assert_untouched(world)


def test_nine_megabyte_chunked_body_is_413_not_500(world: World) -> None:
    prefix = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
    pieces = [prefix, *endless(b"y" * 65536, 9 * MB), b'"}]}']
    response = raw_post(world.proxy, CHAT, body=iter(pieces), key=world.key, chunked=True)
    assert_openai_error(response, 413, "invalid_request_error", "request_too_large")
    assert connection_closed(response)
    assert_untouched(world)


def test_nine_megabyte_chunked_body_on_messages_is_anthropic_413(world: World) -> None:
    pieces = endless(b"z" * 65536, 9 * MB)
    response = raw_post(world.proxy, MESSAGES, body=pieces, key=world.key, chunked=True)
    assert_anthropic_error(response, 413, "request_too_large")
    assert_untouched(world)


def test_invalid_content_length_is_400(world: World) -> None:
    response = raw_post(world.proxy, CHAT, body=b"{}", key=world.key, content_length=-1)
    assert response.status == 400
    assert_untouched(world)


def test_body_just_under_the_limit_is_read_and_served(world: World) -> None:
    """The limit refuses only what is over it: a chunked body a little under it is served."""
    world.allowance.amount = Decimal(10**9)
    world.allowance.save()
    filler = settings.TB_MAX_BODY_BYTES - 200
    body = json.dumps(
        {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": ""}]}
    ).encode()
    head, tail = body.split(b'""')
    words = (b"ab " * (filler // 3))[:filler]
    pieces = [
        head + b'"',
        *(words[i : i + 65536] for i in range(0, len(words), 65536)),
        b'"' + tail,
    ]
    assert sum(map(len, pieces)) <= settings.TB_MAX_BODY_BYTES
    response = raw_post(world.proxy, CHAT, body=iter(pieces), key=world.key, chunked=True)
    assert response.status == 200, response.body[:300]
    record = UsageRecord.objects.get()
    assert record.status_code == 200 and record.output_tokens == 5


# --- malformed bodies: 400 in the provider's shape -------------------------------------------


def _nested_text(depth: int) -> bytes:
    content = "[" * depth + '"deep"' + "]" * depth
    return (
        '{"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": '
        + content
        + "}]}"
    ).encode()


MALFORMED = {
    "json nested 100,000 deep": b'{"model": "gpt-4o-mini", "messages": '
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}",
    "text nested 990 deep": _nested_text(990),
    "objects nested 5,000 deep": b'{"model": "gpt-4o-mini", "messages": [{"role": "user", '
    b'"content": "x"}], "metadata": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
    "1.1 MB of whitespace": b" " * 1_100_000,
    "invalid UTF-8": b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    "a lone surrogate in the model name": b'{"model": "gpt-\\ud800", "messages": '
    b'[{"role": "user", "content": "hi"}]}',
    "a 2 MB model name": b'{"model": "'
    + b"m" * (2 * MB)
    + b'", "messages": [{"role": "user", "content": "hi"}]}',
    "a control character in the model name": b'{"model": "gpt-4o-mini\\u0007", "messages": '
    b'[{"role": "user", "content": "hi"}]}',
    "an array": b'[{"model": "gpt-4o-mini"}]',
    "a string": b'"gpt-4o-mini"',
    "null": b"null",
    "an unhashable content type": b'{"model": "gpt-4o-mini", "messages": '
    b'[{"role": "user", "content": [{"type": ["text"], "text": "hi"}]}]}',
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_body_is_400_in_openai_shape(world: World, name: str) -> None:
    response = raw_post(world.proxy, CHAT, body=MALFORMED[name], key=world.key)
    error = assert_openai_error(response, 400, "invalid_request_error", "invalid_request")
    assert len(response.body) < 2048, "the error does not echo the body back"
    if "model name" in name:
        assert error["param"] == "model"
    assert_untouched(world)


@pytest.mark.parametrize(
    "name", ["json nested 100,000 deep", "a lone surrogate in the model name", "invalid UTF-8"]
)
def test_malformed_body_is_400_in_anthropic_shape(world: World, name: str) -> None:
    body = MALFORMED[name].replace(b"gpt-4o-mini", b"claude-sonnet-4-5")
    response = raw_post(world.proxy, MESSAGES, body=body, key=world.key)
    assert_anthropic_error(response, 400, "invalid_request_error")
    assert_untouched(world)


def test_depth_at_the_limit_is_served_one_more_is_refused(world: World) -> None:
    """Only what is deeper than TB_MAX_JSON_DEPTH is refused (the body is level 1, messages 2,
    a message 3, then `depth` nested arrays of content)."""
    limit = settings.TB_MAX_JSON_DEPTH
    response = raw_post(world.proxy, CHAT, body=_nested_text(limit - 3), key=world.key)
    assert response.status == 200, response.body[:300]
    assert UsageRecord.objects.count() == 1
    too_deep = raw_post(world.proxy, CHAT, body=_nested_text(limit - 2), key=world.key)
    error = assert_openai_error(too_deep, 400, "invalid_request_error", "invalid_request")
    assert error["message"] == f"The request body nests arrays and objects more than {limit} deep."
    assert UsageRecord.objects.count() == 1


def test_whitespace_prompt_that_panics_the_tokenizer_is_served_and_charged(world: World) -> None:
    """1.1 MB of whitespace inside a prompt is a valid call: counted without the tokenizer's
    panic, served, and charged what the provider reports."""
    world.allowance.amount = Decimal(10**8)
    world.allowance.save()
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "a" + " " * 1_100_000 + "b"}],
        }
    ).encode()
    response = raw_post(world.proxy, CHAT, body=body, key=world.key)
    assert response.status == 200, response.body[:300]
    usage = response.json()["usage"]
    record = UsageRecord.objects.get()
    assert (record.input_tokens, record.output_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    world.allowance.refresh_from_db()
    assert world.allowance.used == usage["prompt_tokens"] + usage["completion_tokens"]
    assert world.allowance.reserved == 0
    assert not Reservation.objects.exists()


# --- the event loop: one large prompt holds up nobody ------------------------------------------


@pytest.fixture
def stall_proxy(world: World) -> Iterator[str]:
    """A proxy process of its own with the default cache lifetime (as in production: a small
    call finds its key and route cached), and a route `gpt-big` on a mock upstream of its own,
    so the large call's upstream work (the mock counts the prompt too) delays no small call."""
    from django.db import connection

    mock_port, proxy_port = servers.free_port(), servers.free_port()
    mock = servers.start_mock_upstream(mock_port)
    upstream = Upstream.objects.create(
        name="mock-big",
        kind="openai",
        base_url=f"http://127.0.0.1:{mock_port}",
        read_timeout=Decimal(30),
        credential_env="TB_UPSTREAM_KEY_TEST",
    )
    ModelRoute.objects.create(
        public_name="gpt-big",
        upstream=upstream,
        upstream_model="gpt-4o-mini",
        default_max_output_tokens=5,
    )
    proxy = servers.start_proxy(
        proxy_port,
        {
            "DATABASE_URL": servers.database_url_of(connection.settings_dict),
            "TB_SERVE_STATIC": "0",
            "TB_UPSTREAM_KEY_TEST": "sk-provider-test-0123456789",
        },
    )
    yield f"http://127.0.0.1:{proxy_port}"
    servers.stop(proxy)
    servers.stop(mock)


def _large_prompt(megabytes: int) -> str:
    words = "budget token ledger allowance quarter invoice model prompt answer cost "
    return (words * (megabytes * 1_000_000 // len(words) + 1))[: megabytes * 1_000_000]


SMALL = {"model": "gpt-4o-mini", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}


def _probe_until(proxy: str, key: str, done: threading.Event) -> tuple[list[float], list[float]]:
    """/healthz and a small call, one after the other, until `done`: their latencies (s)."""
    health: list[float] = []
    small: list[float] = []
    with httpx.Client(timeout=10, headers={"authorization": f"Bearer {key}"}) as client:
        while not done.is_set():
            started = time.perf_counter()
            assert client.get(f"{proxy}/healthz").status_code == 200
            health.append(time.perf_counter() - started)
            started = time.perf_counter()
            answer = client.post(f"{proxy}{CHAT}", json=SMALL)
            assert answer.status_code == 200, answer.text
            small.append(time.perf_counter() - started)
            time.sleep(0.005)
    return health, small


def _large_call(proxy: str, key: str, body: bytes, done: threading.Event, out: dict) -> None:
    try:
        out["response"] = httpx.post(
            f"{proxy}{CHAT}",
            content=body,
            headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
            timeout=60,
        )
    finally:
        done.set()


def _p90(samples: list[float]) -> float:
    return sorted(samples)[int(0.9 * (len(samples) - 1))]


def _quiet(proxy: str, key: str, seconds: float) -> tuple[list[float], list[float]]:
    done = threading.Event()
    threading.Timer(seconds, done.set).start()
    return _probe_until(proxy, key, done)


@pytest.mark.alone
def test_a_large_prompt_does_not_stall_other_calls(world: World, stall_proxy: str) -> None:
    """While a 7 MB prompt is read, parsed, counted and forwarded, /healthz answers within
    50 ms, and a small call on the same process is not queued behind it: it answers within
    50 ms, or, where the small call alone is slower on this box (its reserve and settle commit
    to the database and compete for the shared CPU), within twice its 90th percentile on the
    quiet process just before. A blocked event loop fails this by far: the small call then
    waits for the whole parse and count, ten times its quiet time and more. The box is shared,
    so a stray slow answer can come from elsewhere: of eight rounds one must be clean."""
    world.allowance.amount = Decimal(10**9)
    world.allowance.save()
    prompt = _large_prompt(7)
    body = json.dumps(
        {"model": "gpt-big", "max_tokens": 5, "messages": [{"role": "user", "content": prompt}]}
    ).encode()
    _quiet(stall_proxy, world.key, 0.5)  # warm: the key and route cached, connections open
    rounds = []
    for _ in range(8):
        quiet_health, quiet_small = _quiet(stall_proxy, world.key, 0.5)
        done, out = threading.Event(), {}
        thread = threading.Thread(
            target=_large_call, args=(stall_proxy, world.key, body, done, out)
        )
        started = time.perf_counter()
        thread.start()
        health, small = _probe_until(stall_proxy, world.key, done)
        thread.join()
        assert out["response"].status_code == 200, out["response"].text[:300]
        assert len(small) >= 3, "the probes overlapped the large call"
        rounds.append(
            {
                "healthz_ms": round(max(health) * 1000, 1),
                "small_ms": round(max(small) * 1000, 1),
                "small_allowed_ms": round(max(50.0, 2 * _p90(quiet_small) * 1000), 1),
                "quiet_healthz_ms": round(max(quiet_health) * 1000, 1),
                "probes": len(small),
                "large_s": round(time.perf_counter() - started, 2),
            }
        )
        last = rounds[-1]
        if last["healthz_ms"] < 50 and last["small_ms"] < last["small_allowed_ms"]:
            break
    assert any(r["healthz_ms"] < 50 and r["small_ms"] < r["small_allowed_ms"] for r in rounds), (
        rounds
    )
    large = UsageRecord.objects.filter(model="gpt-big")
    assert large.count() == len(rounds)
    # The mock's count: the prompt's o200k tokens and 3 for the message.
    expected = tokens.count_text_tokens(prompt) + 3
    assert {(r.status_code, r.input_tokens, r.output_tokens) for r in large} == {(200, expected, 5)}
