"""The admin works for every budgets model and saves through the audited services."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from budgets.models import (
    Adjustment,
    Allowance,
    AuditEvent,
    CostCenter,
    CostCenterSpend,
    Employee,
    EmployeeMove,
    Policy,
    Reservation,
)
from tests.budgets.conftest import Cast, row_counts

MODELS = [
    CostCenter,
    Employee,
    EmployeeMove,
    Allowance,
    Adjustment,
    Policy,
    CostCenterSpend,
    Reservation,
    AuditEvent,
]


@pytest.fixture
def browser(cast: Cast) -> Client:
    user = cast.users["admin"]
    user.is_superuser = True
    user.save()
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_changelist_and_add_pages_render(browser: Client, model: type) -> None:
    opts = model._meta
    assert browser.get(reverse(f"admin:budgets_{opts.model_name}_changelist")).status_code == 200
    add = browser.get(reverse(f"admin:budgets_{opts.model_name}_add"))
    read_only = model in (EmployeeMove, CostCenterSpend, Reservation, AuditEvent)
    assert add.status_code == (403 if read_only else 200)


def test_change_pages_render(cast: Cast, browser: Client) -> None:
    for obj in (cast.eng_ml, cast.employee, cast.employee_allowance):
        url = reverse(f"admin:budgets_{obj._meta.model_name}_change", args=[obj.pk])
        assert browser.get(url).status_code == 200


def _inline_management(prefix: str, initial: int) -> dict[str, str]:
    return {
        f"{prefix}-TOTAL_FORMS": str(initial + 1),
        f"{prefix}-INITIAL_FORMS": str(initial),
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }


def test_cost_center_added_in_admin_is_audited(cast: Cast, browser: Client) -> None:
    data = {
        "code": "ops",
        "name": "Operations",
        "gl_code": "6100",
        "parent": cast.acme.pk,
        "annual_cap": "",
        "stripe_customer_id": "",
        "managers": [cast.users["manager"].pk],
        **_inline_management("policy", 0),
        "policy-0-default_allowance": "250000",
        "policy-0-default_unit": "tokens",
        "policy-0-default_release": "monthly",
        "policy-0-allowed_models": "[]",
        "policy-0-alert_thresholds": "[80]",
        "policy-0-limit_mode": "hard",
        "policy-0-soft_overage_percent": "0",
        "policy-0-over_budget": "clamp",
    }
    response = browser.post(reverse("admin:budgets_costcenter_add"), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    ops = CostCenter.objects.get(code="ops")
    assert list(ops.managers.all()) == [cast.users["manager"]]
    assert ops.policy.default_allowance == Decimal(250_000)
    events = AuditEvent.objects.filter(source="admin").order_by("id")
    assert [(e.object_type, e.action) for e in events] == [
        ("budgets.costcenter", "create"),
        ("budgets.policy", "create"),
    ]
    assert events[0].actor == cast.users["admin"]


def test_adjustment_added_inline_goes_through_the_service(cast: Cast, browser: Client) -> None:
    allowance = cast.employee_allowance
    data = {
        "unit": "tokens",
        "amount": "1000000",
        "release": "upfront",
        "prorate": "on",
        "rollover": "none",
        "rollover_percent": "0",
        "rollover_cap": "",
        **_inline_management("adjustments", 0),
        "adjustments-0-kind": "top_up",
        "adjustments-0-amount": "5000",
        "adjustments-0-reason": "Conference demo",
    }
    url = reverse("admin:budgets_allowance_change", args=[allowance.pk])
    response = browser.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    allowance.refresh_from_db()
    assert allowance.adjustments_total == Decimal(5000)
    adjustment = Adjustment.objects.get()
    assert (adjustment.actor, adjustment.reason) == (cast.users["admin"], "Conference demo")
    assert AuditEvent.objects.get(source="admin").object_type == "budgets.adjustment"


def test_refused_correction_in_admin_changes_nothing(cast: Cast, browser: Client) -> None:
    allowance = cast.other_allowance
    Allowance.objects.filter(pk=allowance.pk).update(used=Decimal(300_000))
    before = row_counts()
    response = browser.post(
        reverse("admin:budgets_adjustment_add"),
        {"allowance": allowance.pk, "kind": "correction", "amount": "-1", "reason": "oops"},
    )
    assert response.status_code == 200  # the form again, with the error
    assert "already used" in response.content.decode()
    assert row_counts() == before


def test_deactivate_action(cast: Cast, browser: Client) -> None:
    response = browser.post(
        reverse("admin:budgets_employee_changelist"),
        {"action": "deactivate", "_selected_action": [cast.other.pk]},
    )
    assert response.status_code == 302
    cast.other.refresh_from_db()
    assert cast.other.active is False
    assert AuditEvent.objects.get().source == "admin"


def test_employee_cost_center_change_in_admin_is_a_move(cast: Cast, browser: Client) -> None:
    employee = cast.employee
    data = {
        "email": employee.email,
        "name": employee.name,
        "cost_center": cast.sales.pk,
        "user": employee.user_id,
        "start_date": "",
        "end_date": "",
        "active": "on",
        **_inline_management("moves", 0),
    }
    response = browser.post(reverse("admin:budgets_employee_change", args=[employee.pk]), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert EmployeeMove.objects.get(employee=employee).to_cost_center == cast.sales
