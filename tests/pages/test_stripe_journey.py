"""Browser journey: finance finalizes while Stripe is unreachable, reads the failure and the next
retry on the statement, and retries once Stripe is back. The real ASGI server runs the sync in
its own background thread (the in-process default), against localstripe behind a proxy the
test can take down."""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from playwright.sync_api import expect

from billing.models import ChargebackStatement
from billing.periods import local_tz
from billing.rollup import daily_usage_rollup
from billing.statements import statements_close_month
from metering.models import UsageRecord
from tests import servers
from tests.billing.conftest import localstripe_url  # noqa: F401  (the localstripe fixture)
from tests.billing.stripe_helpers import (
    LossyProxy,
    billed_lines,
    link_customer,
    lossy_proxy,
    stripe_invoices,
)
from tests.pages.conftest import Session


@pytest.fixture(scope="module")
def stripe_proxy(localstripe_url: str) -> Iterator[LossyProxy]:  # noqa: F811
    with lossy_proxy(localstripe_url) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def stripe_live_url(
    django_db_setup: None, mock_url: str, stripe_proxy: LossyProxy
) -> Iterator[str]:
    """The ASGI server with Stripe configured (through the proxy) and no broker."""
    from django.db import connection

    port = servers.free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "DATABASE_URL": servers.database_url_of(connection.settings_dict),
        "REDIS_URL": None,
        "CELERY_BROKER_URL": None,
        "TB_KEY_CACHE_SECONDS": "0",
        "TB_MOCK_UPSTREAM_URL": mock_url,
        "TB_PUBLIC_BASE_URL": url,
        "TB_STRIPE_SECRET_KEY": "sk_test_tokenbudget",
        "TB_STRIPE_API_BASE": stripe_proxy.url,
        "TB_STRIPE_LOCALSTRIPE": "1",
        "TB_STRIPE_TIMEOUT": "2",
    }
    process = servers.start_proxy(port, env)
    yield url
    servers.stop(process)


def _reload_until(session: Session, test_id: str, text: str, timeout: float = 20.0) -> None:
    """The page is drawn on the server: reload until the sync's outcome is on it."""
    deadline = time.monotonic() + timeout
    while True:
        if text in session.page.get_by_test_id(test_id).inner_text():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not shown within {timeout} s")
        time.sleep(0.3)
        session.page.reload()


def test_finance_sees_a_failed_stripe_sync_and_retries_it(
    cast: Any,
    browser: Any,
    stripe_live_url: str,
    stripe_proxy: LossyProxy,
    localstripe_url: str,  # noqa: F811
    settings: Any,
) -> None:
    settings.TB_STRIPE_SECRET_KEY = "sk_test_tokenbudget"
    settings.TB_STRIPE_API_BASE = localstripe_url
    settings.TB_STRIPE_LOCALSTRIPE = True
    customer = link_customer(cast.eng_ml)
    period = dt.date(2026, 1, 1)  # ended: the server's own clock lets it be finalized
    at = dt.datetime.combine(period.replace(day=10), dt.time(12), tzinfo=local_tz())
    UsageRecord.objects.create(
        request_id=f"pages-{uuid.uuid4().hex}", created_at=at, employee=cast.employee,
        cost_center=cast.eng_ml, model="gpt-4o-mini", endpoint="chat.completions",
        input_tokens=4000, output_tokens=1000, cost=Decimal("12.3456789012"), status_code=200,
    )  # fmt: skip
    daily_usage_rollup()
    statements_close_month(period=period, now=dt.datetime(2026, 2, 1, 6, tzinfo=dt.UTC))
    statement = ChargebackStatement.objects.get(period=period, cost_center=cast.eng_ml)

    stripe_proxy.down()
    finance = Session(browser, stripe_live_url, "finance")
    try:
        finance.goto(f"/finance/statements/{statement.pk}/")
        finance.page.once("dialog", lambda dialog: dialog.accept())
        started = time.monotonic()
        finance.page.get_by_role("button", name="Finalize statement").click()
        expect(finance.page.get_by_test_id("statement-status")).to_contain_text("Final")
        assert time.monotonic() - started < 2.0  # the click, the redirect and the new page
        _reload_until(finance, "stripe-sync", "the sync failed")
        block = finance.page.get_by_test_id("stripe-sync")
        expect(block).to_contain_text("Failed attempts: 1")
        expect(block).to_contain_text(re.compile(r"Next automatic retry: \d+ \w+ \d{4} \d\d:\d\d"))
        finance.shot("finance-statement-stripe-failed")
        statement.refresh_from_db()
        assert (statement.status, statement.stripe_sync_state) == ("final", "retrying")
        assert statement.stripe_sync_next_at == statement.stripe_sync_failed_at + dt.timedelta(
            minutes=5
        )
        finance.goto(f"/finance/statements/?period={period:%Y-%m}")
        expect(finance.page.get_by_test_id("stripe-eng-ml")).to_contain_text("failed")
        finance.shot("finance-statements-stripe-failed")

        stripe_proxy.heal()
        finance.goto(f"/finance/statements/{statement.pk}/")
        finance.page.get_by_role("button", name="Retry the Stripe sync now").click()
        expect(finance.page.locator(".messages")).to_contain_text("Stripe sync started again")
        _reload_until(finance, "stripe-sync", "invoice in_")
        finance.shot("finance-statement-stripe-invoiced")
    finally:
        finance.close()
    statement.refresh_from_db()
    assert (statement.status, statement.stripe_sync_state) == ("sent", "invoiced")
    [invoice] = stripe_invoices(localstripe_url, customer)
    assert billed_lines(invoice) == [1235] and statement.stripe_invoice_id == invoice["id"]
