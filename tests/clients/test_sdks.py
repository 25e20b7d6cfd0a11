"""Python clients as users point them at the proxy: the litellm SDK, LangChain's ChatOpenAI
and ChatAnthropic, pydantic-ai; each runs a tool round-trip in its model's native protocol
and every call is a record equal to the mock's ledger."""

from __future__ import annotations

import os

import openai
import pytest

from tests.clients.conftest import assert_records_match_ledger, mock_requests
from tests.e2e.conftest import World

# litellm fetches its model cost map from the network at import unless told otherwise.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

pytestmark = pytest.mark.e2e

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {"name": "weather", "description": "Weather now", "parameters": WEATHER_SCHEMA},
    }
]
PROMPT = 'Weather in Oslo? mock-tool: weather {"city": "Oslo"}'


def weather(city: str) -> str:
    """Weather now in a city."""
    return f"-3C in {city}"


def _tool_results_sent(world: World, path: str) -> int:
    return sum(
        1
        for r in mock_requests(world)
        if r["path"].endswith(path) and "-3C in Oslo" in str(r["body"])
    )


# --- litellm -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "base", "path", "public"),
    [
        ("openai/gpt-4o-mini", "/v1", "/chat/completions", "gpt-4o-mini"),
        ("anthropic/claude-sonnet-4-5", "", "/messages", "claude-sonnet-4-5"),
    ],
)
def test_litellm_sdk(client_world: World, model: str, base: str, path: str, public: str) -> None:
    import litellm

    kwargs = {"model": model, "api_base": client_world.proxy + base, "api_key": client_world.key}
    messages: list[dict] = [{"role": "user", "content": PROMPT}]
    first = litellm.completion(messages=messages, tools=OPENAI_TOOLS, max_tokens=200, **kwargs)
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "weather"
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": weather("Oslo")})
    final = litellm.completion(messages=messages, tools=OPENAI_TOOLS, max_tokens=200, **kwargs)
    assert "the quick" in final.choices[0].message.content
    assert _tool_results_sent(client_world, path) == 1
    records = assert_records_match_ledger(client_world, at_least=2)
    assert {r.model for r in records} == {public}
    assert [final.usage.prompt_tokens, final.usage.completion_tokens] == [
        records[-1].input_tokens,
        records[-1].output_tokens,
    ]


# --- LangChain -----------------------------------------------------------------------------


def _langchain_loop(chat) -> str:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    weather_tool = tool(weather)
    bound = chat.bind_tools([weather_tool])
    messages = [HumanMessage(PROMPT)]
    first = bound.invoke(messages)
    assert first.tool_calls and first.tool_calls[0]["args"] == {"city": "Oslo"}
    messages += [first]
    for call in first.tool_calls:
        messages.append(ToolMessage(weather_tool.invoke(call["args"]), tool_call_id=call["id"]))
    final = "".join(chunk.text for chunk in bound.stream(messages))  # the answer, streamed
    return final


def test_langchain_openai(client_world: World) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        model="gpt-4o-mini",
        base_url=client_world.proxy + "/v1",
        api_key=client_world.key,
        max_retries=0,
        stream_usage=True,
    )
    assert "the quick" in _langchain_loop(chat)
    assert _tool_results_sent(client_world, "/chat/completions") == 1
    assert_records_match_ledger(client_world, at_least=2)


def test_langchain_anthropic(client_world: World) -> None:
    from langchain_anthropic import ChatAnthropic

    chat = ChatAnthropic(
        model="claude-sonnet-4-5",
        base_url=client_world.proxy,
        api_key=client_world.key,
        max_retries=0,
        max_tokens=300,
    )
    assert "the quick" in _langchain_loop(chat)
    assert _tool_results_sent(client_world, "/messages") == 1
    records = assert_records_match_ledger(client_world, at_least=2)
    assert all(r.cached_input_tokens > 0 for r in records)  # the route's cached upstream model


def test_langchain_openai_with_a_claude_model(client_world: World) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        model="claude-sonnet-4-5",
        base_url=client_world.proxy + "/v1",
        api_key=client_world.key,
        max_retries=0,
    )
    assert "the quick" in _langchain_loop(chat)


# --- pydantic-ai ---------------------------------------------------------------------------


def _pydantic_model(world: World, protocol: str):
    if protocol == "openai":
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        provider = OpenAIProvider(base_url=world.proxy + "/v1", api_key=world.key)
        return OpenAIChatModel("gpt-4o-mini", provider=provider)
    from pydantic_ai.models.anthropic import AnthropicModel
    from pydantic_ai.providers.anthropic import AnthropicProvider

    return AnthropicModel(
        "claude-haiku-5-5", provider=AnthropicProvider(base_url=world.proxy, api_key=world.key)
    )


@pytest.mark.parametrize(
    ("protocol", "path"), [("openai", "/chat/completions"), ("anthropic", "/messages")]
)
def test_pydantic_ai_agent(client_world: World, protocol: str, path: str) -> None:
    from pydantic_ai import Agent

    agent = Agent(_pydantic_model(client_world, protocol), tools=[weather])
    result = agent.run_sync(PROMPT)
    assert "the quick" in result.output
    assert _tool_results_sent(client_world, path) == 1
    records = assert_records_match_ledger(client_world, at_least=2)
    usage = result.usage
    assert usage.input_tokens == sum(r.input_tokens for r in records)
    assert usage.output_tokens == sum(r.output_tokens for r in records)


def test_openai_models_retrieve(client_world: World) -> None:
    client = openai.OpenAI(
        base_url=client_world.proxy + "/v1", api_key=client_world.key, max_retries=0
    )
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
