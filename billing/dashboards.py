"""The role dashboards, each its role's landing page (budgets.roles decides who sees which):
admin (spend against last month and the allowances, top cost centers, alerts, imports and
changes), team (a manager's pending approvals, burn-down and who runs out), finance (month
close, drafts, exports, Stripe, spend trend). The employee's is My tokens (billing.pages).

They live in billing because they read all three apps; their reads are in
billing.dashboard_selectors and use the daily rollup and the statements only."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from billing import dashboard_selectors as reads
from billing import exports, selectors, stripe_api, usage_history
from billing.periods import last_complete_month
from budgets import roles
from budgets.balance import current_fiscal_year, today
from budgets.charts import PALETTE, Bar, Series, bar_chart, line_chart
from budgets.fiscal import add_months, fiscal_year_bounds, month_start
from budgets.formatting import date_text, percent_text, usd_compact, usd_text
from budgets.models import Unit
from budgets.requests import budget_requests_visible, can_decide

IMPORTS_SINCE = dt.timedelta(days=90)
THIS_COLOR, LAST_COLOR = PALETTE[0], PALETTE[1]


def _month_param(raw: str | None) -> dt.date | None:
    if not raw:
        return None
    try:
        return selectors.parse_period(raw)
    except ValueError:
        return None


def _spend_comparison(month: dt.date, day: dt.date) -> dict[str, Any]:
    """This month (to date when it is the running month) against the same days of the month
    before and the whole month before, with the running totals drawn day by day."""
    previous = add_months(month, -1)
    next_month = add_months(month, 1)
    running = month <= day < next_month
    days = (day - month).days + 1 if running else (next_month - month).days
    daily = reads.daily_cost(start=previous, end=next_month)
    this = reads.cumulative(daily, start=month, days=days)
    last_days = min(days, (month - previous).days)
    last_same = reads.cumulative(daily, start=previous, days=last_days)
    last_whole = sum((v for d, v in daily.items() if d < month), Decimal(0))
    this_total = this[-1][1] if this else Decimal(0)
    last_total = last_same[-1][1] if last_same else Decimal(0)
    span_end = next_month - dt.timedelta(days=1)
    chart = line_chart(
        [
            Series(f"{month:%B}", [(month + dt.timedelta(days=n - 1), v) for n, v in this],
                   color=THIS_COLOR),
            Series(f"{previous:%B}", [(month + dt.timedelta(days=n - 1), v) for n, v in last_same],
                   dashed=True, color=LAST_COLOR),
        ],
        title=f"Spend so far in {month:%B %Y} against {previous:%B}, day by day",
        desc=(f"{usd_text(this_total)} by day {days} of {month:%B}; {usd_text(last_total)} by "
              f"the same day of {previous:%B}, which ended at {usd_text(last_whole)}."),
        start=month, end=span_end, prefix="$", height=240,
    )  # fmt: skip
    change = (this_total - last_total) / last_total if last_total > 0 else None
    return {
        "month": month,
        "previous": previous,
        "running": running,
        "days": days,
        "this_total": this_total,
        "last_same": last_total,
        "last_whole": last_whole,
        "change": change,
        "change_text": (
            ("+" if change > 0 else "") + percent_text(change) if change is not None else ""
        ),
        "chart": chart,
        "this_color": THIS_COLOR,
        "last_color": LAST_COLOR,
        "next": next_month if next_month <= month_start(day) else None,
    }


def _year_elapsed(day: dt.date, year: int) -> Decimal:
    start, end = fiscal_year_bounds(year, settings.TB_FISCAL_YEAR_START_MONTH)
    return Decimal((day - start).days + 1) / Decimal((end - start).days)


def _pending(user: Any) -> list[tuple[Any, bool]]:
    return [
        (r, can_decide(user, r))
        for r in reads.pending_requests(visible=budget_requests_visible(user), user=user)
    ]


@login_required
def admin_dashboard(request: HttpRequest) -> HttpResponse:
    user = request.user
    if not roles.can_see_admin_dashboard(user):
        raise PermissionDenied
    day = today()
    month = _month_param(request.GET.get("month")) or month_start(day)
    if month > month_start(day):
        month = month_start(day)
    spend = _spend_comparison(month, day)
    # Each cost center against the same days of the month before (the whole month before
    # once this one has ended), like the totals above.
    previous = spend["previous"]
    top = reads.top_cost_centers(
        start=month,
        end=add_months(month, 1),
        previous_start=previous,
        previous_end=min(previous + dt.timedelta(days=spend["days"]), month),
    )
    top_chart = None
    if top:
        top_chart = bar_chart(
            [Bar(t.center.name, t.cost, text=usd_compact(t.cost)) for t in top],
            title=f"Cost centers that spent most in {month:%B %Y}",
            desc="; ".join(f"{t.center.name}: {usd_text(t.cost)}" for t in top),
        )
    year = current_fiscal_year(day)
    context = {
        "nav": "dashboard",
        "dashboard": "admin",
        "spend": spend,
        "top": top,
        "top_chart": top_chart,
        "year": year,
        "allowances": reads.allowance_totals(fiscal_year=year),
        "year_elapsed": _year_elapsed(day, year),
        "alerts": reads.recent_alerts(),
        "imports": reads.recent_roster_imports(since=timezone.now() - IMPORTS_SINCE),
        "changes": reads.recent_changes(),
        "pending": _pending(user),
    }
    return render(request, "billing/dashboard_admin.html", context)


def _team_burn_down(
    ids: set[int], totals: reads.AllowanceTotals, year: int, day: dt.date
) -> dict[str, Any]:
    start, end = fiscal_year_bounds(year, settings.TB_FISCAL_YEAR_START_MONTH)
    spent = reads.team_daily_spend(cost_center_ids=ids, start=start, end=end, unit=totals.unit)
    window = day - dt.timedelta(days=reads.PACING_DAYS)
    recent = sum((v for d, v in spent if window <= d < day), Decimal(0))
    per_day = recent / reads.PACING_DAYS
    unit_word = "tokens" if totals.unit == Unit.TOKENS else "USD"
    burn = usage_history.burn_down(
        start=start,
        end=end,
        allowance=totals.allowance,
        spent=spent,
        live=totals.allowance - totals.used,
        per_day=per_day,
        day=day,
        unit=totals.unit,
        title=f"Team allowance remaining over fiscal year {year} ({unit_word})",
    )
    return {**burn, "totals": totals, "per_day": per_day, "unit_word": unit_word}


@login_required
def team_dashboard(request: HttpRequest) -> HttpResponse:
    user = request.user
    if not roles.can_see_team_dashboard(user):
        raise PermissionDenied
    ids = roles.managed_cost_center_ids(user)
    day = today()
    year = current_fiscal_year(day)
    _, period_end = fiscal_year_bounds(year, settings.TB_FISCAL_YEAR_START_MONTH)
    totals = reads.allowance_totals(fiscal_year=year, cost_center_ids=ids)
    context = {
        "nav": "dashboard",
        "dashboard": "team",
        "pending": _pending(user),
        "year": year,
        "period_end": period_end - dt.timedelta(days=1),
        "centers": reads.managed_roots(user=user),
        "burns": [_team_burn_down(ids, t, year, day) for t in totals],
        "pacing": reads.team_pacing(
            cost_center_ids=ids, fiscal_year=year, day=day, period_end=period_end
        ),
        "remaining_color": usage_history.REMAINING_COLOR,
        "projection_color": usage_history.PROJECTION_COLOR,
    }
    return render(request, "billing/dashboard_team.html", context)


@login_required
def finance_dashboard(request: HttpRequest) -> HttpResponse:
    user = request.user
    if not roles.can_see_finance_dashboard(user):
        raise PermissionDenied
    now = timezone.now()
    day = today()
    closable = last_complete_month(now)
    drafts_count, drafts = reads.drafts_to_finalize(until=closable)
    trend = reads.monthly_totals(end=closable)
    # Months before the first spend only lengthen the chart; keep at least a quarter.
    first = next((i for i, (_, v) in enumerate(trend) if v), len(trend))
    trend = trend[min(first, len(trend) - 3) :]
    month_to_date = sum(
        reads.daily_cost(start=month_start(day), end=day + dt.timedelta(days=1)).values(),
        Decimal(0),
    )
    trend_chart = None
    if any(v for _, v in trend):
        trend_chart = bar_chart(
            [Bar(f"{p:%b %Y}", v, text=usd_compact(v)) for p, v in reversed(trend)],
            title=f"Spend per month on the statements, to {closable:%B %Y}",
            color=THIS_COLOR,
            desc="; ".join(f"{p:%B %Y}: {usd_text(v)}" for p, v in trend),
        )
    context = {
        "nav": "dashboard",
        "dashboard": "finance",
        "closable": closable,
        "close": reads.month_close_status(period=closable),
        "close_before": reads.month_close_status(period=add_months(closable, -1)),
        "drafts_count": drafts_count,
        "drafts": drafts,
        "formats": exports.FORMATS,
        "stripe_configured": stripe_api.is_configured(),
        "stripe": reads.stripe_sync_counts(),
        "stripe_attention": reads.stripe_attention(),
        "trend": trend,
        "trend_chart": trend_chart,
        "month_to_date": month_to_date,
        "today": day,
        "today_text": date_text(day),
        "can_close": roles.is_finance(user) or roles.is_admin(user),
    }
    return render(request, "billing/dashboard_finance.html", context)
