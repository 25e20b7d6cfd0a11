"""Redis faults on the production set (2 uvicorn workers, the usage consumer, a redis-server of
the test's own with its AOF): 200 calls on a small budget, started before, during and right
after a Redis restart (or a kill -9 of Redis), the last 100 together on the last of the budget.

What is checked is what finance relies on, against the mock upstream's own ledger (keyed by
the proxy's request id): every call it served has exactly one record with its tokens; the
tight budget (allowance, key cap or cost-center cap) is never exceeded; once Redis is back the
counters agree with the database without a reconciliation run, so nobody is locked out with
budget left. The figures (served, recorded, lost, overspend) are printed (`pytest -s`)."""

from __future__ import annotations

import asyncio
import signal
import time
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from budgets.models import Allowance, CostCenter, CostCenterSpend
from metering.models import UsageRecord, VirtualKey
from metering.quota import keys
from metering.quota.units import to_units
from metering.selectors import key_hash
from tests.e2e.conftest import World
from tests.e2e.test_production import (  # noqa: F401  (fixtures)
    PROMPT,
    Production,
    RedisServer,
    _world,
    assert_recorded_exactly_once,
    ledger,
    production,
    redis_server,
    wait_for_records,
)

pytestmark = [pytest.mark.e2e, pytest.mark.production]

CALLS = 200
BEFORE = 60  # calls started over the 0.8 s before Redis stops
DURING = 40  # then one every 12 ms while it is down and coming back
# The other 100 start together 0.3 s after Redis is back, on the last of the budget: this many
# calls' worth, so the first 100 leave about 20 calls' worth for the burst of 100.
BUDGET_CALLS = 120


async def _call(client: openai.AsyncOpenAI) -> int | str:
    """A stream of 5 tokens, 60 ms apart (held for 10), so calls are in flight at any moment."""
    try:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=PROMPT,
            max_tokens=10,
            stream=True,
            metadata={"mock_output_tokens": "5", "mock_chunk_delay_ms": "60"},
        )
        async for _ in stream:
            pass
        return 200
    except openai.APIStatusError as exc:
        return exc.status_code
    except openai.APIConnectionError:
        return "connection"


def _client(world: World) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{world.proxy}/v1", api_key=world.key, max_retries=0, timeout=60
    )


async def _before_during_after(world: World, fault: Any) -> list[int | str]:
    client = _client(world)
    back = asyncio.Event()

    async def one(i: int) -> int | str:
        if i < BEFORE:
            await asyncio.sleep(i * 0.8 / BEFORE)
        elif i < BEFORE + DURING:
            await asyncio.sleep(0.8 + (i - BEFORE) * 0.012)
        else:
            await back.wait()
            await asyncio.sleep(0.3)
        return await _call(client)

    async def break_redis() -> None:
        await asyncio.sleep(0.8)
        await asyncio.to_thread(fault)
        back.set()

    try:
        results, _ = await asyncio.gather(
            asyncio.gather(*(one(i) for i in range(CALLS))), break_redis()
        )
        return results
    finally:
        await client.close()


def _probe(world: World) -> UsageRecord:
    async def run() -> int | str:
        client = _client(world)
        try:
            return await _call(client)
        finally:
            await client.close()

    assert asyncio.run(run()) == 200
    wait_for_records(1)
    return UsageRecord.objects.get()


def _tighten(
    world: World, budget: str, probe: UsageRecord, redis_client: Any
) -> tuple[str, Decimal]:
    """Make `budget` pay for BUDGET_CALLS more calls like the probe; the others stay loose.
    Returns its Redis counter and its limit."""
    tokens = probe.input_tokens + probe.output_tokens
    allowance = Allowance.objects.get(pk=world.allowance.pk)
    if budget == "allowance":
        allowance.amount = allowance.used + tokens * BUDGET_CALLS
        allowance.save()
        return keys.allowance_counter(allowance.pk), allowance.amount
    key = VirtualKey.objects.get(key_hash=key_hash(world.key))
    if budget == "key_cap":
        key.cap_tokens = key.used_tokens + tokens * BUDGET_CALLS
        key.save()
        return keys.key_counter(key.pk), Decimal(key.cap_tokens)
    # A cap is whole cents: the cost center has spent all but BUDGET_CALLS calls of it (its
    # counter is seeded again from the database on the next call).
    root = CostCenter.objects.get(pk=world.employee.cost_center_id)
    root.annual_cap = Decimal("0.01")
    root.save()
    spend = CostCenterSpend.objects.get(cost_center=root, fiscal_year=allowance.fiscal_year)
    spend.spent = root.annual_cap - probe.cost * BUDGET_CALLS
    spend.save()
    name = keys.cost_center_counter(root.pk, allowance.fiscal_year)
    redis_client.delete(name)
    return name, root.annual_cap


def _spent(world: World, budget: str) -> tuple[Decimal, int]:
    """The budget's use per the database, and the same in Redis units."""
    allowance = Allowance.objects.get(pk=world.allowance.pk)
    if budget == "allowance":
        return allowance.used, int(allowance.used)
    if budget == "key_cap":
        used = VirtualKey.objects.get(key_hash=key_hash(world.key)).used_tokens
        return Decimal(used), used
    spend = CostCenterSpend.objects.get(
        cost_center_id=world.employee.cost_center_id, fiscal_year=allowance.fiscal_year
    )
    return spend.spent, to_units(spend.spent, "usd")


def _counters_agree(server: RedisServer, name: str, world: World, budget: str) -> bool:
    """Within seconds, with no reconciliation run: the counter holds exactly the database's
    use and no holds."""
    client = server.client()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        values = client.hgetall(name)
        _, units = _spent(world, budget)
        if values and int(values[b"used"]) == units and int(values[b"reserved"]) == 0:
            return True
        time.sleep(0.2)
    print("counter", name, client.hgetall(name), "database", _spent(world, budget))
    return False


def _restart(server: RedisServer, kill: bool, down: float = 0.4) -> Any:
    def fault() -> None:
        if kill:
            server.process.send_signal(signal.SIGKILL)  # appendfsync always: nothing lost
            server.process.wait(timeout=10)
            server.process = None
        else:
            server.stop()
        time.sleep(down)
        server.start()

    return fault


@pytest.mark.parametrize(
    ("budget", "kill", "down"),
    [
        ("allowance", False, 0.4),
        ("key_cap", False, 0.4),
        ("cost_center_cap", False, 0.4),
        ("allowance", True, 0.4),
        ("allowance", False, 2.0),
    ],
    ids=[
        "allowance-restart",
        "key-cap-restart",
        "cost-center-cap-restart",
        "allowance-kill-9",
        "allowance-down-2s",
    ],
)
def test_two_hundred_calls_across_a_redis_restart(
    production: Production,  # noqa: F811
    redis_server: RedisServer,  # noqa: F811
    mock_upstream_url: str,
    budget: str,
    kill: bool,
    down: float,
) -> None:
    world = _world(production, mock_upstream_url)
    if budget == "cost_center_cap":
        CostCenter.objects.filter(pk=world.employee.cost_center_id).update(annual_cap=Decimal(1000))
    probe = _probe(world)
    name, limit = _tighten(world, budget, probe, redis_server.client())
    before, _ = _spent(world, budget)

    results = asyncio.run(_before_during_after(world, _restart(redis_server, kill, down)))

    served = ledger(world.mock)
    wait_for_records(served["count"])
    recorded = UsageRecord.objects.filter(status_code=200).count()
    spent, _ = _spent(world, budget)
    overspend = max(Decimal(0), spent - limit)
    print(
        f"\n{budget}{' kill -9' if kill else ''} down {down} s: calls {CALLS}, served {served['count'] - 1}, "
        f"recorded {recorded - 1}, lost {served['count'] - recorded}, refused "
        f"{results.count(429)}, budget {limit - before} used {spent - before}, "
        f"overspend {overspend}"
    )
    assert set(results) <= {200, 429}, set(results)
    assert results.count(200) >= BUDGET_CALLS // 2
    assert_recorded_exactly_once(world)
    assert spent <= limit, f"{budget} exceeded by {spent - limit}"
    assert _counters_agree(redis_server, name, world, budget), "counter exact, no holds left"

    # Nobody is locked out: with more budget, the next call is served at once.
    if budget == "allowance":
        Allowance.objects.filter(pk=world.allowance.pk).update(amount=limit + 1000)
    elif budget == "key_cap":
        VirtualKey.objects.filter(key_hash=key_hash(world.key)).update(cap_tokens=int(limit) + 1000)
    else:
        CostCenter.objects.filter(pk=world.employee.cost_center_id).update(
            annual_cap=limit + Decimal(1)
        )
    assert _probe_again(world) == 200
    assert_recorded_exactly_once(world)


def _probe_again(world: World) -> int | str:
    async def run() -> int | str:
        client = _client(world)
        try:
            return await _call(client)
        finally:
            await client.close()

    return asyncio.run(run())


def test_readiness_reports_redis_back_after_the_restart(
    production: Production,  # noqa: F811
    redis_server: RedisServer,  # noqa: F811
    mock_upstream_url: str,
) -> None:
    world = _world(production, mock_upstream_url)
    _probe(world)
    _restart(redis_server, kill=False)()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ready = httpx.get(f"{production.url}/readyz", timeout=5)
        if ready.status_code == 200 and ready.json()["redis"] == "ok":
            break
        time.sleep(0.2)
    assert ready.json()["redis"] == "ok", ready.text
    assert _probe_again(world) == 200
