"""Budget numbers in headers and messages are plain (issue #12, item 9): a client doing
int(header) never meets an exponent, and refusals read "30,000 tokens left"."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from budgets.models import Allowance, Policy
from tests.e2e.conftest import World, make_world
from tests.e2e.test_proxy_sdk import assert_nothing_charged

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "hello"}]


def _chat(world: World, **fields: object) -> httpx.Response:
    return httpx.post(
        f"{world.proxy}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 20, **fields},
        headers={"authorization": f"Bearer {world.key}"},
        timeout=20,
    )


def test_remaining_tokens_header_is_a_plain_integer(world: World) -> None:
    first = _chat(world)
    assert first.status_code == 200
    used = Allowance.objects.get(pk=world.allowance.pk).used
    # Leave exactly 900,000 after a second, identical call: Decimal.normalize() made it 9E+5.
    Allowance.objects.filter(pk=world.allowance.pk).update(amount=Decimal(900_000) + 2 * used)
    second = _chat(world)
    assert second.status_code == 200
    header = second.headers["x-tokenbudget-remaining"]
    assert header == "900000"
    assert int(header) == 900_000


def test_a_streamed_call_sends_its_remaining_hold_plainly(world: World) -> None:
    Allowance.objects.filter(pk=world.allowance.pk).update(amount=Decimal(10_000_000))
    with httpx.stream(
        "POST",
        f"{world.proxy}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 20, "stream": True},
        headers={"authorization": f"Bearer {world.key}"},
        timeout=20,
    ) as response:
        header = response.headers["x-tokenbudget-remaining"]
        response.read()
    assert header.isdigit() and int(header) < 10_000_000


@pytest.fixture
def refusing(transactional_db: None, proxy_url: str, mock_upstream_url: str) -> World:
    return make_world(
        proxy_url,
        mock_upstream_url,
        amount=30_000,
        policy={"over_budget": Policy.OverBudget.REFUSE},
    )


def test_refusal_text_groups_thousands(refusing: World) -> None:
    response = _chat(refusing, max_tokens=40_000)
    assert response.status_code == 429
    message = response.json()["error"]["message"]
    assert message == (
        "Budget exhausted: this call would exceed your token allowance (30,000 tokens left)."
    )
    assert_nothing_charged(refusing)


def test_usd_refusal_text_is_in_dollars(
    transactional_db: None, proxy_url: str, mock_upstream_url: str
) -> None:
    world = make_world(
        proxy_url,
        mock_upstream_url,
        amount="12.50",
        unit="usd",
        policy={"over_budget": Policy.OverBudget.REFUSE},
    )
    # 30M output tokens at $0.60 per million: $18 > $12.50.
    response = _chat(world, max_tokens=30_000_000)
    assert response.status_code == 429
    assert response.json()["error"]["message"].endswith("($12.50 left).")
    assert_nothing_charged(world)
    ok = _chat(world)
    remaining = ok.headers["x-tokenbudget-remaining"]
    assert "E" not in remaining and Decimal(remaining) < Decimal("12.50")
