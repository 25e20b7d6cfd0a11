"""The demo history behind `scripts/run.sh`: every page has data, and a rerun adds nothing."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from io import StringIO

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone

from billing.models import ChargebackStatement, DailyUsage
from billing.periods import last_complete_month, local_tz
from billing.value import value_report
from budgets.fiscal import add_months
from budgets.models import Allowance, Policy
from metering.models import Intent, ModelPrice, Outcome, UsageRecord


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
    outcomes = list(Outcome.objects.order_by("client_id").values_list("client_id", "kind"))

    call_command("seed_demo_history", "--months", "3", "--extra-employees", "4", stdout=out)
    assert UsageRecord.objects.count() == records
    assert sorted(Allowance.objects.values_list("used", flat=True)) == used
    assert list(Outcome.objects.order_by("client_id").values_list("client_id", "kind")) == outcomes


@pytest.mark.django_db(transaction=True)
def test_seed_demo_history_makes_the_value_page_meaningful() -> None:
    call_command("seed_demo_history", "--months", "3", "--extra-employees", "8", stdout=StringIO())
    intents = {i.name: i for i in Intent.objects.all()}
    assert set(intents) == {"code-review", "support-reply", "summarize", "sql-help", "proposal"}
    assert all(i.expected_value > 0 and i.default_model for i in intents.values())

    kinds = set(Outcome.objects.values_list("kind", flat=True))
    assert {"accepted", "rejected", "ticket_resolved", "pr_merged"} <= kinds
    rated = Outcome.objects.filter(kind__in=["accepted", "rejected"]).count()
    calls = UsageRecord.objects.exclude(intent="").count()
    assert 0.2 * calls < rated < 0.8 * calls  # a realistic share of the calls, not all
    business = Outcome.objects.exclude(kind__in=["accepted", "rejected"])
    assert business.exists() and not business.filter(value_units__isnull=True).exists()
    months = {d.replace(day=1) for d in Outcome.objects.values_list("day", flat=True)}
    assert len(months) >= 3  # across the months of the history

    demo_models = {"gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5"}
    priced = ModelPrice.objects.filter(model__in=demo_models)
    assert not priced.filter(energy_wh_per_1k_output__isnull=True).exists()

    sales = Policy.objects.get(cost_center__code="sales")
    assert sales.downgrade_models == {
        "gpt-4o": "gpt-4o-mini",
        "claude-sonnet-4-5": "claude-haiku-4-5",
    }
    assert sales.downgrade_at_percent == 80

    admin = get_user_model().objects.get(username="admin")
    period = last_complete_month(timezone.now())
    end = add_months(period, 1)
    rows = value_report(dimension="intent", start=period, end=end, user=admin)
    assert sum(Decimal(r["value"]) for r in rows) > 0
    assert any(r["acceptance_rate"] for r in rows)
    assert any(r["energy_kwh"] for r in rows)

    client = Client()
    client.force_login(admin)
    page = client.get("/value/?dimension=intent").content.decode()
    assert "support-reply" in page and "No usage or outcomes" not in page
    assert 'role="img"' in page  # the value chart is drawn
    assert "No intent was served by more than one model" not in page


@pytest.mark.parametrize(
    ("instant", "expected_months", "current_month_has_usage"),
    [
        # The first minute of a month: the current month adds nothing yet.
        (dt.datetime(2027, 3, 1, 0, 0, 30), ["2026-12", "2027-01", "2027-02"], False),
        # Mid-month: the same three complete months, then this month up to yesterday.
        (dt.datetime(2027, 3, 17, 9, 0), ["2026-12", "2027-01", "2027-02", "2027-03"], True),
    ],
)
@pytest.mark.django_db(transaction=True)
def test_seed_history_holds_the_complete_months_its_help_promises(
    instant: dt.datetime, expected_months: list[str], current_month_has_usage: bool
) -> None:
    tz = local_tz()
    now = instant.replace(tzinfo=tz)
    with time_machine.travel(now, tick=False):
        call_command(
            "seed_demo_history", "--months", "3", "--extra-employees", "2", stdout=StringIO()
        )
        days = {
            at.astimezone(tz).date()
            for at in UsageRecord.objects.values_list("created_at", flat=True)
        }
    months = sorted({f"{d:%Y-%m}" for d in days})
    assert months == expected_months
    # Every complete month has usage on most of its working days, not a stray day or two.
    for label in expected_months[:3]:
        assert len({d for d in days if f"{d:%Y-%m}" == label}) >= 15
    assert max(days) < now.date()  # nothing in the future, nothing today
    assert (f"{now:%Y-%m}" in months) is current_month_has_usage
    periods = sorted(
        {f"{p:%Y-%m}" for p in ChargebackStatement.objects.values_list("period", flat=True)}
    )
    assert periods == expected_months[:3]  # a statement for each complete month, none for today's


def test_seed_history_needs_at_least_one_month() -> None:
    with pytest.raises(CommandError):
        call_command("seed_demo_history", "--months", "0", stdout=StringIO())
