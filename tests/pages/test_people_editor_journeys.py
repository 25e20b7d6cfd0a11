"""The cost center, employee, key and roster editors in a real browser against the live server:
an admin builds the tree and hires someone who signs in through the mailed invitation; a
manager shapes only what lies below their cost center; an employee makes a limited key and
revokes it through a confirmation naming it; a bad roster reports every problem at once."""

from __future__ import annotations

import datetime as dt
import email
import re
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from budgets.models import AuditEvent, CostCenter, Employee
from metering.models import VirtualKey
from metering.services import key_create
from tests.pages.conftest import PASSWORD

pytestmark = pytest.mark.e2e


def test_admin_creates_moves_and_caps_cost_centers(cast: Any, sign_in: Any) -> None:
    admin = sign_in("admin")
    admin.goto("/manage/cost-centers/")
    admin.page.get_by_role("link", name="New cost center", exact=True).click()
    admin.page.fill("#code", "ops")
    admin.page.fill("#name", "Operations")
    admin.page.select_option("#parent", label="acme · Acme")
    admin.page.fill("#annual_cap", "twelve")
    admin.page.fill("#managers", "manager, nobody")
    admin.page.get_by_role("button", name="Create cost center").click()
    expect(admin.page.get_by_test_id("cost-center-errors")).to_contain_text("Nothing was saved")
    expect(admin.page.locator("#annual_cap-error")).to_contain_text("An amount in USD")
    expect(admin.page.locator("#managers-error")).to_contain_text("No login named nobody.")
    expect(admin.page.locator("#code")).to_have_value("ops")  # what was typed stays
    admin.shot("admin-cost-center-errors")
    assert not CostCenter.objects.filter(code="ops").exists()

    admin.page.fill("#annual_cap", "12,000")
    admin.page.fill("#managers", "manager")
    admin.page.get_by_role("button", name="Create cost center").click()
    expect(admin.page.locator(".messages")).to_contain_text("Cost center Operations (ops) created")
    tree = admin.page.get_by_test_id("cost-center-tree")
    expect(tree.locator("tr[data-code=ops]")).to_contain_text("$12,000")

    tree.get_by_role("link", name="Edit Machine learning").click()
    expect(admin.page.locator("#parent option", has_text="eng-ml")).to_have_count(0)
    admin.page.select_option("#parent", label="ops · Operations")
    admin.page.fill("#name", "ML platform")
    admin.page.get_by_role("button", name="Save").click()
    expect(admin.page.locator(".messages")).to_contain_text("Cost center ML platform saved")
    admin.shot("admin-cost-centers-after-edit")
    ml = CostCenter.objects.get(code="eng-ml")
    assert (ml.name, ml.parent.code) == ("ML platform", "ops")
    admin.goto(f"/manage/cost-centers/{ml.pk}/")
    expect(admin.page.locator("main")).to_contain_text("update")  # its audit trail
    admin.shot("admin-cost-center-edit")


def test_a_manager_shapes_only_what_lies_below_their_cost_center(cast: Any, sign_in: Any) -> None:
    manager = sign_in("manager")
    manager.goto("/manage/cost-centers/")
    tree = manager.page.get_by_test_id("cost-center-tree")
    expect(tree.get_by_role("link", name="Edit Engineering")).to_have_count(0)
    expect(tree.get_by_role("link", name="Edit Machine learning")).to_have_count(1)
    manager.shot("manager-cost-centers")
    tree.get_by_role("link", name="New cost center under Engineering").click()
    expect(manager.page.locator("#parent")).to_have_value(str(cast.eng.pk))
    expect(manager.page.locator("#parent option", has_text="Acme")).to_have_count(0)
    manager.page.fill("#code", "eng-ops")
    manager.page.fill("#name", "Eng operations")
    manager.page.fill("#annual_cap", "800")
    manager.page.get_by_role("button", name="Create cost center").click()
    expect(manager.page.locator(".messages")).to_contain_text("Eng operations (eng-ops) created")
    assert CostCenter.objects.get(code="eng-ops").parent == cast.eng
    assert manager.goto(f"/manage/cost-centers/{cast.eng.pk}/").status == 403


def _invitation_link(outbox: Path, address: str) -> str:
    """The link in the plain-text part of the mail the live server sent to `address`."""
    for path in sorted(outbox.iterdir()):
        for raw in path.read_text().split("-" * 79):
            message = email.message_from_string(raw.strip())
            if message["To"] != address:
                continue
            for part in message.walk():
                if part.get_content_type() == "text/plain":
                    text = part.get_payload(decode=True).decode()
                    found = re.search(r"https?://\S+/accounts/password/\S+/", text)
                    assert found is not None, text
                    return found.group(0)
    raise AssertionError(f"no mail to {address} in {outbox}")


def test_admin_hires_someone_who_signs_in_through_the_invitation_and_is_deactivated(
    cast: Any, sign_in: Any, browser: Any, live_url: str, outbox: Path
) -> None:
    admin = sign_in("admin")
    admin.goto("/manage/employees/")
    admin.page.get_by_role("link", name="New employee").click()
    admin.page.fill("#employee_id", "N-7")
    admin.page.fill("#email", "nia@example.com")
    admin.page.fill("#name", "Nia Newhire")
    admin.page.select_option("#cost_center", label="eng-ml · Machine learning")
    admin.page.fill("#allowance", "1.5")
    admin.page.get_by_role("button", name="Add employee").click()
    expect(admin.page.locator("#allowance-error")).to_contain_text("whole number of tokens")
    assert not Employee.objects.filter(employee_id="N-7").exists()
    admin.page.fill("#allowance", "250000")
    admin.shot("admin-employee-new")
    admin.page.get_by_role("button", name="Add employee").click()
    expect(admin.page.locator(".messages")).to_contain_text(
        "An invitation to sign in went to nia@example.com"
    )
    expect(admin.page.get_by_test_id("employee-actions")).to_contain_text(
        "Send the invitation again"
    )

    link = _invitation_link(outbox, "nia@example.com")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.goto(link)
        expect(page.locator("h1")).to_contain_text("Choose your password")
        page.fill("#id_new_password1", PASSWORD)
        page.fill("#id_new_password2", PASSWORD)
        page.get_by_role("button", name="Save password").click()
        expect(page.locator("h1")).to_contain_text("Password saved")
        page.get_by_role("link", name="Sign in").click()
        page.fill("#id_username", "nia")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        expect(page.get_by_test_id("keys")).to_be_visible()
        expect(page.locator("main")).to_contain_text("250,000")
    finally:
        context.close()

    hire = Employee.objects.get(employee_id="N-7")
    key_create(employee=hire, name="notebook", actor=None)
    admin.page.reload()
    admin.page.get_by_role("link", name="Deactivate…").click()
    summary = admin.page.get_by_test_id("deactivate-summary")
    expect(summary).to_contain_text("Their 1 live API key (notebook) stops working")
    expect(summary).to_contain_text("250,000 tokens left stay unspent")
    admin.shot("admin-employee-deactivate")
    admin.page.get_by_label("Yes, deactivate N-7 and stop 1 key.").check()
    admin.page.get_by_role("button", name="Deactivate Nia Newhire").click()
    expect(admin.page.locator(".messages")).to_contain_text("Nia Newhire deactivated")
    hire.refresh_from_db()
    assert not hire.active
    assert AuditEvent.objects.filter(action="deactivate", object_id=str(hire.pk)).exists()


def test_employee_makes_a_limited_key_and_revokes_it_by_name(cast: Any, sign_in: Any) -> None:
    employee = sign_in("employee")
    form = employee.page.get_by_test_id("key-form")
    form.locator("#key-name").fill("ci runner")
    form.locator("#key-cap").fill("fifty thousand")
    form.get_by_label("gpt-4o-mini").check()
    form.get_by_role("button", name="Create key").click()
    expect(employee.page.locator(".messages")).to_contain_text(
        "No key was created. The cap is a whole number of tokens"
    )
    assert not VirtualKey.objects.exists()

    last_day = timezone.localdate() + dt.timedelta(days=30)
    form.locator("#key-name").fill("ci runner")
    form.locator("#key-cap").fill("50000")
    form.locator("#key-expires").fill(last_day.isoformat())
    form.get_by_label("gpt-4o-mini").check()
    form.get_by_role("button", name="Create key").click()
    expect(employee.page.get_by_test_id("new-key")).to_be_visible()
    key = VirtualKey.objects.get(employee=cast.employee)
    assert (key.cap_tokens, key.allowed_models) == (50_000, ["gpt-4o-mini"])
    assert timezone.localtime(key.expires_at).date() == last_day + dt.timedelta(days=1)
    keys = employee.page.get_by_test_id("keys")
    expect(keys).to_contain_text("0 of 50,000 tokens · expires")
    expect(keys).to_contain_text("· gpt-4o-mini")
    employee.shot("employee-key-limited")

    keys.get_by_test_id(f"revoke-{key.prefix}").click()
    expect(keys).to_contain_text(f"Revoke key “ci runner” ({key.prefix}…)?")
    employee.shot("employee-key-revoke-confirm")
    keys.get_by_role("button", name="Revoke “ci runner”").click()
    expect(employee.page.locator(".messages")).to_contain_text("Key “ci runner” revoked")
    key.refresh_from_db()
    assert key.revoked_at is not None


BAD_ROSTER = (
    "employee_id,email,name,cost_center,allowance\n"
    "E-100,employee@example.com,Erin Employee,eng-ml,1000000\n"
    "S-200,other@example.com,Sam Sales,sales,300000\n"
    "N-1,not-an-email,Bad Mail,sales,1\n"
    "N-2,n2@example.com,Bad Number,sales,lots\n"
    "N-2,n3@example.com,Repeated,sales,1\n"
    "N-4,n4@example.com,Nowhere,atlantis,1\n"
)


def test_a_bad_roster_reports_every_problem_in_one_upload(cast: Any, sign_in: Any) -> None:
    admin = sign_in("admin")
    admin.goto("/manage/roster/")
    admin.page.set_input_files(
        "#roster-file",
        files=[{"name": "roster.csv", "mimeType": "text/csv", "buffer": BAD_ROSTER.encode()}],
    )
    admin.page.get_by_role("button", name="Preview changes").click()
    errors = admin.page.get_by_test_id("roster-errors")
    expect(errors).to_contain_text("4 problems")
    rows = errors.locator("tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.nth(0)).to_contain_text("4email'not-an-email' is not a valid email address.")
    expect(rows.nth(1)).to_contain_text("5allowance'lots' is not a number.")
    expect(rows.nth(2)).to_contain_text("6employee_idRepeats row 5.")
    expect(rows.nth(3)).to_contain_text("7cost_centerUnknown cost center 'atlantis'.")
    expect(admin.page.get_by_test_id("roster-preview")).to_have_count(0)  # nothing to apply
    admin.shot("admin-roster-all-errors")
    assert Employee.objects.count() == 2
