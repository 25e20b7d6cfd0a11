"""Periodic jobs: expired holds are given back, and the in-process runner runs every job."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.utils import timezone

from budgets import ledger
from budgets.balance import LimitRule
from budgets.models import Allowance, Reservation
from metering.quota.db import Hold, quota_reserve, quota_settle
from tests.budgets.conftest import Cast

pytestmark = pytest.mark.django_db

ESTIMATE = ledger.CallEstimate(
    prompt_tokens=100,
    max_output_tokens=400,
    input_price_per_token=Decimal(0),
    output_price_per_token=Decimal(0),
)


def test_expired_holds_are_released_by_the_job_runner(cast: Cast) -> None:
    hold = quota_reserve(employee=cast.employee, estimate=ESTIMATE, rule=LimitRule())
    fresh = quota_reserve(employee=cast.employee, estimate=ESTIMATE, rule=LimitRule())
    assert isinstance(hold, Hold) and isinstance(fresh, Hold)
    Reservation.objects.filter(pk=hold.reservation_id).update(
        expires_at=timezone.now() - dt.timedelta(seconds=1)
    )

    call_command("run_jobs", "--once")

    allowance = Allowance.objects.get(pk=cast.employee_allowance.pk)
    assert allowance.reserved == 500, "only the live hold remains"
    assert list(Reservation.objects.values_list("pk", flat=True)) == [fresh.reservation_id]
    # The late settle of the swept hold changes nothing unless told to charge anyway.
    assert quota_settle(hold=hold, tokens=300, cost=Decimal(0)) is False
    assert quota_settle(hold=hold, tokens=300, cost=Decimal(0), charge_when_expired=True) is True
    allowance.refresh_from_db()
    assert (allowance.used, allowance.reserved) == (300, 500)
