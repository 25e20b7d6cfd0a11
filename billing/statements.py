"""Monthly chargeback statements: close (create and refresh drafts), finalize, sent, paid.

Contract:
* A statement covers one local calendar month (settings.TIME_ZONE) for one cost center, from
  DailyUsage, whose cost center is the one at the time of each call: an employee who moved
  during the month appears on each center's statement for what they spent there.
* Only drafts change. Once final, a statement and its lines are never rewritten.
* Usage that reaches the rollup after its month's statement left draft goes, as an adjustment
  line naming its original month, onto the cost center's earliest draft statement of a later
  month (created by the next close if none exists yet).
* Closing is idempotent: a close recomputes every draft from the rollup; repeating it with no
  new usage changes nothing.
* Reconciliation: lines on all statements plus usage not yet on any line equal the usage
  records, to the 1e-10 unit (see billing.selectors.usage_reconcile).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.db.models.functions import TruncMonth
from django.utils import timezone

from billing.models import (
    TOKEN_KINDS,
    ChargebackStatement,
    DailyUsage,
    StatementLine,
    Watermark,
)
from billing.periods import last_complete_month
from billing.rollup import daily_usage_rollup
from budgets.fiscal import add_months, month_start

CLOSE_WATERMARK = "statements_close"
SUM_FIELDS = ("requests", *TOKEN_KINDS, "cost_units")
Status = ChargebackStatement.Status
LineKey = tuple[int, dt.date, int, str]  # cost center, usage month, employee, model


class StatementStateError(Exception):
    """The statement is not in a state that allows this change."""


@dataclass(frozen=True)
class CloseResult:
    period: dt.date
    created: int
    refreshed: int  # drafts whose lines changed
    removed: int
    skipped_final: int


def _lookback_months() -> int:
    # How far back late usage is looked for on each close. Usage older than this stays
    # "open" (visible in usage_reconcile) until a close with a longer look-back picks it up.
    return settings.TB_BILLING_LATE_USAGE_MONTHS


def _sums(queryset: Any, *group: str) -> dict[tuple, dict[str, int]]:
    rows = queryset.order_by().values(*group).annotate(**{f: Sum(f) for f in SUM_FIELDS})
    return {tuple(row[g] for g in group): {f: row[f] or 0 for f in SUM_FIELDS} for row in rows}


def _period_usage(period: dt.date) -> dict[LineKey, dict[str, int]]:
    rows = _sums(
        DailyUsage.objects.filter(day__gte=period, day__lt=add_months(period, 1)),
        "cost_center_id",
        "employee_id",
        "model",
    )
    return {(cc, period, emp, model): sums for (cc, emp, model), sums in rows.items()}


def _late_usage(period: dt.date) -> dict[LineKey, dict[str, int]]:
    """Unbilled usage of earlier, no longer draft months whose next draft is `period`'s."""
    first = add_months(period, -_lookback_months())
    statements = ChargebackStatement.objects.filter(period__gte=first, period__lt=period)
    closed = set(statements.exclude(status=Status.DRAFT).values_list("cost_center_id", "period"))
    if not closed:
        return {}
    drafts: dict[int, list[dt.date]] = defaultdict(list)
    for cc, month in statements.filter(status=Status.DRAFT).values_list("cost_center_id", "period"):
        drafts[cc].append(month)
    centers = {cc for cc, _ in closed}
    used = _sums(
        DailyUsage.objects.filter(
            day__gte=first, day__lt=period, cost_center_id__in=centers
        ).annotate(month=TruncMonth("day")),
        "cost_center_id",
        "month",
        "employee_id",
        "model",
    )
    billed = _sums(
        StatementLine.objects.filter(
            statement__cost_center_id__in=centers, usage_month__gte=first, usage_month__lt=period
        ).exclude(statement__status=Status.DRAFT),
        "statement__cost_center_id",
        "usage_month",
        "employee_id",
        "model",
    )
    late: dict[LineKey, dict[str, int]] = {}
    for key, sums in used.items():
        cc, month = key[0], key[1]
        if (cc, month) not in closed or any(month < d < period for d in drafts.get(cc, ())):
            continue  # still billed on its own draft, or an earlier draft takes it
        done = billed.get(key, {})
        rest = {f: sums[f] - done.get(f, 0) for f in SUM_FIELDS}
        if any(rest.values()):
            late[key] = rest
    return late


def _current_lines(statement: ChargebackStatement) -> dict[LineKey, dict[str, int]]:
    rows = statement.lines.values("usage_month", "employee_id", "model", *SUM_FIELDS)
    return {
        (statement.cost_center_id, r["usage_month"], r["employee_id"], r["model"]): {
            f: r[f] for f in SUM_FIELDS
        }
        for r in rows
    }


def _replace_lines(
    statement: ChargebackStatement, lines: dict[LineKey, dict[str, int]], now: dt.datetime
) -> bool:
    """Make the draft's lines equal `lines`; returns False (and writes nothing) if they are."""
    if statement.pk and _current_lines(statement) == lines:
        return False
    statement.lines.all().delete()
    StatementLine.objects.bulk_create(
        [
            StatementLine(
                statement=statement,
                kind=StatementLine.Kind.USAGE
                if month == statement.period
                else StatementLine.Kind.ADJUSTMENT,
                usage_month=month,
                employee_id=emp,
                model=model,
                **sums,
            )
            for (_, month, emp, model), sums in sorted(lines.items(), key=lambda i: i[0][1:])
        ],
        batch_size=2000,
    )
    statement.requests = sum(s["requests"] for s in lines.values())
    statement.total_tokens = sum(s["input_tokens"] + s["output_tokens"] for s in lines.values())
    statement.total_units = sum(s["cost_units"] for s in lines.values())
    statement.refreshed_at = now
    statement.save(update_fields=["requests", "total_tokens", "total_units", "refreshed_at"])
    return True


def statements_close_month(*, period: dt.date, now: dt.datetime) -> CloseResult:
    """Create or refresh the draft statements of `period` (a month's first day) from DailyUsage.

    Statements that are no longer drafts are left untouched. Drafts left with no lines are
    removed. Runs under a lock so two closes never interleave.
    """
    period = month_start(period)
    with transaction.atomic():
        Watermark.objects.get_or_create(name=CLOSE_WATERMARK)
        Watermark.objects.select_for_update().get(name=CLOSE_WATERMARK)
        by_center: dict[int, dict[LineKey, dict[str, int]]] = defaultdict(dict)
        for key, sums in (_period_usage(period) | _late_usage(period)).items():
            by_center[key[0]][key] = sums
        existing = {
            s.cost_center_id: s
            for s in ChargebackStatement.objects.select_for_update().filter(period=period)
        }
        created = refreshed = removed = skipped = 0
        currency = settings.TB_CURRENCY
        for cc, lines in sorted(by_center.items()):
            statement = existing.get(cc)
            if statement is not None and not statement.is_open:
                skipped += 1
                continue
            if statement is None:
                statement = ChargebackStatement.objects.create(
                    period=period, cost_center_id=cc, currency=currency
                )
                created += 1
                _replace_lines(statement, lines, now)
            elif _replace_lines(statement, lines, now):
                refreshed += 1
        for cc, statement in existing.items():
            if cc not in by_center and statement.is_open:
                statement.delete()
                removed += 1
    return CloseResult(period, created, refreshed, removed, skipped)


def statements_close_as_needed(*, now: dt.datetime) -> list[CloseResult]:
    """Catch-up job: fold new usage, then close every month up to the last complete one.

    Closes each month after the stored watermark through the last complete month, and
    refreshes every month that still has drafts. Repeating it is harmless.
    """
    daily_usage_rollup()
    target = last_complete_month(now)
    mark, _ = Watermark.objects.get_or_create(name=CLOSE_WATERMARK)
    months = set(
        ChargebackStatement.objects.filter(status=Status.DRAFT, period__lte=target)
        .values_list("period", flat=True)
        .distinct()
    )
    first = add_months(mark.period, 1) if mark.period else _first_usage_month(target)
    month = first
    while month is not None and month <= target:
        months.add(month)
        month = add_months(month, 1)
    results = [statements_close_month(period=m, now=now) for m in sorted(months)]
    if mark.period is None or mark.period < target:
        Watermark.objects.filter(pk=mark.pk).update(period=target, updated_at=now)
    return results


def _first_usage_month(target: dt.date) -> dt.date | None:
    first_day = DailyUsage.objects.order_by("day").values_list("day", flat=True).first()
    return month_start(first_day) if first_day and first_day <= target else target


def statement_finalize(
    *, statement_id: int, actor: Any = None, now: dt.datetime | None = None
) -> ChargebackStatement:
    """Freeze a draft whose month has ended; start its Stripe sync after the commit.

    Raises StatementStateError for a statement that is not a draft or whose month is not over.
    """
    now = now or timezone.now()
    with transaction.atomic():
        statement = (
            ChargebackStatement.objects.select_for_update()
            .select_related("cost_center")
            .get(pk=statement_id)
        )
        if not statement.is_open:
            raise StatementStateError(f"statement is {statement.status}, not draft")
        if statement.period > last_complete_month(now):
            raise StatementStateError("the month has not ended yet")
        statement.status = Status.FINAL
        statement.finalized_at = now
        statement.finalized_by = actor if getattr(actor, "pk", None) else None
        statement.save(update_fields=["status", "finalized_at", "finalized_by"])
        if statement.cost_center.stripe_customer_id:
            from billing.tasks import statement_stripe_sync_soon

            # After the commit, and never waited for: the statement is final whatever Stripe
            # answers, and the sync's outcome is recorded on it.
            transaction.on_commit(lambda: statement_stripe_sync_soon(statement.pk))
    return statement


def statement_mark_paid(
    *, statement_id: int, now: dt.datetime | None = None
) -> ChargebackStatement:
    """final or sent -> paid (idempotent when already paid)."""
    return _advance(statement_id, Status.PAID, "paid_at", now)


_ORDER: list[str] = [Status.DRAFT, Status.FINAL, Status.SENT, Status.PAID]


def _advance(
    statement_id: int, status: str, stamp: str, now: dt.datetime | None
) -> ChargebackStatement:
    with transaction.atomic():
        statement = ChargebackStatement.objects.select_for_update().get(pk=statement_id)
        current = _ORDER.index(statement.status)
        if current == 0:
            raise StatementStateError("a draft must be finalized first")
        if current < _ORDER.index(status):
            statement.status = status
            setattr(statement, stamp, now or timezone.now())
            statement.save(update_fields=["status", stamp])
    return statement
