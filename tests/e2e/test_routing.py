"""Budget-aware routing through the real proxy and the `openai` SDK: a policy's downgrade model
takes over at the set share of the allowance (and instead of a budget refusal), and
`auto:<intent>` goes to the model the value report recommends, else the intent's default."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest
from django.db.models import F

from budgets.models import Allowance
from metering.models import Intent, ModelPrice, ModelRoute, UsageRecord
from metering.quota import keys
from tests.e2e.conftest import World, make_world
from tests.e2e.test_production import (  # noqa: F401 (fixtures)
    Production,
    production,
    redis_server,
    wait_for_records,
)
from tests.e2e.test_proxy_sdk import oai

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "hi"}]
DOWNGRADE = {"downgrade_models": {"o4-mini": "gpt-4o-mini"}, "downgrade_at_percent": 90}


def _call(world: World, model: str, **extra):
    return oai(world).chat.completions.with_raw_response.create(
        model=model, messages=HELLO, max_tokens=10, **extra
    )


def _use(world: World, amount: int) -> None:
    """Set the allowance's consumption directly: what earlier calls would have used."""
    Allowance.objects.filter(pk=world.allowance.pk).update(used=Decimal(amount))


@pytest.fixture
def downgrading(transactional_db, proxy_url: str, mock_upstream_url: str) -> World:
    return make_world(proxy_url, mock_upstream_url, amount=10_000, policy=DOWNGRADE)


def test_below_the_share_the_requested_model_serves(downgrading: World) -> None:
    _use(downgrading, 8_000)  # 80 % used, the policy downgrades at 90 %
    response = _call(downgrading, "o4-mini")
    assert "x-tokenbudget-downgraded-from" not in response.headers
    record = UsageRecord.objects.get()
    assert (record.model, record.upstream_model) == ("o4-mini", "o4-mini-cached-reasoning")


def test_at_the_share_the_downgrade_model_serves_and_is_recorded(downgrading: World) -> None:
    _use(downgrading, 9_000)  # exactly 90 %
    response = _call(downgrading, "o4-mini")
    completion = response.parse()
    assert response.headers["x-tokenbudget-downgraded-from"] == "o4-mini"
    assert response.headers["x-tokenbudget-model"] == "gpt-4o-mini"
    assert completion.model == "gpt-4o-mini"  # the upstream really served the stand-in
    record = UsageRecord.objects.get()
    assert (record.model, record.upstream_model) == ("gpt-4o-mini", "gpt-4o-mini")
    price = ModelPrice.objects.get(model="gpt-4o-mini")
    expected = (
        record.input_tokens * price.input_per_mtok + record.output_tokens * price.output_per_mtok
    ) / 1_000_000
    assert record.cost == expected  # priced as the stand-in, not as the requested model
    allowance = Allowance.objects.get()
    assert allowance.used == 9_000 + completion.usage.total_tokens
    assert allowance.reserved == 0


@pytest.mark.parametrize(("used", "downgraded"), [(8_900, False), (9_000, True)])
def test_the_share_is_of_the_allowance_not_of_a_soft_overage(
    transactional_db, proxy_url: str, mock_upstream_url: str, used: int, downgraded: bool
) -> None:
    policy = {**DOWNGRADE, "limit_mode": "soft", "soft_overage_percent": 50}
    world = make_world(proxy_url, mock_upstream_url, amount=10_000, policy=policy)
    _use(world, used)
    response = _call(world, "o4-mini")
    assert ("x-tokenbudget-downgraded-from" in response.headers) is downgraded


def test_a_model_without_a_downgrade_rule_is_not_switched(downgrading: World) -> None:
    _use(downgrading, 9_500)
    response = _call(downgrading, "gpt-4o-mini")
    assert "x-tokenbudget-downgraded-from" not in response.headers
    assert UsageRecord.objects.get().model == "gpt-4o-mini"


def test_a_call_the_requested_model_cannot_fit_is_downgraded_not_refused(
    transactional_db, proxy_url: str, mock_upstream_url: str
) -> None:
    # A dollar allowance with room for the stand-in's worst case but not the requested one's.
    policy = {**DOWNGRADE, "over_budget": "refuse"}
    world = make_world(proxy_url, mock_upstream_url, amount="0.01", unit="usd", policy=policy)
    # o4-mini's worst case: 256 output tokens at $4.40/M is above $0.001; gpt-4o-mini's is not.
    Allowance.objects.filter(pk=world.allowance.pk).update(used=Decimal("0.0092"))
    response = oai(world).chat.completions.with_raw_response.create(
        model="o4-mini", messages=HELLO, max_tokens=256
    )
    assert response.headers["x-tokenbudget-downgraded-from"] == "o4-mini"
    assert UsageRecord.objects.get().model == "gpt-4o-mini"


def test_when_the_stand_in_cannot_fit_either_the_call_is_refused(downgrading: World) -> None:
    _use(downgrading, 10_000)
    with pytest.raises(openai.RateLimitError) as refused:
        _call(downgrading, "o4-mini")
    assert refused.value.body["code"] == "employee_allowance"
    assert not UsageRecord.objects.exists()
    assert Allowance.objects.get().reserved == 0


def test_a_stand_in_the_key_may_not_use_leaves_the_requested_model(
    transactional_db, proxy_url: str, mock_upstream_url: str
) -> None:
    policy = {**DOWNGRADE, "allowed_models": ["o4-mini"]}
    world = make_world(proxy_url, mock_upstream_url, amount=10_000, policy=policy)
    _use(world, 9_500)
    response = _call(world, "o4-mini")
    assert "x-tokenbudget-downgraded-from" not in response.headers
    assert UsageRecord.objects.get().model == "o4-mini"


def test_auto_alias_follows_the_recommendation_then_the_default(world: World) -> None:
    Intent.objects.create(name="support", default_model="o4-mini")
    response = _call(world, "auto:support")
    assert response.headers["x-tokenbudget-routed-from"] == "auto:support"
    assert response.headers["x-tokenbudget-model"] == "o4-mini"
    Intent.objects.filter(name="support").update(recommended_model="gpt-4o-mini")
    response = _call(world, "auto:support")
    assert response.headers["x-tokenbudget-model"] == "gpt-4o-mini"
    records = list(UsageRecord.objects.order_by("created_at").values_list("model", "intent"))
    assert records == [("o4-mini", "support"), ("gpt-4o-mini", "support")]


def test_auto_alias_stays_within_the_allowed_models(
    transactional_db, proxy_url: str, mock_upstream_url: str
) -> None:
    world = make_world(proxy_url, mock_upstream_url, policy={"allowed_models": ["o4-mini"]})
    Intent.objects.create(name="code", default_model="o4-mini", recommended_model="gpt-4o-mini")
    response = _call(world, "auto:code")
    assert response.headers["x-tokenbudget-model"] == "o4-mini"
    Intent.objects.filter(name="code").update(default_model="")
    with pytest.raises(openai.PermissionDeniedError) as refused:
        _call(world, "auto:code")
    assert refused.value.body["code"] == "model_not_allowed"


def test_models_list_the_aliases_the_key_can_use(
    transactional_db, proxy_url: str, mock_upstream_url: str
) -> None:
    world = make_world(proxy_url, mock_upstream_url, policy={"allowed_models": ["o4-mini"]})
    Intent.objects.create(name="support", default_model="o4-mini")
    Intent.objects.create(name="research", default_model="gpt-4o-mini")
    Intent.objects.create(name="empty")
    names = [m.id for m in oai(world).models.list()]
    assert names == ["o4-mini", "auto:support"]


def test_auto_alias_for_an_unknown_intent_is_a_clear_404(world: World) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        _call(world, "auto:nobody-knows")
    assert missing.value.body["code"] == "model_not_found"
    assert "nobody-knows" in missing.value.body["message"]
    assert not UsageRecord.objects.exists()
    assert ModelRoute.objects.filter(public_name__startswith="auto:").count() == 0


def test_downgrade_on_the_redis_path(
    transactional_db: None, request: pytest.FixtureRequest, mock_upstream_url: str
) -> None:
    """Several workers on Redis quotas: the share is read where the Redis hold is taken."""
    system: Production = request.getfixturevalue("production")
    policy = {**DOWNGRADE, "limit_mode": "soft", "soft_overage_percent": 50}
    world = make_world(system.url, mock_upstream_url, amount=10_000, policy=policy)
    first = _call(world, "o4-mini")
    assert "x-tokenbudget-downgraded-from" not in first.headers
    wait_for_records(1)  # the stream is drained into the database ledger
    # Earlier spending brings consumption to 90 %; the counter re-seeds from the database.
    Allowance.objects.filter(pk=world.allowance.pk).update(used=F("used") + 9_000)
    system.redis.client().delete(keys.allowance_counter(world.allowance.pk))
    second = _call(world, "o4-mini")
    assert second.headers["x-tokenbudget-downgraded-from"] == "o4-mini"
    wait_for_records(2)
    assert sorted(UsageRecord.objects.values_list("model", flat=True)) == [
        "gpt-4o-mini",
        "o4-mini",
    ]


SOFT = {"limit_mode": "soft", "soft_overage_percent": 50}


@pytest.mark.parametrize("backend", ["database", "redis"])
def test_remaining_counts_from_the_grant_on_both_quota_backends(
    transactional_db: None, request: pytest.FixtureRequest, mock_upstream_url: str, backend: str
) -> None:
    url = (
        request.getfixturevalue("proxy_url")
        if backend == "database"
        else request.getfixturevalue("production").url
    )
    world = make_world(url, mock_upstream_url, amount=10_000, policy=SOFT)
    response = _call(world, "gpt-4o-mini")
    used = response.parse().usage.total_tokens
    # The soft overage lets calls go past the grant; what remains is still told from the grant.
    assert response.headers["x-tokenbudget-remaining"] == str(10_000 - used)
