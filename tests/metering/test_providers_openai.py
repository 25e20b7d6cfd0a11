"""OpenAI protocol: request parsing, upstream bodies, usage, chat and responses stream meters."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.providers import openai as oa
from metering.providers.base import RequestError, Usage
from metering.sse import SSESplitter


def _body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def _feed_split(meter, data: bytes, cuts: list[int]) -> bytes:
    out = []
    last = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out.append(meter.feed(data[last:cut]))
        last = cut
    out.append(meter.close())
    return b"".join(out)


# --- parse_request -------------------------------------------------------------------------


def test_chat_request_fields() -> None:
    parsed = oa.parse_request(
        "chat",
        _body(
            model="gpt-4o",
            messages=[
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"q":"x"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "result text"},
            ],
            tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
            max_completion_tokens=300,
            max_tokens=500,
            stream=True,
            stream_options={"include_usage": True},
            metadata={"intent": "support-triage"},
        ),
    )
    assert parsed.endpoint == "chat"
    assert parsed.model == "gpt-4o"
    assert parsed.stream is True
    assert parsed.max_output_tokens == 300  # max_completion_tokens wins
    assert parsed.include_usage_requested is True
    assert parsed.intent == "support-triage"
    assert parsed.message_count == 4
    assert parsed.extra_prompt_tokens == oa.IMAGE_TOKENS
    for text in ("Be brief.", "What is this?", "lookup", '{"q":"x"}', "result text"):
        assert text in parsed.prompt_text
    assert "base64" not in parsed.prompt_text
    assert "call_1" not in parsed.prompt_text


def test_chat_request_defaults() -> None:
    parsed = oa.parse_request(
        "chat", _body(model="m", messages=[{"role": "user", "content": "hi"}])
    )
    assert (parsed.stream, parsed.max_output_tokens, parsed.include_usage_requested) == (
        False,
        None,
        False,
    )
    assert parsed.intent == ""
    assert parsed.prompt_text == "hi"


def test_responses_request_fields() -> None:
    parsed = oa.parse_request(
        "responses",
        _body(
            model="gpt-5",
            instructions="You are terse.",
            input=[
                {"role": "user", "content": [{"type": "input_text", "text": "Summarise"}]},
                {"type": "function_call_output", "call_id": "c", "output": "tool says hi"},
            ],
            max_output_tokens=64,
            stream=True,
        ),
    )
    assert (parsed.endpoint, parsed.stream, parsed.max_output_tokens) == ("responses", True, 64)
    assert "You are terse." in parsed.prompt_text
    assert "Summarise" in parsed.prompt_text
    assert "tool says hi" in parsed.prompt_text
    assert parsed.message_count == 2


def test_responses_may_continue_without_input() -> None:
    parsed = oa.parse_request("responses", _body(model="m", previous_response_id="resp_1"))
    assert parsed.prompt_text == ""


@pytest.mark.parametrize(
    ("items", "text", "extra"),
    [
        ("one text", "one text", 0),
        (["a", "b"], "a\nb", 0),
        ([1, 2, 3], "", 3),
        ([[1, 2], [3]], "", 3),
    ],
)
def test_embeddings_input_shapes(items: object, text: str, extra: int) -> None:
    parsed = oa.parse_request("embeddings", _body(model="e", input=items))
    assert (parsed.prompt_text, parsed.extra_prompt_tokens, parsed.stream) == (text, extra, False)


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        ("chat", b"{not json", None),
        ("chat", b"\xff\xfe", None),
        ("chat", b"[1, 2]", None),
        ("chat", _body(messages=[{"role": "user", "content": "x"}]), "model"),
        ("chat", _body(model="", messages=[{"role": "user", "content": "x"}]), "model"),
        ("chat", _body(model=5, messages=[]), "model"),
        ("chat", _body(model="m"), "messages"),
        ("chat", _body(model="m", messages=[]), "messages"),
        ("chat", _body(model="m", messages="hi"), "messages"),
        ("chat", _body(model="m", messages=[{}], max_tokens=-1), "max_tokens"),
        ("chat", _body(model="m", messages=[{}], max_tokens="10"), "max_tokens"),
        ("chat", _body(model="m", messages=[{}], max_tokens=1.5), "max_tokens"),
        ("chat", _body(model="m", messages=[{}], max_tokens=True), "max_tokens"),
        (
            "chat",
            _body(model="m", messages=[{}], max_completion_tokens=-5),
            "max_completion_tokens",
        ),
        ("chat", _body(model="m", messages=[{}], stream="yes"), "stream"),
        ("chat", _body(model="m", messages=[{}], stream_options=[]), "stream_options"),
        (
            "chat",
            _body(model="m", messages=[{}], stream_options={"include_usage": 1}),
            "stream_options.include_usage",
        ),
        ("responses", _body(model="m"), "input"),
        ("responses", _body(model="m", input=5), "input"),
        ("responses", _body(model="m", input="x", max_output_tokens=-1), "max_output_tokens"),
        ("embeddings", _body(model="m"), "input"),
        ("embeddings", _body(model="m", input=[]), "input"),
        ("embeddings", _body(model="m", input=[{"x": 1}]), "input"),
    ],
)
def test_malformed_requests_are_refused(endpoint: str, body: bytes, param: str | None) -> None:
    with pytest.raises(RequestError) as caught:
        oa.parse_request(endpoint, body)
    assert caught.value.param == param
    assert caught.value.message


# --- build_upstream_body -------------------------------------------------------------------


def test_upstream_body_sets_model_cap_and_include_usage() -> None:
    parsed = oa.parse_request(
        "chat",
        _body(
            model="public",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=1000,
            stream=True,
            metadata={"intent": "x", "team": "a"},
        ),
    )
    original = json.dumps(parsed.body)
    body = json.loads(
        oa.build_upstream_body(
            parsed, upstream_model="gpt-4o-2024", max_output_tokens=200, force_include_usage=True
        )
    )
    assert body["model"] == "gpt-4o-2024"
    assert body["max_tokens"] == 200
    assert "max_completion_tokens" not in body
    assert body["stream_options"] == {"include_usage": True}
    assert body["metadata"] == {"team": "a"}  # the proxy's intent tag is not forwarded
    assert json.dumps(parsed.body) == original  # the parsed request is untouched


def test_upstream_body_uses_the_clients_limit_field() -> None:
    parsed = oa.parse_request(
        "chat",
        _body(model="m", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=9),
    )
    body = json.loads(
        oa.build_upstream_body(
            parsed, upstream_model="u", max_output_tokens=5, force_include_usage=False
        )
    )
    assert body["max_completion_tokens"] == 5 and "max_tokens" not in body
    assert "stream_options" not in body


@pytest.mark.parametrize(
    ("default", "field"), [(None, "max_completion_tokens"), ("max_tokens", "max_tokens")]
)
def test_upstream_body_default_limit_field(default: str | None, field: str) -> None:
    parsed = oa.parse_request("chat", _body(model="m", messages=[{"role": "user", "content": "x"}]))
    kwargs = {"default_limit_field": default} if default else {}
    body = json.loads(
        oa.build_upstream_body(
            parsed, upstream_model="u", max_output_tokens=77, force_include_usage=False, **kwargs
        )
    )
    assert body[field] == 77


def test_upstream_body_keeps_other_stream_options_and_responses_field() -> None:
    parsed = oa.parse_request(
        "chat",
        _body(
            model="m",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            stream_options={"include_obfuscation": False},
        ),
    )
    body = json.loads(
        oa.build_upstream_body(
            parsed, upstream_model="u", max_output_tokens=None, force_include_usage=True
        )
    )
    assert body["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert "max_tokens" not in body and "max_completion_tokens" not in body

    parsed = oa.parse_request("responses", _body(model="m", input="x", max_output_tokens=900))
    body = json.loads(
        oa.build_upstream_body(
            parsed, upstream_model="u", max_output_tokens=100, force_include_usage=True
        )
    )
    assert body["max_output_tokens"] == 100
    assert "stream_options" not in body

    parsed = oa.parse_request("embeddings", _body(model="m", input="x"))
    body = json.loads(
        oa.build_upstream_body(
            parsed, upstream_model="u", max_output_tokens=100, force_include_usage=True
        )
    )
    assert body == {"model": "u", "input": "x"}


# --- usage_from_body -----------------------------------------------------------------------

CHAT_BODY = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4.1-2025-04-14",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 2006,
        "completion_tokens": 300,
        "total_tokens": 2306,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 256,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
}


def test_chat_usage_subsets_are_not_added() -> None:
    assert oa.usage_from_body("chat", CHAT_BODY) == Usage(
        input_tokens=2006,
        output_tokens=300,
        cached_input_tokens=1920,
        cache_write_tokens=0,
        reasoning_tokens=256,
    )


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}, Usage(5, 2)),
        (
            {
                "prompt_tokens": 5,
                "completion_tokens": 2,
                "total_tokens": 7,
                "prompt_tokens_details": None,
                "completion_tokens_details": None,
            },
            Usage(5, 2),
        ),
        (
            {
                "prompt_tokens": 50,
                "completion_tokens": 2,
                "total_tokens": 52,
                "prompt_tokens_details": {"cached_tokens": None, "cache_write_tokens": 40},
                "completion_tokens_details": {"reasoning_tokens": None},
            },
            Usage(50, 2, 0, 40, 0),
        ),
        # Gemini-style: thinking tokens only in total_tokens; billed as output.
        (
            {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 40},
            Usage(10, 30, 0, 0, 25),
        ),
        # Ollama with a cached prompt evaluation reports 0 prompt tokens.
        ({"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3}, Usage(0, 3)),
        # Nonsense values count as zero rather than breaking the accounting.
        ({"prompt_tokens": -4, "completion_tokens": "7", "total_tokens": None}, Usage(0, 0)),
    ],
)
def test_chat_usage_variants(usage: dict, expected: Usage) -> None:
    assert oa.usage_from_body("chat", {"usage": usage}) == expected


def test_missing_usage_is_none() -> None:
    assert oa.usage_from_body("chat", {"choices": []}) is None
    assert oa.usage_from_body("chat", {"usage": None}) is None


def test_responses_and_embeddings_usage() -> None:
    body = {
        "object": "response",
        "usage": {
            "input_tokens": 328,
            "input_tokens_details": {"cached_tokens": 128},
            "output_tokens": 52,
            "output_tokens_details": {"reasoning_tokens": 20},
            "total_tokens": 380,
        },
    }
    assert oa.usage_from_body("responses", body) == Usage(328, 52, 128, 0, 20)
    embeddings = {"object": "list", "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    assert oa.usage_from_body("embeddings", embeddings) == Usage(8, 0)


# --- chat streams --------------------------------------------------------------------------


def _chunk(delta: dict | None, *, usage: object = None, finish: str | None = None) -> dict:
    base = {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_44709d6fcb",
        "usage": usage,
    }
    if delta is None:
        return {**base, "choices": []}
    return {
        **base,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _chat_stream(eol: bytes = b"\n", with_usage: bool = True) -> tuple[bytes, bytes]:
    """A recorded-shape chat stream and the same stream without its usage chunk."""
    events = [
        _chunk({"role": "assistant", "content": "", "refusal": None}),
        _chunk({"content": "Hel"}),
        _chunk({"content": "lo ✓"}),
        _chunk({}, finish="stop"),
    ]
    usage = {
        "prompt_tokens": 19,
        "completion_tokens": 3,
        "total_tokens": 22,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }

    def frame(obj: object) -> bytes:
        # Raw UTF-8 (not \u escapes), so splits can fall inside a multi-byte character.
        return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + eol + eol

    head = b"".join(frame(e) for e in events)
    done = b"data: [DONE]" + eol + eol
    usage_chunk = frame(_chunk(None, usage=usage)) if with_usage else b""
    return head + usage_chunk + done, head + done


CHAT_USAGE = Usage(19, 3)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_chat_stream_strips_usage_chunk_byte_exactly(eol: bytes) -> None:
    full, stripped = _chat_stream(eol)
    meter = oa.stream_meter("chat", strip_usage_chunk=True)
    out = b"".join(meter.feed(full[i : i + 1]) for i in range(len(full))) + meter.close()
    assert out == stripped
    assert meter.state.usage == CHAT_USAGE
    assert "".join(meter.state.output_text) == "Hello ✓"
    assert meter.state.saw_output and meter.state.finished and meter.state.error is None


def test_chat_stream_relays_unchanged_when_client_asked_for_usage() -> None:
    full, _ = _chat_stream()
    meter = oa.stream_meter("chat")
    assert meter.feed(full) == full
    assert meter.close() == b""
    assert meter.state.usage == CHAT_USAGE


@settings(max_examples=200, deadline=None)
@given(data=st.data(), eol=st.sampled_from([b"\n", b"\r\n"]), strip=st.booleans())
def test_chat_stream_any_split(data: st.DataObject, eol: bytes, strip: bool) -> None:
    full, stripped = _chat_stream(eol)
    cuts = data.draw(st.lists(st.integers(0, len(full)), max_size=30))
    meter = oa.stream_meter("chat", strip_usage_chunk=strip)
    out = _feed_split(meter, full, cuts)
    assert out == (stripped if strip else full)
    assert meter.state.usage == CHAT_USAGE
    assert "".join(meter.state.output_text) == "Hello ✓"


def test_chat_stream_saw_output_only_after_content() -> None:
    meter = oa.stream_meter("chat")
    meter.feed(
        b"data: " + json.dumps(_chunk({"role": "assistant", "content": ""})).encode() + b"\n\n"
    )
    assert not meter.state.saw_output
    meter.feed(b"data: " + json.dumps(_chunk({"content": "x"})).encode() + b"\n\n")
    assert meter.state.saw_output


def test_chat_stream_vllm_continuous_usage_takes_last_value() -> None:
    frames = []
    for n in (1, 2, 3):
        usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
        frames.append(b"data: " + json.dumps(_chunk({"content": "x"}, usage=usage)).encode())
    stream = b"\n\n".join(frames) + b"\n\ndata: [DONE]\n\n"
    meter = oa.stream_meter("chat", strip_usage_chunk=True)
    out = meter.feed(stream) + meter.close()
    assert out == stream  # chunks with content are never dropped
    assert meter.state.usage == Usage(7, 3)


def test_chat_stream_tool_calls_and_comments() -> None:
    delta = {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": '{"a":'}}]}
    stream = (
        b": keep-alive\n\n"
        + b"data: "
        + json.dumps(_chunk(delta)).encode()
        + b"\n\ndata: [DONE]\n\n"
    )
    meter = oa.stream_meter("chat", strip_usage_chunk=True)
    assert meter.feed(stream) + meter.close() == stream
    assert meter.state.output_text == ["f", '{"a":']
    assert meter.state.saw_output


def test_chat_stream_error_payload() -> None:
    error = {"error": {"message": "The server had an error", "type": "server_error"}}
    stream = (
        b"data: " + json.dumps(_chunk({"content": "par"})).encode() + b"\n\n"
        b"data: " + json.dumps(error).encode() + b"\n\n"
    )
    meter = oa.stream_meter("chat", strip_usage_chunk=True)
    assert meter.feed(stream) + meter.close() == stream
    assert meter.state.error == "The server had an error"
    assert meter.state.usage is None
    assert meter.state.output_text == ["par"]
    assert not meter.state.finished


def test_chat_stream_cut_before_usage_keeps_partial_text() -> None:
    full, _ = _chat_stream()
    meter = oa.stream_meter("chat", strip_usage_chunk=True)
    cut = full.index(b"lo \xe2\x9c\x93") + 4  # inside the multi-byte check mark
    relayed = meter.feed(full[:cut])
    assert relayed.endswith(b"\n\n")  # only complete events are relayed
    assert meter.state.usage is None
    assert meter.state.output_text == ["Hel"]


def test_chat_stream_unterminated_last_event_is_flushed() -> None:
    frame = b"data: " + json.dumps(_chunk(None, usage={"prompt_tokens": 1})).encode()
    meter = oa.stream_meter("chat", strip_usage_chunk=False)
    assert meter.feed(frame) == frame
    meter.close()
    assert meter.state.usage == Usage(1, 0)


# --- responses streams ---------------------------------------------------------------------


def _responses_stream(eol: bytes = b"\n", terminal: str = "response.completed") -> bytes:
    response = {"id": "resp_67c9", "object": "response", "status": "in_progress", "usage": None}
    usage = {
        "input_tokens": 37,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 11,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 48,
    }
    events = [
        ("response.created", {"response": response}),
        ("response.in_progress", {"response": response}),
        ("response.output_item.added", {"output_index": 0, "item": {"type": "message"}}),
        ("response.content_part.added", {"item_id": "msg_1", "output_index": 0}),
        ("response.output_text.delta", {"item_id": "msg_1", "delta": "Hi"}),
        ("response.output_text.delta", {"item_id": "msg_1", "delta": " there"}),
        ("response.output_text.done", {"item_id": "msg_1", "text": "Hi there"}),
        (terminal, {"response": {**response, "status": "completed", "usage": usage}}),
    ]
    out = []
    for seq, (kind, fields) in enumerate(events):
        data = json.dumps({"type": kind, "sequence_number": seq, **fields}).encode()
        out.append(b"event: " + kind.encode() + eol + b"data: " + data + eol + eol)
    return b"".join(out)


@pytest.mark.parametrize("terminal", ["response.completed", "response.incomplete"])
def test_responses_stream_usage_from_terminal_event(terminal: str) -> None:
    stream = _responses_stream(terminal=terminal)
    meter = oa.stream_meter("responses", strip_usage_chunk=True)
    assert meter.feed(stream) + meter.close() == stream
    assert meter.state.usage == Usage(37, 11)
    assert meter.state.output_text == ["Hi", " there"]
    assert meter.state.saw_output and meter.state.finished


@settings(max_examples=100, deadline=None)
@given(data=st.data(), eol=st.sampled_from([b"\n", b"\r\n"]))
def test_responses_stream_any_split(data: st.DataObject, eol: bytes) -> None:
    stream = _responses_stream(eol)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    meter = oa.stream_meter("responses")
    assert _feed_split(meter, stream, cuts) == stream
    assert meter.state.usage == Usage(37, 11)


def test_responses_stream_failed_and_error_events() -> None:
    failed = {
        "type": "response.failed",
        "response": {
            "status": "failed",
            "error": {"code": "server_error", "message": "boom"},
            "usage": {"input_tokens": 5, "output_tokens": 1, "total_tokens": 6},
        },
    }
    meter = oa.stream_meter("responses")
    meter.feed(b"event: response.failed\ndata: " + json.dumps(failed).encode() + b"\n\n")
    assert meter.state.error == "boom"
    assert meter.state.usage == Usage(5, 1)

    meter = oa.stream_meter("responses")
    error = {"type": "error", "code": "server_error", "message": "overloaded", "param": None}
    meter.feed(b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n")
    assert meter.state.error == "overloaded"
    assert meter.state.usage is None


def test_embeddings_do_not_stream() -> None:
    with pytest.raises(ValueError):
        oa.stream_meter("embeddings")


# --- SSE splitter and errors ---------------------------------------------------------------


def test_splitter_multiple_events_per_chunk_and_multiline_data() -> None:
    splitter = SSESplitter()
    events = splitter.feed(
        b"event: a\ndata: 1\ndata: 2\n\n:comment\n\ndata:x\n\nid: 5\nretry: 1\n\n"
    )
    assert [(e.event, e.data) for e in events] == [("a", "1\n2"), ("", None), ("", "x"), ("", None)]
    assert splitter.close() == []


def test_error_body_shape() -> None:
    body = json.loads(
        oa.error_body(429, "Budget exhausted", "insufficient_quota", "employee_allowance")
    )
    assert body == {
        "error": {
            "message": "Budget exhausted",
            "type": "insufficient_quota",
            "param": None,
            "code": "employee_allowance",
        }
    }
    body = json.loads(oa.error_body(400, "bad", "invalid_request_error", param="model"))
    assert body["error"]["param"] == "model" and body["error"]["code"] is None


_LINES = st.sampled_from(
    [
        b'data: {"a": 1}',
        b"data:x",
        b"event: ping",
        b": comment",
        b"id: 7",
        b"data: \xc3\xa9t\xc3\xa9",
        b"",
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.tuples(_LINES, st.sampled_from([b"\n", b"\r\n", b"\r"])), max_size=25),
    data=st.data(),
)
def test_splitter_is_split_invariant_with_mixed_line_ends(lines: list, data: st.DataObject) -> None:
    stream = b"".join(line + eol for line, eol in lines)
    whole = SSESplitter()
    expected = whole.feed(stream) + whole.close()
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=20))))
    splitter = SSESplitter()
    got, last = [], 0
    for cut in [*cuts, len(stream)]:
        got += splitter.feed(stream[last:cut])
        last = cut
    got += splitter.close()
    assert b"".join(e.raw for e in got) == stream

    # Blocks without data dispatch nothing (SSE spec); how runs of blank lines are grouped
    # into such blocks may depend on the cuts, but their bytes are all relayed (checked above).
    def dispatched(events: list) -> list:
        return [(e.event, e.data) for e in events if e.data is not None]

    assert dispatched(got) == dispatched(expected)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_splitter_flushes_an_unterminated_multi_line_event(eol: bytes) -> None:
    stream = b"data: 1" + eol + eol + b"event: done" + eol + b"data: 2" + eol + b"data: 3"
    splitter = SSESplitter()
    events = splitter.feed(stream) + splitter.close()
    assert [(e.event, e.data) for e in events] == [("", "1"), ("done", "2\n3")]
    assert b"".join(e.raw for e in events) == stream
