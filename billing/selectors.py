"""Reads for billing: scoped statements and lines, daily usage, reconciliation, summaries."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import BigIntegerField, DecimalField, F, Q, QuerySet, Sum, Value
from django.db.models.functions import Cast, Round, TruncMonth

from billing.models import (
    COST_SCALE,
    TOKEN_KINDS,
    ChargebackStatement,
    DailyUsage,
    StatementLine,
    Watermark,
    units_to_cost,
)
from billing.rollup import WATERMARK_NAME
from budgets import roles
from metering.models import UsageRecord

GROUPS = {
    "cost_center": "cost_center__code",
    "employee": "employee__employee_id",
    "model": "model",
    "intent": "intent",
    "day": "day",
    "month": "month",
}


def _cost_units_expr() -> Cast:
    scale = Value(COST_SCALE, output_field=DecimalField(max_digits=30, decimal_places=0))
    return Cast(Round(F("cost") * scale), BigIntegerField())


@dataclass(frozen=True)
class Reconciliation:
    usage_total: Decimal  # every usage record
    unrolled_total: Decimal  # records the rollup has not folded yet
    statements_total: Decimal  # lines on statements of any status
    open_total: Decimal  # rolled-up usage not on any statement line yet

    @property
    def balanced(self) -> bool:
        return self.statements_total + self.open_total + self.unrolled_total == self.usage_total


def usage_reconcile() -> Reconciliation:
    """Totals that must agree to the 1e-10 unit: statements + open usage == usage records."""
    position = (
        Watermark.objects.filter(name=WATERMARK_NAME).values_list("position", flat=True).first()
    ) or 0
    raw = UsageRecord.objects.order_by().aggregate(
        all=Sum(_cost_units_expr()),
        unrolled=Sum(_cost_units_expr(), filter=Q(id__gt=position)),
    )
    rolled = DailyUsage.objects.aggregate(t=Sum("cost_units"))["t"] or 0
    billed = StatementLine.objects.aggregate(t=Sum("cost_units"))["t"] or 0
    return Reconciliation(
        usage_total=units_to_cost(raw["all"]),
        unrolled_total=units_to_cost(raw["unrolled"]),
        statements_total=units_to_cost(billed),
        open_total=units_to_cost(rolled - billed),
    )


# --- scoping ---------------------------------------------------------------------------------


def statement_list(*, user: Any) -> QuerySet[ChargebackStatement]:
    """Statements the user may see: all for finance/admins, their subtree for managers, and
    for an employee the statements that carry a line of theirs."""
    qs = ChargebackStatement.objects.select_related("cost_center").order_by(
        "-period", "cost_center__code"
    )
    if roles.sees_all(user):
        return qs
    condition = Q(cost_center_id__in=roles.managed_cost_center_ids(user))
    if (employee := roles.employee_of(user)) is not None:
        condition |= Q(id__in=StatementLine.objects.filter(employee=employee).values("statement"))
    return qs.filter(condition)


def statement_lines(*, statement: ChargebackStatement, user: Any) -> QuerySet[StatementLine]:
    """The statement's lines the user may see (an employee: only their own)."""
    qs = statement.lines.select_related("employee").order_by(
        "usage_month", "employee__employee_id", "model"
    )
    if statement_shows_whole(statement=statement, user=user):
        return qs
    employee = roles.employee_of(user)
    return qs.filter(employee=employee) if employee else qs.none()


def statement_shows_whole(*, statement: ChargebackStatement, user: Any) -> bool:
    """Whether the user may read the statement's department figures (finance, admins, its
    managers); an employee reading it through a line of theirs sees only their own."""
    return roles.sees_all(user) or statement.cost_center_id in roles.managed_cost_center_ids(user)


@dataclass(frozen=True)
class OwnTotals:
    requests: int
    total_tokens: int
    total: Decimal


def statement_own_totals(*, statement: ChargebackStatement, user: Any) -> OwnTotals:
    """The statement's figures over the user's own lines only."""
    employee = roles.employee_of(user)
    lines = StatementLine.objects.filter(statement=statement, employee=employee)
    if employee is None:
        lines = lines.none()
    sums = lines.aggregate(
        r=Sum("requests"),
        i=Sum("input_tokens"),
        o=Sum("output_tokens"),
        u=Sum("cost_units"),
    )
    return OwnTotals(
        requests=sums["r"] or 0,
        total_tokens=(sums["i"] or 0) + (sums["o"] or 0),
        total=units_to_cost(sums["u"]),
    )


def statement_subtree_total(*, statement: ChargebackStatement) -> Decimal:
    """The month's total over the statement's cost center and all its descendants."""
    ids = roles.subtree_ids({statement.cost_center_id})
    total = ChargebackStatement.objects.filter(
        period=statement.period, cost_center_id__in=ids
    ).aggregate(t=Sum("total_units"))["t"]
    return units_to_cost(total)


def subtree_totals(*, period: dt.date) -> dict[int, Decimal]:
    """Every cost center's roll-up figure for a month (own total plus descendants')."""
    from budgets.models import CostCenter

    own = dict(
        ChargebackStatement.objects.filter(period=period).values_list(
            "cost_center_id", "total_units"
        )
    )
    parents = dict(CostCenter.objects.values_list("id", "parent_id"))
    totals: dict[int, int] = dict.fromkeys(parents, 0)
    for cc, units in own.items():
        node: int | None = cc
        seen = set()
        while node is not None and node not in seen:  # guard against a cycle in bad data
            seen.add(node)
            totals[node] = totals.get(node, 0) + units
            node = parents.get(node)
    return {cc: units_to_cost(units) for cc, units in totals.items()}


def daily_usage_scoped(*, user: Any) -> QuerySet[DailyUsage]:
    """DailyUsage rows the user may see (employees: their own; managers: their subtree)."""
    qs = DailyUsage.objects.all()
    if roles.sees_all(user):
        return qs
    condition = Q(cost_center_id__in=roles.managed_cost_center_ids(user))
    if (employee := roles.employee_of(user)) is not None:
        condition |= Q(employee=employee)
    return qs.filter(condition)


def daily_usage_grouped(*, queryset: QuerySet[DailyUsage], group_by: list[str]) -> QuerySet:
    """Sum DailyUsage over the requested dimensions (keys of GROUPS), ordered by them."""
    fields = [GROUPS[g] for g in group_by]
    qs = queryset.order_by()
    if "month" in group_by:
        qs = qs.annotate(month=TruncMonth("day"))
    sums = {kind: Sum(kind) for kind in ("requests", *TOKEN_KINDS, "cost_units")}
    return qs.values(*fields).annotate(**sums).order_by(*fields)


def parse_period(value: str) -> dt.date:
    """'YYYY-MM' -> the month's first day (ValueError otherwise)."""
    return dt.date.fromisoformat(f"{value}-01" if len(value) == 7 else value).replace(day=1)
