"""The Redis quota backend and the usage stream, against a real Redis (database 10).

Under CI=true a missing Redis fails these tests instead of skipping them."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis
from django.db import connections
from django.utils import timezone

from budgets import ledger
from budgets.models import Allowance, CostCenter, CostCenterSpend, Policy
from metering import dbpool
from metering.models import UsageRecord
from metering.quota import clients, down, interface, keys, redis_backend, sweep
from metering.quota.handover import handover
from metering.quota.reconcile import quotas_reconcile
from metering.selectors import KeyInfo, key_hash, key_info_load
from metering.services import CallHold, key_create
from metering.usage_stream import stream_drain
from tests.budgets.factories import AllowanceFactory

# The name scripts/test.sh exports (each run, and each worktree, on its own database).
REDIS_URL = os.environ.get("TB_REDIS_TEST_URL", "redis://127.0.0.1:6379/10")
ESTIMATE = ledger.CallEstimate(
    prompt_tokens=10,
    max_output_tokens=40,
    input_price_per_token=Decimal("0.000001"),
    output_price_per_token=Decimal("0.000004"),
)


def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is not reachable at {REDIS_URL}")
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    return client


def _reset_clients() -> None:
    clients._sync_client = None
    clients._async_state = None
    clients.open_holds.clear()
    clients.uncertain_holds.clear()
    down.redis_health.down_until = 0.0
    handover.reset()


@pytest.fixture
def rds(
    settings: Any, monkeypatch: pytest.MonkeyPatch, transactional_db: None
) -> Iterator[redis.Redis]:
    """Redis on, with the proxy's database work run inline (async code gets its own database
    connection, closed after each piece of work so none outlives the test)."""
    client = redis_client()
    client.flushdb()
    settings.REDIS_URL = REDIS_URL
    _reset_clients()
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    def inline(fn: Any) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                connections.close_all()

        return call

    async def submit(fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        finally:
            connections.close_all()

    monkeypatch.setattr(dbpool, "in_db_thread", inline)
    monkeypatch.setattr(dbpool.ledger_writes, "submit", submit)
    yield client
    client.flushdb()
    _reset_clients()


def make_key(amount: int = 1000, unit: str = "tokens", **policy: Any) -> KeyInfo:
    allowance = AllowanceFactory(amount=Decimal(amount), unit=unit, prorate=False)
    if policy:
        Policy.objects.create(cost_center=allowance.employee.cost_center, **policy)
    _, raw = key_create(employee=allowance.employee, name="k", actor=None)
    info = key_info_load(key_hash(raw))
    assert info is not None and info.limits is not None
    return info


def record_for(info: KeyInfo, *, tokens: tuple[int, int] = (10, 20), cost: str = "0.00009"):
    return UsageRecord(
        request_id="req_" + uuid.uuid4().hex,
        created_at=timezone.now(),
        employee_id=info.employee_id,
        key_id=info.key_id,
        cost_center_id=info.cost_center_id,
        model="gpt-4o-mini",
        endpoint="chat",
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cost=Decimal(cost),
        status_code=200,
    )


def reserve(info: KeyInfo, estimate: ledger.CallEstimate = ESTIMATE) -> Any:
    return asyncio.run(interface.reserve(info=info, estimate=estimate, min_output_tokens=1))


def counter(client: redis.Redis, name: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(name).items()}


def test_reserve_settle_and_ingest(rds: redis.Redis) -> None:
    info = make_key()
    held = reserve(info)
    assert isinstance(held, redis_backend.RedisHold)
    name = keys.allowance_counter(info.limits.allowance_id)
    assert counter(rds, name) == {"used": 0, "reserved": 50}
    assert held.hold.remaining == 950 and held.hold.output_tokens == 40

    record = record_for(info)
    assert asyncio.run(interface.settle(held=held, record=record)) is True
    assert asyncio.run(interface.settle(held=held, record=record)) is False, "closed once"
    assert counter(rds, name) == {"used": 30, "reserved": 0}
    assert not UsageRecord.objects.exists(), "the record travels through the stream"

    assert stream_drain(client=clients.sync_client()) == 1
    allowance = Allowance.objects.get(pk=info.limits.allowance_id)
    assert allowance.used == 30 and allowance.reserved == 0
    assert UsageRecord.objects.get().request_id == record.request_id
    assert rds.xlen(keys.STREAM) <= 1, "acknowledged entries are trimmed"
    assert quotas_reconcile() == [], "counters agree with the database"


def test_redelivered_events_are_charged_once(rds: redis.Redis) -> None:
    info = make_key()
    held = reserve(info)
    asyncio.run(interface.settle(held=held, record=record_for(info)))
    client = clients.sync_client()
    # A consumer that read the entry and died before acknowledging it.
    from metering.usage_stream import group_ensure

    group_ensure(client)
    client.xreadgroup(keys.GROUP, "dead", {keys.STREAM: ">"}, count=10)
    assert stream_drain(client=client, claim_idle_ms=60_000) == 0, "not claimed while fresh"
    assert stream_drain(client=client, claim_idle_ms=0) == 1
    entry = rds.xrange(keys.STREAM)
    # Delivering the same event again (as after a crash between commit and XACK) is harmless.
    from metering.usage_stream import event_decode, usage_events_apply

    if entry:
        assert usage_events_apply(events=[event_decode(entry[-1][1][b"e"])]) == 0
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 30
    assert client.xpending(keys.STREAM, keys.GROUP)["pending"] == 0


def test_refusal_writes_nothing(rds: redis.Redis) -> None:
    info = make_key(amount=30)
    refusal = reserve(info, ledger.CallEstimate(40, 10, Decimal(0), Decimal(0)))
    assert isinstance(refusal, ledger.Refusal) and refusal.code == "employee_allowance"
    assert refusal.available == 30
    name = keys.allowance_counter(info.limits.allowance_id)
    assert counter(rds, name) == {"used": 0, "reserved": 0}
    assert rds.zcard(keys.HOLDS) == 0
    assert not rds.exists(keys.STREAM)


def test_clamps_to_what_is_left_and_waits_for_open_holds(rds: redis.Redis) -> None:
    info = make_key(amount=80)
    first = reserve(info)
    second = reserve(info)
    assert second.hold.output_tokens == 20 and second.hold.clamped
    third = reserve(info)
    assert isinstance(third, ledger.Refusal) and third.waitable
    asyncio.run(interface.release(held=first, record=record_for(info, tokens=(0, 0), cost="0")))
    assert isinstance(reserve(info), redis_backend.RedisHold)


def test_cost_center_cap_and_key_cap_in_the_same_step(rds: redis.Redis) -> None:
    allowance = AllowanceFactory(amount=Decimal(1000), prorate=False)
    root = allowance.employee.cost_center
    root.annual_cap = Decimal("0.01")
    root.save()
    _, raw = key_create(employee=allowance.employee, name="k", actor=None, cap_tokens=500)
    info = key_info_load(key_hash(raw))
    pricey = ledger.CallEstimate(10, 40, Decimal("0.0001"), Decimal("0.0004"))
    held = reserve(info, pricey)  # worst case 0.017 USD > the cap: clamped to fit it
    assert isinstance(held, redis_backend.RedisHold)
    assert held.hold.output_tokens == 22 and held.key_tokens == 32
    asyncio.run(interface.settle(held=held, record=record_for(info, cost="0.005")))
    stream_drain(client=clients.sync_client())
    spend = CostCenterSpend.objects.get(cost_center=root)
    assert spend.spent == Decimal("0.005") and spend.reserved == 0
    key = info.key_id
    from metering.models import VirtualKey

    assert VirtualKey.objects.get(pk=key).used_tokens == 30
    cc = counter(rds, keys.cost_center_counter(root.pk, info.limits.fiscal_year))
    assert cc == {"used": 50_000_000, "reserved": 0}
    assert quotas_reconcile() == []


def test_rate_limit_requests_per_minute(rds: redis.Redis) -> None:
    info = make_key(requests_per_minute=2)
    assert isinstance(reserve(info), redis_backend.RedisHold)
    assert isinstance(reserve(info), redis_backend.RedisHold)
    limited = reserve(info)
    assert isinstance(limited, redis_backend.RateLimited)
    assert limited.kind == "requests" and 1 <= limited.retry_after <= 60


def test_rate_limit_tokens_per_minute(rds: redis.Redis) -> None:
    info = make_key(tokens_per_minute=25)
    held = reserve(info)
    asyncio.run(interface.settle(held=held, record=record_for(info)))  # 30 tokens this minute
    limited = reserve(info)
    assert isinstance(limited, redis_backend.RateLimited) and limited.kind == "tokens"


def test_sweep_gives_back_dead_holds_and_a_late_settle_still_charges(rds: redis.Redis) -> None:
    info = make_key()
    held = reserve(info)
    name = keys.allowance_counter(info.limits.allowance_id)
    assert sweep.holds_sweep(now=10**10) == 1
    assert counter(rds, name) == {"used": 0, "reserved": 0}
    asyncio.run(interface.settle(held=held, record=record_for(info)))
    assert counter(rds, name) == {"used": 30, "reserved": 0}


def test_reconcile_repairs_drift(rds: redis.Redis) -> None:
    info = make_key()
    reserve(info)
    name = keys.allowance_counter(info.limits.allowance_id)
    rds.hset(name, "used", 777)
    drifts = quotas_reconcile()
    assert [(d.counter, d.redis_used, d.database_used, d.repaired) for d in drifts] == [
        (name, 777, 0, True)
    ]
    assert counter(rds, name)["used"] == 0


@pytest.mark.parametrize("mode", ["database", "closed", "open"])
def test_redis_down(rds: redis.Redis, settings: Any, mode: str) -> None:
    info = make_key()
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    settings.TB_REDIS_DOWN_MODE = mode
    _reset_clients()
    if mode == "closed":
        with pytest.raises(interface.QuotaUnavailable):
            reserve(info)
        return
    held = reserve(info)
    assert isinstance(held, CallHold if mode == "database" else interface.UnheldCall)
    assert down.redis_health.degraded
    record = record_for(info)
    assert asyncio.run(interface.settle(held=held, record=record)) is True
    assert UsageRecord.objects.get().request_id == record.request_id
    allowance = Allowance.objects.get(pk=info.limits.allowance_id)
    assert allowance.used == 30 and allowance.reserved == 0


def test_settle_falls_back_to_the_database_when_redis_goes_away(
    rds: redis.Redis, settings: Any
) -> None:
    info = make_key()
    held = reserve(info)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    _reset_clients()
    assert asyncio.run(interface.settle(held=held, record=record_for(info))) is True
    assert Allowance.objects.get(pk=info.limits.allowance_id).used == 30


def test_seeding_counts_database_usage(rds: redis.Redis) -> None:
    info = make_key()
    Allowance.objects.filter(pk=info.limits.allowance_id).update(used=Decimal(990))
    refusal = reserve(info)
    assert isinstance(refusal, ledger.Refusal) and refusal.available == 10
    assert CostCenter.objects.exists()
