"""The identity tests' cast: a cost-center tree with a new-joiner policy, and a SCIM token."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest

from budgets.models import CostCenter, Policy
from identity.services import scim_token_create


@dataclass
class Org:
    acme: CostCenter
    eng: CostCenter
    eng_ml: CostCenter
    sales: CostCenter


@pytest.fixture
def org(db: None) -> Org:
    acme = CostCenter.objects.create(code="acme", name="Acme", gl_code="6000")
    eng = CostCenter.objects.create(code="eng", name="Engineering", parent=acme)
    eng_ml = CostCenter.objects.create(code="eng-ml", name="Machine learning", parent=eng)
    sales = CostCenter.objects.create(code="sales", name="Sales", parent=acme)
    Policy.objects.create(cost_center=acme, default_allowance=Decimal(500_000))
    return Org(acme, eng, eng_ml, sales)


@pytest.fixture
def scim_token(db: None) -> str:
    return scim_token_create(name="okta")[1]
