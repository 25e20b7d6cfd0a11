"""Each user's main journey through the pages, in a real browser against the live server."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from openai import OpenAI
from playwright.sync_api import expect

from billing.models import ChargebackStatement
from billing.periods import last_complete_month, local_tz
from billing.rollup import daily_usage_rollup
from budgets.balance import current_fiscal_year
from budgets.models import Adjustment, Allowance, Employee
from metering.models import UsageRecord, VirtualKey
from tests.pages.conftest import PASSWORD, SCREENSHOTS

ROSTER = (
    "employee_id,email,name,cost_center,allowance\n"
    "E-100,employee@example.com,Erin Employee,eng-ml,1000000\n"
    "S-200,other@example.com,Sam Sales,sales,350000\n"
    "N-1,new.one@example.com,Nora New,eng,\n"
    "N-2,new.two@example.com,Nick New,sales,250000\n"
)

pytestmark = pytest.mark.e2e


def test_admin_imports_a_roster_then_assigns_allowances_in_bulk(cast: Any, sign_in: Any) -> None:
    admin = sign_in("admin")
    admin.goto("/manage/cost-centers/")
    expect(admin.page.get_by_test_id("cost-center-tree")).to_contain_text("Machine learning")
    admin.shot("admin-cost-centers")

    admin.goto("/manage/roster/")
    admin.page.set_input_files(
        "#roster-file",
        files=[{"name": "roster.csv", "mimeType": "text/csv", "buffer": ROSTER.encode()}],
    )
    admin.page.get_by_role("button", name="Preview changes").click()
    preview = admin.page.get_by_test_id("roster-preview")
    expect(preview).to_contain_text("2 to create")
    expect(preview).to_contain_text("1 to update")
    expect(preview).to_contain_text("allowance: 300000 → 350000")
    expect(preview).to_contain_text("N-2")
    admin.shot("admin-roster-preview")
    assert not Employee.objects.filter(employee_id__in=["N-1", "N-2"]).exists()  # dry run

    admin.page.get_by_role("button", name="Apply these changes").click()
    expect(admin.page.locator(".messages")).to_contain_text("2 created")
    assert Employee.objects.filter(employee_id__in=["N-1", "N-2"]).count() == 2
    year = current_fiscal_year()
    assert Allowance.objects.get(employee__employee_id="N-1", fiscal_year=year).amount == 500_000

    admin.goto("/manage/employees/?q=New")
    rows = admin.page.get_by_test_id("employees")
    expect(rows).to_contain_text("Nora New")
    admin.page.get_by_label("Tick every employee on this page").check()
    admin.page.fill("#bulk-amount", "750000")
    admin.page.get_by_role("button", name="Assign").click()
    expect(admin.page.locator(".messages")).to_contain_text("for 2 employees")
    admin.shot("admin-employees-bulk")
    amounts = Allowance.objects.filter(
        employee__employee_id__in=["N-1", "N-2"], fiscal_year=year
    ).values_list("amount", flat=True)
    assert sorted(amounts) == [Decimal(750_000), Decimal(750_000)]

    # A top-up with its reason shows in the employee's audit trail.
    new = Employee.objects.get(employee_id="N-1")
    admin.goto(f"/manage/employees/{new.pk}/")
    admin.page.get_by_role("button", name="Save").click()
    expect(admin.page.locator("#amount-error")).to_be_visible()  # errors beside the field
    admin.page.fill("#amount", "50000")
    admin.page.fill("#reason", "Hackathon week")
    admin.page.get_by_role("button", name="Save").click()
    expect(admin.page.get_by_test_id("adjustments")).to_contain_text("Hackathon week")
    admin.shot("admin-employee-detail")
    assert Adjustment.objects.get(allowance__employee=new).amount == 50_000

    for path, name in [
        ("/manage/policies/", "admin-policies"),
        ("/manage/models/", "admin-models"),
    ]:
        admin.goto(path)
        admin.shot(name)


def test_employee_creates_a_key_calls_the_proxy_and_sees_the_call(
    cast: Any, sign_in: Any, live_url: str
) -> None:
    employee = sign_in("employee")
    expect(employee.page).to_have_url(re.compile(r"/me/$"))
    remaining = employee.page.get_by_test_id("remaining-value")
    expect(remaining).to_contain_text("1,000,000")
    expect(employee.page.get_by_test_id("recent-calls")).to_contain_text("No calls yet")
    employee.shot("employee-my-tokens-empty")

    employee.page.fill("#key-name", "laptop")
    employee.page.get_by_role("button", name="Create key").click()
    raw = employee.page.locator("#new-key-value").inner_text().strip()
    assert raw.startswith("tb-")
    expect(employee.page.locator("#snippet-openai")).to_contain_text(f'base_url="{live_url}/v1"')
    employee.shot("employee-new-key")

    client = OpenAI(base_url=f"{live_url}/v1", api_key=raw, max_retries=0)
    reply = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Say hello"}],
        max_tokens=20,
        extra_headers={"X-Intent": "greeting"},
    )
    assert reply.usage is not None
    spent = reply.usage.prompt_tokens + reply.usage.completion_tokens

    employee.page.reload()
    # The key is shown once only: a reload no longer carries it.
    expect(employee.page.get_by_test_id("new-key")).to_have_count(0)
    expect(remaining).to_contain_text(f"{1_000_000 - spent:,}")
    calls = employee.page.get_by_test_id("recent-calls")
    expect(calls).to_contain_text("gpt-4o-mini")
    expect(calls).to_contain_text("greeting")
    expect(calls).not_to_contain_text("Say hello")  # prompts never shown (nor stored)
    employee.shot("employee-my-tokens-after-call")

    employee.page.locator("summary", has_text="Revoke").click()
    employee.page.get_by_role("button", name="Revoke “laptop”").click()
    expect(employee.page.locator(".messages")).to_contain_text("revoked")
    assert VirtualKey.objects.get(employee=cast.employee).revoked_at is not None


def _usage_last_month(cast: Any) -> dt.date:
    period = last_complete_month(timezone.now())
    at = dt.datetime.combine(period.replace(day=10), dt.time(12), tzinfo=local_tz())
    for employee, tokens in ((cast.employee, 4000), (cast.other, 9000)):
        UsageRecord.objects.create(
            request_id=f"pages-{uuid.uuid4().hex}", created_at=at, employee=employee,
            cost_center=employee.cost_center, model="gpt-4o-mini", endpoint="chat.completions",
            input_tokens=tokens, output_tokens=tokens // 4, cost=Decimal("0.0012345678"),
            status_code=200, intent="summarize",
        )  # fmt: skip
    daily_usage_rollup()
    return period


def test_finance_closes_the_month_finalizes_and_downloads_each_export(
    cast: Any, sign_in: Any
) -> None:
    period = _usage_last_month(cast)
    finance = sign_in("finance")
    expect(finance.page).to_have_url(re.compile(r"/finance/$"))  # the finance dashboard
    finance.goto("/finance/statements/")
    finance.page.fill("#close-period", f"{period:%Y-%m}")
    finance.page.get_by_role("button", name="Create or refresh drafts").click()
    expect(finance.page.locator(".messages")).to_contain_text("2 new drafts")
    month = finance.page.get_by_test_id("month-statements")
    expect(month).to_contain_text("Machine learning")
    expect(month).to_contain_text("Sales")
    finance.shot("finance-statements")

    finance.page.get_by_role("link", name="Machine learning").click()
    finance.page.once("dialog", lambda dialog: dialog.accept())
    finance.page.get_by_role("button", name="Finalize statement").click()
    expect(finance.page.get_by_test_id("statement-status")).to_contain_text("Final")
    finance.shot("finance-statement-final")
    statement = ChargebackStatement.objects.get(period=period, cost_center=cast.eng_ml)
    assert statement.status == "final"

    finance.goto(f"/finance/statements/?period={period:%Y-%m}")
    for fmt, ext in (("csv", ".csv"), ("focus", "-focus.csv"), ("xlsx", ".xlsx"),
                     ("journal", "-journal.csv")):  # fmt: skip
        with finance.page.expect_download() as info:
            finance.page.get_by_test_id(f"export-{fmt}").click()
        download = info.value
        assert download.suggested_filename == f"chargeback-{period:%Y-%m}{ext}"
        content = Path(download.path()).read_bytes()
        assert content, fmt
        if fmt == "csv":
            assert b"E-100" in content and b"S-200" in content


def test_manager_sees_only_their_subtree(cast: Any, sign_in: Any) -> None:
    _usage_last_month(cast)
    manager = sign_in("manager")
    manager.goto("/manage/cost-centers/")
    tree = manager.page.get_by_test_id("cost-center-tree")
    expect(tree).to_contain_text("Engineering")
    expect(tree).to_contain_text("Machine learning")
    expect(tree).not_to_contain_text("Sales")
    manager.shot("manager-cost-centers")
    manager.goto("/manage/employees/?status=all")
    table = manager.page.get_by_test_id("employees")
    expect(table).to_contain_text("Erin Employee")
    expect(table).not_to_contain_text("Sam Sales")
    manager.shot("manager-employees")
    # Another department's employee is not found, and admin-only pages are refused.
    response = manager.goto(f"/manage/employees/{cast.other.pk}/")
    assert response.status == 404
    response = manager.goto("/manage/roster/")
    assert response.status == 403
    expect(manager.page.get_by_test_id("forbidden")).to_be_visible()
    manager.shot("manager-forbidden")


def test_permission_refusals_show_the_403_page(cast: Any, sign_in: Any) -> None:
    employee = sign_in("employee")
    for path in ("/manage/employees/", "/manage/cost-centers/", "/finance/statements/",
                 "/manage/models/", "/finance/statements/export/?period=2026-01&format=csv"):  # fmt: skip
        response = employee.goto(path)
        assert response.status == 403, path
        expect(employee.page.get_by_test_id("forbidden")).to_be_visible()
    employee.shot("employee-forbidden")
    outsider = sign_in("outsider")
    assert outsider.goto("/me/").status == 403
    finance = sign_in("finance")
    assert finance.goto("/manage/roster/").status == 403


def test_sign_in_refuses_a_wrong_password_and_sign_out_ends_the_session(
    cast: Any, browser: Any, live_url: str
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{live_url}/me/")
        expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/me/"))
        page.fill("#id_username", "employee")
        page.fill("#id_password", "wrong")
        page.click("button[type=submit]")
        expect(page.get_by_role("alert")).to_be_visible()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "sign-in-error.png"), full_page=True)
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        expect(page).to_have_url(re.compile(r"/me/$"))
        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(re.compile(r"/accounts/login/"))
        page.goto(f"{live_url}/me/")
        expect(page).to_have_url(re.compile(r"/accounts/login/"))
    finally:
        context.close()
