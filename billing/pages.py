"""Pages: the employee's "My tokens" landing page and the finance statements.

"My tokens" lives here because it shows all three apps (the quota from budgets, keys and calls
from metering, statements from billing) and billing is the app allowed to read the other two.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString
from django.views.decorators.http import require_POST

from billing import exports, page_selectors, personal, selectors, stripe_api, value_store
from billing.models import ChargebackStatement, StatementLine
from billing.periods import last_complete_month
from billing.statements import (
    StatementStateError,
    statement_finalize,
    statements_close_month,
)
from billing.stripe_sync import statement_stripe_retry
from budgets import page_selectors as budget_page_selectors
from budgets import roles
from budgets.balance import quota_get, today
from budgets.charts import PALETTE, Bar, Series, bar_chart, line_chart
from budgets.fiscal import fiscal_year_bounds
from budgets.formatting import label_text, ratio_text, tokens_text, usd_compact, usd_text
from metering import page_selectors as metering_selectors
from metering.pages import new_key_forget, new_key_take


def _fraction(part: Decimal, whole: Decimal) -> int:
    return 0 if whole <= 0 else max(0, min(100, int(part * 100 / whole)))


def _burn_down(employee: Any, quota: Any, day: dt.date, per_day: Decimal) -> dict[str, Any]:
    """Remaining allowance per day since the fiscal year began, and the projection onward."""
    start, end = fiscal_year_bounds(quota.fiscal_year, settings.TB_FISCAL_YEAR_START_MONTH)
    spent = page_selectors.daily_spend(employee=employee, start=start, end=end, unit=quota.unit)
    # Yesterday's rollup may trail the live ledger: anchor today's point on the ledger and spread
    # the difference nowhere (the line simply steps to the live figure today).
    points: list[tuple[dt.date, Decimal]] = [(start, quota.allowance)]
    remaining = quota.allowance
    for when, amount in spent:
        if when >= day:
            break
        remaining -= amount
        points.append((when, remaining))
    live = quota.allowance - quota.used - quota.reserved
    points.append((day, live))
    projection: list[tuple[dt.date, Decimal]] = []
    run_out = None
    if per_day > 0 and live > 0:
        run_out = personal.run_out_date(day=day, remaining=live, per_day=per_day)
        stop = min(run_out or end, end - dt.timedelta(days=1))
        projection = [(day, live), (stop, max(live - per_day * (stop - day).days, Decimal(0)))]
    series = [Series("Remaining", points, color="#0072B2")]
    if projection:
        series.append(
            Series("Projected at the current pace", projection, dashed=True, color="#D55E00")
        )
    marks = [(day, "today")]
    if run_out and run_out < end:
        marks.append((run_out, f"runs out {run_out:%d %b}"))
    unit = "tokens" if quota.unit == "tokens" else "USD"
    chart = line_chart(
        series,
        title=f"Allowance remaining over fiscal year {quota.fiscal_year}",
        desc=(
            f"Starts at {quota.allowance} {unit}; {live} {unit} remain today."
            + (f" At the current pace it runs out on {run_out}." if run_out else "")
        ),
        start=start,
        end=end - dt.timedelta(days=1),
        marks=marks,
        prefix="$" if quota.unit == "usd" else "",
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


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Each role lands where its work is."""
    user = request.user
    if budget_page_selectors.pending_approvals_count(user=user):
        return redirect("pages:approvals")  # decisions waiting on this person come first
    if roles.employee_of(user) is not None and not roles.sees_all(user):
        return redirect("pages:my-tokens")
    if roles.is_finance(user) and not roles.is_admin(user):
        return redirect("pages:statements")
    if roles.is_admin(user) or roles.managed_cost_center_ids(user):
        return redirect("pages:cost-centers")
    if roles.employee_of(user) is not None:
        return redirect("pages:my-tokens")
    raise PermissionDenied


@login_required
def my_tokens(request: HttpRequest) -> HttpResponse:
    employee = roles.employee_of(request.user)
    if employee is None:
        raise PermissionDenied
    day = today()
    quota = quota_get(employee, day=day)
    pacing = personal.pacing_get(
        employee=employee, day=day, remaining=quota.remaining, unit=quota.unit
    )
    start, end = fiscal_year_bounds(quota.fiscal_year, settings.TB_FISCAL_YEAR_START_MONTH)
    usage = page_selectors.employee_usage(employee=employee, start=start, end=end)
    by_model = page_selectors.usage_breakdown(queryset=usage, key="model")
    by_intent = page_selectors.usage_breakdown(queryset=usage, key="intent")
    unit_word = "tokens" if quota.unit == "tokens" else "USD"

    def bars(rows: list[page_selectors.Breakdown], what: str) -> Any:
        if not rows:
            return None
        return bar_chart(
            [Bar(r.label, r.tokens, f"{usd_text(r.cost)} cost") for r in rows],
            title=f"Tokens by {what} this fiscal year",
            desc="; ".join(
                f"{r.label}: {tokens_text(r.tokens)} tokens, {usd_text(r.cost)}" for r in rows
            ),
        )

    new_key = new_key_take(request)
    base_url = settings.TB_PUBLIC_BASE_URL.rstrip("/")
    context = {
        "nav": "me",
        "employee": employee,
        "quota": quota,
        "unit_word": unit_word,
        "used_percent": _fraction(quota.used + quota.reserved, quota.released),
        "pacing": pacing,
        "burn": _burn_down(employee, quota, day, pacing.per_day) if quota.allowance_id else None,
        "by_model": by_model,
        "by_intent": by_intent,
        "model_chart": bars(by_model, "model"),
        "intent_chart": bars(by_intent, "intent"),
        "calls": metering_selectors.recent_calls(employee=employee),
        "budget_requests": budget_page_selectors.own_budget_requests(employee=employee),
        "keys": metering_selectors.keys_of(employee=employee),
        "key_models": metering_selectors.key_model_choices(employee=employee),
        "today": day,
        "new_key": new_key,
        "base_url": base_url,
        "statements": [
            personal.personal_statement_get(employee=employee, period=p)
            for p in personal.recent_periods(employee=employee, months=6)
        ],
    }
    response = render(request, "billing/my_tokens.html", context)
    new_key_forget(request, response)
    if new_key is not None:
        response["Cache-Control"] = "no-store"  # the page holds a secret: keep it out of caches
    return response


# --- finance ---------------------------------------------------------------------------------


def _statements_for(user: Any) -> QuerySet[ChargebackStatement]:
    """Statements a finance page may list: all for finance and admins, the managed subtree for
    managers; employees read their own figures on "My tokens" instead."""
    if roles.sees_all(user):
        return selectors.statement_list(user=user)
    managed = roles.managed_cost_center_ids(user)
    if not managed:
        raise PermissionDenied
    return selectors.statement_list(user=user).filter(cost_center_id__in=managed)


def _month(value: str | None) -> dt.date | None:
    if not value:
        return None
    try:
        return selectors.parse_period(value)
    except ValueError:
        return None


@login_required
def statements(request: HttpRequest) -> HttpResponse:
    user = request.user
    visible = _statements_for(user)
    periods = page_selectors.statement_periods(statements=visible)
    now = timezone.now()
    closable = last_complete_month(now)
    period = _month(request.GET.get("period")) or (periods[0] if periods else closable)
    month_statements = list(visible.filter(period=period))
    totals = selectors.subtree_totals(period=period)
    managed = None if roles.sees_all(user) else roles.managed_cost_center_ids(user)
    months, trend = page_selectors.spend_trend(cost_center_ids=managed, end=closable)
    trend_chart = None
    if any(any(values) for _, values in trend):
        trend_chart = line_chart(
            [Series(cc.name, list(zip(months, values, strict=True))) for cc, values in trend],
            title="Monthly spend by cost center (closed months)",
            desc="; ".join(
                f"{cc.name}: ${sum(values)} over {len(months)} months" for cc, values in trend
            ),
            start=months[0],
            end=months[-1],
            prefix="$",
        )
    context = {
        "nav": "finance",
        "period": period,
        "periods": periods if period in periods else [period, *periods],
        "statements": [(s, totals.get(s.cost_center_id, s.total)) for s in month_statements],
        "month_total": sum((s.total for s in month_statements), Decimal(0)),
        "can_finalize": roles.is_finance(user) or roles.is_admin(user),
        "month_over": period <= closable,
        "closable": closable,
        "formats": exports.FORMATS,
        "stripe_configured": stripe_api.is_configured(),
        "trend_chart": trend_chart,
        "trend_months": months,
        "trend": [
            (cc, values, PALETTE[i % len(PALETTE)], sum(values, Decimal(0)))
            for i, (cc, values) in enumerate(trend)
        ],
    }
    return render(request, "billing/statements.html", context)


@login_required
def statement_detail(request: HttpRequest, pk: int) -> HttpResponse:
    statement = get_object_or_404(_statements_for(request.user), pk=pk)
    lines = list(selectors.statement_lines(statement=statement, user=request.user))
    by_employee: dict[int, dict[str, Any]] = {}
    for line in lines:
        row = by_employee.setdefault(
            line.employee_id,
            {"employee": line.employee, "requests": 0, "tokens": 0, "cost": Decimal(0)},
        )
        row["requests"] += line.requests
        row["tokens"] += line.total_tokens
        row["cost"] += line.cost
    context = {
        "nav": "finance",
        "statement": statement,
        "lines": lines,
        "employees": sorted(by_employee.values(), key=lambda r: -r["cost"]),
        "subtree_total": selectors.statement_subtree_total(statement=statement),
        "can_finalize": roles.is_finance(request.user) or roles.is_admin(request.user),
        "month_over": statement.period <= last_complete_month(timezone.now()),
        "formats": exports.FORMATS,
        "stripe_configured": stripe_api.is_configured(),
    }
    return render(request, "billing/statement_detail.html", context)


def _require_finance(user: Any) -> None:
    if not (roles.is_finance(user) or roles.is_admin(user)):
        raise PermissionDenied


@login_required
@require_POST
def statement_finalize_page(request: HttpRequest, pk: int) -> HttpResponse:
    _require_finance(request.user)
    statement = get_object_or_404(_statements_for(request.user), pk=pk)
    try:
        statement_finalize(statement_id=statement.pk, actor=request.user)
    except StatementStateError as exc:
        messages.error(request, f"Not finalized: {exc}.")
    else:
        invoiced = (
            " Its Stripe invoice is being created; see below."
            if (stripe_api.is_configured() and statement.cost_center.stripe_customer_id)
            else ""
        )
        messages.success(
            request,
            f"{statement.cost_center.name} {statement.period:%B %Y} is final; it no longer "
            f"changes (late usage goes to next month as an adjustment line).{invoiced}",
        )
    return redirect("pages:statement", pk=statement.pk)


@login_required
@require_POST
def statement_stripe_retry_page(request: HttpRequest, pk: int) -> HttpResponse:
    """Retry a failed or blocked Stripe sync now (after fixing its cause), audited."""
    _require_finance(request.user)
    statement = get_object_or_404(_statements_for(request.user), pk=pk)
    if not stripe_api.is_configured():
        messages.error(request, "Stripe is not configured.")
        return redirect("pages:statement", pk=statement.pk)
    try:
        statement_stripe_retry(statement_id=statement.pk, actor=request.user, source="web")
    except StatementStateError as exc:
        messages.error(request, f"Not retried: {exc}.")
    else:
        messages.success(
            request, "Stripe sync started again; this page shows its outcome once it is known."
        )
    return redirect("pages:statement", pk=statement.pk)


@login_required
@require_POST
def month_close(request: HttpRequest) -> HttpResponse:
    """Create or refresh the drafts of a finished month from the daily rollup."""
    _require_finance(request.user)
    period = _month(request.POST.get("period"))
    if period is None or period > last_complete_month(timezone.now()):
        messages.error(request, "Only a month that has ended can be closed.")
        return redirect("pages:statements")
    result = statements_close_month(period=period, now=timezone.now())
    messages.success(
        request,
        f"{period:%B %Y} closed: {result.created} new drafts, {result.refreshed} refreshed, "
        f"{result.skipped_final} final statements left as they are.",
    )
    return redirect(f"{reverse('pages:statements')}?period={period:%Y-%m}")


def _export(fmt: str, filename: str, statements: Any, lines: Any) -> StreamingHttpResponse:
    content_type, ext = exports.FORMATS[fmt]
    if fmt == "csv":
        body = exports.finance_csv(lines)
    elif fmt == "focus":
        body = exports.focus_csv(lines)
    elif fmt == "journal":
        body = exports.journal_csv(statements)
    else:
        body = exports.file_chunks(exports.xlsx_file(statements, lines))
    response = StreamingHttpResponse(body, content_type=content_type)
    suffix = {"focus": "-focus", "journal": "-journal"}.get(fmt, "")
    response["Content-Disposition"] = f'attachment; filename="{filename}{suffix}.{ext}"'
    return response


@login_required
def statements_export(request: HttpRequest) -> HttpResponse:
    """Every visible statement of a month (or one, with `statement=`) in one format."""
    fmt = request.GET.get("format", "csv")
    if fmt not in exports.FORMATS:
        raise PermissionDenied
    visible = _statements_for(request.user)
    if pk := request.GET.get("statement"):
        chosen = visible.filter(pk=pk if pk.isdigit() else 0)
        first = chosen.first()
        if first is None:
            raise PermissionDenied
        name = f"chargeback-{first.period:%Y-%m}-{first.cost_center.code}"
    else:
        period = _month(request.GET.get("period"))
        if period is None:
            raise PermissionDenied
        chosen = visible.filter(period=period)
        name = f"chargeback-{period:%Y-%m}"
    # Lines follow the same scope as the statements, so an export never carries more than the
    # page shows.
    lines = StatementLine.objects.filter(statement__in=chosen)
    return _export(fmt, name, chosen, lines)


VALUE_DIMENSIONS = {
    "cost_center": "Cost center",
    "intent": "Intent",
    "model": "Model",
    "employee": "Employee",
}


def _value_charts(rows: list[dict[str, Any]], noun: str, period: dt.date) -> list[SafeString]:
    """Two questions a finance lead asks of the month: what returns most per dollar spent, and
    where the value is; both over the same highest-value rows, each sorted by what it shows."""
    if not rows:
        return []
    by_return = sorted(
        (r for r in rows if r["return_on_spend"] is not None),
        key=lambda r: (-Decimal(r["return_on_spend"]), label_text(r["key"])),
    )
    by_value = sorted(rows, key=lambda r: (-Decimal(r["value"]), label_text(r["key"])))
    month = f"{period:%B %Y}"
    return [
        bar_chart(
            [
                Bar(label_text(r["key"]), Decimal(r["return_on_spend"]),
                    text=ratio_text(r["return_on_spend"]),
                    note=f"{usd_compact(r['value'])} on {usd_compact(r['cost'])}")
                for r in by_return
            ],
            title=f"Return per dollar by {noun}, {month}",
            desc="; ".join(
                f"{label_text(r['key'])}: {ratio_text(r['return_on_spend'])} "
                f"({usd_text(r['value'])} value on {usd_text(r['cost'])} cost)"
                for r in by_return
            ),
        ),
        bar_chart(
            [
                Bar(label_text(r["key"]), Decimal(r["value"]), text=usd_compact(r["value"]),
                    note=f"cost {usd_compact(r['cost'])}")
                for r in by_value
            ],
            title=f"Value by {noun}, {month}",
            desc="; ".join(
                f"{label_text(r['key'])}: {usd_text(r['value'])} value" for r in by_value
            ),
        ),
    ]  # fmt: skip


@login_required
def value_page(request: HttpRequest) -> HttpResponse:
    """Value per token for a month, grouped as asked, within what the user's role shows."""
    period = _month(request.GET.get("period")) or last_complete_month(timezone.now())
    dimension = request.GET.get("dimension", "cost_center")
    if dimension not in VALUE_DIMENSIONS:
        dimension = "cost_center"
    end = (period + dt.timedelta(days=32)).replace(day=1)
    report = value_store.value_report_page(
        dimension=dimension,
        start=period,
        end=end,
        user=request.user,
        number=request.GET.get("page"),
    )
    charts = _value_charts(report.chart_rows, VALUE_DIMENSIONS[dimension].lower(), period)
    context = {
        "nav": "value",
        "period": period,
        "dimension": dimension,
        "dimensions": VALUE_DIMENSIONS,
        "dimension_label": VALUE_DIMENSIONS[dimension],
        "rows": report.rows,
        "page": report.page,
        "query": urlencode({"period": f"{period:%Y-%m}", "dimension": dimension}),
        "served": report,
        "charts": charts,
        "comparison": value_store.comparison_served(start=period, end=end, user=request.user),
    }
    return render(request, "billing/value.html", context)
