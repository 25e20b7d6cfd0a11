"""Invoice a finalized statement in Stripe, and take webhook events in.

`statement_stripe_sync` is safe to run any number of times: each Stripe object has a
deterministic key, recorded here once created; before creating, it also looks the key up in
Stripe (metadata), so a run that crashed between Stripe's answer and our commit is recovered
without a second invoice or item even where idempotency keys are not honoured (localstripe).

Each statement syncs on its own. A failure is recorded on the statement (error, attempts, when
the next automatic retry is due); retries back off exponentially up to a cap; a request Stripe
refuses (an unknown customer) blocks the statement until someone fixes the cause and retries it
(`statement_stripe_retry`, audited). Stripe is only called outside database transactions; a
short-lived claim on the statement keeps two syncs of one Stripe customer from overlapping.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from billing import stripe_api
from billing.exports import cents
from billing.models import (
    ChargebackStatement,
    StatementLine,
    StripeEvent,
    StripeInvoiceItem,
    units_to_cost,
)
from billing.periods import local_tz
from billing.statements import StatementStateError, statement_mark_paid
from budgets.audit import audit_record
from budgets.fiscal import add_months
from budgets.models import CostCenter

Status = ChargebackStatement.Status
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedItem:
    key: str
    amount_cents: int
    description: str
    usage_month: dt.date


def _allocate_cents(exact: list[Decimal]) -> list[int]:
    """Whole cents per item that add up to the rounded total (largest remainder method)."""
    total = int(cents(sum(exact, Decimal(0))) * 100)
    floors = [int((e * 100).to_integral_value(rounding=ROUND_FLOOR)) for e in exact]
    rest = total - sum(floors)
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] * 100 - floors[i]), i))
    for i in order[: max(rest, 0)]:
        floors[i] += 1
    return floors


def plan_items(statement: ChargebackStatement) -> list[PlannedItem]:
    """One invoice item per usage month x model (Stripe allows 250 items per invoice; per
    employee would exceed it for large cost centers). Deterministic for a final statement."""
    rows = list(
        StatementLine.objects.filter(statement=statement)
        .order_by()
        .values("usage_month", "model")
        .annotate(units=Sum("cost_units"), i=Sum("input_tokens"), o=Sum("output_tokens"))
        .order_by("usage_month", "model")
    )
    amounts = _allocate_cents([units_to_cost(r["units"]) for r in rows])
    items = []
    for row, amount in zip(rows, amounts, strict=True):
        if amount <= 0:
            continue
        month = row["usage_month"]
        label = f"{row['model']}: {row['i'] + row['o']:,} tokens, {month:%Y-%m}"
        if month != statement.period:
            label += " (late usage adjustment)"
        items.append(
            PlannedItem(
                key=f"tb-stmt-{statement.pk}-{month:%Y%m}-{row['model']}"[:255],
                amount_cents=amount,
                description=label,
                usage_month=month,
            )
        )
    return items


def _period_epochs(month: dt.date) -> tuple[int, int]:
    tz = local_tz()
    start = dt.datetime.combine(month, dt.time.min, tzinfo=tz)
    end = dt.datetime.combine(add_months(month, 1), dt.time.min, tzinfo=tz)
    return calendar.timegm(start.utctimetuple()), calendar.timegm(end.utctimetuple()) - 1


# A running sync holds its claim this long; it renews the claim before the invoice is created,
# the one step another sync of the same customer must never overlap.
CLAIM = dt.timedelta(minutes=15)


class SyncBusy(Exception):
    """Another sync of this statement or of its Stripe customer holds the claim."""


def retry_delay(attempts: int) -> dt.timedelta:
    """Wait before the next automatic retry after `attempts` failures: doubles, capped."""
    base = settings.TB_STRIPE_RETRY_SECONDS
    cap = settings.TB_STRIPE_RETRY_MAX_SECONDS
    return dt.timedelta(seconds=min(base * 2 ** max(attempts - 1, 0), cap))


def _needs_sync(statement: ChargebackStatement) -> bool:
    return (
        statement.status == Status.FINAL
        and not statement.stripe_invoice_id
        and bool(statement.cost_center.stripe_customer_id)
    )


def _claim(statement_id: int, *, due_only: bool, now: dt.datetime) -> ChargebackStatement | None:
    """Take the statement's sync claim in a short transaction; None when there is nothing to
    do (draft, invoiced, unlinked, or with `due_only` blocked or backing off).

    Stripe is never called inside a database transaction: on SQLite that would hold the one
    write lock (every finalize, every metered call) for as long as Stripe takes to answer.
    """
    with transaction.atomic():
        statement = (
            ChargebackStatement.objects.select_for_update()
            .select_related("cost_center")
            .get(pk=statement_id)
        )
        if not _needs_sync(statement):
            return None
        next_at = statement.stripe_sync_next_at
        if due_only and (statement.stripe_sync_blocked or (next_at and next_at > now)):
            return None
        customer = statement.cost_center.stripe_customer_id
        # One sync per customer at a time: the invoice pulls in the customer's pending items.
        list(
            CostCenter.objects.select_for_update()
            .filter(stripe_customer_id=customer)
            .order_by("pk")
        )
        clock = timezone.now()
        busy = ChargebackStatement.objects.filter(
            cost_center__stripe_customer_id=customer, stripe_sync_claimed_until__gt=clock
        ).exists()
        if busy:
            raise SyncBusy(f"a Stripe sync for customer {customer} is running")
        statement.stripe_sync_claimed_until = clock + CLAIM
        statement.save(update_fields=["stripe_sync_claimed_until"])
    return statement


def _renew_claim(statement: ChargebackStatement) -> None:
    """Extend our claim, or fail (retryably) if it lapsed and another sync may have begun."""
    until = timezone.now() + CLAIM
    renewed = ChargebackStatement.objects.filter(
        pk=statement.pk, stripe_sync_claimed_until=statement.stripe_sync_claimed_until
    ).update(stripe_sync_claimed_until=until)
    if not renewed:
        raise stripe_api.StripeRetryableError("the sync took longer than its claim; retry later")
    statement.stripe_sync_claimed_until = until


def _record_failure(statement_id: int, exc: Exception, *, now: dt.datetime) -> None:
    permanent = isinstance(exc, stripe_api.StripeFinalError)
    with transaction.atomic():
        statement = ChargebackStatement.objects.select_for_update().get(pk=statement_id)
        statement.stripe_sync_attempts += 1
        text = (
            str(exc) if isinstance(exc, stripe_api.StripeError) else f"{type(exc).__name__}: {exc}"
        )
        statement.stripe_sync_error = (text or type(exc).__name__)[:2000]
        statement.stripe_sync_failed_at = now
        statement.stripe_sync_blocked = permanent
        statement.stripe_sync_next_at = (
            None if permanent else now + retry_delay(statement.stripe_sync_attempts)
        )
        statement.save(
            update_fields=[
                "stripe_sync_attempts", "stripe_sync_error", "stripe_sync_failed_at",
                "stripe_sync_blocked", "stripe_sync_next_at",
            ]
        )  # fmt: skip


def _release_claim(statement: ChargebackStatement) -> None:
    # Only our own: a claim that lapsed may have been taken by another sync meanwhile.
    ChargebackStatement.objects.filter(
        pk=statement.pk, stripe_sync_claimed_until=statement.stripe_sync_claimed_until
    ).update(stripe_sync_claimed_until=None)


def statement_stripe_sync(
    *,
    statement_id: int,
    http_client: Any = None,
    now: dt.datetime | None = None,
    due_only: bool = False,
) -> ChargebackStatement:
    """Create the statement's Stripe invoice items and draft invoice; mark it sent.

    No-op for drafts, for statements already invoiced, and for cost centers without a Stripe
    customer; with `due_only`, also for statements that are blocked or backing off. A failure
    is recorded on the statement (error, attempts, next retry; a StripeFinalError blocks it
    until `statement_stripe_retry`) and raised: StripeRetryableError, StripeFinalError, or
    SyncBusy when another sync of the same customer is running (nothing recorded).
    """
    now = now or timezone.now()
    statement = _claim(statement_id, due_only=due_only, now=now)
    if statement is None:
        return ChargebackStatement.objects.select_related("cost_center").get(pk=statement_id)
    try:
        _sync_claimed(statement, http_client, now)
    except Exception as exc:
        _record_failure(statement_id, exc, now=now)
        raise
    finally:
        _release_claim(statement)
    return ChargebackStatement.objects.select_related("cost_center").get(pk=statement_id)


def _sync_claimed(statement: ChargebackStatement, http_client: Any, now: dt.datetime) -> None:
    customer = statement.cost_center.stripe_customer_id
    planned = plan_items(statement)
    created: list[tuple[PlannedItem, stripe_api.StripeObjectRef]] = []
    invoice = None
    if planned:
        # An invoice made by an attempt whose answer was lost already holds every item (items
        # come first), and they are no longer pending: creating them again would leave
        # duplicates for the customer's next invoice.
        invoice = _find_invoice(statement, customer, http_client)
        if invoice is None:
            created = _ensure_items(statement, customer, planned, http_client)
            _renew_claim(statement)
            invoice = _create_invoice(statement, customer, http_client)
        if settings.TB_STRIPE_FINALIZE_INVOICES and invoice.status == "draft":
            invoice = stripe_api.invoice_finalize(
                invoice_id=invoice.id,
                idempotency_key=f"tb-stmt-{statement.pk}-finalize",
                http_client=http_client,
            )
    # Our records are written only once Stripe has everything: a failure above leaves none,
    # and the next attempt finds what Stripe already has by its keys.
    with transaction.atomic():
        locked = ChargebackStatement.objects.select_for_update().get(pk=statement.pk)
        for item, ref in created:
            StripeInvoiceItem.objects.get_or_create(
                key=item.key,
                defaults={
                    "statement": locked,
                    "stripe_id": ref.id,
                    "amount_cents": item.amount_cents,
                },
            )
        if invoice is not None:
            locked.stripe_invoice_id = invoice.id
            locked.stripe_invoice_status = invoice.status
        if locked.status == Status.FINAL:
            locked.status = Status.SENT
            locked.sent_at = now
        locked.stripe_sync_error = ""
        locked.stripe_sync_blocked = False
        locked.stripe_sync_next_at = None
        locked.save(
            update_fields=[
                "stripe_invoice_id", "stripe_invoice_status", "status", "sent_at",
                "stripe_sync_error", "stripe_sync_blocked", "stripe_sync_next_at",
            ]
        )  # fmt: skip


def statement_stripe_sync_attempt(*, statement_id: int, now: dt.datetime | None = None) -> str:
    """Run one due sync for a job or task: never raises for a Stripe failure, which is on the
    statement. Returns 'invoiced', 'failed', 'busy' or 'skipped' (nothing due)."""
    try:
        statement = statement_stripe_sync(statement_id=statement_id, now=now, due_only=True)
    except SyncBusy:
        return "busy"
    except stripe_api.StripeError:
        return "failed"
    except ChargebackStatement.DoesNotExist:
        return "skipped"
    except Exception:  # a bug must not stop the other statements; it is on the statement too
        logger.exception("Stripe sync of statement %s failed", statement_id)
        return "failed"
    return "invoiced" if statement.stripe_invoice_id else "skipped"


def statement_stripe_retry(
    *, statement_id: int, actor: Any, source: str = "api"
) -> ChargebackStatement:
    """Someone fixed the cause (e.g. the cost center's Stripe customer): clear the failure so
    the sync is due now, audited, and start it after the commit.

    Raises StatementStateError when the statement has nothing to sync.
    """
    with transaction.atomic():
        statement = (
            ChargebackStatement.objects.select_for_update()
            .select_related("cost_center")
            .get(pk=statement_id)
        )
        if statement.status == Status.DRAFT:
            raise StatementStateError("a draft is synced once it is finalized")
        if statement.stripe_invoice_id:
            raise StatementStateError(f"already invoiced ({statement.stripe_invoice_id})")
        if not _needs_sync(statement):
            raise StatementStateError("the cost center has no Stripe customer")
        before = _sync_snapshot(statement)
        statement.stripe_sync_attempts = 0
        statement.stripe_sync_error = ""
        statement.stripe_sync_blocked = False
        statement.stripe_sync_next_at = None
        statement.save(
            update_fields=[
                "stripe_sync_attempts", "stripe_sync_error", "stripe_sync_blocked",
                "stripe_sync_next_at",
            ]
        )  # fmt: skip
        audit_record(
            actor=actor, action="stripe_retry", obj=statement, before=before,
            after=_sync_snapshot(statement), source=source,
        )  # fmt: skip
        from billing.tasks import statement_stripe_sync_soon

        transaction.on_commit(lambda: statement_stripe_sync_soon(statement.pk))
    return statement


def _sync_snapshot(statement: ChargebackStatement) -> dict[str, Any]:
    return {
        "stripe_customer_id": statement.cost_center.stripe_customer_id,
        "stripe_sync_attempts": statement.stripe_sync_attempts,
        "stripe_sync_error": statement.stripe_sync_error,
        "stripe_sync_blocked": statement.stripe_sync_blocked,
        "stripe_sync_next_at": statement.stripe_sync_next_at.isoformat()
        if statement.stripe_sync_next_at
        else None,
    }


def _ensure_items(
    statement: ChargebackStatement, customer: str, planned: list[PlannedItem], http_client: Any
) -> list[tuple[PlannedItem, stripe_api.StripeObjectRef]]:
    """Create the planned items Stripe does not have yet; returns (item, Stripe object) pairs
    for those without a record here."""
    done = set(StripeInvoiceItem.objects.filter(statement=statement).values_list("key", flat=True))
    missing = [p for p in planned if p.key not in done]
    if not missing:
        return []
    existing = {
        ref.metadata.get("tb_key"): ref
        for ref in stripe_api.pending_invoice_items(customer=customer, http_client=http_client)
    }
    created = []
    for item in missing:
        ref = existing.get(item.key) or stripe_api.invoice_item_create(
            customer=customer,
            amount_cents=item.amount_cents,
            currency=statement.currency,
            description=item.description,
            period=_period_epochs(item.usage_month),
            metadata={"tb_key": item.key, "tb_statement_id": str(statement.pk)},
            idempotency_key=item.key,
            http_client=http_client,
        )
        created.append((item, ref))
    return created


def _find_invoice(
    statement: ChargebackStatement, customer: str, http_client: Any
) -> stripe_api.StripeObjectRef | None:
    # The marker in the description finds the invoice where metadata is not kept (localstripe).
    marker = f"[tb-stmt-{statement.pk}]"
    for ref in stripe_api.invoices_for_customer(customer=customer, http_client=http_client):
        if ref.metadata.get("tb_statement_id") == str(statement.pk) or marker in ref.description:
            return ref
    return None


def _create_invoice(
    statement: ChargebackStatement, customer: str, http_client: Any
) -> stripe_api.StripeObjectRef:
    cc = statement.cost_center
    return stripe_api.invoice_create(
        customer=customer,
        description=f"LLM usage chargeback {statement.period:%Y-%m} for {cc.code} "
        f"[tb-stmt-{statement.pk}]",
        metadata={
            "tb_statement_id": str(statement.pk),
            "tb_period": f"{statement.period:%Y-%m}",
            "tb_cost_center": cc.code,
        },
        idempotency_key=f"tb-stmt-{statement.pk}-invoice",
        http_client=http_client,
    )


def stripe_webhook_handle(*, event: stripe_api.WebhookEvent) -> bool:
    """Apply a verified event once. Returns False when the event id was already processed.

    `invoice.paid` (and `invoice.payment_succeeded`, which localstripe sends) mark the
    statement paid, found by invoice id or by the statement id in the invoice metadata.
    """
    try:
        with transaction.atomic():
            StripeEvent.objects.create(event_id=event.id, type=event.type)
            if event.type in ("invoice.paid", "invoice.payment_succeeded"):
                statement = ChargebackStatement.objects.filter(
                    stripe_invoice_id=event.object_id
                ).first()
                statement_id = event.object_metadata.get("tb_statement_id", "")
                if statement is None and statement_id.isdigit():
                    statement = ChargebackStatement.objects.filter(pk=int(statement_id)).first()
                if statement is not None and statement.status != Status.DRAFT:
                    statement_mark_paid(statement_id=statement.pk)
    except IntegrityError:
        return False
    return True


def statements_stripe_due(*, now: dt.datetime) -> list[int]:
    """Finalized statements of Stripe-linked cost centers without an invoice, neither blocked
    nor backing off at `now`, oldest first."""
    return list(
        ChargebackStatement.objects.filter(
            status=Status.FINAL, stripe_invoice_id="", stripe_sync_blocked=False
        )
        .exclude(cost_center__stripe_customer_id="")
        .filter(Q(stripe_sync_next_at__isnull=True) | Q(stripe_sync_next_at__lte=now))
        .order_by("id")
        .values_list("id", flat=True)
    )
