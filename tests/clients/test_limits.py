"""A clamp lowers the limits that must stay below the output limit, as the upstream sees them."""

from __future__ import annotations

from decimal import Decimal

import anthropic
import pytest

from metering.models import UsageRecord
from tests.clients.conftest import assert_records_match_ledger, ledger, mock_requests
from tests.e2e.conftest import World

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "hello"}]


def claude(world: World) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=world.proxy, api_key=world.key, max_retries=0)


def test_a_clamped_call_sends_a_thinking_budget_below_max_tokens(client_world: World) -> None:
    client_world.allowance.amount = Decimal(8000)
    client_world.allowance.save()
    response = claude(client_world).messages.with_raw_response.create(
        model="claude-opus-5-5",
        max_tokens=20000,
        thinking={"type": "enabled", "budget_tokens": 19999},
        messages=HELLO,
    )
    response.parse()
    clamped = int(response.headers["x-tokenbudget-max-tokens-clamped"])
    assert 1024 < clamped < 8000
    (sent,) = [r["body"] for r in mock_requests(client_world) if r["path"].endswith("/messages")]
    assert sent["max_tokens"] == clamped
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": clamped - 1}
    assert_records_match_ledger(client_world)


def test_no_room_for_a_thinking_budget_is_refused_before_the_upstream(
    client_world: World,
) -> None:
    client_world.allowance.amount = Decimal(900)
    client_world.allowance.save()
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude(client_world).messages.create(
            model="claude-opus-5-5",
            max_tokens=20000,
            thinking={"type": "enabled", "budget_tokens": 19999},
            messages=HELLO,
        )
    assert caught.value.status_code == 429
    assert "thinking budget" in caught.value.message
    assert not [r for r in mock_requests(client_world) if r["path"].endswith("/messages")]
    assert ledger(client_world)["count"] == 0
    client_world.allowance.refresh_from_db()
    assert client_world.allowance.used == 0 and client_world.allowance.reserved == 0
    assert UsageRecord.objects.filter(cost__gt=0).count() == 0
