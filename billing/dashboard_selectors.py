"""Reads for the role dashboards. Every figure of spend comes from the rollups or the monthly
statements, never from raw usage records: a month of spend per day or per cost center from
CostCenterDay (days x cost centers, a few thousand rows a month whatever the number of calls),
a person's pace from DailyUsage through its (employee, day, ...) key, so a dashboard costs about
the same at ten million calls a month as at ten thousand."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncMinute

from billing.models import (
    AlertEvent,
    ChargebackStatement,
    CostCenterDay,
    DailyUsage,
    units_to_cost,
)
from billing.personal import PACING_DAYS, run_out_date
from budgets.fiscal import add_months
from budgets.models import Allowance, AuditEvent, BudgetRequest, CostCenter, Unit
from budgets.page_selectors import audit_changes, audit_what


def _usage(cost_center_ids: set[int] | None) -> QuerySet[CostCenterDay]:
    qs = CostCenterDay.objects.all()
    return qs if cost_center_ids is None else qs.filter(cost_center_id__in=cost_center_ids)


def daily_cost(
    *, start: dt.date, end: dt.date, cost_center_ids: set[int] | None = None
) -> dict[dt.date, Decimal]:
    """Cost per local day in [start, end), days without spend left out."""
    rows = (
        _usage(cost_center_ids)
        .filter(day__gte=start, day__lt=end)
        .order_by()
        .values("day")
        .annotate(c=Sum("cost_units"))
        .values_list("day", "c")
    )
    return {day: units_to_cost(units) for day, units in rows}


def cumulative(
    daily: dict[dt.date, Decimal], *, start: dt.date, days: int
) -> list[tuple[int, Decimal]]:
    """(day of the period, running total) for the first `days` days from `start`."""
    total, out = Decimal(0), []
    for offset in range(days):
        total += daily.get(start + dt.timedelta(days=offset), Decimal(0))
        out.append((offset + 1, total))
    return out


@dataclass(frozen=True)
class CenterSpend:
    center: CostCenter
    cost: Decimal
    tokens: int
    previous: Decimal  # the same cost center's spend over the comparison span


def top_cost_centers(
    *, start: dt.date, end: dt.date, previous_start: dt.date, previous_end: dt.date, limit: int = 8
) -> list[CenterSpend]:
    """The cost centers that spent most in [start, end), with their spend in the previous span
    beside it (the cost center the call was charged to, as on the statements)."""
    rows = list(
        CostCenterDay.objects.filter(day__gte=start, day__lt=end)
        .order_by()
        .values("cost_center_id")
        .annotate(c=Sum("cost_units"), i=Sum("input_tokens"), o=Sum("output_tokens"))
        .order_by("-c", "cost_center_id")[:limit]
    )
    ids = [r["cost_center_id"] for r in rows]
    before = dict(
        CostCenterDay.objects.filter(
            cost_center_id__in=ids, day__gte=previous_start, day__lt=previous_end
        )
        .order_by()
        .values("cost_center_id")
        .annotate(c=Sum("cost_units"))
        .values_list("cost_center_id", "c")
    )
    centers = CostCenter.objects.in_bulk(ids)
    return [
        CenterSpend(
            center=centers[r["cost_center_id"]],
            cost=units_to_cost(r["c"]),
            tokens=(r["i"] or 0) + (r["o"] or 0),
            previous=units_to_cost(before.get(r["cost_center_id"])),
        )
        for r in rows
        if r["cost_center_id"] in centers
    ]


@dataclass(frozen=True)
class AllowanceTotals:
    unit: str
    employees: int
    allowance: Decimal  # grants plus adjustments
    used: Decimal  # settled plus held by calls in flight

    @property
    def ratio(self) -> Decimal:
        return self.used / self.allowance if self.allowance > 0 else Decimal(0)

    @property
    def bar_percent(self) -> int:
        """The share used as a whole percentage from 0 to 100, for a progress bar."""
        return max(0, min(100, int(self.ratio * 100)))


def allowance_totals(
    *, fiscal_year: int, cost_center_ids: set[int] | None = None
) -> list[AllowanceTotals]:
    """The fiscal year's allowances summed per unit (one row per employee and year, so this is
    a scan of at most the roster, whatever the usage)."""
    qs = Allowance.objects.filter(fiscal_year=fiscal_year, employee__active=True)
    if cost_center_ids is not None:
        qs = qs.filter(employee__cost_center_id__in=cost_center_ids)
    rows = (
        qs.order_by()
        .values("unit")
        .annotate(
            n=Count("id"),
            a=Sum("amount"),
            j=Sum("adjustments_total"),
            u=Sum("used"),
            r=Sum("reserved"),
        )
        .order_by("unit")
    )
    return [
        AllowanceTotals(
            unit=r["unit"],
            employees=r["n"],
            allowance=Decimal(r["a"] or 0) + Decimal(r["j"] or 0),
            used=Decimal(r["u"] or 0) + Decimal(r["r"] or 0),
        )
        for r in rows
    ]


def recent_alerts(*, limit: int = 10) -> list[AlertEvent]:
    return list(AlertEvent.objects.select_related("employee", "cost_center")[:limit])


@dataclass(frozen=True)
class RosterImportRun:
    at: dt.datetime
    actor: str
    created: int
    changed: int
    deactivated: int


def recent_roster_imports(*, since: dt.datetime, limit: int = 5) -> list[RosterImportRun]:
    """Roster imports since `since`, one row per actor and minute: an import writes all its
    audit events in one transaction, so they share the minute."""
    rows = (
        AuditEvent.objects.filter(source="import", created_at__gte=since)
        .annotate(minute=TruncMinute("created_at"))
        .order_by()
        .values("minute", "actor__username", "actor_label")
        .annotate(
            created=Count("id", filter=Q(action="create", object_type="budgets.employee")),
            changed=Count("id", filter=Q(action="update")),
            deactivated=Count("id", filter=Q(action="deactivate")),
        )
        .order_by("-minute")[:limit]
    )
    return [
        RosterImportRun(
            at=r["minute"],
            actor=r["actor__username"] or r["actor_label"] or "system",
            created=r["created"],
            changed=r["changed"],
            deactivated=r["deactivated"],
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Change:
    at: dt.datetime
    what: str  # "Changed allowance: …", in words
    by: str
    source: str
    changes: str  # "amount: 1,000 → 2,000"


def recent_changes(*, limit: int = 12) -> list[Change]:
    """The latest audit events outside roster imports, read for people (the imports have
    their own summary)."""
    events = (
        AuditEvent.objects.exclude(source="import")
        .select_related("actor")
        .order_by("-created_at", "-id")[:limit]
    )
    return [
        Change(
            at=event.created_at,
            what=audit_what(event),
            by=(event.actor.username if event.actor else "") or event.actor_label or "system",
            source=event.source,
            changes=audit_changes(event.before, event.after),
        )
        for event in events
    ]


def managed_roots(*, user: Any) -> list[CostCenter]:
    """The cost centers the user manages directly (their subtrees are the team), by code."""
    return list(CostCenter.objects.filter(managers__pk=user.pk).order_by("code"))


# --- the team (a manager's subtree) -------------------------------------------------------------


def team_daily_spend(
    *, cost_center_ids: set[int], start: dt.date, end: dt.date, unit: str
) -> list[tuple[dt.date, Decimal]]:
    """The team's spend per local day in [start, end), in tokens or dollars."""
    rows = (
        _usage(cost_center_ids)
        .filter(day__gte=start, day__lt=end)
        .order_by()
        .values("day")
        .annotate(i=Sum("input_tokens"), o=Sum("output_tokens"), c=Sum("cost_units"))
        .order_by("day")
    )
    if unit == Unit.USD:
        return [(r["day"], units_to_cost(r["c"])) for r in rows]
    return [(r["day"], Decimal((r["i"] or 0) + (r["o"] or 0))) for r in rows]


@dataclass(frozen=True)
class PacingRow:
    allowance: Allowance
    remaining: Decimal
    per_day: Decimal
    run_out: dt.date | None

    @property
    def employee(self) -> Any:
        return self.allowance.employee


def team_pacing(
    *, cost_center_ids: set[int], fiscal_year: int, day: dt.date, period_end: dt.date
) -> list[PacingRow]:
    """Team members who run out before `period_end` at the pace of their last PACING_DAYS,
    soonest first (already out first of all). One query for the allowances, one for the
    30 days of rollup, grouped by employee."""
    allowances = list(
        Allowance.objects.filter(
            fiscal_year=fiscal_year,
            employee__active=True,
            employee__cost_center_id__in=cost_center_ids,
        ).select_related("employee", "employee__cost_center")
    )
    spent = {
        r["employee_id"]: r
        for r in DailyUsage.objects.filter(
            employee_id__in=[a.employee_id for a in allowances],
            day__gte=day - dt.timedelta(days=PACING_DAYS),
            day__lt=day,
        )
        .order_by()
        .values("employee_id")
        .annotate(i=Sum("input_tokens"), o=Sum("output_tokens"), c=Sum("cost_units"))
    }
    out = []
    for allowance in allowances:
        row = spent.get(allowance.employee_id)
        if row is None:
            continue
        if allowance.unit == Unit.USD:
            recent = units_to_cost(row["c"])
        else:
            recent = Decimal((row["i"] or 0) + (row["o"] or 0))
        per_day = recent / PACING_DAYS
        remaining = (
            allowance.amount + allowance.adjustments_total - allowance.used - allowance.reserved
        )
        when = run_out_date(day=day, remaining=remaining, per_day=per_day)
        if when is not None and when < period_end:
            out.append(PacingRow(allowance, remaining, per_day, when))
    return sorted(out, key=lambda r: (r.run_out, r.allowance.employee.name))


def pending_requests(*, visible: QuerySet[BudgetRequest], user: Any) -> list[BudgetRequest]:
    """Pending requests the user could decide (never their own), oldest first: the longest
    waiting come first."""
    return list(
        visible.filter(status=BudgetRequest.Status.PENDING)
        .exclude(Q(requested_by=user) | Q(employee__user=user))
        .order_by("created_at", "id")[:20]
    )


# --- finance -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonthClose:
    period: dt.date
    statements: int
    drafts: int
    final: int  # final, sent or paid
    total: Decimal

    @property
    def closed(self) -> bool:
        """The month has statements and none of them is still a draft."""
        return self.statements > 0 and self.drafts == 0


def month_close_status(*, period: dt.date) -> MonthClose:
    agg = ChargebackStatement.objects.filter(period=period).aggregate(
        n=Count("id"),
        drafts=Count("id", filter=Q(status=ChargebackStatement.Status.DRAFT)),
        t=Sum("total_units"),
    )
    return MonthClose(
        period=period,
        statements=agg["n"],
        drafts=agg["drafts"],
        final=agg["n"] - agg["drafts"],
        total=units_to_cost(agg["t"]),
    )


def drafts_to_finalize(*, until: dt.date, limit: int = 10) -> tuple[int, list[ChargebackStatement]]:
    """Drafts of months that have ended: how many, and the largest first."""
    qs = ChargebackStatement.objects.filter(
        status=ChargebackStatement.Status.DRAFT, period__lte=until
    )
    return qs.count(), list(
        qs.select_related("cost_center").order_by("period", "-total_units", "id")[:limit]
    )


STRIPE_STATES = ("blocked", "retrying", "pending", "invoiced")


def stripe_sync_counts() -> dict[str, int]:
    """Statements per Stripe sync state, in the words of `ChargebackStatement.stripe_sync_state`
    (blocked needs a fix and a retry; retrying failed and will try again; pending is final and
    waiting for its first sync; invoiced has its invoice)."""
    no_invoice = Q(stripe_invoice_id="")
    agg = ChargebackStatement.objects.aggregate(
        invoiced=Count("id", filter=~no_invoice),
        blocked=Count("id", filter=no_invoice & Q(stripe_sync_blocked=True)),
        retrying=Count(
            "id", filter=no_invoice & Q(stripe_sync_blocked=False) & ~Q(stripe_sync_error="")
        ),
        pending=Count(
            "id",
            filter=no_invoice
            & Q(stripe_sync_blocked=False, stripe_sync_error="")
            & Q(status=ChargebackStatement.Status.FINAL)
            & ~Q(cost_center__stripe_customer_id=""),
        ),
    )
    return {state: agg[state] for state in STRIPE_STATES}


def stripe_attention(*, limit: int = 5) -> list[ChargebackStatement]:
    """Statements whose sync failed (blocked first), for links to retry them."""
    return list(
        ChargebackStatement.objects.filter(stripe_invoice_id="")
        .filter(Q(stripe_sync_blocked=True) | ~Q(stripe_sync_error=""))
        .select_related("cost_center")
        .order_by("-stripe_sync_blocked", "-stripe_sync_failed_at", "id")[:limit]
    )


def monthly_totals(*, end: dt.date, months: int = 12) -> list[tuple[dt.date, Decimal]]:
    """Total statement spend per month for the `months` months ending with `end`'s month (one
    row per cost center and month: small whatever the usage)."""
    first = add_months(end.replace(day=1), -(months - 1))
    rows = dict(
        ChargebackStatement.objects.filter(period__gte=first, period__lte=end)
        .order_by()
        .values("period")
        .annotate(t=Sum("total_units"))
        .values_list("period", "t")
    )
    periods = [add_months(first, i) for i in range(months)]
    return [(p, units_to_cost(rows.get(p))) for p in periods]
