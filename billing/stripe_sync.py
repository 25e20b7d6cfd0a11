"""Invoice a finalized statement in Stripe, and take webhook events in.

`statement_stripe_sync` is safe to run any number of times: each Stripe object has a
deterministic key, recorded here once created; before creating, it also looks the key up in
Stripe (metadata), so a run that crashed between Stripe's answer and our commit is recovered
without a second invoice or item even where idempotency keys are not honoured (localstripe).
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Sum
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
from billing.rollup import local_tz
from billing.statements import statement_mark_paid
from budgets.fiscal import add_months
from budgets.models import CostCenter

Status = ChargebackStatement.Status


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


def statement_stripe_sync(*, statement_id: int, http_client: Any = None) -> ChargebackStatement:
    """Create the statement's Stripe invoice items and draft invoice; mark it sent.

    No-op for drafts, for statements already invoiced, and for cost centers without a Stripe
    customer. Raises stripe_api.StripeRetryableError for transient failures (the task retries).
    """
    with transaction.atomic():
        statement = (
            ChargebackStatement.objects.select_for_update()
            .select_related("cost_center")
            .get(pk=statement_id)
        )
        customer = statement.cost_center.stripe_customer_id
        if statement.status == Status.DRAFT or statement.stripe_invoice_id or not customer:
            return statement
        # One sync per customer at a time: the invoice pulls in the customer's pending items.
        CostCenter.objects.select_for_update().filter(pk=statement.cost_center_id).first()
        planned = plan_items(statement)
        if not planned:
            statement.status = Status.SENT
            statement.sent_at = timezone.now()
            statement.save(update_fields=["status", "sent_at"])
            return statement
        _ensure_items(statement, customer, planned, http_client)
        invoice = _ensure_invoice(statement, customer, http_client)
        if getattr(settings, "TB_STRIPE_FINALIZE_INVOICES", False) and invoice.status == "draft":
            invoice = stripe_api.invoice_finalize(
                invoice_id=invoice.id,
                idempotency_key=f"tb-stmt-{statement.pk}-finalize",
                http_client=http_client,
            )
        statement.stripe_invoice_id = invoice.id
        statement.stripe_invoice_status = invoice.status
        if statement.status == Status.FINAL:
            statement.status = Status.SENT
            statement.sent_at = timezone.now()
        statement.save(
            update_fields=["stripe_invoice_id", "stripe_invoice_status", "status", "sent_at"]
        )
    return statement


def _ensure_items(
    statement: ChargebackStatement, customer: str, planned: list[PlannedItem], http_client: Any
) -> None:
    done = set(StripeInvoiceItem.objects.filter(statement=statement).values_list("key", flat=True))
    missing = [p for p in planned if p.key not in done]
    if not missing:
        return
    existing = {
        ref.metadata.get("tb_key"): ref
        for ref in stripe_api.pending_invoice_items(customer=customer, http_client=http_client)
    }
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
        StripeInvoiceItem.objects.create(
            statement=statement, key=item.key, stripe_id=ref.id, amount_cents=item.amount_cents
        )


def _ensure_invoice(
    statement: ChargebackStatement, customer: str, http_client: Any
) -> stripe_api.StripeObjectRef:
    # The marker in the description finds the invoice where metadata is not kept (localstripe).
    marker = f"[tb-stmt-{statement.pk}]"
    for ref in stripe_api.invoices_for_customer(customer=customer, http_client=http_client):
        if ref.metadata.get("tb_statement_id") == str(statement.pk) or marker in ref.description:
            return ref
    cc = statement.cost_center
    return stripe_api.invoice_create(
        customer=customer,
        description=f"LLM usage chargeback {statement.period:%Y-%m} for {cc.code} {marker}",
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


def statements_pending_stripe() -> list[int]:
    """Finalized statements of Stripe-linked cost centers without an invoice yet."""
    return list(
        ChargebackStatement.objects.filter(status=Status.FINAL, stripe_invoice_id="")
        .exclude(cost_center__stripe_customer_id="")
        .values_list("id", flat=True)
    )
