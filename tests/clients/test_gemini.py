"""Gemini routes with real processes: the google-genai SDK on the /v1beta surface, and the
openai and anthropic SDKs on /v1 (translated), streaming and not. The proxy speaks the Gemini
API to the mock, and every record equals the mock's ledger, its cost the price arithmetic
(`assert_records_match_ledger`); the price of `gemini-2.5-flash` comes from the bundled
catalogue (`sync_prices`). The mock's own answers are checked with google-genai's types, which
refuse unknown fields."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest
from django.utils import timezone
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from metering import price_catalog
from metering.models import ModelPrice, ModelRoute, Upstream, UsageRecord
from tests.clients.conftest import assert_records_match_ledger, ledger, mock_requests, the_record
from tests.e2e.conftest import World

pytestmark = pytest.mark.e2e

CATALOGUED = "gemini-2.5-flash"  # priced by sync_prices from genai-prices' bundled data
THINKING = "gemini-thinking"  # the mock caches half the prompt and thinks half the output
THINKING_UPSTREAM = "mock-gemini-cached-reasoning"
UNPRICED = "gemini-unpriced"
PROMPT = 'Weather in Oslo? mock-tool: weather {"city": "Oslo"}'
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CHAT_TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": SCHEMA}}]
MESSAGES_TOOLS = [{"name": "weather", "description": "Weather now", "input_schema": SCHEMA}]


@pytest.fixture
def gemini_world(client_world: World) -> World:
    upstream = Upstream.objects.create(
        name="mock-gemini",
        kind="gemini",
        base_url=client_world.mock,
        read_timeout=Decimal(3),
        credential_env="TB_UPSTREAM_KEY_TEST",
    )
    for public, model in ((CATALOGUED, CATALOGUED), (THINKING, THINKING_UPSTREAM)):
        ModelRoute.objects.create(
            public_name=public,
            upstream=upstream,
            upstream_model=model,
            default_max_output_tokens=256,
        )
    ModelRoute.objects.create(
        public_name=UNPRICED, upstream=upstream, upstream_model="mock-gemini-unpriced"
    )
    ModelPrice.objects.create(
        model=THINKING_UPSTREAM,
        input_per_mtok=Decimal("1.25"),
        output_per_mtok=Decimal("10.00"),
        cached_input_per_mtok=Decimal("0.125"),
        effective_from=timezone.now() - dt.timedelta(days=30),
        source="catalog",
    )
    result = price_catalog.prices_sync(now=timezone.now())
    assert CATALOGUED not in result.unmatched
    assert {THINKING_UPSTREAM, "mock-gemini-unpriced"} <= set(result.unmatched)
    return client_world


def google(world: World, **options: object) -> genai.Client:
    http = types.HttpOptions(base_url=world.proxy, api_version="v1beta", **options)
    return genai.Client(api_key=world.key, http_options=http)


def test_the_catalogue_prices_the_gemini_route(gemini_world: World) -> None:
    price = ModelPrice.objects.get(model=CATALOGUED)
    assert (price.provider, price.source) == ("google", "catalog")
    assert price.input_per_mtok == Decimal("0.3")
    assert price.output_per_mtok == Decimal("2.5")
    assert price.cached_input_per_mtok == Decimal("0.03")


# --- the google-genai SDK on /v1beta ---------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("model", [CATALOGUED, THINKING])
def test_google_genai_sdk(gemini_world: World, stream: bool, model: str) -> None:
    client = google(gemini_world)
    config = types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=64)
    if stream:
        chunks = list(
            client.models.generate_content_stream(model=model, contents="Hello", config=config)
        )
        text = "".join(c.text or "" for c in chunks)
        usage = chunks[-1].usage_metadata
        finish = chunks[-1].candidates[0].finish_reason
    else:
        response = client.models.generate_content(model=model, contents="Hello", config=config)
        text, usage = response.text, response.usage_metadata
        finish = response.candidates[0].finish_reason
    assert text.startswith(" the quick brown fox")
    assert finish == types.FinishReason.STOP
    (record,) = assert_records_match_ledger(gemini_world)
    assert (record.provider, record.endpoint, record.model) == ("gemini", "generate_content", model)
    assert record.streamed is stream
    assert record.input_tokens == usage.prompt_token_count
    assert record.cached_input_tokens == (usage.cached_content_token_count or 0)
    assert record.reasoning_tokens == (usage.thoughts_token_count or 0)
    assert record.output_tokens == usage.candidates_token_count + record.reasoning_tokens
    if model == THINKING:
        assert record.cached_input_tokens > 0 and record.reasoning_tokens > 0
    # Spoken to in Gemini's own protocol, with the provider's key and the held limit.
    (sent,) = mock_requests(gemini_world)
    method = "streamGenerateContent" if stream else "generateContent"
    upstream_model = CATALOGUED if model == CATALOGUED else THINKING_UPSTREAM
    assert sent["path"] == f"/v1beta/models/{upstream_model}:{method}"
    assert sent["headers"]["x-goog-api-key"] != gemini_world.key
    assert sent["body"]["generationConfig"]["maxOutputTokens"] == 64
    assert sent["body"]["systemInstruction"]["parts"][0]["text"] == "Be brief."


def test_key_in_the_query_and_tool_calls(gemini_world: World) -> None:
    """`?key=` as the Gemini API takes it; a function call comes back as Gemini's part."""
    body = {
        "contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
        "tools": [{"functionDeclarations": [{"name": "weather", "parametersJsonSchema": SCHEMA}]}],
    }
    url = f"{gemini_world.proxy}/v1beta/models/{CATALOGUED}:generateContent"
    answer = httpx.post(url, params={"key": gemini_world.key}, json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    response = types.GenerateContentResponse.model_validate(answer.json())
    assert response.function_calls[0].name == "weather"
    assert response.function_calls[0].args == {"city": "Oslo"}
    assert answer.headers["x-tokenbudget-remaining"]
    assert_records_match_ledger(gemini_world)


def _api_error(call) -> genai_errors.APIError:
    with pytest.raises(genai_errors.APIError) as failed:
        call()
    return failed.value


def test_refusals_in_googles_shape(gemini_world: World) -> None:
    client = google(gemini_world)
    unpriced = _api_error(lambda: client.models.generate_content(model=UNPRICED, contents="Hi"))
    assert (unpriced.code, unpriced.status) == (403, "PERMISSION_DENIED")
    assert "No price" in unpriced.message
    unknown = _api_error(lambda: client.models.generate_content(model="nope", contents="Hi"))
    assert (unknown.code, unknown.status) == (404, "NOT_FOUND")
    other = _api_error(
        lambda: client.models.generate_content(model="claude-opus-5-5", contents="Hi")
    )
    assert other.code == 400 and "not a Gemini model" in other.message
    # google-genai's default API version (v1) is served too.
    bad = genai.Client(
        api_key="tb-wrong", http_options=types.HttpOptions(base_url=gemini_world.proxy)
    )
    denied = _api_error(lambda: bad.models.generate_content(model=CATALOGUED, contents="Hi"))
    assert (denied.code, denied.status) == (401, "UNAUTHENTICATED")
    # The budget: an allowance too small for the call's worst case.
    gemini_world.allowance.amount = Decimal(10)
    gemini_world.allowance.save()
    refused = _api_error(lambda: client.models.generate_content(model=CATALOGUED, contents="Hi"))
    assert (refused.code, refused.status) == (429, "RESOURCE_EXHAUSTED")
    assert "Budget exhausted" in refused.message
    assert refused.details["error"]["details"][0]["reason"] == "employee_allowance"
    # The stream too (refused before any byte is sent), and nothing reached the mock.
    refused = _api_error(
        lambda: list(client.models.generate_content_stream(model=CATALOGUED, contents="Hi"))
    )
    assert refused.code == 429
    assert ledger(gemini_world)["count"] == 0 and mock_requests(gemini_world) == []
    assert UsageRecord.objects.filter(cost__gt=0).count() == 0


def test_an_upstream_error_passes_through_uncharged(gemini_world: World) -> None:
    route = ModelRoute.objects.get(public_name=THINKING)
    route.upstream_model = "mock-gemini-error-503"
    route.save()
    ModelPrice.objects.filter(model=THINKING_UPSTREAM).update(model=route.upstream_model)
    client = google(gemini_world)
    failed = _api_error(lambda: client.models.generate_content(model=THINKING, contents="Hi"))
    assert (failed.code, failed.status) == (503, "UNAVAILABLE")
    (record,) = UsageRecord.objects.all()
    assert (record.status_code, record.cost, record.usage_source) == (503, 0, "none")


# --- the openai and anthropic SDKs on a Gemini route ---------------------------------------


def _chat_turns(world: World, model: str, stream: bool) -> list[tuple]:
    client = openai.OpenAI(base_url=world.proxy + "/v1", api_key=world.key, max_retries=0)
    messages: list[dict] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": PROMPT},
    ]
    turns = []
    for _ in range(2):
        kwargs = {"model": model, "messages": messages, "tools": CHAT_TOOLS}
        if stream:
            calls: dict[int, dict] = {}
            text, finish = "", None
            for chunk in client.chat.completions.create(
                **kwargs, stream=True, stream_options={"include_usage": True}
            ):
                for choice in chunk.choices:
                    finish = choice.finish_reason or finish
                    text += choice.delta.content or ""
                    for call in choice.delta.tool_calls or []:
                        entry = calls.setdefault(call.index, {"id": "", "name": "", "args": ""})
                        entry["id"] = call.id or entry["id"]
                        entry["name"] += call.function.name or ""
                        entry["args"] += call.function.arguments or ""
            tool_calls = [(c["id"], c["name"], c["args"]) for c in calls.values()]
        else:
            choice = client.chat.completions.create(**kwargs).choices[0]
            finish, text = choice.finish_reason, choice.message.content or ""
            tool_calls = [
                (c.id, c.function.name, c.function.arguments)
                for c in choice.message.tool_calls or []
            ]
        turns.append((finish, tool_calls, text))
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
    return turns


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("model", [CATALOGUED, THINKING])
def test_openai_sdk_on_a_gemini_route(gemini_world: World, stream: bool, model: str) -> None:
    turns = _chat_turns(gemini_world, model, stream)
    assert len(turns) == 2
    (finish, calls, _), (last_finish, last_calls, text) = turns
    assert finish == "tool_calls" and calls[0][1] == "weather"
    assert json.loads(calls[0][2]) == {"city": "Oslo"}
    assert last_finish == "stop" and not last_calls and "the quick" in text
    first, second = (r["body"] for r in mock_requests(gemini_world))
    assert first["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert first["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"] == SCHEMA
    response = second["contents"][-1]["parts"][0]["functionResponse"]
    assert response == {"name": "weather", "response": {"result": "-3C in Oslo"}}
    records = assert_records_match_ledger(gemini_world, at_least=2)
    assert {(r.model, r.provider, r.endpoint, r.streamed) for r in records} == {
        (model, "gemini", "chat", stream)
    }


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("model", [CATALOGUED, THINKING])
def test_anthropic_sdk_on_a_gemini_route(gemini_world: World, stream: bool, model: str) -> None:
    client = anthropic.Anthropic(base_url=gemini_world.proxy, api_key=gemini_world.key)
    messages: list[dict] = [{"role": "user", "content": PROMPT}]
    kwargs = {"model": model, "max_tokens": 200, "system": "Be brief.", "tools": MESSAGES_TOOLS}
    replies = []
    for _ in range(2):
        if stream:
            with client.messages.stream(**kwargs, messages=messages) as events:
                reply = events.get_final_message()
        else:
            reply = client.messages.create(**kwargs, messages=messages)
        replies.append(reply)
        uses = [b for b in reply.content if b.type == "tool_use"]
        if not uses:
            break
        messages.append({"role": "assistant", "content": [u.model_dump() for u in uses]})
        results = [{"type": "tool_result", "tool_use_id": u.id, "content": "-3C"} for u in uses]
        messages.append({"role": "user", "content": results})
    first, last = replies
    assert first.stop_reason == "tool_use"
    assert [b.input for b in first.content if b.type == "tool_use"] == [{"city": "Oslo"}]
    assert last.stop_reason == "end_turn" and "the quick" in last.content[0].text
    records = assert_records_match_ledger(gemini_world, at_least=2)
    for reply, record in zip(replies, records, strict=True):
        usage = reply.usage
        assert record.input_tokens == (
            usage.input_tokens
            + (usage.cache_read_input_tokens or 0)
            + (usage.cache_creation_input_tokens or 0)
        )
        assert record.output_tokens == usage.output_tokens
    assert {(r.provider, r.endpoint) for r in records} == {("gemini", "messages")}


# --- the mock, read by google-genai itself ---------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_the_mock_speaks_gemini_as_google_genai_reads_it(
    mock_upstream_url: str, stream: bool
) -> None:
    """google-genai against the mock directly: its pydantic types forbid unknown fields, so
    every field the mock writes is one the Gemini API has."""
    from tests.e2e.conftest import PROVIDER_KEY

    client = genai.Client(
        api_key=PROVIDER_KEY, http_options=types.HttpOptions(base_url=mock_upstream_url)
    )
    config = types.GenerateContentConfig(max_output_tokens=12)
    model = "mock-gemini-cached-reasoning"
    if stream:
        chunks = list(
            client.models.generate_content_stream(model=model, contents="Hi", config=config)
        )
        assert len(chunks) > 1
        final = chunks[-1]
        text = "".join(c.text or "" for c in chunks)
    else:
        final = client.models.generate_content(model=model, contents="Hi", config=config)
        text = final.text
    usage = final.usage_metadata
    assert final.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert usage.thoughts_token_count == 6 and usage.candidates_token_count == 6
    assert 0 < usage.cached_content_token_count <= usage.prompt_token_count
    assert usage.total_token_count == usage.prompt_token_count + 12
    assert text == " the quick brown fox jumps over"
    tool = types.Tool(
        function_declarations=[
            types.FunctionDeclaration(name="weather", parameters_json_schema=SCHEMA)
        ]
    )
    answer = client.models.generate_content(
        model="mock-gemini",
        contents=PROMPT,
        config=types.GenerateContentConfig(
            tools=[tool],
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        ),
    )
    assert answer.function_calls[0].args == {"city": "Oslo"}
    failed = _api_error(
        lambda: client.models.generate_content(model="mock-error-429", contents="Hi")
    )
    assert (failed.code, failed.status) == (429, "RESOURCE_EXHAUSTED")


def test_a_stream_broken_mid_way_is_charged_what_was_produced(gemini_world: World) -> None:
    """An error event after half the output: the input is Gemini's own count from the chunks
    so far, the output the text relayed, as the mock's own ledger of cut streams has them."""
    upstream = Upstream.objects.get(name="mock-gemini")
    ModelRoute.objects.create(
        public_name="gemini-flaky", upstream=upstream, upstream_model="mock-gemini-stream-error"
    )
    ModelPrice.objects.create(
        model="mock-gemini-stream-error",
        input_per_mtok=Decimal("1"),
        output_per_mtok=Decimal("2"),
        effective_from=timezone.now() - dt.timedelta(days=30),
        source="catalog",
    )
    client = google(gemini_world)
    text = ""
    with pytest.raises(genai_errors.APIError):
        for chunk in client.models.generate_content_stream(model="gemini-flaky", contents="Hi"):
            text += chunk.text or ""
    assert text == " the quick brown fox jumps over a lazy dog and"
    cut = ledger(gemini_world)["cut"]
    record = the_record()
    assert cut == {record.request_id: [record.input_tokens, record.output_tokens, "stream_error"]}
    assert (record.usage_source, record.error_type) == ("estimated", "UNAVAILABLE")
    assert record.cost == (record.input_tokens * 1 + record.output_tokens * 2) / Decimal(10**6)
