"""The cost center and employee editors through Django's test client: who may change what
(admins the whole tree, managers only below the cost centers they manage, nobody their own),
every refusal with a clear message and nothing written, and audited saves. The browser
journeys are in test_people_editor_journeys.py."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client

from budgets.models import Allowance, AuditEvent, CostCenter, Employee
from budgets.services import cost_center_update
from metering.services import key_create
from tests.pages.test_editors import catalogue, client_for

__all__ = ["catalogue"]  # the fixture, shared with the editor tests


def _tree() -> list[tuple[Any, ...]]:
    return sorted(CostCenter.objects.values_list("code", "name", "parent__code", "annual_cap"))


def _people() -> tuple[int, int, int, int]:
    return (
        Employee.objects.count(),
        get_user_model().objects.count(),
        Allowance.objects.count(),
        AuditEvent.objects.count(),
    )


# --- cost centers --------------------------------------------------------------------------


def test_admin_creates_a_cost_center_with_cap_and_managers(catalogue: dict[str, Any]) -> None:
    client = client_for(catalogue["admin"])
    acme = catalogue["acme"]
    assert f'?parent={acme.pk}"' in client.get("/manage/cost-centers/").content.decode()
    response = client.post(
        "/manage/cost-centers/new/",
        {"code": "ops", "name": "Operations", "parent": acme.pk, "annual_cap": "25,000.50",
         "managers": "manager, finance", "gl_code": "6100"},
    )  # fmt: skip
    assert response.status_code == 302
    ops = CostCenter.objects.get(code="ops")
    assert (ops.name, ops.parent, ops.annual_cap, ops.gl_code) == (
        "Operations", acme, Decimal("25000.50"), "6100"
    )  # fmt: skip
    assert sorted(ops.managers.values_list("username", flat=True)) == ["finance", "manager"]
    event = AuditEvent.objects.get(object_type="budgets.costcenter", object_id=str(ops.pk))
    assert (event.action, event.source, event.actor) == ("create", "admin", catalogue["admin"])


def test_admin_renames_and_moves_a_cost_center_but_never_below_itself(
    catalogue: dict[str, Any],
) -> None:
    client = client_for(catalogue["admin"])
    acme, eng = catalogue["acme"], catalogue["eng"]
    sales = CostCenter.objects.create(code="sales", name="Sales", parent=acme)
    form = client.get(f"/manage/cost-centers/{acme.pk}/").content.decode()
    assert f'value="{eng.pk}"' not in form  # its own subtree is not offered
    before = _tree()
    refused = client.post(
        f"/manage/cost-centers/{acme.pk}/", {"code": "acme", "name": "Acme", "parent": eng.pk}
    )
    assert refused.status_code == 400
    assert "Choose a cost center from the list." in refused.content.decode()
    assert _tree() == before
    moved = client.post(
        f"/manage/cost-centers/{eng.pk}/",
        {"code": "eng", "name": "R&D", "parent": sales.pk, "managers": "manager"},
    )
    assert moved.status_code == 302
    eng.refresh_from_db()
    assert (eng.name, eng.parent) == ("R&D", sales)
    assert list(eng.managers.all()) == [catalogue["manager"]]


def test_the_service_refuses_a_cycle_whoever_calls_it(catalogue: dict[str, Any]) -> None:
    acme, eng = catalogue["acme"], catalogue["eng"]
    before = _tree()
    with pytest.raises(Exception, match="cannot sit under itself"):
        cost_center_update(actor=catalogue["admin"], cost_center=acme, data={"parent": eng})
    assert _tree() == before


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"code": "two words"}, "code", "Enter a valid “slug”"),
        ({"code": "eng"}, "code", "Cost center with this Code already exists."),
        ({"name": ""}, "name", "This field cannot be blank."),
        ({"annual_cap": "lots"}, "annual_cap", "An amount in USD with at most cents"),
        ({"annual_cap": "-1"}, "annual_cap", "An amount in USD with at most cents"),
        ({"annual_cap": "1.005"}, "annual_cap", "An amount in USD with at most cents"),
        ({"managers": "manager, nobody"}, "managers", "No login named nobody."),
        ({"parent": "999999"}, "parent", "Choose a cost center from the list."),
    ],
)
def test_bad_cost_center_input_says_why_and_writes_nothing(
    catalogue: dict[str, Any], fields: dict[str, str], field: str, message: str
) -> None:
    good = {"code": "ops", "name": "Operations", "parent": str(catalogue["acme"].pk)}
    before, events = _tree(), AuditEvent.objects.count()
    response = client_for(catalogue["admin"]).post("/manage/cost-centers/new/", good | fields)
    page = response.content.decode()
    assert response.status_code == 400 and "Nothing was saved" in page and message in page
    assert f'id="{field}-error"' in page
    assert _tree() == before and AuditEvent.objects.count() == events


def test_a_manager_shapes_only_what_lies_below_their_cost_center(
    catalogue: dict[str, Any],
) -> None:
    """The manager of eng creates and edits below eng, never eng itself (its cap is set from
    above: nobody raises their own ceiling), never at the top or outside their subtree."""
    eng, acme = catalogue["eng"], catalogue["acme"]
    CostCenter.objects.create(code="sales", name="Sales", parent=acme)
    client = client_for(catalogue["manager"])
    tree = client.get("/manage/cost-centers/").content.decode()
    assert f"/manage/cost-centers/{eng.pk}/" not in tree and f"?parent={eng.pk}" in tree
    assert client.get(f"/manage/cost-centers/{eng.pk}/").status_code == 403
    assert client.post(f"/manage/cost-centers/{eng.pk}/", {"annual_cap": "1"}).status_code == 403
    assert client.get(f"/manage/cost-centers/{acme.pk}/").status_code == 404  # not in view
    new_form = client.get("/manage/cost-centers/new/").content.decode()
    assert "a top-level cost center" not in new_form and f'value="{acme.pk}"' not in new_form

    made = client.post(
        "/manage/cost-centers/new/",
        {"code": "eng-ml", "name": "ML", "parent": eng.pk, "annual_cap": "500"},
    )
    assert made.status_code == 302
    ml = CostCenter.objects.get(code="eng-ml")
    before = _tree()
    for outside in ("", str(acme.pk), str(CostCenter.objects.get(code="sales").pk)):
        refused = client.post(
            f"/manage/cost-centers/{ml.pk}/", {"code": "eng-ml", "name": "ML", "parent": outside}
        )
        assert refused.status_code == 400, outside
    assert _tree() == before
    raised = client.post(
        f"/manage/cost-centers/{ml.pk}/",
        {"code": "eng-ml", "name": "Machine learning", "parent": eng.pk, "annual_cap": "900"},
    )
    assert raised.status_code == 302
    ml.refresh_from_db()
    assert (ml.name, ml.annual_cap) == ("Machine learning", Decimal(900))


@pytest.mark.parametrize("persona", ["finance", "employee"])
def test_readers_without_a_subtree_change_no_cost_center(
    catalogue: dict[str, Any], persona: str
) -> None:
    client = client_for(catalogue[persona])
    before = _tree()
    assert client.get("/manage/cost-centers/new/").status_code == 403
    assert client.post("/manage/cost-centers/new/", {"code": "x", "name": "X"}).status_code == 403
    eng = catalogue["eng"]
    assert client.post(f"/manage/cost-centers/{eng.pk}/", {"name": "Y"}).status_code in (403, 404)
    assert _tree() == before


# --- employees -----------------------------------------------------------------------------


def _hire(client: Client, catalogue: dict[str, Any], **fields: str) -> Any:
    data = {"employee_id": "N-1", "email": "New.Hire@Example.com", "name": "Nia Hire",
            "cost_center": str(catalogue["eng"].pk), "allowance": "", "unit": "tokens",
            "with_login": "yes"}  # fmt: skip
    return client.post("/manage/employees/new/", data | fields)


def test_a_new_hire_gets_an_allowance_a_login_and_an_invitation_that_sets_a_password(
    catalogue: dict[str, Any], django_capture_on_commit_callbacks: Any
) -> None:
    client = client_for(catalogue["admin"])
    with django_capture_on_commit_callbacks(execute=True):
        response = _hire(client, catalogue)
    assert response.status_code == 302
    hire = Employee.objects.select_related("user").get(employee_id="N-1")
    assert (hire.email, hire.cost_center, hire.active) == (
        "new.hire@example.com", catalogue["eng"], True
    )  # fmt: skip
    assert hire.user.username == "new.hire" and not hire.user.has_usable_password()
    allowance = Allowance.objects.get(employee=hire)
    assert (allowance.amount, allowance.unit) == (Decimal(500_000), "tokens")  # policy default
    assert {e.action for e in AuditEvent.objects.filter(object_id=str(hire.pk))} >= {
        "create", "invite"
    }  # fmt: skip

    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["new.hire@example.com"] and "new.hire" in message.body
    link = re.search(r"https?://\S+/accounts/password/\S+/", message.body)
    assert link is not None
    html = message.alternatives[0][0]
    assert link.group(0) in html

    visitor = Client()
    form = visitor.get(link.group(0), follow=True)
    assert b"Choose your password" in form.content and b"new_password1" in form.content
    done = visitor.post(
        form.redirect_chain[-1][0] if form.redirect_chain else link.group(0),
        {"new_password1": "a-long-fresh-pass-42", "new_password2": "a-long-fresh-pass-42"},
        follow=True,
    )
    assert b"Password saved" in done.content
    signed_in = Client().post(
        "/accounts/login/", {"username": "new.hire", "password": "a-long-fresh-pass-42"}
    )
    assert signed_in.status_code == 302 and "/accounts/login/" not in signed_in["Location"]
    again = Client().get(link.group(0), follow=True)
    assert b"This link has been used or has expired" in again.content


def test_a_hire_without_a_login_mails_nobody_and_can_be_invited_later(
    catalogue: dict[str, Any], django_capture_on_commit_callbacks: Any
) -> None:
    client = client_for(catalogue["admin"])
    with django_capture_on_commit_callbacks(execute=True):
        _hire(client, catalogue, with_login="", allowance="1200", unit="usd")
    hire = Employee.objects.get(employee_id="N-1")
    assert hire.user is None and not mail.outbox
    assert Allowance.objects.get(employee=hire).amount == Decimal(1200)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/manage/employees/{hire.pk}/invite/")
    hire.refresh_from_db()
    assert hire.user is not None and [m.to for m in mail.outbox] == [["new.hire@example.com"]]


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"email": "not-an-email"}, "email", "Enter a valid email address."),
        ({"email": "e1@example.com"}, "email", "Employee with this Email already exists."),
        ({"employee_id": "E-1"}, "employee_id", "Employee with this HR employee id already"),
        ({"employee_id": ""}, "employee_id", "This field cannot be blank."),
        ({"cost_center": ""}, "cost_center", "Choose a cost center."),
        ({"start_date": "soon"}, "start_date", "A date (YYYY-MM-DD), or empty."),
        ({"allowance": "lots"}, "allowance", "A number, e.g. 1000000"),
        ({"allowance": "1.5"}, "allowance", "Must be a whole number of tokens."),
        ({"allowance": "-3"}, "allowance", "Must not be negative."),
    ],
)
def test_bad_employee_input_says_why_and_writes_nothing(
    catalogue: dict[str, Any],
    django_capture_on_commit_callbacks: Any,
    fields: dict[str, str],
    field: str,
    message: str,
) -> None:
    before = _people()
    with django_capture_on_commit_callbacks(execute=True):
        response = _hire(client_for(catalogue["admin"]), catalogue, **fields)
    page = response.content.decode()
    assert response.status_code == 400 and "Nothing was saved" in page and message in page
    assert f'id="{field}-error"' in page
    assert _people() == before and not mail.outbox


@pytest.mark.parametrize("persona", ["finance", "manager", "employee"])
def test_only_admins_add_invite_or_deactivate_employees(
    catalogue: dict[str, Any], persona: str
) -> None:
    client = client_for(catalogue[persona])
    erin = Employee.objects.get(employee_id="E-1")
    before = _people()
    assert client.get("/manage/employees/new/").status_code == 403
    assert _hire(client, catalogue).status_code == 403
    assert client.post(f"/manage/employees/{erin.pk}/invite/").status_code in (403, 404)
    deactivate = f"/manage/employees/{erin.pk}/deactivate/"
    assert client.post(deactivate, {"confirm": "E-1"}).status_code in (403, 404)
    assert _people() == before
    erin.refresh_from_db()
    assert erin.active


def test_deactivation_names_what_happens_and_needs_its_confirmation(
    catalogue: dict[str, Any],
) -> None:
    erin = Employee.objects.get(employee_id="E-1")
    Allowance.objects.create(employee=erin, fiscal_year=_year(), amount=Decimal(1000),
                             prorate=False)  # fmt: skip
    key_create(employee=erin, name="laptop", actor=None)
    key_create(employee=erin, name="ci", actor=None)
    client = client_for(catalogue["admin"])
    page = client.get(f"/manage/employees/{erin.pk}/deactivate/").content.decode()
    assert "Their 2 live API keys (ci, laptop) stop working within seconds" in page
    assert "1,000 tokens left stay unspent" in page
    refused = client.post(f"/manage/employees/{erin.pk}/deactivate/")
    assert refused.status_code == 400 and "Tick the box to confirm" in refused.content.decode()
    erin.refresh_from_db()
    assert erin.active
    done = client.post(f"/manage/employees/{erin.pk}/deactivate/", {"confirm": "E-1"})
    assert done.status_code == 302
    erin.refresh_from_db()
    assert not erin.active
    event = AuditEvent.objects.get(action="deactivate", object_id=str(erin.pk))
    assert (event.actor, event.source) == (catalogue["admin"], "admin")


def test_an_admin_neither_deactivates_themselves_nor_grants_their_own_allowance(
    catalogue: dict[str, Any],
) -> None:
    admin = catalogue["admin"]
    own = Employee.objects.create(employee_id="A-1", email="admin@example.com", name="Ada",
                                  cost_center=catalogue["eng"], user=admin)  # fmt: skip
    client = client_for(admin)
    assert client.get(f"/manage/employees/{own.pk}/deactivate/").status_code == 403
    assert b"Deactivate" not in client.get(f"/manage/employees/{own.pk}/").content
    before = Allowance.objects.count()
    response = client.post(
        "/manage/employees/assign/", {"employee": own.pk, "amount": "5000", "unit": "tokens"}
    )
    assert response.status_code == 403 and Allowance.objects.count() == before


def _year() -> int:
    from budgets.balance import current_fiscal_year

    return current_fiscal_year()
