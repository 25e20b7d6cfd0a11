"""The proxy end to end: a real ASGI server, the mock upstream, the official SDKs."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from metering.models import UsageRecord
from tests.e2e.conftest import PRICES, ROUTES, World

pytestmark = pytest.mark.e2e
M = Decimal(1_000_000)


def oai(world: World, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{world.proxy}/v1", api_key=key or world.key, max_retries=0, timeout=20
    )


def claude(world: World) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=world.proxy, api_key=world.key, max_retries=0, timeout=20)


def expected_cost(
    model: str, *, input_tokens: int, output_tokens: int, cached: int = 0, cache_write: int = 0
) -> Decimal:
    inp, out, cached_rate, write_rate = (Decimal(p) if p else None for p in PRICES[ROUTES[model]])
    cached_rate = cached_rate if cached_rate is not None else inp
    write_rate = write_rate if write_rate is not None else inp
    plain = input_tokens - cached - cache_write
    return (plain * inp + cached * cached_rate + cache_write * write_rate + output_tokens * out) / M


def only_record() -> UsageRecord:
    # A stream is settled when the proxy's relay ends, which may be just after the SDK has
    # read the final `data: [DONE]` and returned: wait a moment for the record.
    deadline = time.monotonic() + 5
    while not UsageRecord.objects.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    records = list(UsageRecord.objects.all())
    assert len(records) == 1, records
    return records[0]


def assert_charged(world: World, record: UsageRecord) -> None:
    world.allowance.refresh_from_db()
    assert world.allowance.used == record.input_tokens + record.output_tokens
    assert world.allowance.reserved == 0


def assert_nothing_charged(world: World) -> None:
    world.allowance.refresh_from_db()
    assert world.allowance.used == 0
    assert world.allowance.reserved == 0


def test_chat_completion_records_the_providers_usage_exactly(world: World) -> None:
    response = oai(world).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Say hello to the ledger"}],
        max_tokens=40,
    )
    completion = response.parse()
    usage = completion.usage
    record = only_record()
    assert record.request_id == response.headers["x-request-id"]
    assert record.model == "gpt-4o-mini" and record.endpoint == "chat" and not record.streamed
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    reasoning = (
        usage.completion_tokens_details.reasoning_tokens if usage.completion_tokens_details else 0
    )
    assert (record.input_tokens, record.output_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert (record.cached_input_tokens, record.reasoning_tokens) == (cached or 0, reasoning or 0)
    assert record.cost == expected_cost(
        "gpt-4o-mini",
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        cached=cached or 0,
    )
    assert record.usage_source == "provider" and not record.estimated
    assert_charged(world, record)
    assert (
        Decimal(response.headers["x-tokenbudget-remaining"])
        == Decimal(1_000_000) - usage.total_tokens
    )
    assert response.headers["x-tokenbudget-unit"] == "tokens"


def test_reasoning_and_cached_tokens_are_priced_without_double_counting(world: World) -> None:
    completion = oai(world).chat.completions.create(
        model="o4-mini",
        messages=[{"role": "user", "content": "Think about caching " * 20}],
        max_tokens=64,
    )
    usage = completion.usage
    record = only_record()
    cached = usage.prompt_tokens_details.cached_tokens or 0
    reasoning = usage.completion_tokens_details.reasoning_tokens or 0
    assert cached > 0 and reasoning > 0, "the mock reports cached and reasoning tokens for o4-mini"
    assert record.cached_input_tokens == cached and record.reasoning_tokens == reasoning
    assert record.output_tokens == usage.completion_tokens  # reasoning is inside, not added
    assert record.cost == expected_cost(
        "o4-mini",
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        cached=cached,
    )


def test_streamed_chat_hides_the_usage_chunk_it_added(world: World) -> None:
    client = oai(world)
    messages = [{"role": "user", "content": "Stream me a short poem"}]
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, max_tokens=30, stream=True
        )
    )
    assert chunks, "the stream relayed chunks"
    assert all(chunk.usage is None for chunk in chunks), "the client did not ask for usage"
    assert all(chunk.choices for chunk in chunks), "no usage-only chunk reaches this client"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text
    streamed = only_record()
    assert streamed.streamed and streamed.usage_source == "provider"

    # The same call asking for usage gets the usage chunk, and the same usage is recorded.
    with_usage = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=messages,
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = with_usage[-1].usage
    assert usage is not None and with_usage[-1].choices == []
    assert (streamed.input_tokens, streamed.output_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert streamed.ttft_ms is not None


def test_responses_api_streaming_and_not(world: World) -> None:
    client = oai(world)
    response = client.responses.create(
        model="gpt-4o-mini", input="Describe a budget", max_output_tokens=32
    )
    record = UsageRecord.objects.get(endpoint="responses", streamed=False)
    assert (record.input_tokens, record.output_tokens) == (
        response.usage.input_tokens,
        response.usage.output_tokens,
    )
    assert record.cost == expected_cost(
        "gpt-4o-mini",
        input_tokens=response.usage.input_tokens,
        output_tokens=response.usage.output_tokens,
        cached=response.usage.input_tokens_details.cached_tokens,
    )
    events = list(
        client.responses.create(
            model="gpt-4o-mini", input="Describe a budget", max_output_tokens=32, stream=True
        )
    )
    completed = next(e for e in events if e.type == "response.completed")
    streamed = UsageRecord.objects.get(endpoint="responses", streamed=True)
    assert (streamed.input_tokens, streamed.output_tokens) == (
        completed.response.usage.input_tokens,
        completed.response.usage.output_tokens,
    )


def test_embeddings(world: World) -> None:
    result = oai(world).embeddings.create(
        model="text-embedding-3-small", input=["one", "two three"]
    )
    assert len(result.data) == 2
    record = only_record()
    assert record.input_tokens == result.usage.prompt_tokens and record.output_tokens == 0
    assert record.cost == expected_cost(
        "text-embedding-3-small", input_tokens=result.usage.prompt_tokens, output_tokens=0
    )


def test_anthropic_messages_with_cache_tokens(world: World) -> None:
    client = claude(world)
    message = client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=50,
        messages=[{"role": "user", "content": "Hello Claude " * 10}],
    )
    u = message.usage
    total_input = (
        u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0)
    )
    record = UsageRecord.objects.get(streamed=False)
    assert record.input_tokens == total_input
    assert record.cached_input_tokens == (u.cache_read_input_tokens or 0)
    assert record.cache_write_tokens == (u.cache_creation_input_tokens or 0)
    assert record.output_tokens == u.output_tokens
    assert record.cost == expected_cost(
        "claude-sonnet-4-5",
        input_tokens=total_input,
        output_tokens=u.output_tokens,
        cached=record.cached_input_tokens,
        cache_write=record.cache_write_tokens,
    )
    with client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=50,
        messages=[{"role": "user", "content": "Hello Claude " * 10}],
    ) as stream:
        final = stream.get_final_message()
    streamed = UsageRecord.objects.get(streamed=True)
    fu = final.usage
    assert streamed.input_tokens == fu.input_tokens + (fu.cache_read_input_tokens or 0) + (
        fu.cache_creation_input_tokens or 0
    )
    assert streamed.output_tokens == fu.output_tokens


def test_models_lists_only_what_the_key_may_use(world: World) -> None:
    from budgets.models import Policy

    Policy.objects.create(
        cost_center=world.employee.cost_center, allowed_models=["gpt-4o-mini", "claude-sonnet-4-5"]
    )
    ids = sorted(model.id for model in oai(world).models.list())
    assert ids == ["claude-sonnet-4-5", "gpt-4o-mini"]


def test_upstream_gets_the_provider_key_never_the_clients(world: World) -> None:
    from tests.e2e.conftest import PROVIDER_KEY

    oai(world).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        extra_headers={
            "x-api-key": world.key,
            "cookie": "session=abc",
            "openai-organization": "org-x",
        },
    )
    seen = httpx.get(f"{world.mock}/_mock/last", timeout=5).json()
    assert seen["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert world.key not in json.dumps(seen)
    assert "cookie" not in seen["headers"] and "openai-organization" not in seen["headers"]
    claude(world).messages.create(
        model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    seen = httpx.get(f"{world.mock}/_mock/last", timeout=5).json()
    assert seen["headers"]["x-api-key"] == PROVIDER_KEY
    assert world.key not in json.dumps(seen)


def test_intent_comes_from_the_header_or_metadata(world: World) -> None:
    client = oai(world)
    hello = [{"role": "user", "content": "hi"}]
    tagged = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=hello, max_tokens=5, extra_headers={"X-Intent": "code-review"}
    )
    by_metadata = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=hello,
        max_tokens=5,
        metadata={"intent": "support-reply"},
        store=False,
    )
    records = {r.request_id: r.intent for r in UsageRecord.objects.all()}
    assert records[tagged.headers["x-request-id"]] == "code-review"
    assert records[by_metadata.headers["x-request-id"]] == "support-reply"
