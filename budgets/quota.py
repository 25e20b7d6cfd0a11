"""The quota ledger: reserve, settle, release (database backend) and the quota read.

Correct under concurrency on SQLite and PostgreSQL: every change happens inside one transaction
that first locks the rows it changes, always in the same order (allowance, then capped cost
centers by id), so two calls never check-then-act on a stale balance and never deadlock.
On SQLite the IMMEDIATE transaction mode (config.settings) serialises writers.

Callers that hold other budgets (a key's own cap, in metering) lock those first and pass their
headroom in `extra`, inside their own `transaction.atomic()`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from budgets import ledger
from budgets.fiscal import fiscal_year_bounds, fiscal_year_of
from budgets.models import Allowance, CostCenterSpend, Employee, Policy, Reservation

RESERVATION_TTL = dt.timedelta(minutes=30)


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
class Hold:
    """A granted reservation; the caller keeps it to settle or release."""

    reservation_id: uuid.UUID
    allowance_id: int
    unit: str
    amount: Decimal
    tokens: int
    cost: Decimal
    output_tokens: int
    clamped: bool
    cost_center_ids: tuple[int, ...]
    fiscal_year: int
    remaining: Decimal = Decimal(0)  # the allowance's remaining amount once this hold is taken


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


def quota_reserve(
    *,
    employee: Employee,
    estimate: ledger.CallEstimate,
    rule: LimitRule,
    capped_cost_center_ids: list[int] | tuple[int, ...] = (),
    clamp: bool = True,
    min_output_tokens: int = 1,
    extra: list[ledger.Headroom] | tuple[ledger.Headroom, ...] = (),
    day: dt.date | None = None,
) -> Hold | ledger.Refusal:
    """Atomically hold the most this call may cost against every budget it draws on.

    Never check-then-act: the rows are locked before the headroom is read. Must be called inside
    `transaction.atomic()` when the caller locked rows of its own (see module docstring).
    """
    day = day or today()
    fiscal_year = fiscal_year_of(day, settings.TB_FISCAL_YEAR_START_MONTH)
    with transaction.atomic():
        allowance = (
            Allowance.objects.select_for_update()
            .filter(employee_id=employee.pk, fiscal_year=fiscal_year)
            .first()
        )
        if allowance is None:
            return ledger.Refusal(code="no_allowance", available=Decimal(0), unit="tokens")
        _, released = allowance_released(allowance, employee, day)
        limit = rule.limit(released + allowance.adjustments_total, allowance.unit)
        headrooms = [
            *extra,
            ledger.Headroom(
                "employee_allowance",
                allowance.unit,
                limit - allowance.used - allowance.reserved,
                held=allowance.reserved,
            ),
        ]
        spends = _lock_cost_center_spends(capped_cost_center_ids, fiscal_year)
        for spend in spends:
            headrooms.append(
                ledger.Headroom(
                    f"cost_center_cap:{spend.cost_center.code}",
                    ledger.USD,
                    spend.cost_center.annual_cap - spend.spent - spend.reserved,
                    held=spend.reserved,
                )
            )
        plan = ledger.plan_reservation(
            headrooms, estimate, clamp=clamp, min_output_tokens=min_output_tokens
        )
        if isinstance(plan, ledger.Refusal):
            return plan
        amount = Decimal(plan.tokens) if allowance.unit == ledger.TOKENS else plan.cost
        Allowance.objects.filter(pk=allowance.pk).update(reserved=F("reserved") + amount)
        cc_ids = tuple(spend.cost_center_id for spend in spends)
        if cc_ids:
            CostCenterSpend.objects.filter(pk__in=[s.pk for s in spends]).update(
                reserved=F("reserved") + plan.cost
            )
        reservation = Reservation.objects.create(
            allowance_id=allowance.pk,
            amount=amount,
            tokens=plan.tokens,
            cost=plan.cost,
            cost_center_ids=list(cc_ids),
            fiscal_year=fiscal_year,
            expires_at=timezone.now() + RESERVATION_TTL,
        )
    return Hold(
        reservation_id=reservation.pk,
        allowance_id=allowance.pk,
        unit=allowance.unit,
        amount=amount,
        tokens=plan.tokens,
        cost=plan.cost,
        output_tokens=plan.output_tokens,
        clamped=plan.clamped,
        cost_center_ids=cc_ids,
        fiscal_year=fiscal_year,
        remaining=released
        + allowance.adjustments_total
        - allowance.used
        - allowance.reserved
        - amount,
    )


def _lock_cost_center_spends(
    cost_center_ids: list[int] | tuple[int, ...], fiscal_year: int
) -> list[CostCenterSpend]:
    if not cost_center_ids:
        return []
    existing = set(
        CostCenterSpend.objects.filter(
            cost_center_id__in=cost_center_ids, fiscal_year=fiscal_year
        ).values_list("cost_center_id", flat=True)
    )
    missing = [cc for cc in cost_center_ids if cc not in existing]
    if missing:
        # ignore_conflicts: a concurrent first call may create the same row; either one wins.
        CostCenterSpend.objects.bulk_create(
            [CostCenterSpend(cost_center_id=cc, fiscal_year=fiscal_year) for cc in missing],
            ignore_conflicts=True,
        )
    return list(
        CostCenterSpend.objects.select_for_update()
        .select_related("cost_center")
        .filter(
            cost_center_id__in=cost_center_ids,
            fiscal_year=fiscal_year,
            cost_center__annual_cap__isnull=False,
        )
        .order_by("cost_center_id")
    )


def quota_settle(*, hold: Hold, tokens: int, cost: Decimal) -> bool:
    """Replace the hold by the actual charge. Returns False (and changes nothing) when the hold
    was already settled, released or expired, so a retry never charges twice.

    Call inside the caller's `transaction.atomic()` to commit the usage record with the charge.
    """
    return _close_hold(hold, tokens=tokens, cost=cost)


def quota_release(*, hold: Hold) -> bool:
    """Give the hold back uncharged (the call failed before producing anything)."""
    return _close_hold(hold, tokens=0, cost=Decimal(0))


def _close_hold(hold: Hold, *, tokens: int, cost: Decimal) -> bool:
    with transaction.atomic():
        deleted, _ = Reservation.objects.filter(pk=hold.reservation_id).delete()
        if not deleted:
            return False
        used = Decimal(tokens) if hold.unit == ledger.TOKENS else cost
        Allowance.objects.filter(pk=hold.allowance_id).update(
            used=F("used") + used, reserved=F("reserved") - hold.amount
        )
        if hold.cost_center_ids:
            CostCenterSpend.objects.filter(
                cost_center_id__in=hold.cost_center_ids, fiscal_year=hold.fiscal_year
            ).update(spent=F("spent") + cost, reserved=F("reserved") - hold.cost)
    return True


def reservations_release_expired(*, now: dt.datetime) -> int:
    """Release holds left behind by crashed processes (safe to run at any time, any number of
    times). Returns how many were released."""
    released = 0
    for reservation in (
        Reservation.objects.select_related("allowance")
        .filter(expires_at__lt=now)
        .order_by("expires_at")[:1000]
    ):
        hold = Hold(
            reservation_id=reservation.pk,
            allowance_id=reservation.allowance_id,
            unit=reservation.allowance.unit,
            amount=reservation.amount,
            tokens=reservation.tokens,
            cost=reservation.cost,
            output_tokens=0,
            clamped=False,
            cost_center_ids=tuple(reservation.cost_center_ids),
            fiscal_year=reservation.fiscal_year,
        )
        released += quota_release(hold=hold)
    return released
