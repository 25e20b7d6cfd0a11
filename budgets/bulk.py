"""Assign one allowance amount to many employees at once (the employees page's bulk action)."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from budgets.models import Allowance, Employee
from budgets.services import Source, allowance_create, allowance_update


@dataclass
class BulkResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[str] = field(default_factory=list)


def allowances_assign(
    *,
    actor: Any,
    employees: list[Employee],
    amount: Decimal,
    unit: str,
    fiscal_year: int,
    source: Source = "admin",
) -> BulkResult:
    """Set this year's allowance of every employee to `amount` (creating missing allowances).

    All or nothing: one refused employee (say, an amount below what they already used) refuses
    the whole selection, so an admin never has to work out which half went through. Each change
    goes through the single-allowance services, which lock the row and write the audit trail.
    """
    result = BulkResult()
    existing = {
        a.employee_id: a
        for a in Allowance.objects.filter(employee__in=employees, fiscal_year=fiscal_year)
    }
    with transaction.atomic():
        for employee in employees:
            allowance = existing.get(employee.pk)
            try:
                if allowance is None:
                    allowance_create(
                        actor=actor,
                        employee=employee,
                        fiscal_year=fiscal_year,
                        amount=amount,
                        unit=unit,
                        source=source,
                    )
                    result.created += 1
                elif allowance.amount == amount and allowance.unit == unit:
                    result.unchanged += 1
                else:
                    allowance_update(
                        actor=actor,
                        allowance=allowance,
                        data={"amount": amount, "unit": unit},
                        source=source,
                    )
                    result.updated += 1
            except ValidationError as exc:
                result.errors.append(f"{employee.employee_id}: {' '.join(exc.messages)}")
        if result.errors:
            transaction.set_rollback(True)
            result.created = result.updated = result.unchanged = 0
    return result
