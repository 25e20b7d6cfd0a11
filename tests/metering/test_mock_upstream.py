"""The mock upstream, driven by the official openai and anthropic SDKs and by raw HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from metering import tokens
from metering.mock_upstream import WORDS, MockServer, MockSettings, start_in_thread
from metering.providers import anthropic as an
from metering.providers import openai as oa
from metering.providers.base import Usage

KEY = "sk-upstream-secret"
PROMPT = "Tell me about the quick brown fox."


@pytest.fixture(scope="module")
def server() -> Iterator[MockServer]:
    mock = start_in_thread(MockSettings(expected_key=KEY))
    yield mock
    mock.stop()


@pytest.fixture
def oai(server: MockServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=10)


@pytest.fixture
def claude(server: MockServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=10)


def _prompt_tokens(text: str, messages: int = 1) -> int:
    return tokens.count_text_tokens(text) + 3 * messages


def _last(server: MockServer) -> dict:
    return httpx.get(server.url + "/_mock/last").json()


# --- OpenAI chat ---------------------------------------------------------------------------


def test_chat_non_stream(oai: openai.OpenAI, server: MockServer) -> None:
    reply = oai.chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": PROMPT}], max_tokens=7
    )
    assert reply.choices[0].message.content == " the quick brown fox jumps over a"
    assert reply.choices[0].finish_reason == "length"
    assert tokens.count_text_tokens(reply.choices[0].message.content) == 7
    usage = reply.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (_prompt_tokens(PROMPT), 7)
    last = _last(server)
    assert last["headers"]["authorization"] == f"Bearer {KEY}"
    assert last["body"]["max_tokens"] == 7
    assert last["completed"] is True


def test_chat_default_length_and_stop(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert reply.usage.completion_tokens == 20
    assert reply.choices[0].finish_reason == "stop"


def test_chat_stream_include_usage_as_openai(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="mock-gpt",
            messages=[{"role": "user", "content": PROMPT}],
            max_completion_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 5
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert tokens.count_text_tokens(text) == 5


def test_chat_stream_without_include_usage_has_no_usage(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "x"}], max_tokens=3, stream=True
        )
    )
    assert all(c.usage is None and c.choices for c in chunks)


def test_cached_and_reasoning_by_model_and_by_metadata(oai: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": PROMPT}]
    prompt = _prompt_tokens(PROMPT)
    usage = oai.chat.completions.create(model="mock-gpt-cached", messages=messages).usage
    assert usage.prompt_tokens_details.cached_tokens == prompt // 2
    usage = oai.chat.completions.create(model="mock-gpt-reasoning", messages=messages).usage
    assert usage.completion_tokens_details.reasoning_tokens == 10
    reply = oai.chat.completions.create(
        model="mock-gpt",
        messages=messages,
        max_tokens=50,
        metadata={
            "mock_output_tokens": "30",
            "mock_cached_tokens": "4",
            "mock_reasoning_tokens": "12",
        },
    )
    assert reply.usage.completion_tokens == 30
    assert reply.usage.prompt_tokens_details.cached_tokens == 4
    assert reply.usage.completion_tokens_details.reasoning_tokens == 12
    assert tokens.count_text_tokens(reply.choices[0].message.content) == 18  # visible part


def test_hooks_by_header(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model="mock-gpt",
        messages=[{"role": "user", "content": "x"}],
        extra_headers={"x-mock-output-tokens": "2"},
    )
    assert reply.usage.completion_tokens == 2
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(
            model="mock-gpt",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-mock-error": "429"},
        )


# --- OpenAI responses and embeddings -------------------------------------------------------


def test_responses_non_stream(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model="mock-gpt", input=PROMPT, max_output_tokens=32)
    assert response.status == "completed"
    assert response.output_text == "".join(WORDS[i % len(WORDS)] for i in range(20))
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        _prompt_tokens(PROMPT),
        20,
    )


def test_responses_stream(oai: openai.OpenAI) -> None:
    events = list(
        oai.responses.create(model="mock-gpt", input=PROMPT, max_output_tokens=20, stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 20
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.usage.output_tokens == 20


def test_responses_incomplete_when_capped(oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        model="mock-gpt",
        input="x",
        max_output_tokens=16,
        extra_body={"metadata": {"mock_output_tokens": "40"}},
    )
    assert response.status == "incomplete"
    assert response.usage.output_tokens == 16


def test_embeddings_float_and_base64(oai: openai.OpenAI) -> None:
    reply = oai.embeddings.create(model="mock-embedding", input=["hello world", "fox"])  # base64
    assert [len(d.embedding) for d in reply.data] == [8, 8]
    # The mock counts the inputs as one text, one per line.
    assert reply.usage.prompt_tokens == tokens.count_text_tokens("hello world\nfox")
    reply = oai.embeddings.create(model="mock-embedding", input="hi", encoding_format="float")
    assert reply.data[0].embedding[1] == 0.125


def test_models_list(oai: openai.OpenAI) -> None:
    ids = [m.id for m in oai.models.list()]
    assert "mock-gpt" in ids and "mock-claude" in ids


# --- Anthropic -----------------------------------------------------------------------------


def test_messages_non_stream_with_cache_fields(
    claude: anthropic.Anthropic, server: MockServer
) -> None:
    message = claude.messages.create(
        model="mock-claude-cached",
        max_tokens=9,
        messages=[{"role": "user", "content": PROMPT}],
    )
    prompt = _prompt_tokens(PROMPT)
    usage = message.usage
    assert usage.cache_read_input_tokens == prompt // 2
    assert usage.cache_creation_input_tokens == prompt // 4
    assert usage.input_tokens == prompt - prompt // 2 - prompt // 4
    assert usage.output_tokens == 9
    assert message.stop_reason == "max_tokens"
    assert tokens.count_text_tokens(message.content[0].text) == 9
    headers = _last(server)["headers"]
    # anthropic 2.x sends the key as a bearer token; older versions as x-api-key.
    assert KEY in (headers.get("x-api-key"), headers.get("authorization", "")[7:])


def test_messages_stream(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="mock-claude", max_tokens=100, messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert tokens.count_text_tokens(text) == 20
    assert final.usage.output_tokens == 20
    assert final.usage.input_tokens == _prompt_tokens(PROMPT)
    assert final.stop_reason == "end_turn"


def test_messages_requires_max_tokens(server: MockServer) -> None:
    reply = httpx.post(
        server.url + "/v1/messages",
        headers={"x-api-key": KEY},
        json={"model": "mock-claude", "messages": [{"role": "user", "content": "x"}]},
    )
    assert reply.status_code == 400
    assert reply.json()["type"] == "error"


# --- failures and keys ---------------------------------------------------------------------


def test_wrong_key_is_refused(server: MockServer) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="tb-client-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    bad = anthropic.Anthropic(base_url=server.url, api_key="tb-client-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(
            model="mock-claude", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )


def test_error_500(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(
            model="mock-error-500", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(
            model="mock-error-500", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )


def test_timeout_hangs_until_client_leaves(server: MockServer) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(
            model="mock-timeout", messages=[{"role": "user", "content": "x"}]
        )
    _wait_for(lambda: _last(server)["disconnected"])


def test_mid_stream_errors(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    seen = []
    with pytest.raises(openai.APIError, match="mid-stream"):
        for chunk in oai.chat.completions.create(
            model="mock-stream-error", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            seen.append(chunk)
    assert len(seen) == 11  # role chunk + half of 20 tokens
    with (
        pytest.raises(anthropic.APIStatusError),
        claude.messages.stream(
            model="mock-stream-error", max_tokens=20, messages=[{"role": "user", "content": "x"}]
        ) as stream,
    ):
        for _ in stream:
            pass


def test_slow_stream_records_the_disconnect(server: MockServer) -> None:
    body = {
        "model": "mock-slow-stream",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
    }
    start = time.perf_counter()
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {KEY}"},
    ) as reply:
        chunks = reply.iter_bytes()
        next(chunks)
        next(chunks)
    assert time.perf_counter() - start < 2  # 100 chunks at 100 ms would take 10 s
    _wait_for(lambda: _last(server)["disconnected"])
    assert _last(server)["completed"] is False


# --- the meters read the mock's streams exactly --------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "endpoint", "protocol"),
    [
        (
            "/v1/chat/completions",
            {
                "model": "mock-gpt-cached",
                "messages": [{"role": "user", "content": PROMPT}],
                "stream": True,
                "stream_options": {"include_usage": True},
                "max_tokens": 12,
                "metadata": {"mock_reasoning_tokens": "3"},
            },
            "chat",
            oa,
        ),
        (
            "/v1/responses",
            {"model": "mock-gpt-reasoning", "input": PROMPT, "stream": True},
            "responses",
            oa,
        ),
        (
            "/v1/messages",
            {
                "model": "mock-claude-cached",
                "messages": [{"role": "user", "content": PROMPT}],
                "stream": True,
                "max_tokens": 12,
            },
            "messages",
            an,
        ),
    ],
)
def test_meters_agree_with_the_non_streamed_usage(
    server: MockServer, path: str, body: dict, endpoint: str, protocol
) -> None:
    headers = {"authorization": f"Bearer {KEY}"}
    plain = httpx.post(server.url + path, json={**body, "stream": False}, headers=headers).json()
    expected = protocol.usage_from_body(endpoint, plain)
    assert isinstance(expected, Usage) and expected.output_tokens > 0
    meter = protocol.stream_meter(endpoint, strip_usage_chunk=endpoint == "chat")
    with httpx.stream("POST", server.url + path, json=body, headers=headers) as reply:
        relayed = b"".join(meter.feed(chunk) for chunk in reply.iter_raw()) + meter.close()
    assert meter.state.usage == expected
    assert meter.state.finished
    produced = tokens.count_text_tokens("".join(meter.state.output_text))
    assert produced == expected.output_tokens - expected.reasoning_tokens
    if endpoint == "chat":
        assert b'"choices":[]' not in relayed


def _wait_for(condition, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)
