"""Seeding: a counter missing in Redis is created from the database's `used`.

One load per counter in this process however many calls found it missing, and one write in
Redis however many processes race (the seed script writes only a counter still missing).
"""

from __future__ import annotations

import asyncio

from budgets.models import Allowance, CostCenterSpend
from metering.models import VirtualKey
from metering.quota import keys, redis_backend
from metering.quota.units import to_units


def counter_database_value(name: str) -> int | None:
    """The counter's `used` per the database, in Redis units; None when its row is gone (or
    the name is no counter's).

    Only `used`: the database's open holds are holds, not usage. A counter seeded or repaired
    with them in `used` would keep them as charges for ever (the database closes its own holds
    without touching Redis); the fallback's holds still open when Redis comes back are adopted
    as Redis holds by the process that took them, which keeps the counter exact."""
    try:
        counter = keys.counter_parse(name)
    except ValueError:
        return None
    if counter.kind == "allowance":
        row = Allowance.objects.filter(pk=counter.ident).values("unit", "used").first()
        if row is None:
            return None
        return to_units(row["used"], row["unit"], up=True)
    if counter.kind == "key":
        key_row = VirtualKey.objects.filter(pk=counter.ident).values("used_tokens").first()
        return None if key_row is None else key_row["used_tokens"]
    if counter.fiscal_year is None:  # counter_parse gives every cost center counter its year
        return None
    spend = CostCenterSpend.objects.filter(
        cost_center_id=counter.ident, fiscal_year=counter.fiscal_year
    ).first()
    if spend is None:
        return 0
    return to_units(spend.spent, "usd", up=True)


_seeding: dict[str, asyncio.Future[None]] = {}


async def seed_missing(budgets: list[redis_backend.Budget]) -> None:
    """Seed the missing counters from the database (see the module docstring)."""
    await asyncio.gather(*[asyncio.shield(_seed_pending(budget)) for budget in budgets])


def _seed_pending(budget: redis_backend.Budget) -> asyncio.Future[None]:
    """This process's one load of the budget's counter: the running one, or a new one."""
    name = budget.counter
    pending = _seeding.get(name)
    if pending is None:
        pending = asyncio.ensure_future(_seed_one(budget))
        _seeding[name] = pending
        pending.add_done_callback(lambda _: _seeding.pop(name, None))
    return pending


async def _seed_one(budget: redis_backend.Budget) -> None:
    from metering.dbpool import in_db_thread

    # `used` only: the database's own open holds are not usage (their processes adopt them as
    # Redis holds), so seeding never turns a hold into a charge.
    used = await in_db_thread(counter_database_value)(budget.counter)
    await redis_backend.seed_counters([(budget.counter, used or 0, budget.expire_at)])
