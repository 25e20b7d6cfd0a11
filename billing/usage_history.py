"""Usage history charts shared by My tokens, the employee page and the team dashboard: the
burn-down of an allowance (or a team's summed allowances) and the breakdowns by model and
intent, all read from the daily rollup, never from raw usage records."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils.safestring import SafeString

from billing import page_selectors, personal
from budgets.balance import quota_get, today
from budgets.charts import Bar, Series, bar_chart, line_chart
from budgets.fiscal import fiscal_year_bounds
from budgets.formatting import amount_text, date_text, tokens_text, usd_text
from budgets.models import Employee

REMAINING_COLOR = "#0072B2"
PROJECTION_COLOR = "#D55E00"


def burn_down(
    *,
    start: dt.date,
    end: dt.date,
    allowance: Decimal,
    spent: list[tuple[dt.date, Decimal]],
    live: Decimal,
    per_day: Decimal,
    day: dt.date,
    unit: str,
    title: str,
) -> dict[str, Any]:
    """Remaining allowance per day over [start, end) from the daily spend before `day`, today's
    point from the live ledger `live`, and the projection at `per_day` onward.

    Yesterday's rollup may trail the live ledger: today's point is the ledger's figure and the
    line simply steps to it."""
    points: list[tuple[dt.date, Decimal]] = [(start, allowance)]
    remaining = allowance
    for when, amount in spent:
        if when >= day:
            break
        remaining -= amount
        points.append((when, remaining))
    points.append((day, live))
    projection: list[tuple[dt.date, Decimal]] = []
    run_out = None
    if per_day > 0 and live > 0:
        run_out = personal.run_out_date(day=day, remaining=live, per_day=per_day)
        stop = min(run_out or end, end - dt.timedelta(days=1))
        projection = [(day, live), (stop, max(live - per_day * (stop - day).days, Decimal(0)))]
    series = [Series("Remaining", points, color=REMAINING_COLOR)]
    if projection:
        series.append(
            Series("Projected at the current pace", projection, dashed=True, color=PROJECTION_COLOR)
        )
    marks = [(day, "today")]
    if run_out and run_out < end:
        marks.append((run_out, f"runs out {run_out:%d %b}"))
    chart = line_chart(
        series,
        title=title,
        desc=(
            f"Starts at {amount_text(allowance, unit)}; {amount_text(live, unit)} remain today."
            + (f" At the current pace it runs out on {date_text(run_out)}." if run_out else "")
        ),
        start=start,
        end=end - dt.timedelta(days=1),
        marks=marks,
        prefix="$" if unit == "usd" else "",
    )
    monthly: dict[dt.date, Decimal] = {}
    for when, amount in spent:
        monthly[when.replace(day=1)] = monthly.get(when.replace(day=1), Decimal(0)) + amount
    return {
        "chart": chart,
        "run_out": run_out,
        "runs_out_early": run_out is not None and run_out < end,
        "monthly": sorted(monthly.items()),
    }


def breakdown_chart(rows: list[page_selectors.Breakdown], what: str) -> SafeString | None:
    """Tokens per model or intent, most first, each with its cost beside it."""
    if not rows:
        return None
    return bar_chart(
        [Bar(r.label, r.tokens, f"{usd_text(r.cost)} cost") for r in rows],
        title=f"Tokens by {what} this fiscal year",
        desc="; ".join(
            f"{r.label}: {tokens_text(r.tokens)} tokens, {usd_text(r.cost)}" for r in rows
        ),
    )


def employee_usage_history(*, employee: Employee, day: dt.date | None = None) -> dict[str, Any]:
    """The fiscal year of one employee: quota, pacing, burn-down and breakdowns."""
    day = day or today()
    quota = quota_get(employee, day=day)
    pacing = personal.pacing_get(
        employee=employee, day=day, remaining=quota.remaining, unit=quota.unit
    )
    start, end = fiscal_year_bounds(quota.fiscal_year, settings.TB_FISCAL_YEAR_START_MONTH)
    usage = page_selectors.employee_usage(employee=employee, start=start, end=end)
    by_model = page_selectors.usage_breakdown(queryset=usage, key="model")
    by_intent = page_selectors.usage_breakdown(queryset=usage, key="intent")
    burn = None
    if quota.allowance_id:
        burn = burn_down(
            start=start,
            end=end,
            allowance=quota.allowance,
            spent=page_selectors.daily_spend(
                employee=employee, start=start, end=end, unit=quota.unit
            ),
            live=quota.allowance - quota.used - quota.reserved,
            per_day=pacing.per_day,
            day=day,
            unit=quota.unit,
            title=f"Allowance remaining over fiscal year {quota.fiscal_year}",
        )
    return {
        "quota": quota,
        "unit_word": "tokens" if quota.unit == "tokens" else "USD",
        "pacing": pacing,
        "burn": burn,
        "by_model": by_model,
        "by_intent": by_intent,
        "model_chart": breakdown_chart(by_model, "model"),
        "intent_chart": breakdown_chart(by_intent, "intent"),
    }
