"""Vertex AI routes with real processes: Gemini on Vertex and Claude on Vertex, from the
openai SDK (chat), the anthropic SDK (messages) and, for Gemini, the google-genai SDK on the
/v1beta surface, streaming and not. The proxy signs in as a service account (google-auth's
JWT-bearer grant against the mock's token endpoint, tests/google_accounts.py) and calls the
mock's Vertex paths with the access token; every record equals the mock's ledger and its cost
the price arithmetic, the prices coming from the bundled catalogue (`sync_prices`)."""

from __future__ import annotations

import time
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest
from django.utils import timezone
from google import genai
from google.genai import types

from metering import catalog_services, price_catalog
from metering.models import ModelPrice, ModelRoute, Upstream, UsageRecord
from tests.clients.conftest import assert_records_match_ledger, chat_answer, ledger, mock_requests
from tests.e2e.conftest import VERTEX_BAD_ENV, World
from tests.google_accounts import Account, grants

pytestmark = pytest.mark.e2e

GEMINI, GEMINI_MODEL = "vertex-gemini", "gemini-2.5-flash"
CLAUDE, CLAUDE_MODEL = "vertex-claude", "claude-sonnet-4-5@20250929"
LOCATION = "/v1/projects/p-test/locations/us-east5"
ROUTES = {GEMINI: ("vertex", GEMINI_MODEL), CLAUDE: ("vertex_anthropic", CLAUDE_MODEL)}
METHODS = {
    (GEMINI, False): f"/publishers/google/models/{GEMINI_MODEL}:generateContent",
    (GEMINI, True): f"/publishers/google/models/{GEMINI_MODEL}:streamGenerateContent",
    (CLAUDE, False): f"/publishers/anthropic/models/{CLAUDE_MODEL}:rawPredict",
    (CLAUDE, True): f"/publishers/anthropic/models/{CLAUDE_MODEL}:streamRawPredict",
}
MESSAGES = [{"role": "user", "content": "Hello"}]


def _upstream(world: World, name: str, kind: str, env: str) -> Upstream:
    return Upstream.objects.create(
        name=name,
        kind=kind,
        base_url=f"{world.mock}{LOCATION}",
        api_version="us-east5",
        credential_env=env,
        read_timeout=Decimal(3),
    )


@pytest.fixture
def vertex_world(client_world: World, vertex_accounts: dict[str, Account]) -> World:
    for public, (kind, model) in ROUTES.items():
        upstream = _upstream(client_world, f"mock-{kind}", kind, "TB_UPSTREAM_KEY_VERTEX_SA")
        ModelRoute.objects.create(
            public_name=public,
            upstream=upstream,
            upstream_model=model,
            default_max_output_tokens=256,
        )
    result = price_catalog.prices_sync(now=timezone.now())
    assert {GEMINI_MODEL, CLAUDE_MODEL}.isdisjoint(result.unmatched)
    return client_world


def _check_sent(world: World, model: str, stream: bool) -> dict:
    """The one request the mock saw: the Vertex path, the access token, the body's shape."""
    (sent,) = mock_requests(world)
    assert sent["path"] == LOCATION + METHODS[model, stream]
    assert sent["headers"]["authorization"].startswith("Bearer ya29.mock-")
    assert world.key not in str(sent["headers"])
    body = sent["body"]
    assert "model" not in body
    if model == CLAUDE:
        assert body["anthropic_version"] == "vertex-2023-10-16"
        assert body.get("stream", False) is stream
    return body


def _check_record(world: World, model: str, stream: bool) -> UsageRecord:
    (record,) = assert_records_match_ledger(world)
    kind, upstream_model = ROUTES[model]
    assert (record.provider, record.model, record.upstream_model) == (kind, model, upstream_model)
    assert record.streamed is stream
    assert record.cost > 0
    return record


def test_the_catalogue_prices_vertex_models(vertex_world: World) -> None:
    claude = ModelPrice.objects.get(model=CLAUDE_MODEL)
    assert (claude.provider, claude.input_per_mtok, claude.output_per_mtok) == (
        "google",
        Decimal(3),
        Decimal(15),
    )
    assert ModelPrice.objects.get(model=GEMINI_MODEL).provider == "google"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("model", [GEMINI, CLAUDE])
def test_openai_sdk_chat(vertex_world: World, model: str, stream: bool) -> None:
    client = openai.OpenAI(base_url=vertex_world.proxy + "/v1", api_key=vertex_world.key)
    kwargs = {"model": model, "messages": MESSAGES, "max_tokens": 40}
    text, _, usage = chat_answer(client, stream, **kwargs)
    assert text.startswith(" the quick brown fox")
    body = _check_sent(vertex_world, model, stream)
    if model == CLAUDE:
        assert body["max_tokens"] == 40
    else:
        assert body["generationConfig"]["maxOutputTokens"] == 40
    record = _check_record(vertex_world, model, stream)
    assert (record.input_tokens, record.output_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("model", [GEMINI, CLAUDE])
def test_anthropic_sdk_messages(vertex_world: World, model: str, stream: bool) -> None:
    client = anthropic.Anthropic(base_url=vertex_world.proxy, api_key=vertex_world.key)
    if stream:
        with client.messages.stream(model=model, max_tokens=40, messages=MESSAGES) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(model=model, max_tokens=40, messages=MESSAGES)
    assert message.content[0].text.startswith(" the quick brown fox")
    _check_sent(vertex_world, model, stream)
    record = _check_record(vertex_world, model, stream)
    assert record.output_tokens == message.usage.output_tokens


def test_count_tokens_goes_to_vertex_for_claude(vertex_world: World) -> None:
    client = anthropic.Anthropic(base_url=vertex_world.proxy, api_key=vertex_world.key)
    counted = client.messages.with_raw_response.count_tokens(model=CLAUDE, messages=MESSAGES)
    assert "x-tokenbudget-estimated" not in counted.headers
    assert counted.parse().input_tokens > 0
    (sent,) = mock_requests(vertex_world)
    assert sent["path"] == f"{LOCATION}/publishers/anthropic/models/count-tokens:rawPredict"
    assert sent["headers"]["authorization"].startswith("Bearer ya29.mock-")
    assert sent["body"]["model"] == CLAUDE_MODEL
    assert sent["body"]["anthropic_version"] == "vertex-2023-10-16"
    # A Gemini route's count is the proxy's own estimate; neither is charged.
    local = client.messages.with_raw_response.count_tokens(model=GEMINI, messages=MESSAGES)
    assert local.headers["x-tokenbudget-estimated"] == "true"
    assert len(mock_requests(vertex_world)) == 1
    assert not UsageRecord.objects.exists()


def test_count_tokens_goes_to_vertex_for_gemini(vertex_world: World) -> None:
    """google-genai's countTokens on a Vertex Gemini route: Vertex's own count (its request
    has the generate request's fields at the top level), what the same call is charged."""
    http = types.HttpOptions(base_url=vertex_world.proxy, api_version="v1beta")
    client = genai.Client(api_key=vertex_world.key, http_options=http)
    counted = client.models.count_tokens(model=GEMINI, contents="Hello there")
    (sent,) = mock_requests(vertex_world)
    assert sent["path"] == f"{LOCATION}/publishers/google/models/{GEMINI_MODEL}:countTokens"
    assert sent["headers"]["authorization"].startswith("Bearer ya29.mock-")
    assert sent["body"] == {"contents": [{"parts": [{"text": "Hello there"}], "role": "user"}]}
    assert ledger(vertex_world)["counted"] == 1
    assert not UsageRecord.objects.exists()
    # A whole generate request is unwrapped: its system instruction is counted, no model sent.
    inner = {
        "model": f"models/{GEMINI}",
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "Hello there"}]}],
    }
    answer = httpx.post(
        f"{vertex_world.proxy}/v1beta/models/{GEMINI}:countTokens",
        headers={"x-goog-api-key": vertex_world.key},
        json={"generateContentRequest": inner},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert "x-tokenbudget-estimated" not in answer.headers
    whole = types.CountTokensResponse.model_validate(answer.json())
    assert whole.total_tokens > counted.total_tokens
    sent = mock_requests(vertex_world)[1]
    assert sent["body"] == {k: v for k, v in inner.items() if k != "model"}
    answer = client.models.generate_content(model=GEMINI, contents="Hello there")
    assert answer.usage_metadata.prompt_token_count == counted.total_tokens
    assert_records_match_ledger(vertex_world)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_google_genai_sdk_on_a_vertex_gemini_route(vertex_world: World, stream: bool) -> None:
    http = types.HttpOptions(base_url=vertex_world.proxy, api_version="v1beta")
    client = genai.Client(api_key=vertex_world.key, http_options=http)
    config = types.GenerateContentConfig(max_output_tokens=64)
    if stream:
        chunks = list(
            client.models.generate_content_stream(model=GEMINI, contents="Hello", config=config)
        )
        text, usage = "".join(c.text or "" for c in chunks), chunks[-1].usage_metadata
    else:
        response = client.models.generate_content(model=GEMINI, contents="Hello", config=config)
        text, usage = response.text or "", response.usage_metadata
    assert text.startswith(" the quick brown fox")
    assert _check_sent(vertex_world, GEMINI, stream)["generationConfig"]["maxOutputTokens"] == 64
    record = _check_record(vertex_world, GEMINI, stream)
    assert record.input_tokens == usage.prompt_token_count


def test_one_token_serves_many_calls_and_is_refreshed_before_it_expires(
    vertex_world: World, vertex_accounts: dict[str, Account], mock_upstream_url: str
) -> None:
    """The account's tokens last 304 s: 4 s after one is issued less than the proxy's 5-minute
    margin is left, so the next call starts its refresh (and goes on with the old token, still
    valid); until then every call reuses it, and the calls after the refresh use the new one."""
    account = vertex_accounts["TB_UPSTREAM_KEY_VERTEX_SHORT"]
    upstream = _upstream(vertex_world, "vertex-short", "vertex", "TB_UPSTREAM_KEY_VERTEX_SHORT")
    ModelRoute.objects.create(
        public_name="vertex-short", upstream=upstream, upstream_model=GEMINI_MODEL
    )
    client = openai.OpenAI(base_url=vertex_world.proxy + "/v1", api_key=vertex_world.key)
    before = grants(mock_upstream_url, account)
    started = time.monotonic()
    for _ in range(5):
        client.chat.completions.create(model="vertex-short", messages=MESSAGES, max_tokens=8)
    assert time.monotonic() - started < 4, "too slow to prove the reuse"
    assert grants(mock_upstream_url, account) == before + 1
    time.sleep(max(0.0, 4.2 - (time.monotonic() - started)))
    client.chat.completions.create(model="vertex-short", messages=MESSAGES, max_tokens=8)
    deadline = time.monotonic() + 10
    while grants(mock_upstream_url, account) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(2):
        client.chat.completions.create(model="vertex-short", messages=MESSAGES, max_tokens=8)
    assert grants(mock_upstream_url, account) == before + 2
    tokens = [r["headers"]["authorization"] for r in mock_requests(vertex_world)]
    assert len(set(tokens[:6])) == 1  # the call that started the refresh had the old one
    assert tokens[6] == tokens[7] != tokens[0]
    assert_records_match_ledger(vertex_world, at_least=8)


def test_a_bad_key_file_is_a_clear_error_and_nothing_is_charged(vertex_world: World) -> None:
    for kind in ("vertex", "vertex_anthropic"):
        upstream = _upstream(vertex_world, f"bad-{kind}", kind, VERTEX_BAD_ENV)
        ModelRoute.objects.create(
            public_name=f"bad-{kind}",
            upstream=upstream,
            upstream_model=ROUTES[GEMINI if kind == "vertex" else CLAUDE][1],
        )
    chat = openai.OpenAI(
        base_url=vertex_world.proxy + "/v1", api_key=vertex_world.key, max_retries=0
    )
    with pytest.raises(openai.APIStatusError) as failed:
        chat.chat.completions.create(model="bad-vertex", messages=MESSAGES, max_tokens=8)
    assert failed.value.status_code == 502
    assert failed.value.body["code"] == "upstream_credentials"
    assert "could not authenticate" in failed.value.body["message"]
    messages = anthropic.Anthropic(
        base_url=vertex_world.proxy, api_key=vertex_world.key, max_retries=0
    )
    for stream in (False, True):
        with pytest.raises(anthropic.APIStatusError) as refused:
            messages.messages.create(
                model="bad-vertex_anthropic", max_tokens=8, messages=MESSAGES, stream=stream
            )
        assert refused.value.status_code == 502
        assert refused.value.body["error"]["code"] == "upstream_credentials"
    assert mock_requests(vertex_world) == [] and ledger(vertex_world)["count"] == 0
    assert UsageRecord.objects.filter(cost__gt=0).count() == 0
    vertex_world.allowance.refresh_from_db()
    assert (vertex_world.allowance.used, vertex_world.allowance.reserved) == (0, 0)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_deployment_without_a_token_falls_back_to_native_anthropic(
    vertex_world: World, stream: bool
) -> None:
    """Claude on Vertex first (its key file is broken), Anthropic's own API next: the body is
    encoded again for the native kind (model in it, no anthropic_version), one hold, one
    record naming the deployment that served."""
    bad = _upstream(vertex_world, "bad-claude", "vertex_anthropic", VERTEX_BAD_ENV)
    native = Upstream.objects.get(name="mock-anthropic")
    route = catalog_services.route_create(
        actor=None,
        data={"public_name": "claude-two-ways", "upstream": bad, "upstream_model": CLAUDE_MODEL},
    )
    catalog_services.route_deployments_set(
        actor=None,
        route=route,
        deployments=[
            {"upstream": bad, "upstream_model": CLAUDE_MODEL, "priority": 0},
            {"upstream": native, "upstream_model": "claude-opus-5-5", "priority": 1},
        ],
    )
    client = anthropic.Anthropic(base_url=vertex_world.proxy, api_key=vertex_world.key)
    kwargs = {"model": "claude-two-ways", "max_tokens": 20, "messages": MESSAGES}
    if stream:
        with client.messages.stream(**kwargs) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    assert message.content[0].text.startswith(" the quick brown fox")
    (sent,) = mock_requests(vertex_world)
    assert sent["path"] == "/v1/messages"
    assert sent["body"]["model"] == "claude-opus-5-5" and "anthropic_version" not in sent["body"]
    (record,) = assert_records_match_ledger(vertex_world)
    assert (record.provider, record.upstream_model, record.attempts) == (
        "anthropic",
        "claude-opus-5-5",
        2,
    )
