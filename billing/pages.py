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

from billing import (
    exports,
    page_selectors,
    personal,
    selectors,
    stripe_api,
    usage_history,
    value_store,
)
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
from budgets.balance import today as budget_today
from budgets.charts import PALETTE, Bar, Series, bar_chart, line_chart
from budgets.formatting import label_text, ratio_text, usd_compact, usd_text
from metering import page_selectors as metering_selectors
from metering.pages import new_key_forget, new_key_take


def _fraction(part: Decimal, whole: Decimal) -> int:
    return 0 if whole <= 0 else max(0, min(100, int(part * 100 / whole)))


LANDING = {
    roles.ADMIN_DASHBOARD: "pages:dashboard-admin",
    roles.FINANCE_DASHBOARD: "pages:dashboard-finance",
    roles.TEAM_DASHBOARD: "pages:dashboard-team",
    roles.EMPLOYEE_DASHBOARD: "pages:my-tokens",
}


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Each role lands on its dashboard (budgets.roles.landing_dashboard decides which); the
    dashboards of those who decide budget requests lead with the pending ones."""
    name = roles.landing_dashboard(request.user)
    if name is None:
        raise PermissionDenied
    return redirect(LANDING[name])


@login_required
def my_tokens(request: HttpRequest) -> HttpResponse:
    employee = roles.employee_of(request.user)
    if employee is None:
        raise PermissionDenied
    day = budget_today()
    history = usage_history.employee_usage_history(employee=employee, day=day)
    quota = history["quota"]
    new_key = new_key_take(request)
    base_url = settings.TB_PUBLIC_BASE_URL.rstrip("/")
    context = {
        "nav": "me",
        "employee": employee,
        **history,
        "used_percent": _fraction(quota.used + quota.reserved, quota.released),
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
    """Two questions a finance lead asks of the month: where the value is, and what each of
    those groups returns per dollar spent; both over the highest-value rows in the table's own
    order (most value first), so a bar and its table row are found in the same place."""
    if not rows:
        return []
    with_return = [r for r in rows if r["return_on_spend"] is not None]
    month = f"{period:%B %Y}"
    return [
        bar_chart(
            [
                Bar(label_text(r["key"]), Decimal(r["value"]), text=usd_compact(r["value"]),
                    note=f"on {usd_compact(r['cost'])} cost")
                for r in rows
            ],
            title=f"Value by {noun}, {month}",
            desc="; ".join(
                f"{label_text(r['key'])}: {usd_text(r['value'])} value on {usd_text(r['cost'])} cost"
                for r in rows
            ),
        ),
        bar_chart(
            [
                Bar(label_text(r["key"]), Decimal(r["return_on_spend"]),
                    text=ratio_text(r["return_on_spend"]))
                for r in with_return
            ],
            title=f"Return per dollar by {noun}, {month}",
            desc="; ".join(
                f"{label_text(r['key'])}: {ratio_text(r['return_on_spend'])} "
                f"({usd_text(r['value'])} value on {usd_text(r['cost'])} cost)"
                for r in with_return
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
