"""The Redis quota backend: the proxy's script runs (reserve, close, adopt, abandon, seed).

Each operation is one Lua script (`lua/*.lua`, loaded once, called by hash; redis-py falls back
to EVAL and reloads on NOSCRIPT), so a reserve, a settle or a release is one atomic step and one
round trip:

- `reserve`: the per-minute rate limits of the key and the employee, then every budget the call
  draws on (the key's own cap, the allowance, each capped cost center), then the hold.
- `close` (settle and release): moves the hold to `used`, counts tokens per minute, and XADDs the
  usage event to the stream in the same step, so the charge and its event are never apart.
- `abandon`: a hold whose call never started; `adopt`: a database hold of the fallback made a
  Redis hold once Redis is back; `seed`: creates missing counters from the database (only if
  still missing, so a burst of calls that all found a counter missing seeds it once).

The sweeps and the reconciliation run from jobs (`sweep`, `reconcile`); key names are built in
`keys`, amounts converted in `units`, the clients and this process's liveness live in `clients`.

Counters hold only `used` and `reserved`, as integers (`units`). Limits travel with each call
(`KeyInfo.limits`, cached at most 4 s), so Redis holds nothing that cannot be rebuilt from the
database. Every write to Redis goes through HINCRBY (int64).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis

from budgets import ledger
from metering.quota import clients
from metering.quota.db import Hold
from metering.quota.keys import (
    FORMATS,
    HOLD_TTL,
    HOLDS,
    KEY_COUNTER_TTL,
    STREAM,
    TOMBSTONE_TTL,
    allowance_counter,
    cost_center_counter,
    hold_key,
    key_counter,
    rate_window,
)
from metering.quota.units import from_units, rate, to_units

# --- the hold --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisHold:
    """A hold taken in Redis; `counters` are the budgets it is held on, in reserve order."""

    hold: Hold
    key_id: int
    key_tokens: int
    employee_id: int
    counters: tuple[str, ...]
    units: tuple[str, ...]  # each counter's unit (tokens or usd)
    backend: str = "redis"
    amounts: tuple[int, ...] = ()  # held on each counter, in Redis units
    seen: tuple[int, ...] = ()  # each counter's used + reserved once the hold was in

    @property
    def key(self) -> str:
        return hold_key(self.hold.reservation_id)


@dataclass(frozen=True)
class RateLimited:
    scope: str  # "key" or "employee"
    kind: str  # "requests" or "tokens"
    retry_after: int


@dataclass(frozen=True)
class Budget:
    counter: str
    code: str
    unit: str
    limit: Decimal
    expire_at: int


def budgets_for(info: Any, now: float) -> list[Budget]:
    """The budgets a call with this key draws on, in the database backend's order."""
    limits = info.limits
    assert limits is not None
    period_end = dt.datetime.combine(limits.period_end, dt.time(), tzinfo=dt.UTC)
    expire_at = int(period_end.timestamp()) + 7 * 24 * 3600
    found: list[Budget] = []
    if info.cap_tokens is not None:
        found.append(
            Budget(
                key_counter(info.key_id),
                "key_cap",
                ledger.TOKENS,
                Decimal(info.cap_tokens),
                int(now) + KEY_COUNTER_TTL,
            )
        )
    found.append(
        Budget(
            allowance_counter(limits.allowance_id),
            "employee_allowance",
            limits.unit,
            limits.limit,
            expire_at,
        )
    )
    for cost_center_id, code, cap in limits.cost_center_caps:
        found.append(
            Budget(
                cost_center_counter(cost_center_id, limits.fiscal_year),
                f"cost_center_cap:{code}",
                ledger.USD,
                cap,
                expire_at,
            )
        )
    return found


async def reserve(
    *,
    info: Any,
    estimate: ledger.CallEstimate,
    min_output_tokens: int,
    seed: Any,
) -> RedisHold | ledger.Refusal | RateLimited:
    """Take the call's hold in one script run. `seed(budgets)` is awaited when counters are
    missing (it loads them from the database and runs the seed script), then the reserve
    runs again."""
    client, scripts = clients.async_client()
    owner = await clients.alive()
    now = time.time()
    budgets = budgets_for(info, now)
    hold_id = uuid.uuid4()
    key = hold_key(hold_id)
    keys = [
        key,
        HOLDS,
        rate_window("k", info.key_id, now),
        rate_window("e", info.employee_id, now),
        *(b.counter for b in budgets),
    ]
    args: list[Any] = [
        int(now) + HOLD_TTL,
        estimate.prompt_tokens,
        estimate.max_output_tokens,
        min_output_tokens,
        1 if info.clamp else 0,
        info.requests_per_minute or 0,
        info.tokens_per_minute or 0,
        info.requests_per_minute or 0,
        info.tokens_per_minute or 0,
        120,
        max(1, 60 - int(now) % 60),
        len(budgets),
    ]
    for budget in budgets:
        args += [
            to_units(budget.limit, budget.unit),
            rate(estimate.input_price_per_token, budget.unit),
            rate(estimate.output_price_per_token, budget.unit),
            budget.expire_at,
        ]
    args += [owner, int(now)]
    clients.open_holds.add(key)
    try:
        for _ in range(3):
            result = await scripts["reserve"](keys=keys, args=args, client=client)
            status = _text(result[0])
            if status != "seed":
                break
            await seed([budgets[int(i) - 1] for i in result[1]])
    except BaseException:
        # Redis went away (or the task was cancelled) with the answer unknown: Redis may hold
        # it. Left out of `open_holds`, so the sweep can tell it is nobody's.
        clients.open_holds.discard(key)
        clients.uncertain_holds.add(key)
        raise
    if status != "ok":
        clients.open_holds.discard(key)
    if status == "rate":
        return RateLimited(_text(result[1]), _text(result[2]), int(result[3]))
    if status == "refuse":
        budget = budgets[int(result[1]) - 1]
        return ledger.Refusal(
            code=budget.code,
            available=from_units(result[2], budget.unit),
            unit=budget.unit,
            waitable=bool(int(result[3])),
        )
    if status != "ok":
        raise redis.ResponseError(f"reserve: unexpected answer {result!r}")
    output_tokens = int(result[1])
    amounts = [int(a) for a in result[3]]
    allowance_at = 1 if info.cap_tokens is not None else 0
    unit = info.limits.unit
    hold = Hold(
        reservation_id=hold_id,
        allowance_id=info.limits.allowance_id,
        unit=unit,
        amount=from_units(amounts[allowance_at], unit),
        tokens=estimate.prompt_tokens + output_tokens,
        cost=estimate.cost(output_tokens),
        output_tokens=output_tokens,
        clamped=output_tokens < estimate.max_output_tokens,
        cost_center_ids=tuple(c for c, _, _ in info.limits.cost_center_caps),
        fiscal_year=info.limits.fiscal_year,
        # Counted from the grant, like the database ledger (the script counts from the limit,
        # which includes a soft overage).
        remaining=from_units(result[2], unit) - (info.limits.limit - info.limits.granted),
    )
    return RedisHold(
        hold=hold,
        key_id=info.key_id,
        key_tokens=amounts[0] if allowance_at else 0,
        employee_id=info.employee_id,
        counters=tuple(b.counter for b in budgets),
        units=tuple(b.unit for b in budgets),
        amounts=tuple(amounts),
        seen=tuple(int(v) for v in result[4]),
    )


async def close(
    *, held: RedisHold, tokens: int, cost: Decimal, event: str, count_tokens: bool
) -> bool:
    """Settle (tokens and cost > 0) or release (zeros) the hold and append `event` to the
    usage stream, atomically. False when the hold was already closed."""
    client, scripts = clients.async_client()
    now = time.time()
    keys = [
        held.key,
        HOLDS,
        STREAM,
        rate_window("k", held.key_id, now),
        rate_window("e", held.employee_id, now),
        *held.counters,
    ]
    charges = [
        str(tokens) if unit == ledger.TOKENS else str(to_units(cost, unit)) for unit in held.units
    ]
    args = [tokens if count_tokens else 0, 120, event, TOMBSTONE_TTL, *charges]
    closed = bool(await scripts["close"](keys=keys, args=args, client=client))
    clients.open_holds.discard(keys[0])
    return closed


async def adopt(*, held: RedisHold, budgets: list[Budget], seed: Any) -> bool:
    """Make a database hold (taken while Redis was away, call still running) a Redis hold of
    this process, so Redis counts it until `close` (on the same key) settles it. False when
    that key was closed already."""
    client, scripts = clients.async_client()
    owner = await clients.alive()
    now = int(time.time())
    keys = [held.key, HOLDS, *held.counters]
    args = [now + HOLD_TTL, owner, now, HOLD_TTL + TOMBSTONE_TTL, *held.amounts]
    clients.open_holds.add(held.key)
    for _ in range(3):
        result = await scripts["adopt"](keys=keys, args=args, client=client)
        if _text(result[0]) != "seed":
            break
        await seed([budgets[int(i) - 1] for i in result[1]])
    if _text(result[2]) != "o":
        clients.open_holds.discard(held.key)
    return bool(int(result[1]))


async def give_back(key: str) -> bool:
    """Give back a hold this process may have taken without knowing it (`uncertain_holds`)."""
    _, scripts = clients.async_client()
    released = bool(await scripts["abandon"](keys=[key, HOLDS], args=[TOMBSTONE_TTL]))
    clients.uncertain_holds.discard(key)
    return released


async def format_register(tag: str, names: str) -> None:
    """Record the field names behind a usage event format tag (once per process), so that a
    consumer of another version can read this process's events by name."""
    client, _ = clients.async_client()
    formats = clients.async_state().formats
    if tag not in formats:
        await client.hset(FORMATS, tag, names)
        formats.add(tag)


async def seed_counters(values: list[tuple[str, int, int]]) -> int:
    """Create the counters that are still missing: (name, used, expire at)."""
    client, scripts = clients.async_client()
    args: list[Any] = []
    for _, used, expire_at in values:
        args += [used, expire_at]
    return int(await scripts["seed"](keys=[v[0] for v in values], args=args, client=client))


async def abandon(*, held: RedisHold) -> bool:
    """Give back a hold whose call never started (its caller left during the reserve)."""
    _, scripts = clients.async_client()
    released = bool(await scripts["abandon"](keys=[held.key, HOLDS], args=[TOMBSTONE_TTL]))
    clients.open_holds.discard(held.key)
    return released


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
