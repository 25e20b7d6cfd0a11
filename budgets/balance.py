"""What an employee has: the fiscal year of a day, an allowance's released grant, the quota
read (`quota_get`), and the part of a policy the ledger applies (`LimitRule`).

The ledger's writes (reserve, settle, release) are the database quota backend,
`metering.quota.db`, which reads these.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from budgets import ledger
from budgets.fiscal import fiscal_year_bounds, fiscal_year_of
from budgets.models import Allowance, Employee, Policy


@dataclass(frozen=True)
class LimitRule:
    """The part of a resolved policy the ledger needs."""

    soft: bool = False
    overage_percent: int = 0

    @classmethod
    def from_policy(cls, policy: Policy | None) -> LimitRule:
        if policy is None:
            return cls()
        return cls(
            soft=policy.limit_mode == Policy.LimitMode.SOFT,
            overage_percent=policy.soft_overage_percent,
        )

    def limit(self, released: Decimal, unit: str) -> Decimal:
        if not self.soft or not self.overage_percent:
            return released
        return ledger.quantize_down(released * (100 + self.overage_percent) / 100, unit)


@dataclass(frozen=True)
class QuotaView:
    fiscal_year: int
    unit: str
    allowance: Decimal  # the year's grant after proration, plus adjustments
    released: Decimal
    used: Decimal
    reserved: Decimal
    remaining: Decimal
    period_end: dt.date  # last day of the fiscal year (or of employment)
    next_release: dt.date | None
    allowance_id: int | None


def today() -> dt.date:
    return timezone.localdate()


def current_fiscal_year(day: dt.date | None = None) -> int:
    return fiscal_year_of(day or today(), settings.TB_FISCAL_YEAR_START_MONTH)


def allowance_released(
    allowance: Allowance, employee: Employee, day: dt.date
) -> tuple[Decimal, Decimal]:
    """(grant after proration, released on `day`), both before adjustments."""
    start_month = settings.TB_FISCAL_YEAR_START_MONTH
    grant = ledger.prorated_amount(
        allowance.amount,
        allowance.unit,
        fiscal_year=allowance.fiscal_year,
        start_month=start_month,
        employee_start=employee.start_date,
        employee_end=employee.end_date,
        prorate=allowance.prorate,
    )
    period = ledger.active_period(
        allowance.fiscal_year, start_month, employee.start_date, employee.end_date
    )
    released = ledger.released_amount(
        grant,
        allowance.unit,
        release=allowance.release,
        fiscal_year=allowance.fiscal_year,
        start_month=start_month,
        period=period,
        today=day,
    )
    return grant, released


def quota_get(employee: Employee, *, day: dt.date | None = None) -> QuotaView:
    """What the employee has for the fiscal year containing `day` (default today)."""
    day = day or today()
    start_month = settings.TB_FISCAL_YEAR_START_MONTH
    fiscal_year = fiscal_year_of(day, start_month)
    allowance = Allowance.objects.filter(employee=employee, fiscal_year=fiscal_year).first()
    period = ledger.active_period(fiscal_year, start_month, employee.start_date, employee.end_date)
    period_end = (
        period.end if period.days else fiscal_year_bounds(fiscal_year, start_month)[1]
    ) - dt.timedelta(days=1)
    if allowance is None:
        zero = Decimal(0)
        return QuotaView(
            fiscal_year, "tokens", zero, zero, zero, zero, zero, period_end, None, None
        )
    grant, released = allowance_released(allowance, employee, day)
    released += allowance.adjustments_total
    return QuotaView(
        fiscal_year=fiscal_year,
        unit=allowance.unit,
        allowance=grant + allowance.adjustments_total,
        released=released,
        used=allowance.used,
        reserved=allowance.reserved,
        remaining=released - allowance.used - allowance.reserved,
        period_end=period_end,
        next_release=ledger.next_release_date(period, allowance.release, day),
        allowance_id=allowance.pk,
    )
