"""The proxy's one quota interface: reserve, settle, release.

Two backends sit behind it:

- database (the embedded default, and the fallback): `metering.services.call_*` through the
  batching transaction runner; the charge and the usage record commit together.
- Redis (when `REDIS_URL` is set): one Lua script per operation (`metering.quota_redis`); the
  settle appends the usage event to a Redis stream in the same step, and the stream consumer
  (`metering.usage_stream`) applies it to the database.

When Redis is unreachable, `TB_REDIS_DOWN_MODE` decides: `database` reserves on the database
ledger instead, `closed` refuses (503), `open` lets calls through unheld and records them
straight to the database.

Redis is unreachable only when a command failed twice, the second time on a fresh connection
(a pooled connection may be dead after a Redis restart: `quota_redis` sends the command again),
so a single connection error never sends a call to the database ledger.

The hand-over (`_Handover`), so that the two ledgers never admit against the same budget
unawares:
- to the database: each Redis reserve answers every counter's used + reserved; the database
  reserve during an outage also counts, per budget, what that last answer had beyond the
  database's own `used` when the outage began (charges still in the stream, Redis holds still
  open). A Redis hold of this process settled on the database leaves that amount (its charge
  is then in the database).
- back to Redis, before this process takes its next Redis hold (and at the next heartbeat):
  holds whose reserve was never answered are given back, database holds of calls still running
  are adopted as Redis holds, and every close made on the database only is run in Redis too
  (the charge reaches the counters; its stream event is a duplicate the consumer skips by the
  request id).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis
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
PROBE_SECONDS = 0.1  # while down, how often a background PING checks whether Redis is back
SEEN_MERGE_SECONDS = 1.0  # answers this close together count as one view (the highest wins)


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
        self._probe: asyncio.Task | None = None
        self._probe_loop: asyncio.AbstractEventLoop | None = None

    def usable(self) -> bool:
        return bool(settings.REDIS_URL) and time.monotonic() >= self.down_until

    def failed(self, exc: BaseException) -> None:
        self.down_until = time.monotonic() + RETRY_AFTER_DOWN
        self.last_error = type(exc).__name__
        self.failures += 1
        log.warning("redis unavailable", extra={"error": self.last_error})
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._probe is None or self._probe.done() or self._probe_loop is not loop:
            self._probe = loop.create_task(self._wait_for_redis())
            self._probe_loop = loop

    async def _wait_for_redis(self) -> None:
        """End the down window as soon as Redis answers, rather than a second later: a process
        left on the database ledger while the others are back on Redis would admit unawares."""
        while self.degraded:
            await asyncio.sleep(PROBE_SECONDS)
            try:
                client, _ = quota_redis.async_client()
                await client.ping()
            except quota_redis.UNAVAILABLE:
                continue
            self.down_until = 0.0
            try:
                await handover.sync()
            except quota_redis.UNAVAILABLE as exc:
                self.failed(exc)
            return

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
            await handover.sync()
            held = await _redis_reserve(
                info=info, estimate=estimate, min_output_tokens=min_output_tokens
            )
        except quota_redis.UNAVAILABLE as exc:
            redis_health.failed(exc)
        else:
            if isinstance(held, quota_redis.RedisHold):
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
    budgets = quota_redis.budgets_for(info, time.time())
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


# --- the hand-over between the two ledgers ----------------------------------------------------


@dataclass
class _DatabaseHold:
    shadow: quota_redis.RedisHold  # the same hold as Redis would count it
    budgets: list[quota_redis.Budget]
    adopted: bool = False


@dataclass
class _Close:
    held: quota_redis.RedisHold
    tokens: int
    cost: Decimal
    event: str
    count_tokens: bool


class _Handover:
    """What this process knows of the other ledger, and owes it (see the module docstring)."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[int, float]] = {}  # counter -> (used + reserved, when)
        self.outstanding: dict[str, int] = {}  # counter -> Redis-side amount the database lacks
        self._bases: dict[str, asyncio.Future] = {}
        self.database_holds: dict[uuid.UUID, _DatabaseHold] = {}
        self.closes: list[_Close] = []
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    def saw(self, held: quota_redis.RedisHold) -> None:
        now = time.monotonic()
        for name, value in zip(held.counters, held.seen, strict=False):
            last = self.seen.get(name)
            # Answers from concurrent pipelines arrive in no set order: within a moment the
            # highest is kept, so a late answer from an earlier run never lowers the view.
            if last is not None and now - last[1] < SEEN_MERGE_SECONDS:
                value = max(value, last[0])
            self.seen[name] = (value, now)

    @property
    def owed(self) -> bool:
        return bool(
            quota_redis.uncertain_holds
            or self.closes
            or any(not h.adopted for h in self.database_holds.values())
        )

    # to the database ledger

    async def held_in_redis(self, budgets: list[quota_redis.Budget]) -> dict[str, Decimal]:
        """Per budget code, what Redis held or charged beyond the database when it went away."""
        found = {}
        for budget in budgets:
            units = await self._outstanding(budget.counter)
            if units > 0:
                found[budget.code] = quota_redis.from_units(units, budget.unit)
        return found

    async def _outstanding(self, counter: str) -> int:
        if counter not in self.outstanding:
            pending = self._bases.get(counter)
            if pending is None:
                pending = asyncio.ensure_future(self._base(counter))
                self._bases[counter] = pending
                pending.add_done_callback(lambda _, name=counter: self._bases.pop(name, None))
            await asyncio.shield(pending)
        return self.outstanding.get(counter, 0)

    async def _base(self, counter: str) -> None:
        from metering.dbpool import in_db_thread
        from metering.usage_stream import counter_database_value

        used = await in_db_thread(counter_database_value)(counter)
        seen = self.seen.get(counter, (0, 0.0))[0]
        self.outstanding.setdefault(counter, max(0, seen - (used or 0)))

    def held_on_database(
        self, held: CallHold, info: KeyInfo, budgets: list[quota_redis.Budget]
    ) -> None:
        hold = held.hold
        amounts = []
        for budget in budgets:
            if budget.code == "key_cap":
                amounts.append(held.key_tokens)
            elif budget.code == "employee_allowance":
                amounts.append(quota_redis.to_units(hold.amount, hold.unit, up=True))
            else:
                amounts.append(quota_redis.to_units(hold.cost, ledger.USD, up=True))
        shadow = quota_redis.RedisHold(
            hold=hold,
            key_id=held.key_id,
            key_tokens=held.key_tokens,
            employee_id=info.employee_id,
            counters=tuple(b.counter for b in budgets),
            units=tuple(b.unit for b in budgets),
            amounts=tuple(amounts),
        )
        self.database_holds[hold.reservation_id] = _DatabaseHold(shadow, budgets)

    async def closing_on_database(self, held: quota_redis.RedisHold) -> None:
        """Before a Redis hold is settled on the database: fix the outage's base first, so the
        charge about to land in the database is not also counted as held in Redis."""
        for name in held.counters:
            await self._outstanding(name)

    def closed_on_database(self, close: _Close) -> None:
        for name, amount in zip(close.held.counters, close.held.amounts, strict=False):
            self.outstanding[name] = max(0, self.outstanding.get(name, 0) - amount)
        self.closes.append(close)

    # back to Redis

    async def sync(self) -> None:
        """Hand Redis what it missed; raises UNAVAILABLE if Redis goes away meanwhile."""
        if not self.owed and not self.outstanding:
            return
        async with self._loop_lock():
            for key in list(quota_redis.uncertain_holds):
                await _owed(quota_redis.give_back(key), key)
                quota_redis.uncertain_holds.discard(key)
            for entry in list(self.database_holds.values()):
                if not entry.adopted:
                    adopt = quota_redis.adopt(held=entry.shadow, budgets=entry.budgets, seed=_seed)
                    await _owed(adopt, entry.shadow.key)
                    entry.adopted = True
            if self.closes:
                await quota_redis.format_register(*format_names())
            while self.closes:
                close = self.closes[0]
                run = quota_redis.close(
                    held=close.held,
                    tokens=close.tokens,
                    cost=close.cost,
                    event=close.event,
                    count_tokens=close.count_tokens,
                )
                await _owed(run, close.held.key)
                self.closes.pop(0)
            self.outstanding.clear()

    def _loop_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        return self._lock[1]


async def _owed(step: Any, hold: str) -> None:
    """Run one hand-over step. Redis going away stops the hand-over (it resumes later); any
    other error is logged and the step dropped, so that one bad entry never blocks every call
    (the nightly reconciliation repairs the counter it would have fixed)."""
    try:
        await step
    except quota_redis.UNAVAILABLE:
        raise
    except redis.RedisError as exc:
        log.error("hand-over step failed", extra={"hold": hold, "error": repr(exc)})


handover = _Handover()


async def _after_beat() -> None:
    redis_health.down_until = 0.0  # the heartbeat reached Redis
    await handover.sync()


quota_redis.after_beat.append(_after_beat)


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

    # `used` only: the database's own open holds are not usage (their processes adopt them as
    # Redis holds), so seeding never turns a hold into a charge.
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
        return await _close_database_hold(held, record, charged=charged)
    record.cost = quota_redis.money(record.cost) if charged else Decimal(0)
    event = UsageEvent.of(record, _charge(held, record, charged=charged))
    tokens = record.input_tokens + record.output_tokens if charged else 0
    if isinstance(held, quota_redis.RedisHold) and redis_health.usable():
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
    if not isinstance(held, quota_redis.RedisHold):
        return bool(await ledger_writes.submit(usage_events_apply, events=[event]))
    # Redis is unreachable: the record and its charge go straight to the database, idempotent
    # on the request id like the stream's own path; Redis gets the same close once it is back.
    await handover.closing_on_database(held)
    applied = bool(await ledger_writes.submit(usage_events_apply, events=[event]))
    handover.closed_on_database(
        _Close(held, tokens, record.cost, event_encode(event), count_tokens=charged)
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
    cost = quota_redis.money(record.cost) if charged else Decimal(0)
    event = event_encode(UsageEvent.of(record, _charge(held, record, charged=charged)))
    pending = _Close(entry.shadow, tokens, cost, event, count_tokens=charged)
    if redis_health.usable():
        try:
            await quota_redis.format_register(*format_names())
            await quota_redis.close(
                held=entry.shadow, tokens=tokens, cost=cost, event=event, count_tokens=charged
            )
            return closed
        except quota_redis.UNAVAILABLE as exc:
            redis_health.failed(exc)
    handover.closes.append(pending)
    return closed
