"""Every persona against every budgets endpoint: allowed calls succeed, refused ones answer
401/403/404/405 and write nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from budgets.balance import current_fiscal_year
from budgets.models import Allowance
from tests.budgets.conftest import Cast, client_for, row_counts
from tests.budgets.factories import AllowanceFactory

FY = current_fiscal_year()
ROLES = ("admin", "finance", "manager", "employee", "outsider", "anonymous")


@dataclass(frozen=True)
class Call:
    method: str
    url: Callable[[Cast], str]
    data: Callable[[Cast], Any] | None = None
    multipart: bool = False


def _all(status: int) -> dict[str, int]:
    return {role: status for role in ROLES if role != "anonymous"}


def _only_admin(status: int, refused: int = 403) -> dict[str, int]:
    return {**_all(refused), "admin": status}


def _visible(status: int, *, to: tuple[str, ...]) -> dict[str, int]:
    return {**_all(404), **dict.fromkeys(to, status)}


EVERYONE = ("admin", "finance", "manager", "employee")
ALL_SEEING = ("admin", "finance")


def _past_allowance(cast: Cast) -> str:
    allowance = AllowanceFactory(
        employee=cast.employee,
        fiscal_year=FY - 1,
        amount=Decimal(1000),
        rollover="percent",
        rollover_percent=50,
    )
    return f"/api/v1/allowances/{allowance.pk}/rollover/"


def _roster(cast: Cast) -> dict[str, Any]:
    content = (
        "employee_id,email,name,cost_center,allowance\n"
        "E-100,employee@example.com,Person E-100,eng-ml,1000000\n"
    )
    return {"file": SimpleUploadedFile("roster.csv", content.encode(), "text/csv")}


ADJUST = {"kind": "top_up", "amount": "100", "reason": "Launch week"}

MATRIX: dict[str, tuple[Call, dict[str, int]]] = {
    "cost-centers list": (Call("get", lambda c: "/api/v1/cost-centers/"), _all(200)),
    "cost-center own subtree": (
        Call("get", lambda c: "/api/v1/cost-centers/eng-ml/"),
        _visible(200, to=EVERYONE),
    ),
    "cost-center elsewhere": (
        Call("get", lambda c: "/api/v1/cost-centers/sales/"),
        _visible(200, to=ALL_SEEING),
    ),
    "cost-center create": (
        Call("post", lambda c: "/api/v1/cost-centers/", lambda c: {"code": "ops", "name": "Ops"}),
        _only_admin(201),
    ),
    "cost-center update": (
        Call("patch", lambda c: "/api/v1/cost-centers/eng-ml/", lambda c: {"name": "ML"}),
        {**_only_admin(200), "manager": 200},  # eng-ml is below the manager's eng
    ),
    "cost-center update of one's own": (
        Call("patch", lambda c: "/api/v1/cost-centers/eng/", lambda c: {"annual_cap": "9"}),
        _only_admin(200),  # the manager of eng may not raise eng's own cap
    ),
    "cost-center create below one's own": (
        Call(
            "post",
            lambda c: "/api/v1/cost-centers/",
            lambda c: {"code": "eng-ops", "name": "Ops", "parent": "eng"},
        ),
        _only_admin(201) | {"manager": 201},
    ),
    "cost-center delete": (
        Call("delete", lambda c: "/api/v1/cost-centers/eng-ml/"),
        {**_only_admin(405), "manager": 405},  # nobody deletes; managers may write, not this
    ),
    "cost-center effective policy": (
        Call("get", lambda c: "/api/v1/cost-centers/eng/policy/"),
        _visible(200, to=("admin", "finance", "manager")),
    ),
    "employees list": (Call("get", lambda c: "/api/v1/employees/"), _all(200)),
    "employee in subtree": (
        Call("get", lambda c: "/api/v1/employees/E-100/"),
        _visible(200, to=EVERYONE),
    ),
    "employee elsewhere": (
        Call("get", lambda c: "/api/v1/employees/S-200/"),
        _visible(200, to=ALL_SEEING),
    ),
    "employee create": (
        Call(
            "post",
            lambda c: "/api/v1/employees/",
            lambda c: {"employee_id": "N-1", "email": "n1@example.com", "cost_center": "eng"},
        ),
        _only_admin(201),
    ),
    "employee update": (
        Call("patch", lambda c: "/api/v1/employees/E-100/", lambda c: {"name": "Renamed"}),
        _only_admin(200),
    ),
    "employee deactivate": (
        Call("post", lambda c: "/api/v1/employees/E-100/deactivate/"),
        _only_admin(200),
    ),
    "employee move": (
        Call("post", lambda c: "/api/v1/employees/E-100/move/", lambda c: {"cost_center": "eng"}),
        _only_admin(200),
    ),
    "employee moves": (
        Call("get", lambda c: "/api/v1/employees/E-100/moves/"),
        _visible(200, to=EVERYONE),
    ),
    "employee quota in subtree": (
        Call("get", lambda c: "/api/v1/employees/E-100/quota/"),
        _visible(200, to=EVERYONE),
    ),
    "employee quota elsewhere": (
        Call("get", lambda c: "/api/v1/employees/S-200/quota/"),
        _visible(200, to=ALL_SEEING),
    ),
    "my quota": (
        Call("get", lambda c: "/api/v1/me/quota/"),
        _visible(200, to=("manager", "employee")),
    ),
    "allowances list": (Call("get", lambda c: "/api/v1/allowances/"), _all(200)),
    "allowance in subtree": (
        Call("get", lambda c: f"/api/v1/allowances/{c.employee_allowance.pk}/"),
        _visible(200, to=EVERYONE),
    ),
    "allowance elsewhere": (
        Call("get", lambda c: f"/api/v1/allowances/{c.other_allowance.pk}/"),
        _visible(200, to=ALL_SEEING),
    ),
    "allowance create": (
        Call(
            "post",
            lambda c: "/api/v1/allowances/",
            lambda c: {"employee": "E-100", "fiscal_year": FY + 1, "amount": "5000"},
        ),
        _only_admin(201),
    ),
    "allowance update": (
        Call(
            "patch",
            lambda c: f"/api/v1/allowances/{c.employee_allowance.pk}/",
            lambda c: {"amount": "1500000"},
        ),
        _only_admin(200),
    ),
    "allowance rollover": (Call("post", _past_allowance), _only_admin(200)),
    "adjustments list": (Call("get", lambda c: "/api/v1/adjustments/"), _all(200)),
    "adjustment in subtree": (
        Call(
            "post",
            lambda c: "/api/v1/adjustments/",
            lambda c: {"allowance": c.employee_allowance.pk, **ADJUST},
        ),
        {**_all(403), "admin": 201, "manager": 201},
    ),
    "adjustment elsewhere": (
        Call(
            "post",
            lambda c: "/api/v1/adjustments/",
            lambda c: {"allowance": c.other_allowance.pk, **ADJUST},
        ),
        # Outside the manager's view the allowance "does not exist": a field error.
        {**_all(403), "admin": 201, "manager": 400},
    ),
    "adjustment delete": (
        Call("delete", lambda c: "/api/v1/adjustments/1/"),
        {**_all(403), "admin": 405, "manager": 405},
    ),
    "policies list": (Call("get", lambda c: "/api/v1/policies/"), _all(200)),
    "policy in subtree": (
        Call("get", lambda c: "/api/v1/policies/eng-ml/"),
        _visible(200, to=EVERYONE),
    ),
    "policy of an ancestor": (
        Call("get", lambda c: "/api/v1/policies/acme/"),
        _visible(200, to=ALL_SEEING),
    ),
    "policy create": (
        Call(
            "post",
            lambda c: "/api/v1/policies/",
            lambda c: {"cost_center": "sales", "limit_mode": "soft", "soft_overage_percent": 5},
        ),
        _only_admin(201),
    ),
    "policy update": (
        Call("patch", lambda c: "/api/v1/policies/eng-ml/", lambda c: {"limit_mode": "hard"}),
        _only_admin(200),
    ),
    "roster import dry run": (
        Call("post", lambda c: "/api/v1/roster-imports/?dry_run=1", _roster, multipart=True),
        _only_admin(200),
    ),
    "roster import": (
        Call("post", lambda c: "/api/v1/roster-imports/", _roster, multipart=True),
        _only_admin(200),
    ),
    "audit list": (Call("get", lambda c: "/api/v1/audit/"), _only_admin(200)),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("endpoint", list(MATRIX))
def test_authorization_matrix(cast: Cast, endpoint: str, role: str) -> None:
    call, expected = MATRIX[endpoint]
    status = 401 if role == "anonymous" else expected[role]
    url = call.url(cast)
    data = call.data(cast) if call.data else None
    before = row_counts()
    client = client_for(cast.users[role])
    response = getattr(client, call.method)(
        url, data, format="multipart" if call.multipart else "json"
    )
    assert response.status_code == status, response.content
    if status >= 400:
        assert row_counts() == before


def test_lists_are_scoped_to_what_each_role_sees(api: Any) -> None:
    def ids(persona: str, path: str, key: str) -> list[str]:
        response = api(persona).get(path)
        assert response.status_code == 200
        return sorted(str(item[key]) for item in response.json()["results"])

    assert ids("admin", "/api/v1/employees/", "employee_id") == ["E-100", "M-1", "S-200"]
    assert ids("finance", "/api/v1/employees/", "employee_id") == ["E-100", "M-1", "S-200"]
    assert ids("manager", "/api/v1/employees/", "employee_id") == ["E-100", "M-1"]
    assert ids("employee", "/api/v1/employees/", "employee_id") == ["E-100"]
    assert ids("outsider", "/api/v1/employees/", "employee_id") == []
    assert ids("manager", "/api/v1/cost-centers/", "code") == ["eng", "eng-ml"]
    assert ids("employee", "/api/v1/cost-centers/", "code") == ["eng-ml"]
    assert ids("employee", "/api/v1/allowances/", "employee") == ["E-100"]
    assert ids("manager", "/api/v1/allowances/", "employee") == ["E-100", "M-1"]
    assert ids("employee", "/api/v1/policies/", "cost_center") == ["eng-ml"]


def test_manager_cannot_adjust_their_own_allowance_outside_their_tree(cast: Cast) -> None:
    # The manager of eng-ml only (not eng) works in eng: they see their own allowance but do
    # not manage it.
    cast.eng.managers.clear()
    cast.eng_ml.managers.add(cast.users["manager"])
    allowance = Allowance.objects.get(employee=cast.manager_employee)
    before = row_counts()
    response = client_for(cast.users["manager"]).post(
        "/api/v1/adjustments/", {"allowance": allowance.pk, **ADJUST}, format="json"
    )
    assert response.status_code == 403
    assert row_counts() == before
