"""GET /v1/budget: what the caller's `tb-` key has left, for agents and status lines; never
billed, never held.

The figures are the allowance's (budgets.balance.quota_get: released, used, reserved,
remaining, the period's last day), the key's own cap left, and the pace: the spend of the last
PACING_DAYS complete local days from the usage records, per day, with the day the remaining
allowance runs out at that pace. Amounts are plain strings (exact: tokens as digits, money as
a decimal without exponent), as in the x-tokenbudget-* headers.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from django.db.models import Sum
from django.utils import timezone

from budgets import ledger
from budgets.balance import QuotaView, quota_get
from budgets.formatting import plain
from budgets.models import Employee
from metering.models import UsageRecord, VirtualKey
from metering.selectors import KeyInfo

PATH = "/v1/budget"
PACING_DAYS = 7
# Past this the projection says null ("not at this pace") rather than a date.
MAX_RUN_OUT_DAYS = 100 * 366
MONEY_PLACES = Decimal("0.000001")


@dataclass(frozen=True)
class KeyCap:
    cap_tokens: int | None
    used_tokens: int
    reserved_tokens: int

    @property
    def left(self) -> int | None:
        if self.cap_tokens is None:
            return None
        return max(0, self.cap_tokens - self.used_tokens - self.reserved_tokens)


def run_out_date(day: dt.date, remaining: Decimal, per_day: Decimal) -> dt.date | None:
    """The day `remaining` is used up at `per_day` from `day` (None: no spend, or too far)."""
    if per_day <= 0:
        return None
    if remaining <= 0:
        return day
    days = (remaining / per_day).to_integral_value(ROUND_FLOOR)
    if days > MAX_RUN_OUT_DAYS:
        return None
    return day + dt.timedelta(days=int(days))


def per_day(spent: Decimal, unit: str) -> Decimal:
    """The average spend per day, floored: whole tokens, or money to six places."""
    average = spent / PACING_DAYS
    if unit == ledger.TOKENS:
        return average.to_integral_value(ROUND_FLOOR)
    return average.quantize(MONEY_PLACES, rounding=ROUND_FLOOR)


def budget_body(view: QuotaView, cap: KeyCap, spent: Decimal, day: dt.date) -> dict[str, Any]:
    """The endpoint's JSON object (pure)."""
    pace = per_day(spent, view.unit)
    run_out = run_out_date(day, view.remaining, spent / PACING_DAYS)
    left = cap.left
    return {
        "object": "budget",
        "unit": view.unit,
        "fiscal_year": view.fiscal_year,
        "allowance": plain(view.allowance),
        "released": plain(view.released),
        "used": plain(view.used),
        "reserved": plain(view.reserved),
        "remaining": plain(view.remaining),
        "period_end": view.period_end.isoformat(),
        "next_release": view.next_release.isoformat() if view.next_release else None,
        "key": {
            "cap_tokens": None if cap.cap_tokens is None else str(cap.cap_tokens),
            "cap_left": None if left is None else str(left),
        },
        "pace": {
            "days": PACING_DAYS,
            "spent": plain(spent),
            "per_day": plain(pace),
            "projected_run_out": run_out.isoformat() if run_out else None,
        },
    }


def spent_between(employee_id: int, start: dt.datetime, end: dt.datetime, unit: str) -> Decimal:
    """Tokens (input + output) or cost of the employee's records in [start, end)."""
    totals = UsageRecord.objects.filter(
        employee_id=employee_id, created_at__gte=start, created_at__lt=end
    ).aggregate(i=Sum("input_tokens"), o=Sum("output_tokens"), c=Sum("cost"))
    if unit == ledger.TOKENS:
        return Decimal((totals["i"] or 0) + (totals["o"] or 0))
    return Decimal(totals["c"] or 0)


def budget_load(info: KeyInfo) -> dict[str, Any]:
    """The budget of `info`'s employee and key today (database work: run off the loop)."""
    day = timezone.localdate()
    employee = Employee.objects.get(pk=info.employee_id)
    view = quota_get(employee, day=day)
    used, reserved = (
        VirtualKey.objects.filter(pk=info.key_id)
        .values_list("used_tokens", "reserved_tokens")
        .get()
    )
    zone = timezone.get_current_timezone()
    end = dt.datetime.combine(day, dt.time.min, tzinfo=zone)
    start = dt.datetime.combine(day - dt.timedelta(days=PACING_DAYS), dt.time.min, tzinfo=zone)
    spent = spent_between(info.employee_id, start, end, view.unit)
    return budget_body(view, KeyCap(info.cap_tokens, used, reserved), spent, day)
