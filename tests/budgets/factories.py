"""Factories for budget objects (test setup writes rows directly; code under test uses the
services)."""

from __future__ import annotations

from decimal import Decimal

import factory
from django.contrib.auth import get_user_model

from budgets.balance import current_fiscal_year
from budgets.models import Allowance, CostCenter, Employee, Policy


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")


class CostCenterFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CostCenter
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"cc-{n}")
    name = factory.LazyAttribute(lambda c: c.code.title())


class EmployeeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Employee

    employee_id = factory.Sequence(lambda n: f"E-{n:05d}")
    email = factory.LazyAttribute(lambda e: f"{e.employee_id.lower()}@example.com")
    name = factory.LazyAttribute(lambda e: f"Person {e.employee_id}")
    cost_center = factory.SubFactory(CostCenterFactory)


class AllowanceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Allowance

    employee = factory.SubFactory(EmployeeFactory)
    fiscal_year = factory.LazyFunction(current_fiscal_year)
    unit = "tokens"
    amount = Decimal(1_000_000)


class PolicyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Policy

    cost_center = factory.SubFactory(CostCenterFactory)
