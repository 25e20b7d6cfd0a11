"""Malformed text is refused at the boundary (issue #12, item 5), through the real proxy on the
embedded default and on Redis quotas: a NUL or a lone surrogate in metadata.intent, the X-Intent
header, the model name or the prompt gets a 400 in the provider's own shape before anything is
held, so nothing is forwarded, recorded or charged, and no hold is left behind."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import anthropic
import httpx
import openai
import pytest

from tests.e2e.conftest import World
from tests.e2e.proxy_modes import (
    Mode,
    assert_no_hold_left,
    assert_nothing_recorded_or_charged,
    mock_requests,
    mode,
    mode_world,
    redis_proxy,
    wait_for_records,
)

pytestmark = pytest.mark.e2e
__all__ = ["mode", "redis_proxy"]  # fixtures

NUL, SURROGATE = "\x00", "\ud800"
BAD = {"nul": NUL, "surrogate": SURROGATE}
WHERE = ("metadata.intent", "model", "prompt")
ENDPOINTS = {
    "chat": ("/v1/chat/completions", "gpt-4o-mini"),
    "responses": ("/v1/responses", "gpt-4o-mini"),
    "embeddings": ("/v1/embeddings", "text-embedding-3-small"),
    "messages": ("/v1/messages", "claude-sonnet-4-5"),
}


@pytest.fixture
def world(mode: Mode, mock_upstream_url: str) -> World:
    return mode_world(mode, mock_upstream_url)


def _body(endpoint: str, model: str, *, intent: str = "review", prompt: str = "hello") -> dict:
    metadata = {"intent": intent}
    if endpoint == "chat":
        return {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "metadata": metadata,
        }
    if endpoint == "responses":
        return {"model": model, "input": prompt, "metadata": metadata}
    if endpoint == "embeddings":
        return {"model": model, "input": prompt, "metadata": metadata}
    return {
        "model": model,
        "max_tokens": 20,
        "messages": [{"role": "user", "content": prompt}],
        "metadata": metadata,
    }


def _malformed(endpoint: str, where: str, bad: str) -> dict:
    path, model = ENDPOINTS[endpoint]
    del path
    if where == "model":
        return _body(endpoint, model + bad)
    if where == "prompt":
        return _body(endpoint, model, prompt="hel" + bad + "lo")
    return _body(endpoint, model, intent="rev" + bad + "iew")


def _expected_param(endpoint: str, where: str) -> str:
    if where != "prompt":
        return where
    return {"chat": "messages[0].content", "messages": "messages[0].content"}.get(endpoint, "input")


def assert_provider_400(endpoint: str, response: httpx.Response, param: str, problem: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    if endpoint == "messages":
        assert body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
    else:
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["param"] == param
    assert problem in body["error"]["message"], body
    assert response.headers["x-request-id"].startswith("req_")


def post_raw(world: World, path: str, body: dict, **headers: str | bytes) -> httpx.Response:
    # ensure_ascii: the NUL and the lone surrogate travel as \u escapes, as JSON allows.
    return httpx.post(
        world.proxy + path,
        content=json.dumps(body, ensure_ascii=True).encode(),
        headers={
            "authorization": f"Bearer {world.key}",
            "content-type": "application/json",
            "anthropic-version": "2023-06-01",
            **headers,
        },
        timeout=20,
    )


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_malformed_text_is_a_400_before_any_hold(
    world: World, mode: Mode, endpoint: str, where: str, bad: str
) -> None:
    path, _ = ENDPOINTS[endpoint]
    response = post_raw(world, path, _malformed(endpoint, where, BAD[bad]))
    problem = "a NUL character" if bad == "nul" else "a lone surrogate"
    assert_provider_400(endpoint, response, _expected_param(endpoint, where), problem)
    assert mock_requests(world.mock) == [], "nothing was forwarded"
    assert_nothing_recorded_or_charged(world, mode)


def test_the_sdks_get_their_own_error_types(world: World, mode: Mode) -> None:
    client = openai.OpenAI(base_url=f"{world.proxy}/v1", api_key=world.key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            metadata={"intent": "rev" + NUL + "iew"},
        )
    assert caught.value.body["param"] == "metadata.intent"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="gpt-4o" + NUL, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.body["param"] == "model"
    claude = anthropic.Anthropic(base_url=world.proxy, api_key=world.key, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=20,
            messages=[{"role": "user", "content": "hel" + NUL + "lo"}],
        )
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    assert "a NUL character" in refused.value.body["error"]["message"]
    assert mock_requests(world.mock) == []
    assert_nothing_recorded_or_charged(world, mode)


def _raw_http(world: World, path: str, header_value: bytes) -> tuple[int, bytes]:
    """POST with an X-Intent header of exactly these bytes (HTTP clients refuse to send them)."""
    url = urlsplit(world.proxy)
    body = json.dumps(_body("chat", "gpt-4o-mini")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {world.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    ).encode()
    with socket.create_connection((url.hostname, url.port), timeout=20) as sock:
        sock.sendall(head + b"X-Intent: " + header_value + b"\r\n\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (b"surrogate" + b"\xed\xa0\x80", "not UTF-8"),  # a surrogate, UTF-8 encoded
        # U+0085 (a C1 control) in UTF-8: bytes HTTP allows, text the proxy does not.
        (b"rev\xc2\x85iew", "a control character (U+0085)"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_x_intent_header_is_checked_like_the_body(
    world: World, mode: Mode, header: bytes, problem: str
) -> None:
    status, body = _raw_http(world, "/v1/chat/completions", header)
    assert status == 400
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "x-intent"
    assert problem in error["message"]
    assert mock_requests(world.mock) == []
    assert_nothing_recorded_or_charged(world, mode)


@pytest.mark.parametrize("header", [b"rev\x00iew", b"rev\x1b[0miew"])
def test_nul_or_c0_control_in_the_x_intent_header_is_refused_before_the_proxy(
    world: World, mode: Mode, header: bytes
) -> None:
    # The HTTP server itself refuses NUL and C0 controls in a header (RFC 9110 forbids them),
    # with its own plain 400, before any view runs.
    status, _ = _raw_http(world, "/v1/chat/completions", header)
    assert status == 400
    assert mock_requests(world.mock) == []
    assert_nothing_recorded_or_charged(world, mode)


def test_ordinary_text_passes_and_is_recorded_as_sent(world: World, mode: Mode) -> None:
    # The control case: the same calls with ordinary text are served, recorded and charged, so
    # the refusals above are the text's doing. Prompts keep tabs, newlines and escapes.
    response = post_raw(
        world,
        "/v1/chat/completions",
        _body("chat", "gpt-4o-mini", intent="revue-über", prompt="a\tb\nc \x1b[1m"),
    )
    assert response.status_code == 200, response.text
    header = post_raw(
        world,
        "/v1/messages",
        _body("messages", "claude-sonnet-4-5"),
        **{"x-intent": "café".encode()},
    )
    assert header.status_code == 200, header.text
    records = wait_for_records(2)
    assert sorted(r.intent for r in records) == ["café", "revue-über"]
    served = httpx.get(f"{world.mock}/_mock/ledger", timeout=5).json()
    assert served["count"] == 2
    world.allowance.refresh_from_db()
    assert world.allowance.used == served["input_tokens"] + served["output_tokens"]
    assert_no_hold_left(world, mode)
