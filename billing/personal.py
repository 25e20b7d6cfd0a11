"""Personal monthly statements and the pacing projection (shared with alerts)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from django.db.models import Sum

from billing.models import DailyUsage, units_to_cost
from budgets.balance import quota_get
from budgets.fiscal import add_months
from budgets.formatting import plain
from budgets.models import Employee

PACING_DAYS = 30


@dataclass(frozen=True)
class Pacing:
    """Spend per day over the last PACING_DAYS, in the allowance's unit, and the projection."""

    per_day: Decimal
    run_out: dt.date | None  # None: no spend, or not within MAX_RUN_OUT_DAYS at this pace


def usage_in_unit(employee: Employee, start: dt.date, end: dt.date, unit: str) -> Decimal:
    """Tokens (input + output) or cost spent on local days [start, end)."""
    agg = DailyUsage.objects.filter(employee=employee, day__gte=start, day__lt=end).aggregate(
        i=Sum("input_tokens"), o=Sum("output_tokens"), c=Sum("cost_units")
    )
    if unit == "usd":
        return units_to_cost(agg["c"])
    return Decimal((agg["i"] or 0) + (agg["o"] or 0))


# Beyond this the projection says "not at this pace" rather than a date (a large allowance
# used slowly would otherwise run out after year 9999, past what a date can hold).
MAX_RUN_OUT_DAYS = 100 * 366


def run_out_date(*, day: dt.date, remaining: Decimal, per_day: Decimal) -> dt.date | None:
    """The day `remaining` is used up at `per_day` from `day`; None for no spend, or a date
    further than MAX_RUN_OUT_DAYS away."""
    if per_day <= 0:
        return None
    if remaining <= 0:
        return day
    days = remaining / per_day
    if days > MAX_RUN_OUT_DAYS:
        return None
    return day + dt.timedelta(days=int(days))


def pacing_get(*, employee: Employee, day: dt.date, remaining: Decimal, unit: str) -> Pacing:
    """Project when `remaining` runs out at the average pace of the PACING_DAYS before `day`."""
    spent = usage_in_unit(employee, day - dt.timedelta(days=PACING_DAYS), day, unit)
    per_day = spent / PACING_DAYS
    if per_day <= 0:
        return Pacing(per_day=Decimal(0), run_out=None)
    return Pacing(
        per_day=per_day, run_out=run_out_date(day=day, remaining=remaining, per_day=per_day)
    )


@dataclass
class PersonalStatement:
    period: str
    employee_id: str
    requests: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost: str
    top_models: list[dict[str, Any]] = field(default_factory=list)
    top_intents: list[dict[str, Any]] = field(default_factory=list)
    allowance_unit: str = "tokens"
    remaining: str = "0"
    projected_run_out: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _top(qs: Any, key: str) -> list[dict[str, Any]]:
    rows = (
        qs.order_by()
        .values(key)
        .annotate(i=Sum("input_tokens"), o=Sum("output_tokens"), c=Sum("cost_units"))
        .order_by("-c", key)[:5]
    )
    return [
        {key: r[key], "tokens": (r["i"] or 0) + (r["o"] or 0), "cost": str(units_to_cost(r["c"]))}
        for r in rows
    ]


def personal_statement_get(*, employee: Employee, period: dt.date) -> PersonalStatement:
    """The employee's month: tokens, cost, top models and intents, what remains of the
    allowance at the month's end (or today, if earlier) and the projected run-out date."""
    end = add_months(period, 1)
    qs = DailyUsage.objects.filter(employee=employee, day__gte=period, day__lt=end)
    agg = qs.aggregate(r=Sum("requests"), i=Sum("input_tokens"), o=Sum("output_tokens"),
                       c=Sum("cost_units"))  # fmt: skip
    from budgets.balance import today

    as_of = min(end - dt.timedelta(days=1), today())
    quota = quota_get(employee, day=as_of)
    pacing = pacing_get(employee=employee, day=as_of, remaining=quota.remaining, unit=quota.unit)
    inp, out = agg["i"] or 0, agg["o"] or 0
    return PersonalStatement(
        period=f"{period:%Y-%m}",
        employee_id=employee.employee_id,
        requests=agg["r"] or 0,
        input_tokens=inp,
        output_tokens=out,
        total_tokens=inp + out,
        cost=str(units_to_cost(agg["c"])),
        top_models=_top(qs, "model"),
        top_intents=_top(qs.exclude(intent=""), "intent"),
        allowance_unit=quota.unit,
        remaining=plain(quota.remaining),
        projected_run_out=pacing.run_out.isoformat() if pacing.run_out else None,
    )


def recent_periods(*, employee: Employee, months: int = 12) -> list[dt.date]:
    """Months with usage, newest first, at most `months`."""
    days = (
        DailyUsage.objects.filter(employee=employee)
        .order_by("-day")
        .values_list("day", flat=True)
        .distinct()[:400]
    )
    seen: list[dt.date] = []
    for day in days:
        month = day.replace(day=1)
        if month not in seen:
            seen.append(month)
        if len(seen) >= months:
            break
    return seen
