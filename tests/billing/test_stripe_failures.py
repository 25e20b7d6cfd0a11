"""Stripe sync failures against a real localstripe: one statement failing never holds back the
others, finalize never waits on Stripe, retries back off and create exactly one invoice.

Transactional: the sync after a finalize runs in a thread of this process (the in-process
default), on its own database connection, so the test's data must be committed. Timing bounds
are 1 s so a loaded machine does not fail them; a finalize takes well under 0.1 s here, while a
sync against the silent server takes at least 3 s."""

from __future__ import annotations

import datetime as dt
import socket
import time

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from billing import tasks
from billing.models import ChargebackStatement, StripeInvoiceItem
from billing.statements import statement_finalize
from budgets.models import AuditEvent
from tests.billing.conftest import client_for, free_port
from tests.billing.stripe_helpers import (
    billed_lines,
    join_syncs,
    link_customer,
    lossy_proxy,
    pending_items,
    stripe_invoices,
)

pytestmark = pytest.mark.django_db(transaction=True)
UTC = dt.UTC
NOW = dt.datetime(2026, 2, 3, 10, 0, tzinfo=UTC)
MINUTES = dt.timedelta(minutes=1)


def _statement(cast, key: str) -> ChargebackStatement:  # type: ignore[no-untyped-def]
    return ChargebackStatement.objects.select_related("cost_center").get(cost_center=cast[key])


def test_unknown_customer_blocks_only_its_statement(january, stripe_settings) -> None:
    base = stripe_settings.TB_STRIPE_API_BASE
    ids = {key: _statement(january, key).pk for key in ("eng", "ml", "sales")}
    for statement_id in ids.values():  # finalized before the cost centers were linked
        statement_finalize(statement_id=statement_id, now=NOW)
    eng_customer = link_customer(january["eng"])
    sales_customer = link_customer(january["sales"])
    january["ml"].stripe_customer_id = "cus_unknown_to_stripe"  # between eng and sales
    january["ml"].save()

    with time_machine.travel(NOW, tick=False):
        assert tasks.statements_stripe_sync_pending_task() == 3

    eng, ml, sales = (_statement(january, key) for key in ("eng", "ml", "sales"))
    assert (eng.stripe_sync_state, sales.stripe_sync_state) == ("invoiced", "invoiced")
    [eng_invoice] = stripe_invoices(base, eng_customer)
    [sales_invoice] = stripe_invoices(base, sales_customer)
    assert (billed_lines(eng_invoice), billed_lines(sales_invoice)) == ([50, 123], [333])
    assert (eng.stripe_invoice_id, sales.stripe_invoice_id) == (
        eng_invoice["id"],
        sales_invoice["id"],
    )
    assert ml.status == "final" and ml.stripe_invoice_id == ""
    assert ml.stripe_sync_state == "blocked"
    assert ml.stripe_sync_error == "Not Found (404)"  # localstripe's answer for the customer
    assert (ml.stripe_sync_attempts, ml.stripe_sync_failed_at, ml.stripe_sync_next_at) == (
        1,
        NOW,
        None,
    )
    assert not StripeInvoiceItem.objects.filter(statement=ml).exists()

    # Blocked: later runs leave it alone (and the invoiced ones are not invoiced again).
    with time_machine.travel(NOW + dt.timedelta(days=2), tick=False):
        assert tasks.statements_stripe_sync_pending_task() == 0
    ml.refresh_from_db()
    assert ml.stripe_sync_attempts == 1
    assert len(stripe_invoices(base, eng_customer)) == len(stripe_invoices(base, sales_customer))
    assert len(stripe_invoices(base, eng_customer)) == 1


def test_blocked_statement_is_shown_and_retried_once_fixed(january, stripe_settings) -> None:
    ml = _statement(january, "ml")
    january["ml"].stripe_customer_id = "cus_unknown_to_stripe"
    january["ml"].save()
    with time_machine.travel(NOW, tick=False):
        statement_finalize(statement_id=ml.pk)
        join_syncs()
    ml.refresh_from_db()
    assert ml.stripe_sync_state == "blocked"

    finance = client_for(january["finance"])
    body = finance.get(f"/api/v1/statements/{ml.pk}/").json()
    assert {k: body[k] for k in body if k.startswith("stripe_sync")} == {
        "stripe_sync_state": "blocked",
        "stripe_sync_error": "Not Found (404)",
        "stripe_sync_attempts": 1,
        "stripe_sync_failed_at": "2026-02-03T10:00:00Z",
        "stripe_sync_next_retry_at": None,
    }
    page = Client()
    page.force_login(january["finance"])
    listing = page.get(reverse("pages:statements") + "?period=2026-01").content.decode()
    row = listing.split('data-testid="stripe-eng-ml"', 1)[1].split("</td>", 1)[0]
    assert "needs a fix" in row and "Not Found (404)" in row
    detail = page.get(reverse("pages:statement", args=[ml.pk])).content.decode()
    assert "Stripe refused the request" in detail and "No automatic retry" in detail
    assert reverse("pages:stripe-retry", args=[ml.pk]) in detail

    # Refusals change nothing: a manager may not retry; a draft has nothing to retry.
    eng = _statement(january, "eng")
    refused = client_for(january["manager"]).post(f"/api/v1/statements/{ml.pk}/stripe-retry/")
    assert refused.status_code == 403
    draft = finance.post(f"/api/v1/statements/{eng.pk}/stripe-retry/")
    assert draft.status_code == 409
    assert draft.json() == {"detail": "a draft is synced once it is finalized"}
    assert not AuditEvent.objects.filter(action="stripe_retry").exists()
    ml.refresh_from_db()
    assert (ml.stripe_sync_state, ml.stripe_sync_attempts) == ("blocked", 1)

    # Someone links the right customer and says so.
    customer = link_customer(january["ml"])
    with time_machine.travel(NOW + 5 * MINUTES, tick=False):
        response = finance.post(f"/api/v1/statements/{ml.pk}/stripe-retry/")
        assert response.status_code == 202
        assert response.json()["stripe_sync_state"] == "pending"
        join_syncs()
    ml.refresh_from_db()
    assert ml.stripe_sync_state == "invoiced" and ml.status == "sent"
    [invoice] = stripe_invoices(stripe_settings.TB_STRIPE_API_BASE, customer)
    assert billed_lines(invoice) == [200] and ml.stripe_invoice_id == invoice["id"]
    [event] = AuditEvent.objects.filter(action="stripe_retry")
    assert (event.actor, event.object_id) == (january["finance"], str(ml.pk))
    assert event.before == {
        "stripe_customer_id": customer,
        "stripe_sync_attempts": 1,
        "stripe_sync_error": "Not Found (404)",
        "stripe_sync_blocked": True,
        "stripe_sync_next_at": None,
    }
    assert event.after["stripe_sync_blocked"] is False and event.after["stripe_sync_error"] == ""
    again = finance.post(f"/api/v1/statements/{ml.pk}/stripe-retry/")
    assert again.status_code == 409 and "already invoiced" in again.json()["detail"]
    assert AuditEvent.objects.filter(action="stripe_retry").count() == 1


def test_finalize_with_stripe_down_answers_at_once_and_backs_off(
    january, stripe_settings, localstripe_url
) -> None:
    customer = link_customer(january["eng"])
    eng = _statement(january, "eng")
    stripe_settings.TB_STRIPE_API_BASE = f"http://127.0.0.1:{free_port()}"  # nothing listens
    page = Client()
    page.force_login(january["finance"])
    page.get(reverse("pages:statement", args=[eng.pk]))  # the first request loads the URLs
    with time_machine.travel(NOW, tick=False):
        started = time.monotonic()
        response = page.post(reverse("pages:finalize", args=[eng.pk]))
        elapsed = time.monotonic() - started
        join_syncs()
    assert response.status_code == 302
    assert response["Location"] == reverse("pages:statement", args=[eng.pk])
    assert elapsed < 1.0, f"finalize took {elapsed:.2f} s"
    eng.refresh_from_db()
    assert (eng.status, eng.stripe_sync_state, eng.stripe_sync_attempts) == ("final", "retrying", 1)
    assert eng.stripe_sync_error.startswith("Could not reach Stripe: ConnectionError: ")
    assert (eng.stripe_sync_failed_at, eng.stripe_sync_next_at) == (NOW, NOW + 5 * MINUTES)
    detail = page.get(reverse("pages:statement", args=[eng.pk])).content.decode()
    assert "the sync failed" in detail
    assert "Next automatic retry: 3 Feb 2026 10:05 UTC" in detail
    api = client_for(january["finance"]).get(f"/api/v1/statements/{eng.pk}/").json()
    assert (api["stripe_sync_state"], api["stripe_sync_next_retry_at"]) == (
        "retrying",
        "2026-02-03T10:05:00Z",
    )

    # Not due before its time; then each failure doubles the wait, up to the cap.
    with time_machine.travel(NOW + 4 * MINUTES, tick=False):
        assert tasks.statements_stripe_sync_pending_task() == 0
    with time_machine.travel(NOW + 5 * MINUTES, tick=False):
        assert tasks.statements_stripe_sync_pending_task() == 1
    eng.refresh_from_db()
    assert (eng.stripe_sync_attempts, eng.stripe_sync_next_at) == (2, NOW + 15 * MINUTES)
    stripe_settings.TB_STRIPE_RETRY_MAX_SECONDS = 900
    with time_machine.travel(NOW + 15 * MINUTES, tick=False):
        assert tasks.statements_stripe_sync_pending_task() == 1
    eng.refresh_from_db()
    assert (eng.stripe_sync_attempts, eng.stripe_sync_next_at) == (3, NOW + 30 * MINUTES)

    # Stripe is back: the next due run invoices it, once.
    stripe_settings.TB_STRIPE_API_BASE = localstripe_url
    with time_machine.travel(NOW + 30 * MINUTES, tick=False):
        assert tasks.statements_stripe_sync_pending_task() == 1
        assert tasks.statements_stripe_sync_pending_task() == 0
    eng.refresh_from_db()
    assert (eng.status, eng.stripe_sync_state, eng.stripe_sync_error) == ("sent", "invoiced", "")
    assert eng.stripe_sync_next_at is None
    [invoice] = stripe_invoices(localstripe_url, customer)
    assert billed_lines(invoice) == [50, 123] and eng.stripe_invoice_id == invoice["id"]


def test_lost_answer_then_retry_creates_exactly_one_invoice(
    january, stripe_settings, localstripe_url
) -> None:
    customer = link_customer(january["eng"])
    eng = _statement(january, "eng")
    with lossy_proxy(localstripe_url) as proxy:
        stripe_settings.TB_STRIPE_API_BASE = proxy.url
        proxy.lose("POST", "/v1/invoices")  # Stripe creates the invoice; we never hear of it
        with time_machine.travel(NOW, tick=False):
            statement_finalize(statement_id=eng.pk)
            join_syncs()
        eng.refresh_from_db()
        assert (eng.stripe_sync_state, eng.stripe_sync_attempts) == ("retrying", 1)
        assert eng.stripe_sync_next_at == NOW + 5 * MINUTES
        [made] = stripe_invoices(localstripe_url, customer)
        assert billed_lines(made) == [50, 123]
        assert proxy.forwarded_under_rule == 1  # the client's own retries never reached Stripe

        proxy.heal()
        with time_machine.travel(NOW + 5 * MINUTES, tick=False):
            assert tasks.statements_stripe_sync_pending_task() == 1
            assert tasks.statements_stripe_sync_pending_task() == 0
    eng.refresh_from_db()
    assert (eng.stripe_sync_state, eng.stripe_invoice_id) == ("invoiced", made["id"])
    [invoice] = stripe_invoices(localstripe_url, customer)
    assert billed_lines(invoice) == [50, 123]
    assert pending_items(localstripe_url, customer) == []  # no duplicate left for next month


def test_page_retry_runs_the_sync_again_and_is_audited(january, stripe_settings) -> None:
    ml = _statement(january, "ml")
    january["ml"].stripe_customer_id = "cus_unknown_to_stripe"
    january["ml"].save()
    with time_machine.travel(NOW, tick=False):
        statement_finalize(statement_id=ml.pk)
        join_syncs()
    page = Client()
    page.force_login(january["finance"])
    later = NOW + dt.timedelta(hours=1)
    with time_machine.travel(later, tick=False):
        response = page.post(reverse("pages:stripe-retry", args=[ml.pk]))
        join_syncs()
    assert response.status_code == 302
    assert response["Location"] == reverse("pages:statement", args=[ml.pk])
    ml.refresh_from_db()  # retried at once; still unknown, so blocked again, counted afresh
    assert (ml.stripe_sync_state, ml.stripe_sync_attempts, ml.stripe_sync_failed_at) == (
        "blocked",
        1,
        later,
    )
    [event] = AuditEvent.objects.filter(action="stripe_retry")
    assert (event.source, event.actor, event.before["stripe_sync_blocked"]) == (
        "web",
        january["finance"],
        True,
    )
    manager = Client()
    manager.force_login(january["manager"])
    assert manager.post(reverse("pages:stripe-retry", args=[ml.pk])).status_code == 403
    assert AuditEvent.objects.filter(action="stripe_retry").count() == 1


def test_finalize_api_with_stripe_down_answers_200_at_once(january, stripe_settings) -> None:
    link_customer(january["sales"])
    sales = _statement(january, "sales")
    stripe_settings.TB_STRIPE_API_BASE = f"http://127.0.0.1:{free_port()}"
    client_for(january["finance"]).get(f"/api/v1/statements/{sales.pk}/")  # loads the URLs
    with time_machine.travel(NOW, tick=False):
        started = time.monotonic()
        response = client_for(january["finance"]).post(f"/api/v1/statements/{sales.pk}/finalize/")
        elapsed = time.monotonic() - started
        join_syncs()
    assert response.status_code == 200 and elapsed < 1.0, f"{elapsed:.2f} s"
    assert (response.json()["status"], response.json()["stripe_sync_state"]) == ("final", "pending")
    body = client_for(january["finance"]).get(f"/api/v1/statements/{sales.pk}/").json()
    assert (body["status"], body["stripe_sync_state"], body["stripe_sync_attempts"]) == (
        "final",
        "retrying",
        1,
    )
    assert body["stripe_sync_next_retry_at"] == "2026-02-03T10:05:00Z"
    again = client_for(january["finance"]).post(f"/api/v1/statements/{sales.pk}/finalize/")
    assert again.status_code == 409  # final already: the first answer was the truth


def test_finalize_answers_at_once_while_stripe_hangs(january, stripe_settings) -> None:
    link_customer(january["eng"])
    eng = _statement(january, "eng")
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        stripe_settings.TB_STRIPE_API_BASE = f"http://127.0.0.1:{silent.getsockname()[1]}"
        stripe_settings.TB_STRIPE_TIMEOUT = 1
        finance = client_for(january["finance"])
        finance.get(f"/api/v1/statements/{eng.pk}/")  # the first request loads the URLs
        with time_machine.travel(NOW, tick=False):
            started = time.monotonic()
            response = finance.post(f"/api/v1/statements/{eng.pk}/finalize/")
            elapsed = time.monotonic() - started
            assert response.status_code == 200 and elapsed < 1.0, f"{elapsed:.2f} s"
            join_syncs()
    eng.refresh_from_db()
    assert (eng.status, eng.stripe_sync_state, eng.stripe_sync_attempts) == ("final", "retrying", 1)
    assert eng.stripe_sync_error.startswith("Could not reach Stripe: ReadTimeout: ")
    assert eng.stripe_sync_error.endswith("Read timed out. (read timeout=1)")
    assert eng.stripe_sync_next_at == NOW + 5 * MINUTES
