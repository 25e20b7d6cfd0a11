"""Stored value reports, and the intents' recommended models.

A periodic job (billing.tasks.value_reports_store_as_needed_task) computes the value report of the
last complete month and of the current month to date, by every dimension, with the same code
that computes reports on demand (billing.value), and keeps only the exact sums of each row
(`ValueReport`); every ratio is derived again on read, so a stored report reads exactly like a
computed one. The API serves a stored month to admins and finance when one exists
(`value_report_served`), and computes on demand otherwise.

The same job moves each catalogued intent's `recommended_model` (read by the proxy for
`auto:<intent>`) to what the last complete month's model comparison recommends, and clears it
when the recommendation no longer fires.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.core.paginator import Page, Paginator
from django.db import transaction
from django.utils import timezone

from billing.models import ValueReport, ValueReportPeriod, cost_to_units, units_to_cost
from billing.periods import last_complete_month, local_tz
from billing.value import (
    DIMENSIONS,
    MIN_RATED,
    WH,
    Group,
    model_comparison,
    report_order,
    value_groups,
)
from budgets import roles
from budgets.audit import audit_record, snapshot
from budgets.fiscal import add_months
from budgets.invalidation import invalidation_publish
from metering.models import Intent

FIGURES = (
    "requests",
    "tokens",
    "cost_units",
    "outcomes",
    "accepted",
    "rejected",
    "value_units",
    "energy_nwh",
    "energy_tokens",
    "energy_cost_units",
    "generation_ms",
)
JOB = "value_report_store"  # the actor label of the job's audit events


def _everyone() -> Any:
    """An unsaved staff user: the stored report covers every cost center and employee."""
    return get_user_model()(is_staff=True)


def _nwh(energy_wh: Decimal) -> int:
    units = energy_wh.scaleb(9)
    if units != units.to_integral_value():
        raise ValueError(f"{energy_wh} Wh is finer than {WH} Wh")
    return int(units)


def group_figures(group: Group) -> dict[str, int]:
    """The exact sums of a report row, as stored."""
    return {
        "requests": group.requests,
        "tokens": group.tokens,
        "cost_units": cost_to_units(group.cost),
        "outcomes": group.outcomes,
        "accepted": group.accepted,
        "rejected": group.rejected,
        "value_units": cost_to_units(group.value),
        "energy_nwh": _nwh(group.energy_wh),
        "energy_tokens": group.energy_tokens,
        "energy_cost_units": cost_to_units(group.energy_cost),
        "generation_ms": group.generation_ms,
    }


def row_group(row: ValueReport) -> Group:
    """The `Group` a stored row was made from (its `as_dict` is the report row)."""
    return Group(
        key=row.key,
        label=row.key,
        requests=row.requests,
        tokens=row.tokens,
        cost=units_to_cost(row.cost_units),
        outcomes=row.outcomes,
        accepted=row.accepted,
        rejected=row.rejected,
        value=units_to_cost(row.value_units),
        energy_wh=Decimal(row.energy_nwh).scaleb(-9),
        energy_tokens=row.energy_tokens,
        energy_cost=units_to_cost(row.energy_cost_units),
        generation_ms=row.generation_ms,
    )


def _figures(row: ValueReport) -> dict[str, int]:
    return {name: getattr(row, name) for name in FIGURES}


def _compute(since: dt.date, until: dt.date) -> dict[tuple[str, str], dict[str, int]]:
    everyone = _everyone()
    computed = {}
    for dimension in DIMENSIONS:
        for group in value_groups(dimension=dimension, start=since, end=until, user=everyone):
            key = (dimension, str(group.label))
            if key in computed:  # labels are unique codes and ids; never merge two groups
                raise ValueError(f"two {dimension} groups are labelled {key[1]!r}")
            computed[key] = group_figures(group)
    return computed


def value_report_store(*, period: dt.date, now: dt.datetime) -> ValueReportPeriod:
    """Compute the month starting at `period` by every dimension as of `now`, and store it.

    Idempotent: the period's rows are replaced in one transaction under the period's row
    lock, and only rows whose figures changed are rewritten (a re-run over unchanged data
    writes no row, only the period's `computed_at`). The reports are computed before the
    transaction, so the lock is held for the writes only (on SQLite a write transaction stops
    every other writer); a run that started before the stored computation leaves it alone.
    When `period` is the last complete month, the intents' recommended models are updated
    from its model comparison too."""
    if period.day != 1:
        raise ValueError(f"{period} is not the first day of a month")
    since, until = period, add_months(period, 1)
    computed = _compute(since, until)
    comparison = model_comparison(start=since, end=until, user=_everyone())
    complete = until <= timezone.localtime(now, local_tz()).date()
    with transaction.atomic():
        header, created = ValueReportPeriod.objects.select_for_update().get_or_create(
            since=since,
            defaults={"until": until, "complete": complete, "computed_at": now, "changed_at": now},
        )
        if not created and header.computed_at > now:
            return header  # a later computation is already stored
        stored = {(r.dimension, r.key): r for r in header.rows.all()}
        stale = {r.pk for k, r in stored.items() if computed.get(k) != _figures(r)}
        fresh = [
            ValueReport(period=header, dimension=dimension, key=key, **figures)
            for (dimension, key), figures in computed.items()
            if (dimension, key) not in stored or stored[(dimension, key)].pk in stale
        ]
        if stale:
            ValueReport.objects.filter(pk__in=stale).delete()
        if fresh:
            ValueReport.objects.bulk_create(fresh, batch_size=1000)
        if created or stale or fresh:
            header.changed_at = now
        header.until, header.complete, header.computed_at = until, complete, now
        header.comparison = comparison
        header.save()
    if since == last_complete_month(now):
        intent_recommendations_apply(start=since, end=until, now=now)
    return header


def value_reports_store_as_needed(*, now: dt.datetime) -> list[dt.date]:
    """Store the last complete month's reports (refreshed, for usage and outcomes that arrive
    late) and the current month's to date; returns the months stored."""
    last = last_complete_month(now)
    months = [last, add_months(last, 1)]
    for month in months:
        value_report_store(period=month, now=now)
    return months


# --- recommended models ---------------------------------------------------------------------


def recommended_model(entry: dict[str, Any] | None, default_model: str) -> str:
    """The model `auto:<intent>` should use instead of its baseline, or "" for none.

    The baseline is the intent's default model, or, without one, the model that served the
    most calls of the intent in the period (on a tie, the dearest). A model is recommended only when the comparison's
    switch rule fires from the baseline (enough rated outcomes on both models, cheaper per
    accepted outcome, not worse with 97.5 % one-sided confidence; see
    billing.value._recommend). Switches are not chained: each target is judged against its own
    source only."""
    if entry is None:
        return ""
    baseline = default_model
    if not baseline:
        busiest = max(
            entry["models"], key=lambda m: (m["requests"], Decimal(m["cost"]), m["model"])
        )
        baseline = busiest["model"]
    switches = {r["from_model"]: r["to_model"] for r in entry["recommendations"]}
    return switches.get(baseline, "")


def intent_recommendations_apply(*, start: dt.date, end: dt.date, now: dt.datetime) -> list[Intent]:
    """Set or clear every catalogued intent's recommended model from the model comparison of
    [start, end) with the default rule (at least value.MIN_RATED rated outcomes per model,
    margin 0); returns the intents changed, each audited. `recommended_at` is when the
    current recommendation was first made; it is cleared with the model."""
    comparison = {e["intent"]: e for e in model_comparison(start=start, end=end, user=_everyone())}
    changed = []
    with transaction.atomic():
        for intent in Intent.objects.select_for_update().order_by("pk"):
            entry = comparison.get(intent.name)
            target = recommended_model(entry, intent.default_model)
            if target == intent.recommended_model:
                continue
            if not target and not _decidable(entry, intent.recommended_model):
                continue  # too few ratings to say the switch stopped paying off: keep it
            before = snapshot(intent)
            intent.recommended_model = target
            intent.recommended_at = now if target else None
            intent.save(update_fields=["recommended_model", "recommended_at", "updated_at"])
            invalidation_publish(cache="intents", entry=intent.name)  # auto:<intent> routing
            audit_record(
                actor=JOB,
                action="recommend" if target else "unrecommend",
                obj=intent,
                before=before,
                after=snapshot(intent),
                source="system",
            )
            changed.append(intent)
    return changed


def _decidable(entry: dict[str, Any] | None, recommended: str) -> bool:
    """Whether the month's comparison had enough rated outcomes on the recommended model and
    on another one to judge the switch again. Once `auto:<intent>` traffic has moved to the
    recommended model, the model it replaced collects few ratings; without this the
    recommendation would be cleared for lack of data and the traffic would flip back."""
    if entry is None:
        return False
    rated = {m["model"]: m["accepted"] + m["rejected"] for m in entry["models"]}
    others = [n for model, n in rated.items() if model != recommended]
    return rated.get(recommended, 0) >= MIN_RATED and any(n >= MIN_RATED for n in others)


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedReport:
    rows: list[dict[str, Any]]
    stored: bool
    computed_at: dt.datetime
    complete: bool


def value_report_served(
    *, dimension: str, start: dt.date, end: dt.date, user: Any, fresh: bool = False
) -> ServedReport:
    """The stored report of [start, end) when one exists and `user` sees everything (admins
    and finance; a stored report covers every cost center, so a narrower role's slice is
    always computed), else the report computed now. `fresh` forces the computation."""
    if not fresh and roles.sees_all(user):
        header = ValueReportPeriod.objects.filter(since=start, until=end).first()
        if header is not None:
            stored = header.rows.filter(dimension=dimension)
            groups = report_order(row_group(row) for row in stored)
            return ServedReport(
                rows=[g.as_dict() for g in groups],
                stored=True,
                computed_at=header.computed_at,
                complete=header.complete,
            )
    now = timezone.now()
    groups = value_groups(dimension=dimension, start=start, end=end, user=user)
    return ServedReport(
        rows=[g.as_dict() for g in groups],
        stored=False,
        computed_at=now,
        complete=end <= timezone.localtime(now, local_tz()).date(),
    )


def comparison_served(*, start: dt.date, end: dt.date, user: Any) -> list[dict[str, Any]]:
    """The stored model comparison of [start, end) for those who see everything, else the
    comparison computed now within what `user` may see."""
    if roles.sees_all(user):
        header = ValueReportPeriod.objects.filter(since=start, until=end).first()
        if header is not None:
            return header.comparison
    return model_comparison(start=start, end=end, user=user)


@dataclass(frozen=True)
class ReportPage:
    """One page of a report for the Value page: its rows, the rows worth charting (the most
    valuable, whatever page), and where the figures come from. The page, its charts and its
    table share one order: most value first, then dearest first (the API and the exports keep
    the report order, dearest first)."""

    page: Page
    rows: list[dict[str, Any]]
    chart_rows: list[dict[str, Any]]
    stored: bool
    computed_at: dt.datetime
    complete: bool


def value_report_page(
    *, dimension: str, start: dt.date, end: dt.date, user: Any, number: Any, per_page: int = 50
) -> ReportPage:
    """Like `value_report_served`, one page at a time: a stored report is paged in the
    database (a month by employee has one row per employee), a computed one in memory."""
    header = None
    if roles.sees_all(user):
        header = ValueReportPeriod.objects.filter(since=start, until=end).first()
    if header is not None:
        stored = header.rows.filter(dimension=dimension)
        ordered = stored.order_by("-value_units", "-cost_units", "key")
        stored_page = Paginator(ordered, per_page).get_page(number)
        valued = ordered.filter(value_units__gt=0)[:CHART_ROWS]
        return ReportPage(
            page=stored_page,
            rows=[row_group(r).as_dict() for r in stored_page.object_list],
            chart_rows=[row_group(r).as_dict() for r in valued],
            stored=True,
            computed_at=header.computed_at,
            complete=header.complete,
        )
    served = value_report_served(dimension=dimension, start=start, end=end, user=user, fresh=True)
    # Report order (dearest first) within equal values, as the stored ordering above.
    ordered_rows = sorted(served.rows, key=lambda r: -Decimal(r["value"]))
    page = Paginator(ordered_rows, per_page).get_page(number)
    return ReportPage(
        page=page,
        rows=list(page.object_list),
        chart_rows=[r for r in ordered_rows if Decimal(r["value"]) > 0][:CHART_ROWS],
        stored=False,
        computed_at=served.computed_at,
        complete=served.complete,
    )


CHART_ROWS = 12
