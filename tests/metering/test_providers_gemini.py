"""Gemini API protocol: parsing, upstream body, usage normalisation, stream meter, errors; and
the translation of chat and messages calls to it."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.providers import gemini as gm
from metering.providers.base import RequestError, Usage
from metering.providers.openai import IMAGE_TOKENS
from metering.proxy.errors import ProxyError
from metering.translate import TranslationError
from metering.translate import gemini as tr


def _body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def _user(text: str) -> dict:
    return {"role": "user", "parts": [{"text": text}]}


# --- requests ------------------------------------------------------------------------------


def test_request_fields() -> None:
    parsed = gm.parse_request(
        gm.ENDPOINT,
        _body(
            systemInstruction={"parts": [{"text": "Be kind."}]},
            contents=[
                _user("Hello"),
                {
                    "role": "user",
                    "parts": [{"inlineData": {"mimeType": "image/png", "data": "QUJD"}}],
                },
            ],
            tools=[{"functionDeclarations": [{"name": "weather"}]}],
            generationConfig={"maxOutputTokens": 300, "candidateCount": 2},
        ),
    )
    assert parsed.endpoint == "generate_content"
    assert parsed.model == ""  # the path names it
    assert parsed.max_output_tokens == 300
    assert parsed.choices == 2
    assert parsed.message_count == 2
    assert parsed.extra_prompt_tokens == IMAGE_TOKENS
    assert "Be kind." in parsed.prompt_text and "Hello" in parsed.prompt_text
    assert "weather" in parsed.prompt_text
    assert "QUJD" not in parsed.prompt_text


def test_snake_case_config_is_read() -> None:
    parsed = gm.parse_request(
        gm.ENDPOINT, _body(contents=[_user("x")], generation_config={"max_output_tokens": 7})
    )
    assert parsed.max_output_tokens == 7


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"not json", None),
        (b"[]", None),
        (_body(), "contents"),
        (_body(contents=[]), "contents"),
        (_body(contents=[_user("x")], generationConfig={"maxOutputTokens": 0}), None),
        (_body(contents=[_user("x")], generationConfig={"maxOutputTokens": "9"}), None),
        (_body(contents=[_user("x")], generationConfig=[]), "generationConfig"),
        (_body(contents=[_user("x")], generationConfig={"candidateCount": True}), None),
    ],
)
def test_bad_requests_are_refused(body: bytes, param: str | None) -> None:
    with pytest.raises(RequestError) as refused:
        gm.parse_request(gm.ENDPOINT, body)
    if param is not None:
        assert refused.value.param == param


def test_upstream_body_sets_the_held_limit_and_keeps_the_rest() -> None:
    parsed = gm.parse_request(
        gm.ENDPOINT,
        _body(
            model="ignored",
            contents=[_user("hi")],
            generationConfig={"maxOutputTokens": 900, "temperature": 0.5},
            safetySettings=[],
        ),
    )
    encoded = gm.encode_upstream_body(parsed)
    sent = json.loads(encoded.finish(upstream_model="gemini-2.5-flash", max_output_tokens=100))
    assert sent == {
        "generationConfig": {"temperature": 0.5, "maxOutputTokens": 100},
        "contents": [_user("hi")],
        "safetySettings": [],
    }
    kept = json.loads(encoded.finish(upstream_model="m", max_output_tokens=None))
    assert kept["generationConfig"]["maxOutputTokens"] == 900
    assert encoded.with_fields({"x": 1}) is encoded
    assert parsed.body["generationConfig"]["maxOutputTokens"] == 900  # not modified


def test_upstream_body_without_config() -> None:
    parsed = gm.parse_request(gm.ENDPOINT, _body(contents=[_user("hi")]))
    encoded = gm.encode_upstream_body(parsed)
    assert json.loads(encoded.finish(upstream_model="m", max_output_tokens=None)) == {
        "contents": [_user("hi")]
    }
    assert json.loads(encoded.finish(upstream_model="m", max_output_tokens=5)) == {
        "generationConfig": {"maxOutputTokens": 5},
        "contents": [_user("hi")],
    }


# --- usage ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "usage"),
    [
        ({}, Usage()),
        (
            {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
            Usage(input_tokens=10, output_tokens=5),
        ),
        # The cached part is inside the prompt count: not added again.
        (
            {"promptTokenCount": 100, "cachedContentTokenCount": 60, "candidatesTokenCount": 5},
            Usage(input_tokens=100, output_tokens=5, cached_input_tokens=60),
        ),
        # Thoughts are reported apart from the candidates and billed as output.
        (
            {"promptTokenCount": 8, "candidatesTokenCount": 4, "thoughtsTokenCount": 30},
            Usage(input_tokens=8, output_tokens=34, reasoning_tokens=30),
        ),
        # Tool-use prompt tokens are input the model read, reported apart.
        (
            {"promptTokenCount": 8, "toolUsePromptTokenCount": 12, "candidatesTokenCount": 1},
            Usage(input_tokens=20, output_tokens=1),
        ),
        # Garbage counts count nothing; a cached count over the input is capped.
        (
            {"promptTokenCount": -3, "candidatesTokenCount": "9", "cachedContentTokenCount": 4},
            Usage(input_tokens=0, output_tokens=0, cached_input_tokens=0),
        ),
    ],
)
def test_usage_normalisation(metadata: dict, usage: Usage) -> None:
    assert gm.gemini_usage(metadata) == usage
    assert gm.usage_from_body(gm.ENDPOINT, {"usageMetadata": metadata}) == usage
    # The translated chat usage normalises to the same usage (no kind lost or counted twice).
    from metering.providers.openai import chat_usage

    assert chat_usage(tr.gemini_usage_to_chat(metadata)) == usage


def test_no_usage_metadata() -> None:
    assert gm.usage_from_body(gm.ENDPOINT, {"candidates": []}) is None


@settings(max_examples=200, deadline=None)
@given(
    prompt=st.integers(0, 10**7),
    cached=st.integers(0, 10**7),
    visible=st.integers(0, 10**6),
    thoughts=st.integers(0, 10**6),
)
def test_usage_total_is_gemini_total(prompt: int, cached: int, visible: int, thoughts: int) -> None:
    metadata = {
        "promptTokenCount": prompt,
        "cachedContentTokenCount": cached,
        "candidatesTokenCount": visible,
        "thoughtsTokenCount": thoughts,
    }
    usage = gm.gemini_usage(metadata)
    assert usage.total_tokens == prompt + visible + thoughts
    assert usage.cached_input_tokens <= usage.input_tokens
    assert usage.reasoning_tokens <= usage.output_tokens


# --- streams -------------------------------------------------------------------------------


def _chunk(text: str, visible: int, *, finish: str | None = None, **extra: int) -> bytes:
    candidate: dict = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    metadata = {"promptTokenCount": 12, "candidatesTokenCount": visible, **extra}
    event = {"candidates": [candidate], "usageMetadata": metadata, "responseId": "r1"}
    return b"data: " + json.dumps(event).encode() + b"\r\n\r\n"


STREAM = (
    _chunk(" the", 1)
    + _chunk(" quick", 2)
    + _chunk(" fox", 3, finish="STOP", thoughtsTokenCount=7, cachedContentTokenCount=4)
)


@pytest.mark.parametrize("size", [1, 7, 64, len(STREAM)])
def test_stream_meter_any_chunking(size: int) -> None:
    meter = gm.stream_meter(gm.ENDPOINT)
    out = b""
    for i in range(0, len(STREAM), size):
        out += meter.feed(STREAM[i : i + size])
    out += meter.close()
    assert out == STREAM  # relayed unchanged
    state = meter.state
    assert state.finished and state.saw_output and state.error is None
    assert state.usage == Usage(
        input_tokens=12, output_tokens=10, cached_input_tokens=4, reasoning_tokens=7
    )
    assert "".join(state.output_text) == " the quick fox"


def test_stream_cut_before_the_finish_keeps_the_counts_so_far() -> None:
    meter = gm.stream_meter(gm.ENDPOINT)
    meter.feed(_chunk(" the", 1) + _chunk(" quick", 2))
    assert meter.state.usage is None and not meter.state.finished
    assert meter.state.partial_usage is not None
    assert meter.state.partial_usage.input_tokens == 12


def test_stream_error_event() -> None:
    meter = gm.stream_meter(gm.ENDPOINT)
    error = {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}
    meter.feed(_chunk(" the", 1) + b"data: " + json.dumps(error).encode() + b"\n\n")
    assert meter.state.error == "UNAVAILABLE"
    assert meter.state.usage is None and meter.state.saw_output


def test_stream_garbage_is_ignored() -> None:
    meter = gm.stream_meter(gm.ENDPOINT)
    meter.feed(b": comment\n\ndata: not json\n\ndata: [1]\n\n" + STREAM)
    assert meter.state.finished and meter.state.usage is not None


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "wire", "expected"),
    [
        (400, None, "INVALID_ARGUMENT"),
        (401, None, "UNAUTHENTICATED"),
        (429, "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"),
        (502, None, "UNAVAILABLE"),
        (599, None, "INTERNAL"),
    ],
)
def test_error_shape(status: int, wire: str | None, expected: str) -> None:
    body = json.loads(gm.error_body(status, "No.", wire))
    assert body == {"error": {"code": status, "message": "No.", "status": expected}}


def test_error_code_goes_in_an_error_info() -> None:
    body = json.loads(gm.error_body(429, "Budget.", "RESOURCE_EXHAUSTED", "key_cap", "x"))
    (info,) = body["error"]["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert info["reason"] == "key_cap" and info["metadata"] == {"param": "x"}


# --- translation ---------------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


def test_chat_request_to_gemini() -> None:
    body = tr.chat_request_to_gemini(
        {
            "model": "gemini-2.5-flash",
            "stream": True,
            "max_completion_tokens": 50,
            "temperature": 0.2,
            "top_p": 0.9,
            "stop": "END",
            "reasoning_effort": "low",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "-3C"},
                {"role": "user", "content": "Thanks"},
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": SCHEMA}}],
            "tool_choice": "required",
        }
    )
    assert body == {
        "contents": [
            {"role": "user", "parts": [{"text": "Weather?"}]},
            {
                "role": "model",
                "parts": [{"functionCall": {"name": "weather", "args": {"city": "Oslo"}}}],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "weather", "response": {"result": "-3C"}}},
                    {"text": "Thanks"},
                ],
            },
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "maxOutputTokens": 50,
            "temperature": 0.2,
            "topP": 0.9,
            "stopSequences": ["END"],
            "thinkingConfig": {"thinkingBudget": 1024},
        },
        "tools": [{"functionDeclarations": [{"name": "weather", "parametersJsonSchema": SCHEMA}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2, "messages": []}, "n"),
        ({"messages": [{"role": "tool", "tool_call_id": "x", "content": "r"}]}, "messages"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
                    }
                ]
            },
            "messages",
        ),
        ({"messages": [], "tools": [{"type": "custom"}]}, "tools"),
    ],
)
def test_chat_requests_gemini_cannot_carry(body: dict, param: str) -> None:
    with pytest.raises(TranslationError) as refused:
        tr.chat_request_to_gemini(body)
    assert refused.value.param == param


def test_messages_request_to_gemini() -> None:
    body = tr.messages_request_to_gemini(
        {
            "model": "gemini-2.5-flash",
            "max_tokens": 40,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "Hi"}],
        }
    )
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["contents"] == [_user("Hi")]
    assert body["generationConfig"]["maxOutputTokens"] == 40


ANSWER = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "Thinking.", "thought": True},
                    {"text": "Calling."},
                    {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}},
                ],
            },
            "finishReason": "STOP",
        }
    ],
    "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 6, "thoughtsTokenCount": 3},
    "modelVersion": "gemini-2.5-flash",
    "responseId": "abc",
}


def test_whole_answer_to_chat_and_messages() -> None:
    chat = tr.gemini_response_to_chat(ANSWER, model="m", created=1)
    choice = chat["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Calling."
    assert choice["message"]["reasoning_content"] == "Thinking."
    call = choice["message"]["tool_calls"][0]
    assert call["function"] == {"name": "weather", "arguments": '{"city":"Oslo"}'}
    assert chat["usage"]["prompt_tokens"] == 9 and chat["usage"]["completion_tokens"] == 9
    message = tr.gemini_response_to_messages(ANSWER, model="m")
    assert message["stop_reason"] == "tool_use"
    assert [b["type"] for b in message["content"]] == ["text", "tool_use"]
    assert message["usage"]["input_tokens"] == 9 and message["usage"]["output_tokens"] == 9


def _events(frames: list[bytes]) -> list:
    out = []
    for frame in b"".join(frames).split(b"\n\n"):
        for line in frame.split(b"\n"):
            if line.startswith(b"data: "):
                data = line[6:]
                out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


def _stream_events() -> list[dict]:
    return [json.loads(c[6:]) for c in STREAM.split(b"\r\n\r\n") if c]


def test_stream_to_chat() -> None:
    translator = tr.GeminiToChat(model="m", created=1, include_usage=True)
    frames = [f for event in _stream_events() for f in translator.feed(event)]
    events = _events(frames)
    assert events[-1] == "[DONE]"
    text = "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"]
    )
    assert text == " the quick fox"
    usage = events[-2]["usage"]
    assert usage["prompt_tokens"] == 12 and usage["completion_tokens"] == 10
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 7
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert translator.feed(_stream_events()[0]) == []  # nothing after the end


def test_stream_to_messages() -> None:
    translator = tr.GeminiToMessages(model="m")
    frames = [f for event in _stream_events() for f in translator.feed(event)]
    events = _events(frames)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    delta = events[-2]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["input_tokens"] + delta["usage"]["cache_read_input_tokens"] == 12
    assert delta["usage"]["output_tokens"] == 10


# --- the surface's paths -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1beta/models/gemini-2.5-flash:generateContent", ("gemini-2.5-flash", False)),
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent", ("gemini-2.5-flash", True)),
        ("/v1/models/gemini-2.5-flash:generateContent", ("gemini-2.5-flash", False)),
        ("/v1beta/models/a:b:generateContent", ("a:b", False)),
        ("/v1beta/models/gemini-2.5-flash:countTokens", None),
        ("/v1beta/models/:generateContent", None),
        ("/v1beta/models/gemini-2.5-flash", None),
        ("/v1/models/gpt-6", None),
        ("/v1/chat/completions", None),
    ],
)
def test_gemini_paths(path: str, expected: tuple[str, bool] | None) -> None:
    from metering.proxy import surface

    assert surface.gemini_call_of(path) == expected


def test_the_stream_format_must_be_sse() -> None:
    from metering.proxy import surface

    assert surface.gemini_stream_format({"alt": "sse"}) is None
    refused = surface.gemini_stream_format({})
    assert refused is not None and refused.status == 400 and refused.param == "alt"


# --- countTokens and the models list (pure) ------------------------------------------------


def test_a_count_reads_contents_or_a_whole_generate_request() -> None:
    plain = gm.parse_count_request(
        gm.COUNT_ENDPOINT, b'{"contents": [{"parts": [{"text": "Hi there"}]}]}'
    )
    assert (plain.prompt_text, plain.message_count, plain.max_output_tokens) == (
        "Hi there",
        1,
        None,
    )
    whole = gm.parse_count_request(
        gm.COUNT_ENDPOINT,
        json.dumps(
            {
                "generateContentRequest": {
                    "model": "models/x",
                    "systemInstruction": {"parts": [{"text": "Be brief."}]},
                    "contents": [{"parts": [{"text": "Hi there"}]}],
                    "generationConfig": {"maxOutputTokens": 5},
                }
            }
        ).encode(),
    )
    assert whole.prompt_text == "Be brief.\nHi there"
    assert (whole.model, whole.max_output_tokens) == ("", None)  # the model is the path's
    sent = json.loads(gm.count_upstream_body(whole.body, "gemini-2.5-pro"))
    assert sent["generateContentRequest"]["model"] == "models/gemini-2.5-pro"
    assert sent["generateContentRequest"]["contents"] == [{"parts": [{"text": "Hi there"}]}]
    assert json.loads(gm.count_upstream_body(plain.body, "m")) == plain.body


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{}", "contents"),
        (b'{"contents": []}', "contents"),
        (b'{"contents": "a", "generateContentRequest": {"contents": "a"}}', "contents"),
        (b'{"generateContentRequest": []}', "generateContentRequest"),
        (b'{"generateContentRequest": {}}', "contents"),
        (b"[1]", None),
    ],
)
def test_bad_count_requests_are_refused(body: bytes, param: str | None) -> None:
    with pytest.raises(RequestError) as refused:
        gm.parse_count_request(gm.COUNT_ENDPOINT, body)
    assert refused.value.param == param


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1beta/models/gemini-2.5-flash:countTokens", "gemini-2.5-flash"),
        ("/v1/models/gemini-2.5-flash:countTokens", "gemini-2.5-flash"),
        ("/v1beta/models/:countTokens", None),
        ("/v1beta/models/gemini-2.5-flash:generateContent", None),
        ("/v1beta/models/gemini-2.5-flash", None),
    ],
)
def test_count_paths(path: str, expected: str | None) -> None:
    from metering.proxy import surface

    assert surface.gemini_count_of(path) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1beta/models", ""),
        ("/v1beta/models/", ""),
        ("/v1beta/models/gemini-2.5-flash", "gemini-2.5-flash"),
        ("/v1beta/models/gemini-2.5-flash:countTokens", None),
        ("/v1beta/models/gemini-2.5-flash:embedContent", None),
        ("/v1beta/models/auto:coding", "auto:coding"),
        ("/v1beta/models/:x", None),
        ("/v1beta/modelsx", None),
        ("/v1beta/files", None),
    ],
)
def test_model_read_paths(path: str, expected: str | None) -> None:
    from metering.proxy import surface

    assert surface.gemini_model_of(path) == expected


def test_the_models_list_is_paged_by_name() -> None:
    from metering.proxy import surface

    entries = [(name, surface.GEMINI_SERVED) for name in ("c", "a", "b")]
    first = json.loads(surface.gemini_models_body(entries, 2, ""))
    assert [m["name"] for m in first["models"]] == ["models/a", "models/b"]
    size, after = surface.gemini_page({"pageSize": "2", "pageToken": first["nextPageToken"]})
    rest = json.loads(surface.gemini_models_body(entries, size, after))
    assert rest == {"models": [surface.gemini_model_object("c", surface.GEMINI_SERVED)]}
    assert surface.gemini_page({}) == (surface.GEMINI_DEFAULT_PAGE, "")
    assert surface.gemini_page({"pageSize": "5000"})[0] == surface.GEMINI_MAX_PAGE
    for bad in ({"pageSize": "-1"}, {"pageSize": "x"}, {"pageToken": "!!"}, {"pageToken": "="}):
        with pytest.raises(ProxyError) as refused:
            surface.gemini_page(bad)
        assert refused.value.status == 400
