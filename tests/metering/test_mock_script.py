"""The mock's scripted answers (metering/mock/script.py), driven by the official SDKs."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from metering import tokens
from metering.mock import MockServer, start_in_thread
from metering.mock.script import example

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}
OAI_TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": WEATHER}}]
CLAUDE_TOOLS = [
    {"name": "clock", "input_schema": {"type": "object", "properties": {}}},
    {"name": "weather", "input_schema": WEATHER},
]


@pytest.fixture(scope="module")
def server() -> Iterator[MockServer]:
    mock = start_in_thread()
    yield mock
    mock.stop()


@pytest.fixture
def oai(server: MockServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0, timeout=10)


@pytest.fixture
def claude(server: MockServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0, timeout=10)


def _ledger(server: MockServer) -> dict:
    return httpx.get(server.url + "/_mock/ledger").json()


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        (WEATHER, {"city": "mock", "days": 1}),
        ({"type": "array", "items": {"type": "number"}}, [1]),
        ({"enum": ["a", "b"]}, "a"),
        ({"anyOf": [{"type": "boolean"}, {"type": "string"}]}, True),
        ({"type": ["null", "integer"]}, 1),
        (
            {
                "$defs": {"P": {"type": "object", "properties": {"x": {"const": 3}}}},
                "$ref": "#/$defs/P",
            },
            {"x": 3},
        ),
    ],
)
def test_example_fits_the_schema(schema, value):
    assert example(schema) == value


def test_chat_tool_loop(oai: openai.OpenAI, server: MockServer) -> None:
    messages = [{"role": "user", "content": 'Weather? mock-tool: weather {"city": "Oslo"}'}]
    first = oai.chat.completions.create(model="mock-gpt", messages=messages, tools=OAI_TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "weather",
        {"city": "Oslo"},
    )
    assert first.usage.completion_tokens == tokens.count_text_tokens('weather{"city":"Oslo"}')
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "-3C"},
    ]
    second = oai.chat.completions.create(model="mock-gpt", messages=messages, tools=OAI_TOOLS)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content.startswith(" the quick")
    assert second.usage.completion_tokens == 20


def test_chat_tool_call_streamed_matches_the_body(oai: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Weather?"}]
    stream = oai.chat.completions.create(
        model="mock-gpt",
        messages=messages,
        tools=OAI_TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    arguments, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                arguments += call.function.arguments or ""
    assert finish == "tool_calls"
    assert json.loads(arguments) == {"city": "mock", "days": 1}  # from the schema
    body = oai.chat.completions.create(model="mock-gpt", messages=messages, tools=OAI_TOOLS)
    assert usage.completion_tokens == body.usage.completion_tokens


def test_chat_structured_output(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model="mock-gpt",
        messages=[{"role": "user", "content": "Weather as JSON"}],
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}},
    )
    text = reply.choices[0].message.content
    assert json.loads(text) == {"city": "mock", "days": 1}
    assert reply.usage.completion_tokens == tokens.count_text_tokens(text)


def test_tool_choice_none_answers_in_words(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model="mock-gpt",
        messages=[{"role": "user", "content": "x"}],
        tools=OAI_TOOLS,
        tool_choice="none",
    )
    assert reply.choices[0].message.tool_calls is None


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_tool_loop_with_thinking(
    claude: anthropic.Anthropic, server: MockServer, stream: bool
) -> None:
    httpx.delete(server.url + "/_mock/ledger")
    messages = [{"role": "user", "content": 'What time is it? mock-tool: weather {"city": "Rome"}'}]
    kwargs = {
        "model": "mock-claude",
        "max_tokens": 4000,
        "tools": CLAUDE_TOOLS,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    if stream:
        with claude.messages.stream(messages=messages, **kwargs) as events:
            first = events.get_final_message()
    else:
        first = claude.messages.create(messages=messages, **kwargs)
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["thinking", "tool_use"]
    assert first.content[0].thinking == " the quick brown fox jumps over a lazy"
    tool = first.content[1]
    assert (tool.name, tool.input) == ("weather", {"city": "Rome"})
    assert first.usage.output_tokens == 8 + tokens.count_text_tokens('weather{"city":"Rome"}')
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "18C"}],
        },
    ]
    final = claude.messages.create(messages=messages, **kwargs)
    assert final.stop_reason == "end_turn"
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.usage.output_tokens == 20
    ledger = _ledger(server)
    assert ledger["count"] == 2
    assert ledger["output_tokens"] == first.usage.output_tokens + 20


def test_anthropic_first_tool_when_no_directive(claude: anthropic.Anthropic) -> None:
    reply = claude.messages.create(
        model="mock-claude",
        max_tokens=100,
        tools=CLAUDE_TOOLS,
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert [(b.type, b.name, b.input) for b in reply.content] == [("tool_use", "clock", {})]


def test_count_tokens_is_never_in_the_ledger(
    claude: anthropic.Anthropic, server: MockServer
) -> None:
    httpx.delete(server.url + "/_mock/ledger")
    messages = [{"role": "user", "content": "Count me."}]
    counted = claude.messages.count_tokens(model="mock-claude", messages=messages)
    reply = claude.messages.create(model="mock-claude", max_tokens=5, messages=messages)
    assert (
        counted.input_tokens
        == reply.usage.input_tokens
        == tokens.count_text_tokens("Count me.") + 3
    )
    ledger = _ledger(server)
    assert (ledger["count"], ledger["counted"]) == (1, 1)


@pytest.mark.parametrize("stream", [False, True])
def test_responses_function_call(oai: openai.OpenAI, stream: bool) -> None:
    tools = [{"type": "function", "name": "weather", "parameters": WEATHER}]
    if stream:
        with oai.responses.stream(model="mock-gpt", input="Weather?", tools=tools) as events:
            response = events.get_final_response()
    else:
        response = oai.responses.create(model="mock-gpt", input="Weather?", tools=tools)
    item = response.output[0]
    assert (item.type, item.name, json.loads(item.arguments)) == (
        "function_call",
        "weather",
        {"city": "mock", "days": 1},
    )
    follow = [
        {"role": "user", "content": "Weather?"},
        {
            "type": "function_call",
            "call_id": item.call_id,
            "name": "weather",
            "arguments": item.arguments,
        },
        {"type": "function_call_output", "call_id": item.call_id, "output": "-3C"},
    ]
    final = oai.responses.create(model="mock-gpt", input=follow, tools=tools)
    assert final.output_text.startswith(" the quick")
