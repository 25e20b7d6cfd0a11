"""Value tests reuse the budgets cast and add a small, hand-countable set of calls.

employee (E-100, eng-ml): 2 calls of intent `code` on model `big`, 1 on `small`
other    (S-200, sales):  1 call of intent `code` on `big`
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group

from metering.models import Intent, Outcome, UsageRecord
from tests.billing.factories import usage
from tests.budgets.conftest import Cast, api, cast, client_for
from tests.budgets.factories import UserFactory
from tests.clock import local

__all__ = ["Cast", "api", "cast", "client_for"]

AT = local(2026, 3, 10, 12)


LATENCY_MS = {"e1": 2000, "e2": 1000, "e3": 500, "o1": 1500}


@pytest.fixture
def calls(cast: Cast) -> dict[str, UsageRecord]:
    made = {
        "e1": usage(cast.employee, at=AT, model="big", intent="code", cost="0.0300000000",
                    input_tokens=1000, output_tokens=500),
        "e2": usage(cast.employee, at=AT, model="big", intent="code", cost="0.0100000000",
                    input_tokens=300, output_tokens=200),
        "e3": usage(cast.employee, at=AT, model="small", intent="code", cost="0.0010000000",
                    input_tokens=800, output_tokens=200),
        "o1": usage(cast.other, at=AT, model="big", intent="code", cost="0.0200000000",
                    input_tokens=600, output_tokens=400),
    }  # fmt: skip
    for name, record in made.items():
        UsageRecord.objects.filter(pk=record.pk).update(latency_ms=LATENCY_MS[name])
    return made


@pytest.fixture
def writer(cast: Cast) -> Any:
    """A service identity in the `outcome-writers` group (an integration's token user)."""
    user = UserFactory(username="crm-bot")
    user.groups.add(Group.objects.get_or_create(name="outcome-writers")[0])
    return user


def value_rows() -> dict[str, int]:
    return {"Outcome": Outcome.objects.count(), "Intent": Intent.objects.count()}
