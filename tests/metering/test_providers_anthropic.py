"""Anthropic Messages protocol: parsing, upstream body, usage normalisation, stream meter."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.providers import anthropic as an
from metering.providers.base import RequestError, Usage
from metering.providers.openai import IMAGE_TOKENS


def _body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_messages_request_fields() -> None:
    parsed = an.parse_request(
        "messages",
        _body(
            model="claude-sonnet-4-5",
            max_tokens=1024,
            system=[{"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}],
            messages=[
                {"role": "user", "content": "Hello, Claude"},
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"},
                        },
                        {"type": "text", "text": "Describe it"},
                    ],
                },
            ],
            tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
            stream=True,
            metadata={"intent": "demo", "user_id": "u1"},
        ),
    )
    assert parsed.endpoint == "messages"
    assert (parsed.max_output_tokens, parsed.stream, parsed.intent) == (1024, True, "demo")
    assert parsed.message_count == 2
    assert parsed.extra_prompt_tokens == IMAGE_TOKENS
    for text in ("Be kind.", "Hello, Claude", "Describe it", "get_weather"):
        assert text in parsed.prompt_text
    assert "QUJD" not in parsed.prompt_text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"nope", None),
        (_body(max_tokens=5, messages=[{"role": "user", "content": "x"}]), "model"),
        (_body(model="c", messages=[{"role": "user", "content": "x"}]), "max_tokens"),
        (
            _body(model="c", max_tokens=None, messages=[{"role": "user", "content": "x"}]),
            "max_tokens",
        ),
        (_body(model="c", max_tokens=0, messages=[{"role": "user", "content": "x"}]), "max_tokens"),
        (
            _body(model="c", max_tokens="9", messages=[{"role": "user", "content": "x"}]),
            "max_tokens",
        ),
        (_body(model="c", max_tokens=9), "messages"),
        (_body(model="c", max_tokens=9, messages=[]), "messages"),
        (_body(model="c", max_tokens=9, messages=[{}], system=5), "system"),
        (_body(model="c", max_tokens=9, messages=[{}], stream="true"), "stream"),
    ],
)
def test_malformed_requests_are_refused(body: bytes, param: str | None) -> None:
    with pytest.raises(RequestError) as caught:
        an.parse_request("messages", body)
    assert caught.value.param == param


def test_upstream_body_clamps_and_drops_intent() -> None:
    parsed = an.parse_request(
        "messages",
        _body(
            model="public",
            max_tokens=4096,
            messages=[{"role": "user", "content": "x"}],
            metadata={"intent": "t"},
        ),
    )
    body = json.loads(
        an.build_upstream_body(parsed, upstream_model="claude-x", max_output_tokens=100)
    )
    assert body == {
        "model": "claude-x",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "x"}],
    }
    assert parsed.body["max_tokens"] == 4096


MESSAGE = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "Hi! My name is Claude."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 2095,
        "output_tokens": 503,
        "cache_creation_input_tokens": 2051,
        "cache_read_input_tokens": 1000,
        "cache_creation": {"ephemeral_5m_input_tokens": 2051, "ephemeral_1h_input_tokens": 0},
        "service_tier": "standard",
    },
}


def test_usage_sums_cache_reads_and_writes_into_input() -> None:
    assert an.usage_from_body("messages", MESSAGE) == Usage(
        input_tokens=2095 + 2051 + 1000,
        output_tokens=503,
        cached_input_tokens=1000,
        cache_write_tokens=2051,
        reasoning_tokens=0,
    )


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"input_tokens": 10, "output_tokens": 3}, Usage(10, 3)),
        (
            {
                "input_tokens": 10,
                "output_tokens": 3,
                "cache_creation_input_tokens": None,
                "cache_read_input_tokens": None,
            },
            Usage(10, 3),
        ),
        (
            {
                "input_tokens": 10,
                "output_tokens": 30,
                "output_tokens_details": {"thinking_tokens": 20},
            },
            Usage(10, 30, 0, 0, 20),
        ),
    ],
)
def test_usage_variants(usage: dict, expected: Usage) -> None:
    assert an.usage_from_body("messages", {"usage": usage}) == expected
    assert an.usage_from_body("messages", {"content": []}) is None


def _stream(eol: bytes = b"\n", *, error: bool = False) -> bytes:
    """The event sequence of anthropic-sdk-python's streaming fixtures, with cache usage."""
    start_usage = {
        "input_tokens": 472,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 2000,
        "output_tokens": 2,
    }
    events = [
        (
            "message_start",
            {
                "message": {
                    "id": "msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "claude-3-opus-latest",
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                }
            },
        ),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": " wörld"}}),
    ]
    if error:
        events.append(("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}}))
    else:
        events += [
            ("content_block_stop", {"index": 0}),
            (
                "message_delta",
                {
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 6},
                },
            ),
            (
                "message_delta",
                {"delta": {}, "usage": {"output_tokens": 15, "input_tokens": 480}},
            ),
            ("message_stop", {}),
        ]
    out = []
    for kind, fields in events:
        data = json.dumps({"type": kind, **fields}, ensure_ascii=False).encode()
        out.append(b"event: " + kind.encode() + eol + b"data: " + data + eol + eol)
    return b"".join(out)


FINAL = Usage(
    input_tokens=480 + 100 + 2000,
    output_tokens=15,
    cached_input_tokens=2000,
    cache_write_tokens=100,
)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_stream_usage_is_replaced_not_summed(eol: bytes) -> None:
    stream = _stream(eol)
    meter = an.stream_meter("messages", strip_usage_chunk=True)
    out = b"".join(meter.feed(stream[i : i + 1]) for i in range(len(stream))) + meter.close()
    assert out == stream
    assert meter.state.usage == FINAL
    assert "".join(meter.state.output_text) == "Hello wörld"
    assert meter.state.saw_output and meter.state.finished and meter.state.error is None


@settings(max_examples=150, deadline=None)
@given(data=st.data(), eol=st.sampled_from([b"\n", b"\r\n"]))
def test_stream_any_split(data: st.DataObject, eol: bytes) -> None:
    stream = _stream(eol)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=30))))
    meter = an.stream_meter("messages")
    out, last = [], 0
    for cut in [*cuts, len(stream)]:
        out.append(meter.feed(stream[last:cut]))
        last = cut
    out.append(meter.close())
    assert b"".join(out) == stream
    assert meter.state.usage == FINAL


def test_message_start_usage_is_not_final() -> None:
    # message_start's output count is a placeholder: a stream cut here has no final usage, only
    # the provider's exact input counts.
    stream = _stream()
    meter = an.stream_meter("messages")
    meter.feed(stream[: stream.index(b"event: content_block_start")])
    assert meter.state.usage is None
    assert meter.state.partial_usage == Usage(2572, 0, 2000, 100)
    assert not meter.state.saw_output


def test_stream_error_event_keeps_usage_so_far() -> None:
    meter = an.stream_meter("messages")
    meter.feed(_stream(error=True))
    meter.close()
    assert meter.state.error == "overloaded_error", "the record keeps the error's type"
    assert meter.state.usage is None, "no message_delta: no final usage"
    assert meter.state.partial_usage == Usage(2572, 0, 2000, 100)
    assert meter.state.output_text == ["Hello", " wörld"]
    assert not meter.state.finished


def test_stream_collects_thinking_and_tool_input() -> None:
    events = [
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "hmm"},
        },
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "t", "name": "calc", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"x":'},
        },
    ]
    meter = an.stream_meter("messages")
    for event in events:
        meter.feed(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
    assert meter.state.output_text == ["hmm", "calc", '{"x":']


def test_error_body_shape() -> None:
    assert json.loads(an.error_body(401, "invalid x-api-key", "authentication_error")) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    }
    body = json.loads(an.error_body(429, "Budget exhausted", code="employee_allowance"))
    assert body["error"] == {
        "type": "rate_limit_error",
        "message": "Budget exhausted",
        "code": "employee_allowance",
    }
