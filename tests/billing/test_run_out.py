"""The run-out projection of My tokens and `/api/v1/me/statements/`: a large allowance used
slowly projects no date (rather than a date past year 9999, which was a 500); a near one is
exact."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import time_machine
from django.test import Client

from billing.rollup import daily_usage_rollup
from budgets.models import Allowance
from tests.billing.conftest import client_for
from tests.billing.factories import usage

NOW = dt.datetime(2026, 6, 15, 12, tzinfo=dt.UTC)


@pytest.fixture
def slow_spender(cast):  # type: ignore[no-untyped-def]
    """Alice spends 30 tokens in the 30 days before today: one token a day."""
    with time_machine.travel(NOW, tick=False):
        usage(cast["alice"], at=NOW - dt.timedelta(days=5), input_tokens=20, output_tokens=10)
        daily_usage_rollup()
    return cast


def _allow(cast, amount: int) -> None:  # type: ignore[no-untyped-def]
    Allowance.objects.create(
        employee=cast["alice"], fiscal_year=2026, amount=Decimal(amount), prorate=False
    )


@pytest.mark.parametrize("amount", [10**13, 10**14 - 1])
def test_far_run_out_is_no_date_not_a_500(slow_spender, amount: int) -> None:
    _allow(slow_spender, amount)
    page = Client()
    page.force_login(slow_spender["employee"])
    with time_machine.travel(NOW, tick=False):
        me = page.get("/me/")
        api = client_for(slow_spender["employee"]).get("/api/v1/me/statements/")
    assert me.status_code == 200
    assert "runs out on" not in me.content.decode()
    assert api.status_code == 200
    (june,) = api.json()["results"]
    assert june["period"] == "2026-06"
    assert Decimal(june["remaining"]) == amount
    assert june["projected_run_out"] is None


def test_near_run_out_is_the_exact_day(slow_spender) -> None:
    _allow(slow_spender, 2970)
    with time_machine.travel(NOW, tick=False):
        api = client_for(slow_spender["employee"]).get("/api/v1/me/statements/?period=2026-06")
    (june,) = api.json()["results"]
    assert june["projected_run_out"] == "2034-08-02"  # 2970 tokens at one a day
