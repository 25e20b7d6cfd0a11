"""No price, no call: an unpriced model is refused, unless its route is self-hosted
(unmetered cost) and the allowance counts tokens."""

from __future__ import annotations

import openai
import pytest

from budgets.models import Allowance
from metering.models import ModelRoute, Upstream, UsageRecord
from tests.e2e.conftest import World, make_world
from tests.e2e.test_proxy_sdk import assert_nothing_charged, oai

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "hi"}]


def _route(world: World, name: str, *, unmetered: bool) -> None:
    ModelRoute.objects.create(
        public_name=name,
        upstream=Upstream.objects.get(name="mock-openai"),
        upstream_model=name,
        unmetered_cost=unmetered,
    )


def test_a_model_without_a_price_is_refused_not_free(world: World) -> None:
    _route(world, "brand-new-model", unmetered=False)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        oai(world).chat.completions.create(model="brand-new-model", messages=HELLO, max_tokens=5)
    assert refused.value.body["code"] == "model_not_priced"
    assert_nothing_charged(world)
    assert not UsageRecord.objects.exists()


def test_self_hosted_route_is_metered_in_tokens_at_no_cost(world: World) -> None:
    _route(world, "llama-local", unmetered=True)
    completion = oai(world).chat.completions.create(
        model="llama-local", messages=HELLO, max_tokens=5
    )
    record = UsageRecord.objects.get()
    assert record.cost == 0 and record.output_tokens == completion.usage.completion_tokens
    world.allowance.refresh_from_db()
    assert world.allowance.used == completion.usage.total_tokens


def test_self_hosted_route_is_refused_to_a_dollar_allowance(
    transactional_db, proxy_url: str, mock_upstream_url: str
) -> None:
    world = make_world(proxy_url, mock_upstream_url, amount="100.00", unit="usd")
    _route(world, "llama-local", unmetered=True)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        oai(world).chat.completions.create(model="llama-local", messages=HELLO, max_tokens=5)
    assert refused.value.body["code"] == "model_not_priced"
    assert Allowance.objects.get().used == 0 and not UsageRecord.objects.exists()


def test_dollar_allowance_is_charged_the_exact_cost(
    transactional_db, proxy_url: str, mock_upstream_url: str
) -> None:
    world = make_world(proxy_url, mock_upstream_url, amount="5.00", unit="usd")
    response = oai(world).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, max_tokens=20
    )
    record = UsageRecord.objects.get()
    assert record.cost > 0
    allowance = Allowance.objects.get()
    assert allowance.used == record.cost and allowance.reserved == 0
    assert response.headers["x-tokenbudget-unit"] == "usd"
    assert response.headers["x-tokenbudget-remaining"] == str(
        (allowance.amount - record.cost).normalize()
    )
