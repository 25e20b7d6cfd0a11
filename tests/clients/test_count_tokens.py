"""POST /v1/messages/count_tokens: the employee's key, never charged or reserved; the Anthropic
upstream's own count for an Anthropic route, a local estimate (marked) for any other."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from metering.models import UsageRecord
from metering.providers.anthropic import parse_request
from metering.proxy.counting import local_count
from tests.clients.conftest import ledger, mock_requests
from tests.e2e.conftest import World

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "Count me, please, all of these words."}]


def claude(world: World) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=world.proxy, api_key=world.key, max_retries=0)


def assert_nothing_charged(world: World) -> None:
    world.allowance.refresh_from_db()
    assert (world.allowance.used, world.allowance.reserved) == (0, 0)
    assert not UsageRecord.objects.exists()
    assert ledger(world)["count"] == 0


def test_an_anthropic_route_is_counted_by_its_upstream(client_world: World) -> None:
    response = claude(client_world).messages.with_raw_response.count_tokens(
        model="claude-opus-5-5", system="Be brief.", messages=MESSAGES
    )
    counted = response.parse()
    assert "x-tokenbudget-estimated" not in response.headers
    (sent,) = [r for r in mock_requests(client_world) if r["path"].endswith("/count_tokens")]
    assert sent["body"]["model"] == "claude-opus-5-5"
    assert "max_tokens" not in sent["body"]
    assert sent["headers"].get("x-api-key") != client_world.key  # the provider key, not the tb- one
    assert counted.input_tokens > 0
    assert ledger(client_world)["counted"] == 1  # the upstream's own count answered
    assert_nothing_charged(client_world)


def test_an_openai_route_is_counted_locally_and_marked_an_estimate(client_world: World) -> None:
    response = claude(client_world).messages.with_raw_response.count_tokens(
        model="gpt-6.2-sol", messages=MESSAGES
    )
    counted = response.parse()
    assert response.headers["x-tokenbudget-estimated"] == "true"
    body = b'{"model": "gpt-6.2-sol", "max_tokens": 1, "messages": %s}' % (
        httpx.Request("POST", "/", json=MESSAGES).content
    )
    assert counted.input_tokens == local_count(parse_request("messages", body))
    assert not [r for r in mock_requests(client_world) if "count_tokens" in r["path"]]
    assert_nothing_charged(client_world)


def test_refusals_are_anthropic_shaped_and_charge_nothing(client_world: World) -> None:
    with pytest.raises(anthropic.NotFoundError):
        claude(client_world).messages.count_tokens(model="no-such-model", messages=MESSAGES)
    bad = anthropic.Anthropic(base_url=client_world.proxy, api_key="tb-nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.count_tokens(model="claude-opus-5-5", messages=MESSAGES)
    response = httpx.post(
        f"{client_world.proxy}/v1/messages/count_tokens",
        headers={"x-api-key": client_world.key, "anthropic-version": "2023-06-01"},
        json={"model": "claude-opus-5-5"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert_nothing_charged(client_world)
