"""The demo history behind `scripts/run.sh`: every page has data, and a rerun adds nothing."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from billing.models import ChargebackStatement, DailyUsage
from budgets.models import Allowance
from metering.models import UsageRecord


@pytest.mark.django_db(transaction=True)
def test_seed_demo_history_fills_months_and_is_idempotent() -> None:
    out = StringIO()
    call_command("seed_demo_history", "--months", "3", "--extra-employees", "4", stdout=out)
    records = UsageRecord.objects.count()
    assert records > 0 and "usage records added" in out.getvalue()
    assert DailyUsage.objects.exists()
    statuses = set(ChargebackStatement.objects.values_list("status", flat=True))
    assert statuses == {"draft", "final"}  # the last ended month open, older ones final
    used = sorted(Allowance.objects.values_list("used", flat=True))

    call_command("seed_demo_history", "--months", "3", "--extra-employees", "4", stdout=out)
    assert UsageRecord.objects.count() == records
    assert sorted(Allowance.objects.values_list("used", flat=True)) == used
