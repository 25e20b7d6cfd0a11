"""The proxy's one quota interface: reserve, settle, release.

Two backends sit behind it:

- database (the embedded default, and the fallback): `metering.services.call_*` through the
  batching transaction runner, over this package's `db` ledger; the charge and the usage
  record commit together.
- Redis (when `REDIS_URL` is set): one Lua script per operation (`redis_backend`); the settle
  appends the usage event to a Redis stream in the same step, and the stream consumer
  (`metering.usage_stream`) applies it to the database.

When Redis is unreachable (`down`), `TB_REDIS_DOWN_MODE` decides: `database` reserves on the
database ledger instead, `closed` refuses (503), `open` lets calls through unheld and records
them straight to the database. `handover` keeps the two ledgers from admitting unawares.
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
from metering.dbpool import ledger_writes
from metering.models import UsageRecord
from metering.quota import clients, redis_backend
from metering.quota.db import Hold
from metering.quota.down import QuotaUnavailable, redis_health
from metering.quota.handover import Close, handover
from metering.quota.seed import seed_missing
from metering.quota.units import money
from metering.selectors import KeyInfo
from metering.services import CallHold, call_abandon, call_release, call_reserve, call_settle
from metering.usage_stream import Charge, UsageEvent, event_encode, format_names, usage_events_apply

log = logging.getLogger("tokenbudget.proxy")

__all__ = [
    "AnyHold",
    "QuotaUnavailable",
    "UnheldCall",
    "redis_health",
    "release",
    "reserve",
    "settle",
]


@dataclass(frozen=True)
class UnheldCall:
    """A call let through without a hold (`open` down mode, or Redis on and no allowance
    to hold against, which the Redis script would refuse anyway)."""

    hold: Hold
    key_id: int
    key_tokens: int = 0
    backend: str = "open"


AnyHold = CallHold | redis_backend.RedisHold | UnheldCall


# --- reserve ---------------------------------------------------------------------------------


async def reserve(
    *, info: KeyInfo, estimate: ledger.CallEstimate, min_output_tokens: int
) -> AnyHold | ledger.Refusal | redis_backend.RateLimited:
    if settings.REDIS_URL and info.limits is not None and redis_health.usable():
        try:
            await handover.sync()
            held = await _redis_reserve(
                info=info, estimate=estimate, min_output_tokens=min_output_tokens
            )
        except clients.UNAVAILABLE as exc:
            redis_health.failed(exc)
        else:
            if isinstance(held, redis_backend.RedisHold):
                handover.saw(held)
            return held
    if settings.REDIS_URL and redis_health.degraded:
        mode = settings.TB_REDIS_DOWN_MODE
        if mode == "closed":
            raise QuotaUnavailable
        if mode == "open":
            return _unheld(info, estimate)
    if not settings.REDIS_URL or info.limits is None:
        return await _db_reserve(info=info, estimate=estimate, min_output_tokens=min_output_tokens)
    budgets = redis_backend.budgets_for(info, time.time())
    result = await _db_reserve(
        info=info,
        estimate=estimate,
        min_output_tokens=min_output_tokens,
        held_elsewhere=await handover.held_in_redis(budgets),
    )
    if isinstance(result, CallHold):
        handover.held_on_database(result, info, budgets)
    return result


async def _redis_reserve(**kwargs: Any) -> Any:
    pending = asyncio.ensure_future(redis_backend.reserve(seed=seed_missing, **kwargs))
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
    if isinstance(held, redis_backend.RedisHold):
        task = asyncio.ensure_future(redis_backend.abandon(held=held))
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


# --- settle and release ------------------------------------------------------------------------


def _charge(held: AnyHold, record: UsageRecord, *, charged: bool) -> Charge:
    tokens = record.input_tokens + record.output_tokens if charged else 0
    cost = money(record.cost) if charged else Decimal(0)
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
        return await _close_database_hold(held, record, charged=charged)
    record.cost = money(record.cost) if charged else Decimal(0)
    event = UsageEvent.of(record, _charge(held, record, charged=charged))
    tokens = record.input_tokens + record.output_tokens if charged else 0
    if isinstance(held, redis_backend.RedisHold) and redis_health.usable():
        try:
            await redis_backend.format_register(*format_names())
            return await redis_backend.close(
                held=held,
                tokens=tokens,
                cost=record.cost,
                event=event_encode(event),
                count_tokens=charged,
            )
        except clients.UNAVAILABLE as exc:
            redis_health.failed(exc)
    if not isinstance(held, redis_backend.RedisHold):
        return bool(await ledger_writes.submit(usage_events_apply, events=[event]))
    # Redis is unreachable: the record and its charge go straight to the database, idempotent
    # on the request id like the stream's own path; Redis gets the same close once it is back.
    await handover.closing_on_database(held)
    applied = bool(await ledger_writes.submit(usage_events_apply, events=[event]))
    handover.closed_on_database(
        Close(held, tokens, record.cost, event_encode(event), count_tokens=charged)
    )
    return applied


async def _close_database_hold(held: CallHold, record: UsageRecord, *, charged: bool) -> bool:
    entry = handover.database_holds.pop(held.hold.reservation_id, None)
    close = call_settle if charged else call_release
    closed = await ledger_writes.submit(close, held=held, record=record)
    if entry is None or not closed:
        return closed
    # A hold of the fallback: its charge must reach the Redis counters too (and, adopted, its
    # Redis hold be given back). The event is a duplicate the consumer skips.
    tokens = record.input_tokens + record.output_tokens if charged else 0
    cost = money(record.cost) if charged else Decimal(0)
    event = event_encode(UsageEvent.of(record, _charge(held, record, charged=charged)))
    pending = Close(entry.shadow, tokens, cost, event, count_tokens=charged)
    if redis_health.usable():
        try:
            await redis_backend.format_register(*format_names())
            await redis_backend.close(
                held=entry.shadow, tokens=tokens, cost=cost, event=event, count_tokens=charged
            )
            return closed
        except clients.UNAVAILABLE as exc:
            redis_health.failed(exc)
    handover.closes.append(pending)
    return closed
