"""The "Request more allowance" form and the approvals page, without a browser."""

from __future__ import annotations

from decimal import Decimal

from django.test import Client

from budgets.models import Adjustment, BudgetRequest


def signed_in(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    return client


def test_ask_then_approve_through_the_pages(cast) -> None:
    employee = signed_in(cast.users["employee"])
    assert "Request more allowance" in employee.get("/me/").content.decode()
    response = employee.post("/me/requests/", {"amount": "5000", "reason": "Hackathon"})
    assert response.status_code == 302
    made = BudgetRequest.objects.get()
    manager = signed_in(cast.users["manager"])
    assert "Hackathon" in manager.get("/manage/requests/").content.decode()
    response = manager.post(
        f"/manage/requests/{made.pk}/", {"decision": "approve", "amount": "4000"}
    )
    assert response.status_code == 302
    assert Adjustment.objects.get(kind="request").amount == Decimal(4000)
    assert BudgetRequest.objects.get().status == "approved"


def test_bad_ask_writes_nothing(cast) -> None:
    employee = signed_in(cast.users["employee"])
    employee.post("/me/requests/", {"amount": "lots", "reason": "x"})
    employee.post("/me/requests/", {"amount": "10", "reason": ""})
    assert not BudgetRequest.objects.exists()


def test_approvals_page_refuses_employees_and_hides_other_departments(cast) -> None:
    assert signed_in(cast.users["employee"]).get("/manage/requests/").status_code == 403
    signed_in(cast.users["employee"]).post("/me/requests/", {"amount": "10", "reason": "x"})
    made = BudgetRequest.objects.get()
    employee = signed_in(cast.users["employee"])
    assert employee.post(f"/manage/requests/{made.pk}/", {"decision": "approve"}).status_code in (
        403,
        404,
    )
    assert signed_in(cast.users["outsider"]).get("/manage/requests/").status_code == 403
    assert not Adjustment.objects.filter(kind="request").exists()
