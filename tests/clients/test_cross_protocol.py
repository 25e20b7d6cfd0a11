"""Cross-protocol calls with the official SDKs: a Claude model through /v1/chat/completions
(openai SDK) and an OpenAI model through /v1/messages (anthropic SDK), streaming and not,
with a tool round-trip. The upstream is spoken to in its own protocol, and every record equals
the mock's ledger, its cost the price arithmetic (`assert_records_match_ledger`)."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from metering.models import UsageRecord
from tests.clients.conftest import assert_records_match_ledger, mock_requests
from tests.e2e.conftest import World

pytestmark = pytest.mark.e2e

PROMPT = 'Weather in Oslo? mock-tool: weather {"city": "Oslo"}'
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CHAT_TOOLS = [
    {
        "type": "function",
        "function": {"name": "weather", "description": "Weather now", "parameters": SCHEMA},
    }
]
MESSAGES_TOOLS = [{"name": "weather", "description": "Weather now", "input_schema": SCHEMA}]


def oai(world: World) -> openai.OpenAI:
    return openai.OpenAI(base_url=world.proxy + "/v1", api_key=world.key, max_retries=0)


def claude(world: World) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=world.proxy, api_key=world.key, max_retries=0)


def upstream_calls(world: World, path: str) -> list[dict]:
    return [r for r in mock_requests(world) if r["path"].endswith(path)]


# --- a Claude model from an OpenAI client ----------------------------------------------------


def _chat_turns(world: World, stream: bool) -> tuple[list, list]:
    """The tool call, then the answer to its result; each turn's (tool calls, text, usage)."""
    client = oai(world)
    messages: list[dict] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": PROMPT},
    ]
    turns = []
    for _ in range(2):
        kwargs = {"model": "claude-opus-5-5", "messages": messages, "tools": CHAT_TOOLS}
        if stream:
            calls: dict[int, dict] = {}
            text, usage, finish = "", None, None
            chunks = client.chat.completions.create(
                **kwargs, stream=True, stream_options={"include_usage": True}
            )
            for chunk in chunks:
                usage = chunk.usage or usage
                for choice in chunk.choices:
                    finish = choice.finish_reason or finish
                    text += choice.delta.content or ""
                    for call in choice.delta.tool_calls or []:
                        entry = calls.setdefault(call.index, {"id": "", "name": "", "args": ""})
                        entry["id"] = call.id or entry["id"]
                        if call.function:
                            entry["name"] += call.function.name or ""
                            entry["args"] += call.function.arguments or ""
            tool_calls = [(c["id"], c["name"], c["args"]) for c in calls.values()]
        else:
            completion = client.chat.completions.create(**kwargs)
            choice = completion.choices[0]
            finish, text, usage = (
                choice.finish_reason,
                choice.message.content or "",
                completion.usage,
            )
            tool_calls = [
                (c.id, c.function.name, c.function.arguments)
                for c in choice.message.tool_calls or []
            ]
        turns.append((finish, tool_calls, text, usage))
        if not tool_calls:
            break
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                    for i, n, a in tool_calls
                ],
            }
        )
        for call_id, _, _ in tool_calls:
            messages.append({"role": "tool", "tool_call_id": call_id, "content": "-3C in Oslo"})
    return turns, messages


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_claude_model_through_chat_completions(client_world: World, stream: bool) -> None:
    turns, _ = _chat_turns(client_world, stream)
    assert len(turns) == 2
    (finish, calls, _, _), (last_finish, last_calls, text, _) = turns
    assert finish == "tool_calls" and calls[0][1] == "weather"
    assert json.loads(calls[0][2]) == {"city": "Oslo"}
    assert last_finish == "stop" and not last_calls and "the quick" in text
    # The upstream was spoken to in Anthropic's protocol: the system prompt lifted out, the
    # tool as an Anthropic tool, its result as a tool_result block.
    first, second = (r["body"] for r in upstream_calls(client_world, "/v1/messages"))
    assert first["system"] == "Be brief." and first["tools"][0]["input_schema"] == SCHEMA
    assert first.get("stream", False) is stream
    results = [b for b in second["messages"][-1]["content"] if b.get("type") == "tool_result"]
    assert results and "-3C in Oslo" in json.dumps(results)
    records = assert_records_match_ledger(client_world, at_least=2)
    assert {(r.model, r.provider, r.endpoint) for r in records} == {
        ("claude-opus-5-5", "anthropic", "chat")
    }
    # What the client was told is what was recorded.
    for (_, _, _, usage), record in zip(turns, records, strict=True):
        assert usage.prompt_tokens == record.input_tokens
        assert usage.completion_tokens == record.output_tokens
    assert all(r.cost > 0 and r.usage_source == "provider" for r in records)


# --- an OpenAI model from an Anthropic client ------------------------------------------------


def _messages_turn(world: World, messages: list, stream: bool):
    kwargs = {
        "model": "gpt-6.2-sol",
        "max_tokens": 300,
        "messages": messages,
        "tools": MESSAGES_TOOLS,
    }
    if stream:
        with claude(world).messages.stream(**kwargs) as events:
            return events.get_final_message()
    return claude(world).messages.create(**kwargs)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_openai_model_through_messages(client_world: World, stream: bool) -> None:
    messages: list[dict] = [{"role": "user", "content": PROMPT}]
    first = _messages_turn(client_world, messages, stream)
    assert first.stop_reason == "tool_use"
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert (use.name, use.input) == ("weather", {"city": "Oslo"})
    messages += [
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "-3C in Oslo"}],
        },
    ]
    second = _messages_turn(client_world, messages, stream)
    assert second.stop_reason == "end_turn"
    assert "the quick" in "".join(b.text for b in second.content if b.type == "text")
    sent = [r["body"] for r in upstream_calls(client_world, "/v1/chat/completions")]
    assert sent[0]["tools"][0]["function"]["parameters"] == SCHEMA
    assert sent[1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": use.id,
        "content": "-3C in Oslo",
    }
    records = assert_records_match_ledger(client_world, at_least=2)
    assert {(r.model, r.provider, r.endpoint) for r in records} == {
        ("gpt-6.2-sol", "openai", "messages")
    }
    for answer, record in zip((first, second), records, strict=True):
        told = answer.usage
        assert (
            told.input_tokens
            + (told.cache_read_input_tokens or 0)
            + (told.cache_creation_input_tokens or 0)
            == record.input_tokens
        )
        assert told.output_tokens == record.output_tokens
    assert UsageRecord.objects.filter(streamed=stream).count() == 2


def test_what_the_other_protocol_cannot_carry_is_a_400_in_the_clients_shape(
    client_world: World,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai(client_world).chat.completions.create(
            model="claude-opus-5-5", n=2, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["param"] == "n"
    with pytest.raises(anthropic.BadRequestError):
        claude(client_world).messages.create(
            model="gpt-6.2-sol",
            max_tokens=50,
            messages=[{"role": "user", "content": [{"type": "document", "source": {}}]}],
        )
    assert not upstream_calls(client_world, "/v1/chat/completions")
    assert not upstream_calls(client_world, "/v1/messages")
    assert UsageRecord.objects.filter(cost__gt=0).count() == 0
