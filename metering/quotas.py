"""The proxy's one quota interface: reserve, settle, release.

Two backends sit behind it:

- database (the embedded default, and the fallback): `metering.services.call_*` through the
  batching transaction runner; the charge and the usage record commit together.
- Redis (when `REDIS_URL` is set): one Lua script per operation (`metering.quota_redis`); the
  settle appends the usage event to a Redis stream in the same step, and the stream consumer
  (`metering.usage_stream`) applies it to the database.

When Redis is unreachable, `TB_REDIS_DOWN_MODE` decides: `database` reserves on the database
ledger instead, `closed` refuses (503), `open` lets calls through unheld and records them
straight to the database. A hold taken in Redis whose settle cannot reach Redis is recorded and
charged straight to the database; its Redis hold is swept later and the counter's missing charge
is repaired by reconciliation.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings

from budgets import ledger
from budgets.quota import Hold
from metering import quota_redis
from metering.dbpool import ledger_writes
from metering.models import UsageRecord
from metering.selectors import KeyInfo
from metering.services import CallHold, call_abandon, call_release, call_reserve, call_settle
from metering.usage_stream import (
    Charge,
    UsageEvent,
    event_encode,
    format_names,
    usage_events_apply,
)

log = logging.getLogger("tokenbudget.proxy")

RETRY_AFTER_DOWN = 1.0  # seconds to go straight to the down mode after Redis failed


class QuotaUnavailable(Exception):
    """Redis is down and the down mode is `closed`."""


@dataclass(frozen=True)
class UnheldCall:
    """A call let through without a hold (`open` down mode, or Redis on and no allowance
    to hold against, which the Redis script would refuse anyway)."""

    hold: Hold
    key_id: int
    key_tokens: int = 0
    backend: str = "open"


AnyHold = CallHold | quota_redis.RedisHold | UnheldCall


class _Health:
    """This process's view of Redis: `down_until` short-circuits calls for a moment after a
    failure, so an unreachable Redis costs one timeout per second, not one per call."""

    def __init__(self) -> None:
        self.down_until = 0.0
        self.last_error = ""
        self.failures = 0

    def usable(self) -> bool:
        return bool(settings.REDIS_URL) and time.monotonic() >= self.down_until

    def failed(self, exc: BaseException) -> None:
        self.down_until = time.monotonic() + RETRY_AFTER_DOWN
        self.last_error = type(exc).__name__
        self.failures += 1
        log.warning("redis unavailable", extra={"error": self.last_error})

    @property
    def degraded(self) -> bool:
        return bool(settings.REDIS_URL) and time.monotonic() < self.down_until


redis_health = _Health()


# --- reserve ---------------------------------------------------------------------------------


async def reserve(
    *, info: KeyInfo, estimate: ledger.CallEstimate, min_output_tokens: int
) -> AnyHold | ledger.Refusal | quota_redis.RateLimited:
    if settings.REDIS_URL and info.limits is not None and redis_health.usable():
        try:
            return await _redis_reserve(
                info=info, estimate=estimate, min_output_tokens=min_output_tokens
            )
        except quota_redis.UNAVAILABLE as exc:
            redis_health.failed(exc)
    if settings.REDIS_URL and redis_health.degraded:
        mode = settings.TB_REDIS_DOWN_MODE
        if mode == "closed":
            raise QuotaUnavailable
        if mode == "open":
            return _unheld(info, estimate)
    return await _db_reserve(info=info, estimate=estimate, min_output_tokens=min_output_tokens)


async def _redis_reserve(**kwargs: Any) -> Any:
    pending = asyncio.ensure_future(quota_redis.reserve(seed=_seed, **kwargs))
    try:
        return await asyncio.shield(pending)
    except asyncio.CancelledError:
        # The client left while the hold was being taken: give it back once it exists, rather
        # than leave it to the sweep.
        pending.add_done_callback(_abandon_redis_hold)
        raise


def _abandon_redis_hold(pending: asyncio.Future) -> None:
    if pending.cancelled() or pending.exception() is not None:
        return
    held = pending.result()
    if isinstance(held, quota_redis.RedisHold):
        task = asyncio.ensure_future(quota_redis.abandon(held=held))
        _background.add(task)
        task.add_done_callback(_abandoned)


def _abandoned(task: asyncio.Task) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        # Redis went away meanwhile: the owner's liveness or the sweep gives it back later.
        log.warning("abandoned hold not given back", extra={"error": repr(task.exception())})


async def _db_reserve(**kwargs: object) -> CallHold | ledger.Refusal:
    pending = asyncio.ensure_future(ledger_writes.submit(call_reserve, **kwargs))
    try:
        return await asyncio.shield(pending)
    except asyncio.CancelledError:
        # The client left while the hold was being taken: give it back once it exists.
        pending.add_done_callback(_abandon_hold)
        raise


def _abandon_hold(pending: asyncio.Future) -> None:
    if pending.cancelled() or pending.exception() is not None:
        return
    held = pending.result()
    if isinstance(held, CallHold):
        task = asyncio.ensure_future(ledger_writes.submit(call_abandon, held=held))
        _background.add(task)
        task.add_done_callback(_background.discard)


_background: set[asyncio.Task] = set()


def _unheld(info: KeyInfo, estimate: ledger.CallEstimate) -> UnheldCall:
    limits = info.limits
    hold = Hold(
        reservation_id=uuid.uuid4(),
        allowance_id=limits.allowance_id if limits else 0,
        unit=limits.unit if limits else ledger.TOKENS,
        amount=Decimal(0),
        tokens=estimate.prompt_tokens + estimate.max_output_tokens,
        cost=estimate.cost(estimate.max_output_tokens),
        output_tokens=estimate.max_output_tokens,
        clamped=False,
        cost_center_ids=tuple(c for c, _, _ in limits.cost_center_caps) if limits else (),
        fiscal_year=limits.fiscal_year if limits else 0,
    )
    return UnheldCall(hold=hold, key_id=info.key_id)


# --- seeding ---------------------------------------------------------------------------------

_seeding: dict[str, asyncio.Future] = {}


async def _seed(budgets: list[quota_redis.Budget]) -> None:
    """Seed missing counters from the database: one load per counter in this process however
    many calls found it missing, and one write in Redis however many processes race."""
    waits = []
    for budget in budgets:
        pending = _seeding.get(budget.counter)
        if pending is None:
            pending = asyncio.ensure_future(_seed_one(budget))
            _seeding[budget.counter] = pending
            pending.add_done_callback(lambda _, name=budget.counter: _seeding.pop(name, None))
        waits.append(asyncio.shield(pending))
    await asyncio.gather(*waits)


async def _seed_one(budget: quota_redis.Budget) -> None:
    from metering.dbpool import in_db_thread
    from metering.usage_stream import counter_database_value

    used = await in_db_thread(counter_database_value)(budget.counter)
    await quota_redis.seed_counters([(budget.counter, used or 0, budget.expire_at)])


# --- settle and release ------------------------------------------------------------------------


def _charge(held: AnyHold, record: UsageRecord, *, charged: bool) -> Charge:
    tokens = record.input_tokens + record.output_tokens if charged else 0
    cost = quota_redis.money(record.cost) if charged else Decimal(0)
    hold = held.hold
    return Charge(
        allowance_id=hold.allowance_id or None,
        unit=hold.unit,
        amount=Decimal(tokens) if hold.unit == ledger.TOKENS else cost,
        cost=cost,
        cost_center_ids=hold.cost_center_ids,
        fiscal_year=hold.fiscal_year,
        key_id=held.key_id if held.key_tokens else None,
        key_tokens=tokens if held.key_tokens else 0,
    )


async def settle(*, held: AnyHold, record: UsageRecord) -> bool:
    """Charge the call's actual usage and record it. False when it was already closed."""
    return await _close(held, record, charged=True)


async def release(*, held: AnyHold, record: UsageRecord) -> bool:
    """Give the hold back uncharged and record the failed call."""
    return await _close(held, record, charged=False)


async def _close(held: AnyHold, record: UsageRecord, *, charged: bool) -> bool:
    if isinstance(held, CallHold):
        close = call_settle if charged else call_release
        return await ledger_writes.submit(close, held=held, record=record)
    record.cost = quota_redis.money(record.cost) if charged else Decimal(0)
    event = UsageEvent.of(record, _charge(held, record, charged=charged))
    if isinstance(held, quota_redis.RedisHold) and redis_health.usable():
        tokens = record.input_tokens + record.output_tokens if charged else 0
        try:
            await quota_redis.format_register(*format_names())
            return await quota_redis.close(
                held=held,
                tokens=tokens,
                cost=record.cost,
                event=event_encode(event),
                count_tokens=charged,
            )
        except quota_redis.UNAVAILABLE as exc:
            redis_health.failed(exc)
    # Redis is unreachable (or the call was never held there): the record and its charge go
    # straight to the database, idempotent on the request id like the stream's own path.
    return bool(await ledger_writes.submit(usage_events_apply, events=[event]))
