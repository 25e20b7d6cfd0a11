"""Segregation of duties and sign-in lockout as users meet them, in a real browser against the
live server."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from playwright.sync_api import expect

from budgets.models import Adjustment, Allowance, Employee
from metering.services import key_create
from tests.pages.conftest import PASSWORD

pytestmark = pytest.mark.e2e


def test_a_manager_tops_up_their_team_but_not_themselves(cast: Any, sign_in: Any) -> None:
    own = Employee.objects.create(
        employee_id="M-1", email="manager@example.com", name="Max Manager",
        cost_center=cast.eng, user=cast.users["manager"],
    )  # fmt: skip
    Allowance.objects.create(
        employee=own, fiscal_year=cast.allowance.fiscal_year, amount=Decimal(1000), prorate=False
    )
    manager = sign_in("manager")
    manager.goto(f"/manage/employees/{own.pk}/")
    expect(manager.page.get_by_role("heading", name="Top-up or correction")).to_have_count(0)
    expect(manager.page.get_by_role("heading", name="Set this year's allowance")).to_have_count(0)
    manager.shot("manager-own-employee-page")
    # Posting the form anyway (say, from an old tab) is refused and writes nothing.
    refused = manager.page.request.post(
        f"{manager.base}/manage/employees/{own.pk}/",
        form={"kind": "top_up", "amount": "5000", "reason": "Me"},
        headers={"X-CSRFToken": _csrf(manager)},
    )
    assert refused.status == 403
    assert not Adjustment.objects.filter(allowance__employee=own).exists()

    manager.goto(f"/manage/employees/{cast.employee.pk}/")
    expect(manager.page.get_by_role("heading", name="Set this year's allowance")).to_have_count(0)
    manager.page.fill("#amount", "2500")
    manager.page.fill("#reason", "Launch week")
    manager.page.click("form[novalidate] button[type=submit]")
    expect(manager.page.get_by_test_id("adjustments")).to_contain_text("Launch week")
    assert Adjustment.objects.get(allowance=cast.allowance).amount == Decimal(2500)


def test_finance_reads_an_employee_but_not_their_keys(cast: Any, sign_in: Any) -> None:
    key, _ = key_create(employee=cast.employee, name="laptop", actor=None)
    finance = sign_in("finance")
    finance.goto(f"/manage/employees/{cast.employee.pk}/")
    expect(finance.page.get_by_role("heading", name="Erin Employee")).to_be_visible()
    expect(finance.page.get_by_test_id("keys")).to_have_count(0)
    assert key.prefix not in finance.page.content()
    manager = sign_in("manager")
    manager.goto(f"/manage/employees/{cast.employee.pk}/")
    expect(manager.page.get_by_test_id("keys")).to_contain_text(key.prefix)


def _csrf(session: Any) -> str:
    return next(c["value"] for c in session.context.cookies() if c["name"] == "csrftoken")


def test_wrong_passwords_lock_the_sign_in_even_for_the_right_one(
    cast: Any, browser: Any, live_url: str
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{live_url}/accounts/login/")
        for _ in range(settings.AXES_FAILURE_LIMIT - 1):
            page.fill("#id_username", "other")
            page.fill("#id_password", "wrong")
            page.click("button[type=submit]")
            expect(page.get_by_role("alert")).to_be_visible()
        page.fill("#id_username", "other")
        page.fill("#id_password", "wrong")
        page.click("button[type=submit]")
        expect(page.get_by_test_id("locked-out")).to_be_visible()
        page.goto(f"{live_url}/accounts/login/")
        page.fill("#id_username", "other")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        expect(page.get_by_test_id("locked-out")).to_be_visible()
        page.goto(f"{live_url}/me/")
        expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/me/"))
    finally:
        context.close()
