"""The SCIM server through Django's test client: joiner, mover, leaver on the roster services,
with the audit trail, the token check, and refusals that change nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from budgets.models import Allowance, AuditEvent, Employee, EmployeeMove
from identity.models import ScimToken
from identity.scim.schemas import ENTERPRISE, PATCH, USER

pytestmark = pytest.mark.django_db


def call(client: Any, token: str, method: str, path: str, body: Any = None) -> Any:
    return getattr(client, method)(
        f"/scim/v2/{path}",
        data=json.dumps(body) if body is not None else None,
        content_type="application/scim+json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


def joiner(cost_center: str = "Engineering") -> dict[str, Any]:
    return {
        "schemas": [USER, ENTERPRISE],
        "userName": "ada@example.com",
        "externalId": "00u1",
        "displayName": "Ada Lovelace",
        "emails": [{"value": "Ada@Example.com", "type": "work", "primary": True}],
        "active": True,
        ENTERPRISE: {"employeeNumber": "E-7", "costCenter": cost_center},
    }


@pytest.fixture(autouse=True)
def _mapping(settings: Any) -> None:
    settings.TB_SCIM_COST_CENTER_MAP = ["Engineering=eng", "Sales=sales"]


def test_joiner_mover_leaver(client: Any, scim_token: str, org: Any) -> None:
    created = call(client, scim_token, "post", "Users", joiner())
    assert created.status_code == 201, created.content
    user = created.json()
    employee = Employee.objects.get(employee_id="E-7")
    assert (employee.email, employee.name, employee.cost_center, employee.active) == (
        "ada@example.com", "Ada Lovelace", org.eng, True,
    )  # fmt: skip
    assert user["id"] == str(employee.pk)
    assert user[ENTERPRISE] == {"costCenter": "Engineering"}
    assert created["Location"] == user["meta"]["location"]
    assert Allowance.objects.get(employee=employee).amount == 500_000  # the policy's default

    found = call(client, scim_token, "get", 'Users?filter=userName eq "ADA@example.com"').json()
    assert [r["id"] for r in found["Resources"]] == [user["id"]]

    move = {
        "schemas": [PATCH],
        "Operations": [{"op": "replace", "path": f"{ENTERPRISE}:costCenter", "value": "Sales"}],
    }
    moved = call(client, scim_token, "patch", f"Users/{employee.pk}", move)
    assert moved.status_code == 200, moved.content
    employee.refresh_from_db()
    assert employee.cost_center == org.sales
    assert list(EmployeeMove.objects.filter(employee=employee).values_list(
        "from_cost_center__code", "to_cost_center__code"
    )) == [("eng", "sales")]  # fmt: skip

    off = {"schemas": [PATCH], "Operations": [{"op": "replace", "value": {"active": "False"}}]}
    assert call(client, scim_token, "patch", f"Users/{employee.pk}", off).json()["active"] is False
    employee.refresh_from_db()
    assert employee.active is False

    assert call(client, scim_token, "delete", f"Users/{employee.pk}").status_code == 204
    assert call(client, scim_token, "get", f"Users/{employee.pk}").status_code == 404
    assert Employee.objects.filter(pk=employee.pk, active=False).exists()  # never deleted

    events = list(
        AuditEvent.objects.filter(source="scim").order_by("id").values_list("action", "actor_label")
    )
    assert [action for action, _ in events] == ["create", "create", "move", "deactivate"]
    assert {label for _, label in events} == {"scim:okta"}


def test_rehire_after_delete_is_the_same_employee(client: Any, scim_token: str, org: Any) -> None:
    pk = call(client, scim_token, "post", "Users", joiner()).json()["id"]
    call(client, scim_token, "delete", f"Users/{pk}")
    again = call(client, scim_token, "post", "Users", joiner("Sales"))
    assert again.status_code == 201, again.content
    assert again.json()["id"] == pk
    employee = Employee.objects.get(pk=pk)
    assert (employee.active, employee.cost_center) == (True, org.sales)


@pytest.mark.parametrize(
    ("change", "status", "scim_type"),
    [
        ({ENTERPRISE: {"employeeNumber": "E-8", "costCenter": "Nowhere"}}, 400, "invalidValue"),
        ({"userName": ""}, 400, "invalidValue"),
        ({"emails": [{"value": "not an address"}], "userName": "x"}, 400, "invalidValue"),
        ({"active": "maybe"}, 400, "invalidValue"),
        ({ENTERPRISE: {"employeeNumber": "E-9"}}, 400, "invalidValue"),  # no cost center
    ],
)
def test_bad_user_is_refused_and_writes_nothing(
    client: Any, scim_token: str, org: Any, change: dict, status: int, scim_type: str
) -> None:
    response = call(client, scim_token, "post", "Users", {**joiner(), **change})
    assert response.status_code == status
    assert response.json()["scimType"] == scim_type
    assert response.json()["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
    assert not Employee.objects.exists()
    assert not AuditEvent.objects.exists()


def test_duplicate_is_a_conflict(client: Any, scim_token: str, org: Any) -> None:
    call(client, scim_token, "post", "Users", joiner())
    second = call(client, scim_token, "post", "Users", {**joiner(), "userName": "other"})
    assert second.status_code == 409
    assert second.json()["scimType"] == "uniqueness"
    assert Employee.objects.count() == 1


def test_bad_filter_is_invalid_filter(client: Any, scim_token: str, org: Any) -> None:
    response = call(client, scim_token, "get", 'Users?filter=userName eq "x" and (')
    assert (response.status_code, response.json()["scimType"]) == (400, "invalidFilter")


@pytest.mark.parametrize("header", ["", "Bearer ", "Bearer tbscim_wrong", "Basic abc"])
def test_token_required(client: Any, scim_token: str, org: Any, header: str) -> None:
    response = client.get("/scim/v2/Users", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="scim"'


def test_token_is_stored_hashed_and_revocable(client: Any, scim_token: str, org: Any) -> None:
    stored = ScimToken.objects.get(name="okta")
    assert scim_token not in (stored.token_hash, stored.prefix)
    assert len(stored.token_hash) == 64
    assert call(client, scim_token, "get", "Users").status_code == 200
    stored.active = False
    stored.save()
    assert call(client, scim_token, "get", "Users").status_code == 401


def test_roster_employees_are_visible_to_scim(client: Any, scim_token: str, org: Any) -> None:
    Employee.objects.create(employee_id="R-1", email="r1@example.com", cost_center=org.eng)
    listing = call(client, scim_token, "get", 'Users?filter=emails.value eq "r1@example.com"')
    assert listing.json()["totalResults"] == 1
    assert listing.json()["Resources"][0]["userName"] == "r1@example.com"


def test_scim_token_command(client: Any, org: Any) -> None:
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("scim_token", "entra", stdout=out)
    raw = out.getvalue().strip()
    assert raw.startswith("tbscim_")
    assert call(client, raw, "get", "ServiceProviderConfig").json()["patch"] == {"supported": True}
    call_command("scim_token", "entra", "--revoke", stdout=StringIO())
    assert call(client, raw, "get", "ServiceProviderConfig").status_code == 401
