"""Reads for the billing pages: an employee's year in days, usage breakdowns, spend trends."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import F, QuerySet, Sum

from billing.models import ChargebackStatement, DailyUsage, units_to_cost
from budgets.fiscal import add_months
from budgets.formatting import label_text
from budgets.models import CostCenter, Employee


@dataclass(frozen=True)
class Breakdown:
    label: str
    requests: int
    tokens: int
    cost: Decimal


def daily_spend(
    *, employee: Employee, start: dt.date, end: dt.date, unit: str
) -> list[tuple[dt.date, Decimal]]:
    """Per local day in [start, end): tokens (input + output) or cost, in the allowance's unit."""
    rows = (
        DailyUsage.objects.filter(employee=employee, day__gte=start, day__lt=end)
        .order_by()
        .values("day")
        .annotate(i=Sum("input_tokens"), o=Sum("output_tokens"), c=Sum("cost_units"))
        .order_by("day")
    )
    if unit == "usd":
        return [(r["day"], units_to_cost(r["c"])) for r in rows]
    return [(r["day"], Decimal((r["i"] or 0) + (r["o"] or 0))) for r in rows]


def usage_breakdown(*, queryset: QuerySet[DailyUsage], key: str, limit: int = 8) -> list[Breakdown]:
    """Requests, tokens and cost per value of `key` (model, intent), most tokens first (the
    order the bar chart draws them)."""
    rows = (
        queryset.order_by()
        .values(key)
        .annotate(
            r=Sum("requests"),
            i=Sum("input_tokens"),
            o=Sum("output_tokens"),
            c=Sum("cost_units"),
            t=Sum(F("input_tokens") + F("output_tokens")),
        )
        .order_by("-t", key)[:limit]
    )
    return [
        Breakdown(
            label=label_text(r[key]),
            requests=r["r"] or 0,
            tokens=(r["i"] or 0) + (r["o"] or 0),
            cost=units_to_cost(r["c"]),
        )
        for r in rows
    ]


def employee_usage(*, employee: Employee, start: dt.date, end: dt.date) -> QuerySet[DailyUsage]:
    return DailyUsage.objects.filter(employee=employee, day__gte=start, day__lt=end)


def statement_periods(*, statements: QuerySet[ChargebackStatement]) -> list[dt.date]:
    """Months that have statements, newest first."""
    return list(statements.order_by("-period").values_list("period", flat=True).distinct())


def spend_trend(
    *, cost_center_ids: set[int] | None, end: dt.date, months: int = 12, top: int = 6
) -> tuple[list[dt.date], list[tuple[CostCenter, list[Decimal]]]]:
    """Monthly cost per top-level visible cost center (subtrees folded in) for the `months`
    months ending with `end`'s month; the `top` largest by total, the rest as "Other".

    Read from the statements (one row per cost center and month) rather than the daily rollup,
    so the chart costs the same at ten thousand employees as at ten. Folding subtrees keeps it
    readable at a glance whatever the depth of the tree.
    """
    first = add_months(end.replace(day=1), -(months - 1))
    periods = [add_months(first, i) for i in range(months)]
    qs = ChargebackStatement.objects.filter(period__gte=first, period__lte=periods[-1])
    if cost_center_ids is not None:
        qs = qs.filter(cost_center_id__in=cost_center_ids)
    rows = (
        qs.order_by()
        .values("period", "cost_center_id")
        .annotate(c=Sum("total_units"))
        .values_list("period", "cost_center_id", "c")
    )
    centers = {c.pk: c for c in CostCenter.objects.all()}
    visible = set(centers) if cost_center_ids is None else cost_center_ids
    roots = {cc for cc in visible if centers[cc].parent_id not in visible}
    if len(roots) == 1:
        # One company root would make one line: show its departments instead.
        (root,) = roots
        roots = {root} | {cc for cc in visible if centers[cc].parent_id == root}

    def root_of(cc_id: int) -> int:
        seen: set[int] = set()
        node = cc_id
        while node not in roots and node not in seen:
            seen.add(node)
            node = centers[node].parent_id or node
        return node

    totals: dict[int, list[int]] = {}
    for period, cc_id, units in rows:
        values = totals.setdefault(root_of(cc_id), [0] * months)
        values[periods.index(period)] += units or 0
    # Months before the first spend only flatten the lines; keep at least a quarter.
    used = [i for i in range(months) if any(values[i] for values in totals.values())]
    skip = min(used[0], months - 3) if used else 0
    periods = periods[skip:]
    totals = {cc: values[skip:] for cc, values in totals.items()}
    months -= skip
    ranked = sorted(totals.items(), key=lambda item: (-sum(item[1]), centers[item[0]].code))
    series: list[tuple[Any, list[Decimal]]] = [
        (centers[cc], [units_to_cost(v) for v in values]) for cc, values in ranked[:top]
    ]
    if len(ranked) > top:
        rest = [sum(values[i] for _, values in ranked[top:]) for i in range(months)]
        series.append((CostCenter(code="other", name="Other"), [units_to_cost(v) for v in rest]))
    return periods, series
