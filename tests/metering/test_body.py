"""The request-reading edge: bounded body reads, Content-Length, and a parse that never crashes."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace

import pytest
from django.core.exceptions import RequestAborted

from metering import body, tokens
from metering.providers import anthropic, openai
from metering.providers.base import ParsedRequest, RequestError


def receiver(chunks: list[bytes], *, disconnect: bool = False):
    """An ASGI `receive` that hands out `chunks` and counts how many were taken."""
    taken: list[bytes] = []

    async def receive() -> dict:
        if len(taken) == len(chunks):
            assert disconnect, "read past the end of the body"
            return {"type": "http.disconnect"}
        chunk = chunks[len(taken)]
        taken.append(chunk)
        more = len(taken) < len(chunks) or disconnect
        return {"type": "http.request", "body": chunk, "more_body": more}

    return receive, taken


def test_body_is_read_whole_up_to_the_limit() -> None:
    receive, taken = receiver([b"ab", b"", b"cd", b"e"])
    assert asyncio.run(body.body_read(receive, limit=5)) == b"abcde"
    assert len(taken) == 4


def test_reading_stops_at_the_first_chunk_past_the_limit() -> None:
    chunks = [b"x" * 1000] * 1000
    receive, taken = receiver(chunks)
    with pytest.raises(body.BodyTooLarge):
        asyncio.run(body.body_read(receive, limit=2500))
    assert len(taken) == 3, "nothing after the chunk that passed the limit is read"


def test_a_client_leaving_mid_body_aborts() -> None:
    receive, _ = receiver([b"partial"], disconnect=True)
    with pytest.raises(RequestAborted):
        asyncio.run(body.body_read(receive, limit=100))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], None),
        ([(b"content-length", b"0")], 0),
        ([(b"Content-Length", b"8388609")], 8388609),
        ([(b"content-length", b"12"), (b"content-length", b"12")], 12),
    ],
)
def test_declared_length(headers: list, expected: int | None) -> None:
    assert body.declared_length(headers) == expected


@pytest.mark.parametrize(
    "value", [[b"-1"], [b"+5"], [b"1e3"], [b""], [b"12", b"13"], [b"\xd9\xa1"]]
)
def test_declared_length_that_is_not_one_number_is_refused(value: list[bytes]) -> None:
    with pytest.raises(body.BadContentLength):
        body.declared_length([(b"content-length", v) for v in value])


def test_json_depth() -> None:
    value = {"a": [1, {"b": [], "c": "x"}]}  # 4 levels: object, array, object, array
    assert not body.json_too_deep(value, 4)
    assert body.json_too_deep(value, 3)
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert body.json_too_deep(deep, 64)  # no recursion: no RecursionError either
    assert not body.json_too_deep([[]] * 10_000, 2)


def chat(**fields: object) -> bytes:
    return json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **fields}
    ).encode()


def parse(raw: bytes, protocol=openai, endpoint: str = "chat") -> ParsedRequest:
    return asyncio.run(body.request_parse(protocol, endpoint, raw))


def test_a_plain_request_parses() -> None:
    parsed = parse(chat(max_tokens=7))
    assert (parsed.model, parsed.max_output_tokens, parsed.prompt_text) == ("gpt-4o-mini", 7, "hi")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # pool thread
        b'{"model": "m", "messages": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",  # on the loop
        b'{"model": "m", "messages": [{"role": "user", "content": '
        + b"[" * 990
        + b'"x"'
        + b"]" * 990
        + b"}]}",
        chat(metadata=json.loads("[" * 65 + "]" * 65)),
    ],
)
def test_too_deep_is_a_request_error(raw: bytes, settings) -> None:
    assert settings.TB_MAX_JSON_DEPTH == 64
    with pytest.raises(RequestError) as caught:
        parse(raw)
    assert caught.value.message == "The request body nests arrays and objects more than 64 deep."


def test_the_depth_limit_is_a_setting(settings) -> None:
    raw = chat(metadata=json.loads("[" * 20 + "]" * 20))
    assert parse(raw).model == "gpt-4o-mini"
    settings.TB_MAX_JSON_DEPTH = 20
    with pytest.raises(RequestError):
        parse(raw)


@pytest.mark.parametrize(
    "model", ["gpt-\ud800", "m" * 201, "gpt\x00", " gpt-4o-mini", "gpt-4o-mini\n"]
)
@pytest.mark.parametrize(("protocol", "endpoint"), [(openai, "chat"), (anthropic, "messages")])
def test_a_model_name_no_route_can_have_is_refused(model: str, protocol, endpoint: str) -> None:
    raw = json.dumps(
        {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    with pytest.raises(RequestError) as caught:
        parse(raw, protocol, endpoint)
    assert caught.value.param == "model"
    # Text no stored label may hold is named as such (metering.validation); the rest as a name
    # no route can have.
    message = caught.value.message
    assert "200 printable characters" in message or "the text contains a" in message


def test_whatever_the_parser_trips_on_is_a_request_error(caplog) -> None:
    raw = chat(messages=[{"role": "user", "content": [{"type": ["text"], "text": "x"}]}])
    with pytest.raises(RequestError) as caught:
        parse(raw)
    assert caught.value.message == "The request body is malformed."
    assert "request parse failed" in caplog.text


def _recording_protocol(seen: list[str]) -> SimpleNamespace:
    def parse_request(endpoint: str, raw: bytes) -> ParsedRequest:
        seen.append(threading.current_thread().name)
        return openai.parse_request(endpoint, raw)

    return SimpleNamespace(parse_request=parse_request)


def test_small_bodies_parse_on_the_loop_large_ones_on_the_pool() -> None:
    seen: list[str] = []
    protocol = _recording_protocol(seen)
    parse(chat(), protocol)
    large = chat(messages=[{"role": "user", "content": "x" * (body.INLINE_BYTES + 1)}])
    assert parse(large, protocol).prompt_text == "x" * (body.INLINE_BYTES + 1)
    assert seen[0] == threading.current_thread().name
    assert seen[1].startswith("tb-parse")


def test_long_prompts_are_counted_on_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = tokens.estimate_request_tokens

    def recording(parsed: ParsedRequest) -> int:
        seen.append(threading.current_thread().name)
        return real(parsed)

    monkeypatch.setattr(tokens, "estimate_request_tokens", recording)
    tokens.encoding()
    short = openai.parse_request("chat", chat())
    long = openai.parse_request(
        "chat", chat(messages=[{"role": "user", "content": "word " * tokens.INLINE_CHARS}])
    )
    assert asyncio.run(body.prompt_estimate(short)) == real(short)
    assert asyncio.run(body.prompt_estimate(long)) == real(long)
    assert seen[0] == threading.current_thread().name
    assert seen[1].startswith("tb-parse")
