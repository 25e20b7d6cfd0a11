"""Stripe: sync against a real localstripe, finalize against a recorded response, webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any
from unittest import mock

import httpx
import pytest
import stripe

from billing import stripe_api, stripe_sync
from billing.models import ChargebackStatement, StripeEvent, StripeInvoiceItem
from billing.statements import statement_finalize
from billing.stripe_sync import _allocate_cents
from tests.billing.conftest import client_for
from tests.billing.stripe_helpers import AUTH, join_syncs
from tests.billing.stripe_helpers import billed_lines as _billed_lines
from tests.billing.stripe_helpers import link_customer as _link_customer
from tests.billing.stripe_helpers import stripe_invoices as _stripe_invoices

pytestmark = pytest.mark.django_db


def test_allocation_adds_up_to_the_rounded_total() -> None:
    from decimal import Decimal

    parts = [Decimal("0.333"), Decimal("0.333"), Decimal("0.334"), Decimal("1.005")]
    assert _allocate_cents(parts) == [33, 33, 34, 101]
    assert sum(_allocate_cents([Decimal("0.004")] * 3)) == 1


@pytest.mark.django_db(transaction=True)
def test_finalize_syncs_invoice_once_even_when_retried(january, stripe_settings) -> None:
    customer = _link_customer(january["eng"])
    eng = ChargebackStatement.objects.get(cost_center=january["eng"])

    statement_finalize(statement_id=eng.id)  # the sync runs after the commit, in a thread
    join_syncs()

    eng.refresh_from_db()
    assert eng.status == "sent" and eng.stripe_invoice_id.startswith("in_")
    invoices = _stripe_invoices(stripe_settings.TB_STRIPE_API_BASE, customer)
    assert len(invoices) == 1
    assert _billed_lines(invoices[0]) == [50, 123]  # 1.2345.. + 0.50 = 1.73
    assert f"[tb-stmt-{eng.id}]" in invoices[0]["description"]

    stripe_sync.statement_stripe_sync(statement_id=eng.id)
    eng.stripe_invoice_id = ""  # even a lost invoice id is recovered, not re-created
    eng.status = "final"
    eng.save()
    stripe_sync.statement_stripe_sync(statement_id=eng.id)
    assert len(_stripe_invoices(stripe_settings.TB_STRIPE_API_BASE, customer)) == 1
    assert StripeInvoiceItem.objects.filter(statement=eng).count() == 2


def test_crash_between_items_and_invoice_creates_no_duplicates(january, stripe_settings) -> None:
    customer = _link_customer(january["eng"])
    eng = ChargebackStatement.objects.get(cost_center=january["eng"])
    january["eng"].stripe_customer_id = ""  # finalize without the automatic sync
    january["eng"].save()
    statement_finalize(statement_id=eng.id)
    january["eng"].stripe_customer_id = customer
    january["eng"].save()

    boom = stripe_api.StripeRetryableError("network down")
    with (
        mock.patch.object(stripe_api, "invoice_create", side_effect=boom),
        pytest.raises(stripe_api.StripeRetryableError),
    ):
        stripe_sync.statement_stripe_sync(statement_id=eng.id)
    assert not StripeInvoiceItem.objects.exists()  # our records rolled back with the failure

    stripe_sync.statement_stripe_sync(statement_id=eng.id)

    invoices = _stripe_invoices(stripe_settings.TB_STRIPE_API_BASE, customer)
    assert len(invoices) == 1
    assert _billed_lines(invoices[0]) == [50, 123]  # the two pending items, not four


def test_drafts_and_unlinked_cost_centers_are_not_synced(january, stripe_settings) -> None:
    eng = ChargebackStatement.objects.get(cost_center=january["eng"])
    assert stripe_sync.statement_stripe_sync(statement_id=eng.id).stripe_invoice_id == ""
    statement_finalize(statement_id=eng.id)
    eng.refresh_from_db()
    assert (eng.status, eng.stripe_invoice_id) == ("final", "")


class RecordedHTTPClient(stripe.HTTPClient):
    """Answers with a recorded response in Stripe's documented shape and keeps the requests."""

    name = "recorded"

    def __init__(self, body: dict[str, Any], status: int = 200) -> None:
        super().__init__()
        self.body, self.status, self.requests = body, status, []

    def request(self, method, url, headers, post_data=None, *, _usage=None):  # type: ignore[no-untyped-def]
        self.requests.append((method, url, dict(headers or {}), post_data))
        return json.dumps(self.body), self.status, {"request-id": "req_recorded"}

    def close(self) -> None:
        pass


FINALIZED_INVOICE = {  # trimmed from docs.stripe.com/api/invoices/finalize (response)
    "id": "in_1MtGmCLkdIwHu7ix6PgS6g8S",
    "object": "invoice",
    "amount_due": 173,
    "auto_advance": False,
    "collection_method": "send_invoice",
    "currency": "usd",
    "customer": "cus_NeZwdNtLEOXuvB",
    "livemode": False,
    "metadata": {"tb_statement_id": "7"},
    "number": "D7B5F3C2-0001",
    "status": "open",
    "status_transitions": {"finalized_at": 1680644467, "paid_at": None},
}


def test_invoice_finalize_against_recorded_response(settings) -> None:
    settings.TB_STRIPE_SECRET_KEY = "sk_test_recorded"
    settings.TB_STRIPE_API_BASE = "https://api.stripe.com"
    http = RecordedHTTPClient(FINALIZED_INVOICE)
    ref = stripe_api.invoice_finalize(
        invoice_id="in_1MtGmCLkdIwHu7ix6PgS6g8S", idempotency_key="tb-stmt-7-finalize",
        http_client=http,
    )  # fmt: skip
    assert (ref.id, ref.status, ref.amount) == ("in_1MtGmCLkdIwHu7ix6PgS6g8S", "open", 173)
    method, url, headers, data = http.requests[0]
    assert method == "post"
    assert url == "https://api.stripe.com/v1/invoices/in_1MtGmCLkdIwHu7ix6PgS6g8S/finalize"
    assert headers["Idempotency-Key"] == "tb-stmt-7-finalize"
    assert "auto_advance=false" in data


def test_invoice_finalize_error_is_classified(settings) -> None:
    settings.TB_STRIPE_SECRET_KEY = "sk_test_recorded"
    error = {"error": {"type": "invalid_request_error", "message": "already finalized"}}
    with pytest.raises(stripe_api.StripeFinalError):
        stripe_api.invoice_finalize(invoice_id="in_x", idempotency_key="k",
                                    http_client=RecordedHTTPClient(error, 400))  # fmt: skip


def _signed(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    t = timestamp or int(time.time())
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def _paid_event(event_id: str, invoice_id: str, statement_id: int) -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": "invoice.paid",
            "data": {
                "object": {
                    "id": invoice_id,
                    "object": "invoice",
                    "metadata": {"tb_statement_id": str(statement_id)},
                }
            },
        }
    ).encode()


def _sent_statement(january) -> ChargebackStatement:  # type: ignore[no-untyped-def]
    eng = ChargebackStatement.objects.get(cost_center=january["eng"])
    statement_finalize(statement_id=eng.id)
    eng.refresh_from_db()
    eng.stripe_invoice_id = "in_test_1"
    eng.status = "sent"
    eng.save()
    return eng


def test_webhook_marks_paid_once(january, settings, client) -> None:  # type: ignore[no-untyped-def]
    settings.TB_STRIPE_WEBHOOK_SECRET = "whsec_test"
    eng = _sent_statement(january)
    payload = _paid_event("evt_1", "in_test_1", eng.id)
    url = "/api/v1/billing/stripe/webhook/"
    headers = {"HTTP_STRIPE_SIGNATURE": _signed(payload, "whsec_test")}
    first = client.post(url, payload, content_type="application/json", **headers)
    assert first.status_code == 200 and first.json()["duplicate"] is False
    eng.refresh_from_db()
    assert eng.status == "paid"
    paid_at = eng.paid_at
    again = client.post(url, payload, content_type="application/json", **headers)
    assert again.json()["duplicate"] is True
    eng.refresh_from_db()
    assert (eng.status, eng.paid_at) == ("paid", paid_at)
    assert StripeEvent.objects.count() == 1


@pytest.mark.parametrize(
    "signature",
    [None, "t=1,v1=deadbeef", "forged", "wrong-secret", "stale"],
)
def test_forged_webhook_gets_400_and_changes_nothing(january, settings, client, signature) -> None:  # type: ignore[no-untyped-def]
    settings.TB_STRIPE_WEBHOOK_SECRET = "whsec_test"
    eng = _sent_statement(january)
    payload = _paid_event("evt_forged", "in_test_1", eng.id)
    if signature == "forged":
        signature = _signed(payload + b" ", "whsec_test")  # signature over another body
    elif signature == "wrong-secret":
        signature = _signed(payload, "whsec_other")
    elif signature == "stale":
        signature = _signed(payload, "whsec_test", timestamp=int(time.time()) - 3600)
    headers = {"HTTP_STRIPE_SIGNATURE": signature} if signature else {}
    response = client.post(
        "/api/v1/billing/stripe/webhook/", payload, content_type="application/json", **headers
    )
    assert response.status_code == 400
    eng.refresh_from_db()
    assert eng.status == "sent"
    assert not StripeEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_webhook_from_localstripe_pay(january, stripe_settings) -> None:
    """localstripe's own pay route finalizes and pays; its event shape is accepted too."""
    customer = _link_customer(january["eng"])
    eng = ChargebackStatement.objects.get(cost_center=january["eng"])
    statement_finalize(statement_id=eng.id)
    join_syncs()
    eng.refresh_from_db()
    base = stripe_settings.TB_STRIPE_API_BASE
    invoice = httpx.get(f"{base}/v1/invoices/{eng.stripe_invoice_id}", headers=AUTH).json()
    assert invoice["customer"] == customer
    event = stripe_api.WebhookEvent(
        id="evt_ls", type="invoice.payment_succeeded", object_id=invoice["id"],
        object_metadata=invoice["metadata"],
    )  # fmt: skip
    assert stripe_sync.stripe_webhook_handle(event=event)
    eng.refresh_from_db()
    assert eng.status == "paid"


@pytest.mark.django_db(transaction=True)
def test_finalize_api_starts_sync_after_answering(january, stripe_settings) -> None:
    customer = _link_customer(january["eng"])
    eng = ChargebackStatement.objects.get(cost_center=january["eng"])
    response = client_for(january["finance"]).post(f"/api/v1/statements/{eng.id}/finalize/")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["stripe_invoice_id"]) == ("final", "")
    join_syncs()
    eng.refresh_from_db()
    assert eng.stripe_invoice_id.startswith("in_") and eng.stripe_sync_state == "invoiced"
    assert len(_stripe_invoices(stripe_settings.TB_STRIPE_API_BASE, customer)) == 1


NO_SUCH_CUSTOMER = {  # Stripe's answer for an unknown customer id (docs.stripe.com/error-codes)
    "error": {
        "code": "resource_missing",
        "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
        "message": "No such customer: 'cus_gone'",
        "param": "customer",
        "type": "invalid_request_error",
    }
}
BAD_KEY = {
    "error": {"message": "Invalid API Key provided: sk_test_****", "type": "invalid_request_error"}
}


@pytest.mark.parametrize(
    ("body", "status", "kind", "code", "text"),
    [
        (NO_SUCH_CUSTOMER, 400, stripe_api.StripeFinalError, "resource_missing",
         "No such customer: 'cus_gone' (400, resource_missing)"),
        (BAD_KEY, 401, stripe_api.StripeRetryableError, "",
         "Invalid API Key provided: sk_test_**** (401)"),
    ],
)  # fmt: skip
def test_errors_are_classified_with_status_and_code(
    settings, body, status, kind, code, text
) -> None:  # type: ignore[no-untyped-def]
    settings.TB_STRIPE_SECRET_KEY = "sk_test_recorded"
    http = RecordedHTTPClient(body, status)
    with pytest.raises(stripe_api.StripeError) as caught:
        list(stripe_api.pending_invoice_items(customer="cus_gone", http_client=http))
    assert type(caught.value) is kind
    assert (caught.value.http_status, caught.value.code, str(caught.value)) == (status, code, text)
    assert len(http.requests) == 1  # neither is retried by the client
