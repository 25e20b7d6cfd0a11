"""Claude on AWS Bedrock (kind `bedrock_anthropic`) with real processes: the anthropic SDK on
/v1/messages and the openai SDK on /v1/chat/completions, whole and streamed. The proxy calls
the mock's InvokeModel paths (`/model/{id}/invoke`, `/invoke-with-response-stream`: AWS's
event-stream frames, each a base64 Anthropic event) signed with SigV4 from its own AWS
credentials, and relays Anthropic's answers and SSE; every record equals the mock's ledger
(cache reads and writes included) and its cost the price arithmetic."""

from __future__ import annotations

import base64
import datetime as dt
import json
from decimal import Decimal

import anthropic
import openai
import pytest
from django.utils import timezone

from metering import catalog_services, price_catalog
from metering.models import ModelPrice, ModelRoute, Upstream, UsageRecord
from tests.clients.conftest import (
    assert_records_match_ledger,
    chat_answer,
    expected_cost,
    ledger,
    mock_requests,
    the_record,
    wait_for_cut,
)
from tests.e2e.conftest import AWS_ACCESS_KEY_ID, World

pytestmark = pytest.mark.e2e

PUBLIC = "claude-on-bedrock-invoke"
UPSTREAM_MODEL = "us.anthropic.mock-claude-cached-v1:0"  # the mock caches part of the prompt
QUOTED = "us.anthropic.mock-claude-cached-v1%3A0"
REGION = "us-east-1"
MESSAGES = [{"role": "user", "content": "Hello there, how are you today?"}]


def _route(public: str, upstream_model: str, prices: tuple[str, str, str, str] | None) -> None:
    ModelRoute.objects.create(
        public_name=public,
        upstream=Upstream.objects.get(name="mock-bedrock-anthropic"),
        upstream_model=upstream_model,
        default_max_output_tokens=256,
    )
    if prices is not None:
        inp, out, cached, write = prices
        ModelPrice.objects.create(
            model=upstream_model,
            input_per_mtok=Decimal(inp),
            output_per_mtok=Decimal(out),
            cached_input_per_mtok=Decimal(cached),
            cache_write_per_mtok=Decimal(write),
            effective_from=timezone.now() - dt.timedelta(days=30),
            source="override",
        )


@pytest.fixture
def invoke_world(client_world: World) -> World:
    Upstream.objects.create(
        name="mock-bedrock-anthropic",
        kind="bedrock_anthropic",
        base_url=client_world.mock,
        api_version=REGION,
        read_timeout=Decimal(3),
    )
    _route(PUBLIC, UPSTREAM_MODEL, ("3.00", "15.00", "0.30", "3.75"))
    return client_world


def _check_sent(world: World, stream: bool, quoted: str = QUOTED) -> dict:
    """The one request the mock saw: the InvokeModel path, SigV4, the body's shape."""
    (sent,) = mock_requests(world)
    action = "invoke-with-response-stream" if stream else "invoke"
    assert sent["path"] == f"/model/{quoted}/{action}"
    auth = sent["headers"]["authorization"]
    assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={AWS_ACCESS_KEY_ID}/")
    assert f"/{REGION}/bedrock/aws4_request" in auth
    assert "x-amz-date" in sent["headers"]
    assert world.key not in str(sent["headers"]) and "x-api-key" not in sent["headers"]
    body = sent["body"]
    assert "model" not in body and "stream" not in body
    assert body["anthropic_version"] == "bedrock-2023-05-31"
    return body


def _check_record(world: World, stream: bool, endpoint: str) -> UsageRecord:
    (record,) = assert_records_match_ledger(world)
    assert (record.provider, record.endpoint, record.model, record.upstream_model) == (
        "bedrock_anthropic",
        endpoint,
        PUBLIC,
        UPSTREAM_MODEL,
    )
    assert record.streamed is stream
    # The mock caches half the prompt and writes a quarter of it: both come back as Anthropic's.
    assert record.cached_input_tokens == record.input_tokens // 2 > 0
    assert record.cache_write_tokens == record.input_tokens // 4 > 0
    assert record.cost == expected_cost(record) > 0
    return record


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_anthropic_sdk_messages(invoke_world: World, stream: bool) -> None:
    client = anthropic.Anthropic(base_url=invoke_world.proxy, api_key=invoke_world.key)
    kwargs = {"model": PUBLIC, "max_tokens": 40, "messages": MESSAGES}
    if stream:
        with client.messages.stream(**kwargs) as events:  # type: ignore[arg-type]
            message = events.get_final_message()
            assert events.response.headers["content-type"].startswith("text/event-stream")
    else:
        message = client.messages.create(**kwargs)  # type: ignore[arg-type]
    assert message.content[0].text.startswith(" the quick brown fox")  # type: ignore[union-attr]
    assert _check_sent(invoke_world, stream)["max_tokens"] == 40
    record = _check_record(invoke_world, stream, "messages")
    usage = message.usage
    assert record.output_tokens == usage.output_tokens == 20  # the mock's default answer
    assert record.cached_input_tokens == usage.cache_read_input_tokens
    assert record.cache_write_tokens == usage.cache_creation_input_tokens
    assert record.input_tokens == (
        usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    )


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_openai_sdk_chat_crosses_to_the_invoke_route(invoke_world: World, stream: bool) -> None:
    client = openai.OpenAI(base_url=invoke_world.proxy + "/v1", api_key=invoke_world.key)
    kwargs = {"model": PUBLIC, "messages": MESSAGES, "max_tokens": 12}
    text, finish, usage = chat_answer(client, stream, **kwargs)
    assert text.startswith(" the quick brown fox")
    assert finish == "length"
    assert _check_sent(invoke_world, stream)["max_tokens"] == 12
    record = _check_record(invoke_world, stream, "chat")
    assert usage is not None
    assert (record.input_tokens, record.output_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )


def test_count_tokens_is_bedrocks_own_count(invoke_world: World) -> None:
    """count_tokens goes to Bedrock's CountTokens with the InvokeModel body the call would
    get (base64): the count is what the same call is then charged, and is never charged."""
    client = anthropic.Anthropic(base_url=invoke_world.proxy, api_key=invoke_world.key)
    counted = client.messages.with_raw_response.count_tokens(
        model=PUBLIC, system="Be brief.", messages=MESSAGES
    )
    assert "x-tokenbudget-estimated" not in counted.headers
    total = counted.parse().input_tokens
    (sent,) = mock_requests(invoke_world)
    assert sent["path"] == f"/model/{QUOTED}/count-tokens"
    assert sent["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 ")
    assert invoke_world.key not in str(sent["headers"])
    inner = json.loads(base64.b64decode(sent["body"]["input"]["invokeModel"]["body"]))
    assert inner["anthropic_version"] == "bedrock-2023-05-31"
    assert inner["system"] == "Be brief." and "model" not in inner and inner["max_tokens"] >= 1
    assert ledger(invoke_world)["counted"] == 1
    assert not UsageRecord.objects.exists()
    message = client.messages.create(
        model=PUBLIC, max_tokens=8, system="Be brief.", messages=MESSAGES
    )
    (record,) = assert_records_match_ledger(invoke_world)
    assert record.input_tokens == total > message.usage.input_tokens  # part of it cached


def test_a_refused_count_is_in_anthropics_shape(invoke_world: World) -> None:
    """Bedrock's CountTokens failing (the mock's scripted 503): Anthropic's error shape, its
    message kept, nothing charged."""
    _route("bedrock-invoke-down", "us.anthropic.mock-claude-error-503-v1:0", None)
    client = anthropic.Anthropic(
        base_url=invoke_world.proxy, api_key=invoke_world.key, max_retries=0
    )
    with pytest.raises(anthropic.APIStatusError) as refused:
        client.messages.count_tokens(model="bedrock-invoke-down", messages=MESSAGES)
    assert refused.value.status_code == 503
    assert refused.value.body["type"] == "error"  # type: ignore[index]
    assert "failed as asked" in refused.value.message
    assert not UsageRecord.objects.exists()


def test_an_upstream_error_is_in_the_clients_shape_and_uncharged(invoke_world: World) -> None:
    _route("bedrock-invoke-down", "us.anthropic.mock-claude-error-503-v1:0", None)
    ModelPrice.objects.create(
        model="us.anthropic.mock-claude-error-503-v1:0",
        input_per_mtok=Decimal(1),
        output_per_mtok=Decimal(2),
        effective_from=timezone.now() - dt.timedelta(days=30),
        source="override",
    )
    messages = anthropic.Anthropic(
        base_url=invoke_world.proxy, api_key=invoke_world.key, max_retries=0
    )
    for stream in (False, True):
        with pytest.raises(anthropic.APIStatusError) as refused:
            messages.messages.create(
                model="bedrock-invoke-down", max_tokens=8, messages=MESSAGES, stream=stream
            )
        assert refused.value.status_code == 503
        assert refused.value.body["type"] == "error"  # type: ignore[index]
        error = refused.value.body["error"]  # type: ignore[index]
        assert error["type"] == "api_error" and "failed as asked" in error["message"]
    chat = openai.OpenAI(
        base_url=invoke_world.proxy + "/v1", api_key=invoke_world.key, max_retries=0
    )
    with pytest.raises(openai.APIStatusError) as failed:
        chat.chat.completions.create(model="bedrock-invoke-down", messages=MESSAGES)
    assert failed.value.status_code == 503 and "failed as asked" in failed.value.message
    assert {r.cost for r in UsageRecord.objects.all()} == {0}
    invoke_world.allowance.refresh_from_db()
    assert (invoke_world.allowance.used, invoke_world.allowance.reserved) == (0, 0)


def test_a_stream_cut_by_the_upstream_is_charged_input_plus_what_was_streamed(
    invoke_world: World,
) -> None:
    """An exception frame after six words: the input is message_start's (exact, its cache
    split kept), the output the six words relayed (the mock's own count)."""
    client = anthropic.Anthropic(base_url=invoke_world.proxy, api_key=invoke_world.key)
    text = ""
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(
            model=PUBLIC,
            max_tokens=100,
            messages=MESSAGES,
            metadata={"mock_output_tokens": 40, "mock_stream_error_at": 6},  # type: ignore[typeddict-unknown-key]
        ) as stream,
    ):
        request_id = stream.response.headers["x-request-id"]
        for part in stream.text_stream:
            text += part
    assert "overloaded" in str(caught.value).lower()
    assert text == " the quick brown fox jumps over"
    record = the_record()
    served_input, produced, why = ledger(invoke_world)["cut"][request_id]
    assert (why, produced) == ("stream_error", 6)
    assert (record.request_id, record.input_tokens, record.output_tokens) == (
        request_id,
        served_input,
        6,
    )
    assert record.cached_input_tokens == served_input // 2
    assert record.cache_write_tokens == served_input // 4
    assert record.estimated and record.error_type == "overloaded_error"
    assert record.cost == expected_cost(record) > 0
    invoke_world.allowance.refresh_from_db()
    assert invoke_world.allowance.used == record.input_tokens + record.output_tokens
    assert invoke_world.allowance.reserved == 0


def test_the_catalogue_prices_a_bedrock_claude_id(invoke_world: World) -> None:
    """genai-prices' `aws` provider prices `us.anthropic.claude-...-v1:0` (its regional entry);
    a call to such a route costs the catalogue's arithmetic."""
    model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    _route("claude-sonnet-bedrock", model, None)
    result = price_catalog.prices_sync(now=timezone.now())
    assert model not in result.unmatched
    price = ModelPrice.objects.get(model=model)
    assert price.provider == "aws"
    assert (price.input_per_mtok, price.output_per_mtok) == (Decimal("3.3"), Decimal("16.5"))
    client = anthropic.Anthropic(base_url=invoke_world.proxy, api_key=invoke_world.key)
    message = client.messages.create(
        model="claude-sonnet-bedrock", max_tokens=10, messages=MESSAGES
    )
    assert message.usage.output_tokens == 10
    _check_sent(invoke_world, False, quoted="us.anthropic.claude-sonnet-4-5-20250929-v1%3A0")
    (record,) = assert_records_match_ledger(invoke_world)
    assert record.upstream_model == model and record.cost == expected_cost(record) > 0


def test_a_client_that_leaves_after_five_tokens_pays_input_plus_five(
    invoke_world: World,
) -> None:
    client = anthropic.Anthropic(
        base_url=invoke_world.proxy, api_key=invoke_world.key, max_retries=0
    )
    received = 0
    with client.messages.stream(
        model=PUBLIC,
        max_tokens=100,
        messages=MESSAGES,
        metadata={"mock_output_tokens": 40, "mock_chunk_delay_ms": 300},  # type: ignore[typeddict-unknown-key]
    ) as stream:
        request_id = stream.response.headers["x-request-id"]
        for _ in stream.text_stream:
            received += 1
            if received == 5:
                break
    served_input, produced, why = wait_for_cut(invoke_world, request_id)
    assert why == "client_gone" and produced == 5
    record = the_record()
    assert (record.input_tokens, record.output_tokens) == (served_input, 5)
    assert record.status_code == 499 and record.error_type == "client_closed"
    assert record.cost == expected_cost(record) > 0


def test_a_chat_stream_cut_by_the_upstream_ends_in_an_error(invoke_world: World) -> None:
    """The mock's `stream-error` model breaks off half-way (6 of 12 words): the chat client
    gets an error after the words, the record input + those 6."""
    _route(
        "bedrock-invoke-flaky", "us.anthropic.mock-claude-stream-error-v1:0", ("1", "2", "1", "1")
    )
    client = openai.OpenAI(
        base_url=invoke_world.proxy + "/v1", api_key=invoke_world.key, max_retries=0
    )
    text = ""
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(
            model="bedrock-invoke-flaky", messages=MESSAGES, max_tokens=12, stream=True
        ):
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert text == " the quick brown fox jumps over"
    record = the_record()
    ((request_id, (served_input, produced, why)),) = ledger(invoke_world)["cut"].items()
    assert (record.request_id, why, produced) == (request_id, "stream_error", 6)
    assert (record.input_tokens, record.output_tokens) == (served_input, 6)
    assert record.error_type == "overloaded_error" and record.cost == expected_cost(record)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_failing_bedrock_deployment_falls_back_to_native_anthropic(
    invoke_world: World, stream: bool
) -> None:
    """Claude on Bedrock first (it answers 503), Anthropic's own API next: the body is encoded
    again for the native kind (model in it, no anthropic_version) and its stream relayed as
    it comes (no event-stream decoding), one record naming the deployment that served."""
    bedrock = Upstream.objects.get(name="mock-bedrock-anthropic")
    failing = "us.anthropic.mock-claude-error-503-v1:0"
    native = Upstream.objects.get(name="mock-anthropic")
    route = catalog_services.route_create(
        actor=None,
        data={"public_name": "claude-two-clouds", "upstream": bedrock, "upstream_model": failing},
    )
    catalog_services.route_deployments_set(
        actor=None,
        route=route,
        deployments=[
            {"upstream": bedrock, "upstream_model": failing, "priority": 0},
            {"upstream": native, "upstream_model": "claude-opus-5-5", "priority": 1},
        ],
    )
    ModelPrice.objects.create(
        model=failing,
        input_per_mtok=Decimal(1),
        output_per_mtok=Decimal(2),
        effective_from=timezone.now() - dt.timedelta(days=30),
        source="override",
    )
    client = anthropic.Anthropic(base_url=invoke_world.proxy, api_key=invoke_world.key)
    kwargs = {"model": "claude-two-clouds", "max_tokens": 20, "messages": MESSAGES}
    if stream:
        with client.messages.stream(**kwargs) as events:  # type: ignore[arg-type]
            message = events.get_final_message()
    else:
        message = client.messages.create(**kwargs)  # type: ignore[arg-type]
    assert message.content[0].text.startswith(" the quick brown fox")  # type: ignore[union-attr]
    first, second = mock_requests(invoke_world)
    assert first["path"].endswith("/invoke-with-response-stream" if stream else "/invoke")
    assert first["body"]["anthropic_version"] == "bedrock-2023-05-31"
    assert second["path"] == "/v1/messages"
    assert second["body"]["model"] == "claude-opus-5-5"
    assert "anthropic_version" not in second["body"]
    (record,) = assert_records_match_ledger(invoke_world)
    assert (record.provider, record.upstream_model, record.attempts) == (
        "anthropic",
        "claude-opus-5-5",
        2,
    )
