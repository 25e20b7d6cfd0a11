"""A Bedrock route with real processes: the openai SDK on /v1/chat/completions and the
anthropic SDK on /v1/messages, whole and streamed; the proxy speaks Converse to the mock (JSON, and AWS's binary event stream back),
signed with SigV4 from the proxy's own AWS credentials. Every record equals the mock's ledger
and its cost the price arithmetic (`assert_records_match_ledger`)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import anthropic
import openai
import pytest
from django.utils import timezone

from metering.models import ModelPrice, ModelRoute, Upstream, UsageRecord
from tests.clients.conftest import (
    assert_records_match_ledger,
    chat_answer,
    ledger,
    mock_requests,
    the_record,
)
from tests.e2e.conftest import AWS_ACCESS_KEY_ID, World

pytestmark = pytest.mark.e2e

PUBLIC = "claude-on-bedrock"
UPSTREAM_MODEL = "anthropic.mock-claude-cached-v1:0"  # the mock caches part of the prompt


@pytest.fixture
def bedrock_world(client_world: World) -> World:
    upstream = Upstream.objects.create(
        name="mock-bedrock",
        kind="bedrock",
        base_url=client_world.mock,
        api_version="eu-west-1",
        read_timeout=Decimal(3),
    )
    ModelRoute.objects.create(
        public_name=PUBLIC,
        upstream=upstream,
        upstream_model=UPSTREAM_MODEL,
        default_max_output_tokens=256,
    )
    ModelPrice.objects.create(
        model=UPSTREAM_MODEL,
        input_per_mtok=Decimal("3.00"),
        output_per_mtok=Decimal("15.00"),
        cached_input_per_mtok=Decimal("0.30"),
        effective_from=timezone.now() - dt.timedelta(days=30),
        source="override",
    )
    return client_world


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_openai_sdk_on_a_bedrock_route(bedrock_world: World, stream: bool) -> None:
    client = openai.OpenAI(api_key=bedrock_world.key, base_url=f"{bedrock_world.proxy}/v1")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there, how are you today?"},
    ]
    text, finish, usage = chat_answer(
        client, stream, model=PUBLIC, messages=messages, max_tokens=12
    )
    assert text.startswith(" the quick brown fox")
    assert finish == "length"
    (record,) = assert_records_match_ledger(bedrock_world)
    assert (record.provider, record.endpoint, record.model) == ("bedrock", "chat", PUBLIC)
    assert record.streamed is stream
    assert record.output_tokens == usage.completion_tokens == 12
    assert record.input_tokens == usage.prompt_tokens
    assert 0 < record.cached_input_tokens == usage.prompt_tokens_details.cached_tokens
    # Spoken to in Converse, signed with the proxy's AWS key for the upstream's region.
    (sent,) = mock_requests(bedrock_world)
    action = "converse-stream" if stream else "converse"
    assert sent["path"] == f"/model/anthropic.mock-claude-cached-v1%3A0/{action}"
    auth = sent["headers"]["authorization"]
    assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={AWS_ACCESS_KEY_ID}/")
    assert "/eu-west-1/bedrock/aws4_request" in auth
    assert bedrock_world.key not in str(sent["headers"])
    assert sent["body"]["inferenceConfig"]["maxTokens"] == 12
    assert sent["body"]["system"] == [{"text": "Be brief."}]
    assert sent["body"]["messages"][0]["content"] == [{"text": "Hello there, how are you today?"}]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_anthropic_sdk_on_a_bedrock_route(bedrock_world: World, stream: bool) -> None:
    """/v1/messages to a Converse route: translated through the chat form both ways, metered
    by the Bedrock meter, the answer an Anthropic Message the SDK parses."""
    client = anthropic.Anthropic(api_key=bedrock_world.key, base_url=bedrock_world.proxy)
    asked = {
        "model": PUBLIC,
        "max_tokens": 12,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hello there, how are you today?"}],
    }
    if stream:
        with client.messages.stream(**asked) as events:  # type: ignore[arg-type]
            kinds = [event.type for event in events]
            message = events.get_final_message()
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    else:
        message = client.messages.create(**asked)  # type: ignore[arg-type]
    assert message.content[0].type == "text"
    assert message.content[0].text.startswith(" the quick brown fox")
    assert message.stop_reason == "max_tokens"
    (record,) = assert_records_match_ledger(bedrock_world)
    assert (record.provider, record.endpoint, record.model) == ("bedrock", "messages", PUBLIC)
    assert record.streamed is stream
    assert record.output_tokens == message.usage.output_tokens == 12
    assert 0 < record.cached_input_tokens == message.usage.cache_read_input_tokens
    assert record.input_tokens == message.usage.input_tokens + record.cached_input_tokens
    (sent,) = mock_requests(bedrock_world)
    action = "converse-stream" if stream else "converse"
    assert sent["path"] == f"/model/anthropic.mock-claude-cached-v1%3A0/{action}"
    assert sent["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 ")
    assert bedrock_world.key not in str(sent["headers"])
    assert sent["body"]["system"] == [{"text": "Be brief."}]
    assert sent["body"]["inferenceConfig"]["maxTokens"] == 12


@pytest.mark.parametrize("repeat", [1, 2500], ids=["short", "over-64KiB"])
def test_count_tokens_on_a_converse_route_is_bedrocks_own(
    bedrock_world: World, repeat: int
) -> None:
    """The anthropic SDK's count_tokens on a Converse route: Bedrock's CountTokens with the
    Converse request (messages, system) the call would send, never charged; the count is the
    input the same call is then charged. A prompt over 64 KiB is translated off the event loop,
    to the same count."""
    client = anthropic.Anthropic(api_key=bedrock_world.key, base_url=bedrock_world.proxy)
    prompt = "Hello there, how are you today?" * repeat
    asked = {
        "model": PUBLIC,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": prompt}],
    }
    counted = client.messages.with_raw_response.count_tokens(**asked)  # type: ignore[arg-type]
    assert "x-tokenbudget-estimated" not in counted.headers
    (sent,) = mock_requests(bedrock_world)
    assert sent["path"] == "/model/anthropic.mock-claude-cached-v1%3A0/count-tokens"
    assert sent["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 ")
    converse = sent["body"]["input"]["converse"]
    assert converse["system"] == [{"text": "Be brief."}]
    assert converse["messages"][0]["content"] == [{"text": prompt}]
    assert "inferenceConfig" not in converse
    assert not UsageRecord.objects.exists()
    client.messages.create(max_tokens=8, **asked)  # type: ignore[arg-type]
    (record,) = assert_records_match_ledger(bedrock_world)
    assert record.input_tokens == counted.parse().input_tokens


def test_a_model_bedrock_cannot_count_is_estimated(bedrock_world: World) -> None:
    """Bedrock's CountTokens refuses a model it does not count: the answer is the proxy's own
    estimate, marked so, and nothing is charged."""
    _priced_route(bedrock_world, "nova-on-bedrock", "amazon.mock-nova-lite-v1:0")
    client = anthropic.Anthropic(api_key=bedrock_world.key, base_url=bedrock_world.proxy)
    counted = client.messages.with_raw_response.count_tokens(
        model="nova-on-bedrock", messages=[{"role": "user", "content": "Hello there"}]
    )
    assert counted.headers["x-tokenbudget-estimated"] == "true"
    assert counted.parse().input_tokens > 0
    (sent,) = mock_requests(bedrock_world)
    assert sent["path"] == "/model/amazon.mock-nova-lite-v1%3A0/count-tokens"
    assert sent["status"] == 400
    assert ledger(bedrock_world)["counted"] == 0
    assert not UsageRecord.objects.exists()


def _priced_route(world: World, public: str, upstream_model: str) -> None:
    ModelRoute.objects.create(
        public_name=public,
        upstream=Upstream.objects.get(name="mock-bedrock"),
        upstream_model=upstream_model,
    )
    ModelPrice.objects.create(
        model=upstream_model,
        input_per_mtok=Decimal("1"),
        output_per_mtok=Decimal("2"),
        effective_from=timezone.now() - dt.timedelta(days=30),
        source="override",
    )


def test_an_upstream_error_passes_through_uncharged(bedrock_world: World) -> None:
    _priced_route(bedrock_world, "bedrock-down", "mock-bedrock-error-503")
    client = openai.OpenAI(
        api_key=bedrock_world.key, base_url=f"{bedrock_world.proxy}/v1", max_retries=0
    )
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(
            model="bedrock-down", messages=[{"role": "user", "content": "Hi"}]
        )
    assert failed.value.status_code == 503
    assert "failed as asked" in failed.value.message
    # The anthropic SDK gets the same refusal in Anthropic's error shape.
    claude = anthropic.Anthropic(
        api_key=bedrock_world.key, base_url=bedrock_world.proxy, max_retries=0
    )
    with pytest.raises(anthropic.InternalServerError) as refused:
        claude.messages.create(
            model="bedrock-down", max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
        )
    assert refused.value.status_code == 503
    assert refused.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert "failed as asked" in refused.value.message
    records = UsageRecord.objects.order_by("created_at")
    assert [(r.status_code, r.cost, r.usage_source) for r in records] == [(503, 0, "none")] * 2


def test_a_stream_broken_mid_way_is_charged_what_was_produced(bedrock_world: World) -> None:
    """An exception frame after ten words: no usage came, so the output is the text relayed
    (the mock's own count of what it produced) and the input the local estimate."""
    _priced_route(bedrock_world, "bedrock-flaky", "mock-bedrock-stream-error")
    client = openai.OpenAI(
        api_key=bedrock_world.key, base_url=f"{bedrock_world.proxy}/v1", max_retries=0
    )
    text = ""
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(
            model="bedrock-flaky", messages=[{"role": "user", "content": "Hi"}], stream=True
        ):
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert text == " the quick brown fox jumps over a lazy dog and"
    record = the_record()
    ((request_id, (_, produced, why)),) = ledger(bedrock_world)["cut"].items()
    assert (record.request_id, record.output_tokens, why) == (request_id, produced, "stream_error")
    assert (record.usage_source, record.error_type) == ("estimated", "serviceUnavailableException")
    assert record.input_tokens > 0
    assert record.cost == (record.input_tokens * 1 + record.output_tokens * 2) / Decimal(10**6)


def test_an_anthropic_stream_broken_mid_way_ends_in_an_error_event(bedrock_world: World) -> None:
    """The same exception frame after ten words, for the anthropic SDK on /v1/messages: the
    text relayed, then Anthropic's `error` event (the SDK raises), charged what was produced."""
    _priced_route(bedrock_world, "bedrock-flaky", "mock-bedrock-stream-error")
    client = anthropic.Anthropic(
        api_key=bedrock_world.key, base_url=bedrock_world.proxy, max_retries=0
    )
    text = ""
    with (
        pytest.raises(anthropic.APIError),
        client.messages.stream(
            model="bedrock-flaky", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
        ) as events,
    ):
        for event in events:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
    assert text == " the quick brown fox jumps over a lazy dog and"
    record = the_record()
    ((request_id, (_, produced, why)),) = ledger(bedrock_world)["cut"].items()
    assert (record.request_id, record.output_tokens, why) == (request_id, produced, "stream_error")
    assert (record.endpoint, record.error_type) == ("messages", "serviceUnavailableException")
    assert record.cost == (record.input_tokens * 1 + record.output_tokens * 2) / Decimal(10**6)
