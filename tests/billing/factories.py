"""Factories for billing tests: cost centers, employees and usage records."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal

import factory
from django.contrib.auth import get_user_model

from budgets.models import CostCenter, Employee
from metering.models import UsageRecord

_request_ids = itertools.count(1)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")


class CostCenterFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CostCenter

    code = factory.Sequence(lambda n: f"cc-{n}")
    name = factory.LazyAttribute(lambda o: f"Cost center {o.code}")
    gl_code = factory.Sequence(lambda n: f"6{n:04d}")


class EmployeeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Employee

    employee_id = factory.Sequence(lambda n: f"E{n:05d}")
    email = factory.LazyAttribute(lambda o: f"{o.employee_id.lower()}@example.com")
    name = factory.LazyAttribute(lambda o: f"Employee {o.employee_id}")
    cost_center = factory.SubFactory(CostCenterFactory)


def usage(
    employee: Employee,
    *,
    at: dt.datetime,
    cost: str | Decimal = "0.0100000000",
    model: str = "gpt-test",
    intent: str = "",
    cost_center: CostCenter | None = None,
    input_tokens: int = 100,
    output_tokens: int = 50,
    cached_input_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> UsageRecord:
    """One usage record as the proxy writes it (cost center defaults to the employee's)."""
    return UsageRecord.objects.create(
        request_id=f"req-{next(_request_ids)}",
        created_at=at,
        employee=employee,
        cost_center=cost_center or employee.cost_center,
        model=model,
        endpoint="chat.completions",
        intent=intent,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached_input_tokens,
        cache_write_tokens=cache_write_tokens,
        reasoning_tokens=reasoning_tokens,
        cost=Decimal(cost),
        status_code=200,
    )
