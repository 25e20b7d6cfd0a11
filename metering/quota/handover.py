"""The hand-over between the two ledgers, so that they never admit against the same budget
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

from budgets import ledger
from metering.quota import clients, redis_backend
from metering.quota.seed import counter_database_value, seed_missing
from metering.quota.units import from_units, to_units
from metering.selectors import KeyInfo
from metering.services import CallHold
from metering.usage_stream import format_names

log = logging.getLogger("tokenbudget.proxy")

SEEN_MERGE_SECONDS = 1.0  # answers this close together count as one view (the highest wins)


@dataclass
class _DatabaseHold:
    shadow: redis_backend.RedisHold  # the same hold as Redis would count it
    budgets: list[redis_backend.Budget]
    adopted: bool = False


@dataclass
class Close:
    held: redis_backend.RedisHold
    tokens: int
    cost: Decimal
    event: str
    count_tokens: bool


class _Handover:
    """What this process knows of the other ledger, and owes it (see this module's docstring)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new process's state; tests start from it)."""
        self.seen: dict[str, tuple[int, float]] = {}  # counter -> (used + reserved, when)
        self.outstanding: dict[str, int] = {}  # counter -> Redis-side amount the database lacks
        self._bases: dict[str, asyncio.Future[None]] = {}
        self.database_holds: dict[uuid.UUID, _DatabaseHold] = {}
        self.closes: list[Close] = []
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    def saw(self, held: redis_backend.RedisHold) -> None:
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
            clients.uncertain_holds
            or self.closes
            or any(not h.adopted for h in self.database_holds.values())
        )

    # to the database ledger

    async def held_in_redis(self, budgets: list[redis_backend.Budget]) -> dict[str, Decimal]:
        """Per budget code, what Redis held or charged beyond the database when it went away."""
        found = {}
        for budget in budgets:
            units = await self._outstanding(budget.counter)
            if units > 0:
                found[budget.code] = from_units(units, budget.unit)
        return found

    async def _outstanding(self, counter: str) -> int:
        if counter not in self.outstanding:
            pending = self._bases.get(counter)
            if pending is None:
                pending = asyncio.ensure_future(self._base(counter))
                self._bases[counter] = pending
                pending.add_done_callback(lambda _: self._bases.pop(counter, None))
            await asyncio.shield(pending)
        return self.outstanding.get(counter, 0)

    async def _base(self, counter: str) -> None:
        from metering.dbpool import in_db_thread

        used = await in_db_thread(counter_database_value)(counter)
        seen = self.seen.get(counter, (0, 0.0))[0]
        self.outstanding.setdefault(counter, max(0, seen - (used or 0)))

    def held_on_database(
        self, held: CallHold, info: KeyInfo, budgets: list[redis_backend.Budget]
    ) -> None:
        hold = held.hold
        amounts = []
        for budget in budgets:
            if budget.code == "key_cap":
                amounts.append(held.key_tokens)
            elif budget.code == "employee_allowance":
                amounts.append(to_units(hold.amount, hold.unit, up=True))
            else:
                amounts.append(to_units(hold.cost, ledger.USD, up=True))
        shadow = redis_backend.RedisHold(
            hold=hold,
            key_id=held.key_id,
            key_tokens=held.key_tokens,
            employee_id=info.employee_id,
            counters=tuple(b.counter for b in budgets),
            units=tuple(b.unit for b in budgets),
            amounts=tuple(amounts),
        )
        self.database_holds[hold.reservation_id] = _DatabaseHold(shadow, budgets)

    async def closing_on_database(self, held: redis_backend.RedisHold) -> None:
        """Before a Redis hold is settled on the database: fix the outage's base first, so the
        charge about to land in the database is not also counted as held in Redis."""
        for name in held.counters:
            await self._outstanding(name)

    def closed_on_database(self, close: Close) -> None:
        for name, amount in zip(close.held.counters, close.held.amounts, strict=False):
            self.outstanding[name] = max(0, self.outstanding.get(name, 0) - amount)
        self.closes.append(close)

    # back to Redis

    async def sync(self) -> None:
        """Hand Redis what it missed; raises UNAVAILABLE if Redis goes away meanwhile."""
        if not self.owed and not self.outstanding:
            return
        async with self._loop_lock():
            for key in list(clients.uncertain_holds):
                await _owed(redis_backend.give_back(key), key)
                clients.uncertain_holds.discard(key)
            for entry in list(self.database_holds.values()):
                if not entry.adopted:
                    adopt = redis_backend.adopt(
                        held=entry.shadow, budgets=entry.budgets, seed=seed_missing
                    )
                    await _owed(adopt, entry.shadow.key)
                    entry.adopted = True
            if self.closes:
                await redis_backend.format_register(*format_names())
            while self.closes:
                close = self.closes[0]
                run = redis_backend.close(
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
    except clients.UNAVAILABLE:
        raise
    except redis.RedisError as exc:
        log.error("hand-over step failed", extra={"hold": hold, "error": repr(exc)})


handover = _Handover()
