"""Who may open which page, and what each page shows, through Django's test client (fast; the
browser journeys are in test_journeys.py)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client

from billing.models import ChargebackStatement
from budgets.balance import current_fiscal_year
from budgets.models import Allowance, CostCenter, Employee
from metering.models import VirtualKey
from metering.services import key_create


@pytest.fixture
def people(db: None) -> dict[str, Any]:
    users = get_user_model()
    made = {n: users.objects.create_user(n, f"{n}@example.com", "pw") for n in
            ("admin", "finance", "manager", "employee", "other", "outsider")}  # fmt: skip
    made["admin"].is_staff = True
    made["admin"].save()
    made["finance"].groups.add(Group.objects.get_or_create(name="finance")[0])
    acme = CostCenter.objects.create(code="acme", name="Acme")
    eng = CostCenter.objects.create(code="eng", name="Engineering", parent=acme)
    sales = CostCenter.objects.create(code="sales", name="Sales", parent=acme)
    eng.managers.add(made["manager"])
    employee = Employee.objects.create(
        employee_id="E-1", email="e1@example.com", name="Erin", cost_center=eng,
        user=made["employee"],
    )  # fmt: skip
    other = Employee.objects.create(
        employee_id="S-1", email="s1@example.com", name="Sam", cost_center=sales,
        user=made["other"],
    )  # fmt: skip
    for person in (employee, other):
        Allowance.objects.create(
            employee=person, fiscal_year=current_fiscal_year(), amount=Decimal(1000), prorate=False
        )
    sales_statement = ChargebackStatement.objects.create(
        period=dt.date(2026, 1, 1), cost_center=sales
    )
    return {**made, "employee_record": employee, "other_record": other,
            "sales_statement": sales_statement}  # fmt: skip


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


ADMIN_PAGES = ["/manage/roster/", "/manage/models/"]
READER_PAGES = ["/manage/cost-centers/", "/manage/employees/", "/manage/policies/",
                "/finance/statements/"]  # fmt: skip


@pytest.mark.parametrize(
    ("persona", "allowed"),
    [
        ("admin", ADMIN_PAGES + READER_PAGES),
        ("finance", READER_PAGES),
        ("manager", READER_PAGES),
        ("employee", ["/me/"]),
        ("outsider", []),
    ],
)
def test_each_role_opens_its_pages_and_gets_403_elsewhere(
    people: dict[str, Any], persona: str, allowed: list[str]
) -> None:
    client = client_for(people[persona])
    for path in ["/me/", *ADMIN_PAGES, *READER_PAGES]:
        if path == "/me/" and persona in ("admin", "finance", "manager"):
            continue  # they have no employee record here: covered by the outsider row
        response = client.get(path)
        expected = 200 if path in allowed else 403
        assert response.status_code == expected, (persona, path, response.status_code)
        if expected == 403:
            assert b'data-testid="forbidden"' in response.content


def test_signed_out_visitors_are_sent_to_sign_in(people: dict[str, Any]) -> None:
    response = Client().get("/manage/employees/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


def test_manager_cannot_reach_another_department(people: dict[str, Any]) -> None:
    client = client_for(people["manager"])
    other = people["other_record"]
    assert client.get(f"/manage/employees/{other.pk}/").status_code == 404
    statement = people["sales_statement"]
    assert client.get(f"/finance/statements/{statement.pk}/").status_code == 404
    response = client.get(f"/finance/statements/export/?statement={statement.pk}&format=csv")
    assert response.status_code == 403
    before = Allowance.objects.get(employee=other).amount
    response = client.post(
        "/manage/employees/assign/", {"employee": [other.pk], "amount": "5", "unit": "tokens"}
    )
    assert response.status_code == 403
    assert Allowance.objects.get(employee=other).amount == before
    assert b"Sam" not in client.get("/manage/employees/?status=all").content


def test_bulk_assignment_is_all_or_nothing(people: dict[str, Any]) -> None:
    employee, other = people["employee_record"], people["other_record"]
    Allowance.objects.filter(employee=other).update(used=Decimal(900))
    client = client_for(people["admin"])
    response = client.post(
        "/manage/employees/assign/",
        {"employee": [employee.pk, other.pk], "amount": "500", "unit": "tokens"},
        follow=True,
    )
    assert b"Nothing changed" in response.content
    amounts = set(Allowance.objects.values_list("amount", flat=True))
    assert amounts == {Decimal(1000)}


def test_a_key_is_shown_once_and_only_its_owner_or_manager_revokes_it(
    people: dict[str, Any],
) -> None:
    owner = client_for(people["employee"])
    first = owner.post("/me/keys/", {"name": "laptop"}, follow=True)
    key = VirtualKey.objects.get(employee=people["employee_record"])
    assert key.prefix.encode() in first.content and b'data-testid="new-key"' in first.content
    assert b'data-testid="new-key"' not in owner.get("/me/").content
    _, _ = key_create(employee=people["other_record"], name="sam's", actor=None)
    foreign = VirtualKey.objects.get(employee=people["other_record"])
    assert owner.post(f"/keys/{foreign.pk}/revoke/").status_code == 403
    foreign.refresh_from_db()
    assert foreign.revoked_at is None
    response = client_for(people["manager"]).post(
        f"/keys/{key.pk}/revoke/", {"next": "https://evil.example/", "confirm": key.prefix}
    )
    assert response.status_code == 302 and response["Location"] == "/me/"
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_top_up_errors_show_beside_the_field(people: dict[str, Any]) -> None:
    client = client_for(people["admin"])
    employee = people["employee_record"]
    response = client.post(
        f"/manage/employees/{employee.pk}/", {"kind": "top_up", "amount": "10", "reason": " "}
    )
    assert response.status_code == 400
    assert b'id="reason-error"' in response.content
    response = client.post(
        f"/manage/employees/{employee.pk}/",
        {"kind": "top_up", "amount": "10", "reason": "conference"},
    )
    assert response.status_code == 302
    assert Allowance.objects.get(employee=employee).adjustments_total == 10


def test_a_dollar_allowance_reads_in_dollars(people: dict[str, Any]) -> None:
    Allowance.objects.filter(employee=people["employee_record"]).update(
        unit="usd", amount=Decimal(25), used=Decimal("1.5")
    )
    content = client_for(people["employee"]).get("/me/").content.decode()
    assert 'data-testid="remaining-value">$23.50 ' in content
    assert "no calls yet" in content.lower()  # the empty states read as instructions


@pytest.mark.parametrize("name", ["laptop\x00", "laptop\x1b[31m", "lap\x85top"])
def test_a_key_name_with_control_characters_creates_no_key(
    people: dict[str, Any], name: str
) -> None:
    client = client_for(people["employee"])
    response = client.post("/me/keys/", {"name": name}, follow=True)
    assert response.status_code == 200
    assert not VirtualKey.objects.exists()
    assert "use plain text" in response.content.decode()
    client.post("/me/keys/", {"name": "laptop"})
    assert VirtualKey.objects.get().name == "laptop", "the control case is created"
