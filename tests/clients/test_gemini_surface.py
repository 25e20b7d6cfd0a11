"""The rest of the Gemini API surface with real processes and google-genai: countTokens (the
upstream's own count for a Gemini route, a marked local count for any other, never charged)
and the models list and model reads, in Gemini's shapes."""

from __future__ import annotations

import httpx
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from metering.models import Intent, ModelRoute, UsageRecord, VirtualKey
from metering.providers import gemini
from metering.proxy.counting import local_count
from tests.clients.conftest import assert_records_match_ledger, ledger, mock_requests
from tests.clients.test_gemini import (  # noqa: F401
    CATALOGUED,
    THINKING,
    THINKING_UPSTREAM,
    UNPRICED,
    gemini_world,
    google,
)
from tests.e2e.conftest import World

pytestmark = pytest.mark.e2e

CONTENTS = "Count me, please, all of these words."
GEMINI_METHODS = ["generateContent", "streamGenerateContent", "countTokens"]


@pytest.fixture
def world(gemini_world: World) -> World:  # noqa: F811
    """tests/clients/test_gemini.py's world: Gemini routes on the mock, priced."""
    return gemini_world


def assert_nothing_charged(world: World) -> None:
    world.allowance.refresh_from_db()
    assert (world.allowance.used, world.allowance.reserved) == (0, 0)
    assert not UsageRecord.objects.exists()
    assert ledger(world)["count"] == 0


def _api_error(call) -> genai_errors.APIError:
    with pytest.raises(genai_errors.APIError) as failed:
        call()
    return failed.value


# --- countTokens -------------------------------------------------------------------------------


def test_a_gemini_route_is_counted_by_its_upstream(world: World) -> None:
    client = google(world)
    counted = client.models.count_tokens(model=THINKING, contents=CONTENTS)
    (sent,) = mock_requests(world)
    # The upstream's model in the path, the provider's key, the request as sent.
    assert sent["path"] == f"/v1beta/models/{THINKING_UPSTREAM}:countTokens"
    assert sent["headers"]["x-goog-api-key"] != world.key
    assert sent["body"] == {"contents": [{"parts": [{"text": CONTENTS}], "role": "user"}]}
    assert ledger(world)["counted"] == 1
    assert_nothing_charged(world)
    # The count is the prompt the same request is then charged for.
    answer = client.models.generate_content(model=THINKING, contents=CONTENTS)
    assert counted.total_tokens == answer.usage_metadata.prompt_token_count > 0
    (record,) = assert_records_match_ledger(world)
    assert record.input_tokens == counted.total_tokens


def test_a_whole_generate_request_is_counted_with_the_upstream_model(world: World) -> None:
    """The REST form with a `generateContentRequest` (system instruction, tools), the key in
    `?key=`, on google-genai's default /v1 path: its model is the upstream's when sent on."""
    inner = {
        "model": f"models/{THINKING}",
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": CONTENTS}]}],
    }
    answer = httpx.post(
        f"{world.proxy}/v1/models/{THINKING}:countTokens",
        params={"key": world.key},
        json={"generateContentRequest": inner},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert "x-tokenbudget-estimated" not in answer.headers
    counted = types.CountTokensResponse.model_validate(answer.json())  # no unknown fields
    (sent,) = mock_requests(world)
    assert sent["body"]["generateContentRequest"]["model"] == f"models/{THINKING_UPSTREAM}"
    assert sent["body"]["generateContentRequest"]["systemInstruction"] == inner["systemInstruction"]
    # The system instruction is counted: more than the contents alone.
    client = google(world)
    alone = client.models.count_tokens(model=THINKING, contents=CONTENTS)
    assert counted.total_tokens > alone.total_tokens
    assert_nothing_charged(world)


def test_another_route_is_counted_locally_and_marked_an_estimate(world: World) -> None:
    client = google(world)
    response = client.models.count_tokens(model="claude-opus-5-5", contents=CONTENTS)
    headers = response.sdk_http_response.headers
    assert headers["x-tokenbudget-estimated"] == "true"
    body = b'{"contents": [{"parts": [{"text": "%s"}], "role": "user"}]}' % CONTENTS.encode()
    expected = local_count(gemini.parse_count_request(gemini.COUNT_ENDPOINT, body))
    assert response.total_tokens == expected > 0
    assert mock_requests(world) == []
    assert_nothing_charged(world)


def test_count_refusals_in_googles_shape_charge_nothing(world: World) -> None:
    client = google(world)
    unknown = _api_error(lambda: client.models.count_tokens(model="nope", contents="Hi"))
    assert (unknown.code, unknown.status) == (404, "NOT_FOUND")
    bad = genai.Client(api_key="tb-wrong", http_options=types.HttpOptions(base_url=world.proxy))
    denied = _api_error(lambda: bad.models.count_tokens(model=CATALOGUED, contents="Hi"))
    assert (denied.code, denied.status) == (401, "UNAUTHENTICATED")
    url = f"{world.proxy}/v1beta/models/{CATALOGUED}:countTokens"
    headers = {"x-goog-api-key": world.key}
    for body in (
        {},
        {"contents": []},
        {"contents": "Hi", "generateContentRequest": {"contents": "Hi"}},
        {"generateContentRequest": "Hi"},
    ):
        answer = httpx.post(url, headers=headers, json=body, timeout=10)
        assert answer.status_code == 400, body
        assert answer.json()["error"]["status"] == "INVALID_ARGUMENT"
    # A key limited to other models may not count for this one.
    VirtualKey.objects.update(allowed_models=["claude-opus-5-5"])
    limited = _api_error(lambda: client.models.count_tokens(model=CATALOGUED, contents="Hi"))
    assert (limited.code, limited.status) == (403, "PERMISSION_DENIED")
    assert mock_requests(world) == []
    assert_nothing_charged(world)


def test_an_unpriced_gemini_route_may_still_be_counted(world: World) -> None:
    """Counting charges nothing, so it needs no price (the call itself is refused)."""
    client = google(world)
    counted = client.models.count_tokens(model=UNPRICED, contents="Hi")
    assert counted.total_tokens > 0
    assert ledger(world)["counted"] == 1
    assert_nothing_charged(world)


# --- the models -------------------------------------------------------------------------------


def test_the_models_the_key_may_use_in_geminis_shape(world: World) -> None:
    client = google(world)
    models = {m.name: m for m in client.models.list()}
    routes = set(ModelRoute.objects.values_list("public_name", flat=True))
    assert {CATALOGUED, THINKING, UNPRICED, "claude-opus-5-5"} <= routes
    assert set(models) == {f"models/{name}" for name in routes}
    assert models[f"models/{CATALOGUED}"].supported_actions == GEMINI_METHODS
    assert models[f"models/{CATALOGUED}"].display_name == CATALOGUED
    assert models["models/claude-opus-5-5"].supported_actions == ["countTokens"]
    # Paged: one model a page, every one once, in order.
    paged = [m.name for m in client.models.list(config={"page_size": 1})]
    assert paged == sorted(models)
    one = client.models.get(model=CATALOGUED)
    assert (one.name, one.supported_actions) == (f"models/{CATALOGUED}", GEMINI_METHODS)
    assert client.models.get(model=f"models/{THINKING}").name == f"models/{THINKING}"
    missing = _api_error(lambda: client.models.get(model="nope"))
    assert (missing.code, missing.status) == (404, "NOT_FOUND")
    # A key limited to some models sees only those.
    VirtualKey.objects.update(allowed_models=[CATALOGUED])
    assert [m.name for m in client.models.list()] == [f"models/{CATALOGUED}"]
    hidden = _api_error(lambda: client.models.get(model=THINKING))
    assert hidden.code == 404
    assert_nothing_charged(world)


def test_the_models_on_v1_are_googles_for_google_and_openais_otherwise(
    world: World,
) -> None:
    import openai

    default = genai.Client(api_key=world.key, http_options=types.HttpOptions(base_url=world.proxy))
    names = {m.name for m in default.models.list()}
    assert f"models/{CATALOGUED}" in names
    listed = openai.OpenAI(base_url=world.proxy + "/v1", api_key=world.key)
    assert CATALOGUED in {m.id for m in listed.models.list()}
    bad = httpx.get(
        f"{world.proxy}/v1beta/models",
        params={"pageToken": "!!"},
        timeout=10,
        headers={"x-goog-api-key": world.key},
    )
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_an_intent_name_is_listed_read_and_counted(world: World) -> None:
    """`auto:<intent>` names are models too: listed, read (their colon is no method) and
    counted for the model the intent leads to."""
    Intent.objects.create(name="coding", default_model=CATALOGUED)
    client = google(world)
    names = {m.name: m.supported_actions for m in client.models.list()}
    assert names["models/auto:coding"] == GEMINI_METHODS
    assert client.models.get(model="auto:coding").name == "models/auto:coding"
    counted = client.models.count_tokens(model="auto:coding", contents=CONTENTS)
    (sent,) = mock_requests(world)
    assert sent["path"] == f"/v1beta/models/{CATALOGUED}:countTokens"
    assert counted.total_tokens > 0
    assert_nothing_charged(world)
