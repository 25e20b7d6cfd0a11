"""The cast for budgets tests.

    acme (policy: 500000 tokens for new joiners, alerts 50/80/100)
    |-- eng        managed by `manager` (who works in eng)
    |   `-- eng-ml (policy of its own: soft limit)   `employee` works here
    `-- sales                                        `other` works here

Personas: admin (staff), finance (group finance), manager, employee, outsider (a login with
no role and no employee record).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from budgets.models import (
    Adjustment,
    Allowance,
    AuditEvent,
    CostCenter,
    Employee,
    EmployeeMove,
    Policy,
)
from tests.budgets.factories import (
    AllowanceFactory,
    CostCenterFactory,
    EmployeeFactory,
    PolicyFactory,
    UserFactory,
)

PERSONAS = ("admin", "finance", "manager", "employee", "outsider")


@dataclass
class Cast:
    users: dict[str, Any]
    acme: CostCenter
    eng: CostCenter
    eng_ml: CostCenter
    sales: CostCenter
    manager_employee: Employee
    employee: Employee
    other: Employee
    employee_allowance: Allowance
    other_allowance: Allowance


@pytest.fixture
def cast(db: None) -> Cast:
    admin = UserFactory(username="admin", is_staff=True)
    finance = UserFactory(username="finance")
    finance.groups.add(Group.objects.get_or_create(name="finance")[0])
    manager = UserFactory(username="manager")
    employee_user = UserFactory(username="employee")
    outsider = UserFactory(username="outsider")

    acme = CostCenterFactory(code="acme", name="Acme")
    eng = CostCenterFactory(code="eng", name="Engineering", parent=acme)
    eng_ml = CostCenterFactory(code="eng-ml", name="Machine learning", parent=eng)
    sales = CostCenterFactory(code="sales", name="Sales", parent=acme)
    eng.managers.add(manager)
    PolicyFactory(
        cost_center=acme, default_allowance=Decimal(500_000), alert_thresholds=[50, 80, 100]
    )
    PolicyFactory(cost_center=eng_ml, limit_mode="soft", soft_overage_percent=10)

    manager_employee = EmployeeFactory(
        employee_id="M-1", email="manager@example.com", cost_center=eng, user=manager
    )
    employee = EmployeeFactory(
        employee_id="E-100", email="employee@example.com", cost_center=eng_ml, user=employee_user
    )
    other = EmployeeFactory(employee_id="S-200", email="other@example.com", cost_center=sales)
    AllowanceFactory(employee=manager_employee, amount=Decimal(2_000_000))
    return Cast(
        users={
            "admin": admin,
            "finance": finance,
            "manager": manager,
            "employee": employee_user,
            "outsider": outsider,
            "anonymous": None,
        },
        acme=acme,
        eng=eng,
        eng_ml=eng_ml,
        sales=sales,
        manager_employee=manager_employee,
        employee=employee,
        other=other,
        employee_allowance=AllowanceFactory(employee=employee, amount=Decimal(1_000_000)),
        other_allowance=AllowanceFactory(employee=other, amount=Decimal(300_000)),
    )


def client_for(user: Any) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


@pytest.fixture
def api(cast: Cast) -> Any:
    """api("admin") -> an APIClient signed in as that persona."""
    return lambda persona: client_for(cast.users[persona])


def row_counts() -> dict[str, int]:
    """Rows of every budget table: a refusal must leave all of these unchanged."""
    return {
        model.__name__: model.objects.count()
        for model in (
            CostCenter,
            Employee,
            EmployeeMove,
            Allowance,
            Adjustment,
            Policy,
            AuditEvent,
        )
    }
