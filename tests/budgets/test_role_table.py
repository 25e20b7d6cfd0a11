"""One role table, two surfaces: every persona tries every budget action through the REST API
and through the pages, and the expectation of each attempt comes from ROLE_TABLE below (the
README's roles table says the same), never from the view under test.

An allowed attempt must succeed and have its effect; a refused one must answer 403 or 404 and
leave every budget table unchanged.

    acme                 admin works here (A-1), and finance (F-1)
    |-- eng              managed by `manager`, who works here (M-1)
    |   `-- eng-ml       `employee` (E-100) and a colleague without a login (E-101)
    `-- sales            S-200
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.test import Client
from rest_framework.test import APIClient

from budgets.models import Adjustment, Allowance, AuditEvent, BudgetRequest, Employee
from budgets.requests import budget_request_create
from metering.models import VirtualKey
from metering.services import key_create
from tests.budgets.factories import CostCenterFactory, EmployeeFactory, UserFactory

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)
FY = 2026
PERSONAS = ("admin", "finance", "manager", "employee", "outsider")
Y, N, NA = True, False, None  # NA: the persona has no record of their own

# action -> allowed for (admin, finance, manager, employee, outsider). "own" is the persona's
# own employee record; "other" is E-101, in the manager's subtree and the employee's colleague.
ROLE_TABLE: dict[str, tuple[bool | None, ...]] = {
    "read budgets": (Y, Y, Y, N, N),
    "set allowance of other": (Y, N, N, N, N),
    "set allowance of own": (N, N, N, N, NA),
    "adjust allowance of other": (Y, N, Y, N, N),
    "adjust allowance of own": (N, N, N, N, NA),
    "decide request of other": (Y, N, Y, N, N),
    "decide request of own": (N, N, N, N, NA),
    "see keys of other": (Y, N, Y, N, N),
    "see keys of own": (Y, Y, Y, Y, NA),
}
OWN = {"admin": "A-1", "finance": "F-1", "manager": "M-1", "employee": "E-100"}
OTHER = "E-101"
REFUSED = (403, 404)


@dataclass
class World:
    users: dict[str, Any]
    keys: dict[str, str]  # employee id -> key prefix
    requests: dict[str, int]  # employee id -> pending budget request id


@pytest.fixture
def world(db: None) -> Iterator[World]:
    with time_machine.travel(NOW, tick=False):
        users = {name: UserFactory(username=name) for name in PERSONAS}
        users["admin"].is_staff = True
        users["admin"].save()
        users["finance"].groups.add(Group.objects.get_or_create(name="finance")[0])
        acme = CostCenterFactory(code="acme", name="Acme")
        eng = CostCenterFactory(code="eng", name="Engineering", parent=acme)
        eng_ml = CostCenterFactory(code="eng-ml", name="Machine learning", parent=eng)
        sales = CostCenterFactory(code="sales", name="Sales", parent=acme)
        eng.managers.add(users["manager"])
        people = {
            "A-1": (acme, users["admin"]),
            "F-1": (acme, users["finance"]),
            "M-1": (eng, users["manager"]),
            "E-100": (eng_ml, users["employee"]),
            "E-101": (eng_ml, None),
            "S-200": (sales, None),
        }
        keys, requests = {}, {}
        for employee_id, (center, user) in people.items():
            employee = EmployeeFactory(employee_id=employee_id, cost_center=center, user=user)
            Allowance.objects.create(
                employee=employee, fiscal_year=FY, amount=Decimal(1000), prorate=False
            )
            key, _ = key_create(employee=employee, name=f"laptop of {employee_id}", actor=None)
            keys[employee_id] = key.prefix
            asker = user or UserFactory(username=f"login-{employee_id}")
            if user is None:
                employee.user = asker
                employee.save()
            made = budget_request_create(user=asker, amount=Decimal(50), reason="Launch")
            requests[employee_id] = made.pk
        yield World(users=users, keys=keys, requests=requests)


def _counts() -> dict[str, Any]:
    return {
        "adjustments": Adjustment.objects.count(),
        "allowances": sorted(Allowance.objects.values_list("employee__employee_id", "amount")),
        "pending": BudgetRequest.objects.filter(status="pending").count(),
        "keys": VirtualKey.objects.count(),
        "audit": AuditEvent.objects.count(),
    }


def _pk(employee_id: str) -> int:
    return Employee.objects.get(employee_id=employee_id).pk


def _allowance(employee_id: str) -> Allowance:
    return Allowance.objects.get(employee__employee_id=employee_id, fiscal_year=FY)


# --- the two surfaces, per action: (attempt, effect) -------------------------------------------
# An attempt returns the response; the effect checks what an allowed attempt must have done.

Attempt = Callable[[Any, World, str, bool], Any]  # client, world, target, target is own
Effect = Callable[[World, str, Any], None]


def _api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _page(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _read_effect(world: World, target: str, response: Any) -> None:
    if response.headers["content-type"].startswith("application/json"):
        assert response.json()["employee_id"] == target
    else:
        assert f"{target} · Machine learning" in response.content.decode()


def _set_effect(world: World, target: str, response: Any) -> None:
    assert _allowance(target).amount == Decimal(5000)


def _adjust_effect(world: World, target: str, response: Any) -> None:
    adjustment = Adjustment.objects.get(allowance=_allowance(target), kind="top_up")
    assert adjustment.amount == Decimal(250)


def _decide_effect(world: World, target: str, response: Any) -> None:
    decided = BudgetRequest.objects.get(pk=world.requests[target])
    assert decided.status == "approved"
    assert decided.adjustment.amount == Decimal(50)


def _keys_effect(world: World, target: str, response: Any) -> None:
    assert world.keys[target] in response.content.decode()


def _keys_hidden(world: World, target: str, response: Any) -> None:
    """A refusal of "see keys" on a page the persona may open: the prefix is not on it."""
    assert world.keys[target] not in response.content.decode()


API: dict[str, tuple[Attempt, Effect]] = {
    "read budgets": (
        lambda c, w, t, own: c.get(f"/api/v1/employees/{t}/"),
        _read_effect,
    ),
    "set allowance": (
        lambda c, w, t, own: c.patch(
            f"/api/v1/allowances/{_allowance(t).pk}/", {"amount": "5000"}, format="json"
        ),
        _set_effect,
    ),
    "adjust allowance": (
        lambda c, w, t, own: c.post(
            "/api/v1/adjustments/",
            {"allowance": _allowance(t).pk, "kind": "top_up", "amount": "250", "reason": "Demo"},
            format="json",
        ),
        _adjust_effect,
    ),
    "decide request": (
        lambda c, w, t, own: c.post(f"/api/v1/budget-requests/{w.requests[t]}/approve/", {}),
        _decide_effect,
    ),
    "see keys": (lambda c, w, t, own: c.get(f"/api/v1/employees/{t}/keys/"), _keys_effect),
}

PAGES: dict[str, tuple[Attempt, Effect]] = {
    "read budgets": (
        lambda c, w, t, own: c.get(f"/manage/employees/{_pk(t)}/"),
        _read_effect,
    ),
    "set allowance": (
        lambda c, w, t, own: c.post(
            "/manage/employees/assign/", {"employee": _pk(t), "amount": "5000", "unit": "tokens"}
        ),
        _set_effect,
    ),
    "adjust allowance": (
        lambda c, w, t, own: c.post(
            f"/manage/employees/{_pk(t)}/", {"kind": "top_up", "amount": "250", "reason": "Demo"}
        ),
        _adjust_effect,
    ),
    "decide request": (
        lambda c, w, t, own: c.post(
            f"/manage/requests/{w.requests[t]}/", {"decision": "approve", "amount": ""}
        ),
        _decide_effect,
    ),
    # Own keys live on My tokens; anybody else's on the employee's page.
    "see keys": (
        lambda c, w, t, own: c.get("/me/" if own else f"/manage/employees/{_pk(t)}/"),
        _keys_effect,
    ),
}

ALLOWED_STATUS = {"api": (200, 201), "pages": (200, 302)}


def _cases() -> list[Any]:
    cases = []
    for action, allowed_by in ROLE_TABLE.items():
        for persona, allowed in zip(PERSONAS, allowed_by, strict=True):
            if allowed is None:
                continue
            for surface in ("api", "pages"):
                case_id = f"{surface}-{persona}-{action}"
                cases.append(pytest.param(action, persona, allowed, surface, id=case_id))
    return cases


@pytest.mark.parametrize(("action", "persona", "allowed", "surface"), _cases())
def test_role_table(world: World, action: str, persona: str, allowed: bool, surface: str) -> None:
    verb, _, whose = action.partition(" of ")
    target = OWN[persona] if whose == "own" else OTHER
    attempt, effect = (API if surface == "api" else PAGES)[verb]
    client = _api(world.users[persona]) if surface == "api" else _page(world.users[persona])
    before = _counts()
    with time_machine.travel(NOW, tick=False):
        response = attempt(client, world, target, whose == "own")
    if allowed:
        assert response.status_code in ALLOWED_STATUS[surface], response.content[:500]
        effect(world, target, response)
        return
    if surface == "pages" and verb == "see keys" and response.status_code == 200:
        # Finance may open the employee's page (budgets are theirs to read), not the keys on it.
        _keys_hidden(world, target, response)
    else:
        assert response.status_code in REFUSED, response.content[:500]
    assert _counts() == before


def _roster(own_amount: int) -> str:
    rows = [
        ("A-1", "acme", own_amount),
        ("F-1", "acme", 1000),
        ("M-1", "eng", 1000),
        ("E-100", "eng-ml", 1000),
        ("E-101", "eng-ml", 3000),
        ("S-200", "sales", 1000),
    ]
    lines = [f"{e},{e.lower()}@example.com,Person {e},{c},{a}" for e, c, a in rows]
    return "employee_id,email,name,cost_center,allowance\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize("dry_run", ["?dry_run=1", ""])
def test_an_admin_cannot_raise_their_own_allowance_by_roster(world: World, dry_run: str) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    def upload(content: str) -> Any:
        with time_machine.travel(NOW, tick=False):
            return _api(world.users["admin"]).post(
                f"/api/v1/roster-imports/{dry_run}",
                {"file": SimpleUploadedFile("roster.csv", content.encode(), "text/csv")},
                format="multipart",
            )

    before = _counts()
    refused = upload(_roster(own_amount=5000))
    assert refused.status_code == 400
    assert refused.json() == {
        "errors": [
            {"row": 2, "column": "allowance", "message": "You may not set your own allowance."}
        ],
        "error_count": 1,
    }
    assert _counts() == before
    # The same file with the admin's own row unchanged goes through (E-101 gets 3000).
    accepted = upload(_roster(own_amount=1000))
    assert accepted.status_code == 200, accepted.content
    assert [r["employee_id"] for r in accepted.json()["updated"]] == ["E-101"]
    expected = Decimal(1000) if dry_run else Decimal(3000)
    assert _allowance("E-101").amount == expected
    assert _allowance("A-1").amount == Decimal(1000)


def test_an_admin_cannot_top_up_their_own_allowance_in_the_django_admin(world: World) -> None:
    from django.urls import reverse

    admin = world.users["admin"]
    admin.is_superuser = True  # every Django admin permission: only the rule can refuse
    admin.save()
    client = _page(admin)
    before = _counts()
    data = {"allowance": _allowance("A-1").pk, "kind": "top_up", "amount": "250", "reason": "Me"}
    with time_machine.travel(NOW, tick=False):
        refused = client.post(reverse("admin:budgets_adjustment_add"), data)
    assert refused.status_code == 403
    assert _counts() == before
    data["allowance"] = _allowance(OTHER).pk
    with time_machine.travel(NOW, tick=False):
        made = client.post(reverse("admin:budgets_adjustment_add"), data)
    assert made.status_code == 302
    assert Adjustment.objects.get(allowance=_allowance(OTHER)).amount == Decimal(250)
