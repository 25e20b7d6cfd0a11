"""Each role's dashboard in a real browser against the live server: where the role lands, what
it reads first, and the step it takes from there (decide a request, close a month, open an
employee's usage history). The live server keeps the real clock, so these journeys assert what
holds on any day; the exact figures are in test_dashboards.py on a frozen clock."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from billing.models import ChargebackStatement
from billing.periods import last_complete_month, local_tz
from billing.rollup import daily_usage_rollup
from budgets.models import Allowance, BudgetRequest
from budgets.requests import budget_request_create
from tests.billing.factories import usage

pytestmark = pytest.mark.e2e


@pytest.fixture
def spending(cast: Any) -> Any:
    """Erin spent 300,000 tokens two days ago and has 5,000 left: she runs out within days.
    Sam spent in the last complete month, so that month has a statement to close."""
    now = timezone.now()
    usage(cast.employee, at=now - dt.timedelta(days=2), cost="1.25", model="gpt-4o-mini",
          intent="support", input_tokens=200_000, output_tokens=100_000)  # fmt: skip
    month = last_complete_month(now)
    usage(cast.other, at=dt.datetime.combine(month, dt.time(12), tzinfo=local_tz()),
          cost="0.40", model="gpt-4o-mini", input_tokens=3_000, output_tokens=1_000)  # fmt: skip
    daily_usage_rollup()
    Allowance.objects.filter(pk=cast.allowance.pk).update(used=Decimal(995_000))
    return cast


def test_admin_lands_on_the_overview_and_opens_an_employees_usage_history(
    spending: Any, sign_in: Any
) -> None:
    budget_request_create(user=spending.users["employee"], amount=Decimal(100_000), reason="demo")
    admin = sign_in("admin")
    assert admin.page.url.endswith("/manage/overview/")
    main = admin.page.locator("main")
    expect(main.get_by_test_id("pending-approvals")).to_contain_text("Erin Employee")
    expect(main.get_by_test_id("spend-this-month")).to_be_visible()
    expect(main.get_by_test_id("allowances-tokens")).to_contain_text("995,000 tokens used")
    expect(main.get_by_test_id("spend-chart").locator("svg")).to_be_visible()
    admin.shot("admin-overview")

    admin.page.fill("#month", f"{last_complete_month(timezone.now()):%Y-%m}")
    admin.page.get_by_role("button", name="Show").click()
    expect(main.get_by_test_id("top-cost-centers")).to_contain_text("Sales")

    admin.goto(f"/manage/employees/{spending.employee.pk}/")
    history = admin.page.get_by_test_id("usage-history")
    expect(history.locator("svg")).to_be_visible()
    expect(history).to_contain_text("runs out on")
    expect(admin.page.get_by_test_id("usage-by-model")).to_contain_text("gpt-4o-mini")
    expect(admin.page.get_by_test_id("usage-by-intent")).to_contain_text("support")
    admin.shot("admin-employee-usage-history")


def test_manager_lands_on_the_team_decides_in_place_and_sees_who_runs_out(
    spending: Any, sign_in: Any
) -> None:
    asked = budget_request_create(
        user=spending.users["employee"], amount=Decimal(100_000), reason="quarter close"
    )
    manager = sign_in("manager")
    assert manager.page.url.endswith("/manage/team/")
    pending = manager.page.get_by_test_id("pending-approvals")
    expect(pending).to_contain_text("quarter close")
    running = manager.page.get_by_test_id("running-out")
    expect(running).to_contain_text("Erin Employee")
    expect(manager.page.get_by_test_id("team-burn-down").locator("svg")).to_be_visible()
    manager.shot("manager-team")

    pending.get_by_role("button", name="Approve 100,000 for Erin Employee").click()
    expect(manager.page.locator(".messages")).to_contain_text("approved")
    assert manager.page.url.endswith("/manage/team/")
    expect(manager.page.get_by_test_id("pending-approvals")).to_contain_text("Nothing waiting.")
    asked.refresh_from_db()
    assert asked.status == BudgetRequest.Status.APPROVED

    running.get_by_role("link", name="Top up Erin Employee").click()
    expect(manager.page.get_by_test_id("usage-history")).to_be_visible()
    expect(manager.page.locator("#amount")).to_be_visible()  # the top-up form is right there


def test_finance_lands_on_the_close_closes_the_month_and_exports_it(
    spending: Any, sign_in: Any
) -> None:
    month = last_complete_month(timezone.now())
    finance = sign_in("finance")
    assert finance.page.url.endswith("/finance/")
    close = finance.page.get_by_test_id("month-close")
    expect(close).to_contain_text("not closed")
    expect(finance.page.get_by_test_id("stripe")).to_contain_text("TB_STRIPE_SECRET_KEY")
    finance.shot("finance-dashboard")

    close.get_by_role("button", name=f"Close {month:%B %Y}").click()
    expect(finance.page.locator(".messages")).to_contain_text("new drafts")
    finance.goto("/finance/")
    drafts = finance.page.get_by_test_id("drafts")
    expect(drafts).to_contain_text("Sales")
    expect(finance.page.get_by_test_id("spend-trend").locator("svg")).to_be_visible()
    assert ChargebackStatement.objects.filter(
        period=month, status="draft", cost_center=spending.sales
    ).exists()

    with finance.page.expect_download() as download:
        finance.page.get_by_role("link", name="Lines (CSV)").click()
    assert download.value.suggested_filename == f"chargeback-{month:%Y-%m}.csv"
    drafts.get_by_role("link", name=f"Review Sales, {month:%B %Y}").click()
    expect(finance.page.locator("h1")).to_contain_text("Sales")
    finance.goto("/finance/")
    finance.shot("finance-dashboard-closed")
