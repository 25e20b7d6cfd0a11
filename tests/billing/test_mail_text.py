"""Alert and statement mails print numbers for people (budgets.formatting), never the ledger's
ten decimal places."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import time_machine
from django.core import mail

from billing.alerts import alert_notify, alerts_check, personal_statements_send_as_needed
from billing.models import AlertEvent
from billing.rollup import daily_usage_rollup
from budgets.models import Allowance, CostCenterSpend, Policy
from tests.billing.factories import usage

pytestmark = pytest.mark.django_db
UTC = dt.UTC
NOW = dt.datetime(2026, 6, 15, 12, tzinfo=UTC)


def test_threshold_alerts_in_tokens_and_in_dollars(cast) -> None:  # type: ignore[no-untyped-def]
    Policy.objects.create(cost_center=cast["eng"], alert_thresholds=[50])
    Allowance.objects.create(
        employee=cast["alice"], fiscal_year=2026, amount=Decimal("200.0000000000"),
        prorate=False, used=Decimal("110.0000000000"),
    )  # fmt: skip
    Allowance.objects.create(
        employee=cast["bob"], fiscal_year=2026, unit="usd", amount=Decimal("200.0000000000"),
        prorate=False, used=Decimal("110.0000000000"),
    )  # fmt: skip
    alerts_check(now=NOW)
    messages = dict(AlertEvent.objects.values_list("employee__employee_id", "message"))
    assert messages == {
        "E1": "Employee E1 has used 50% or more of the FY2026 LLM allowance (110 of 200 tokens).",
        "E2": "Employee E2 has used 50% or more of the FY2026 LLM allowance ($110.00 of $200.00).",
    }
    alert_notify(alert_id=AlertEvent.objects.get(employee=cast["alice"]).pk)
    [sent] = mail.outbox
    link = f"http://127.0.0.1:8000/manage/employees/{cast['alice'].pk}/"
    assert sent.body == f"{messages['E1']}\n\nSee the usage: {link}"
    [(html, kind)] = sent.alternatives
    assert kind == "text/html" and f'href="{link}"' in html and "(110 of 200 tokens)" in html


def test_pacing_alert_prints_the_daily_pace(cast) -> None:  # type: ignore[no-untyped-def]
    Allowance.objects.create(
        employee=cast["alice"], fiscal_year=2026, amount=Decimal(1000), prorate=False,
        used=Decimal("300.0000000000"),
    )  # fmt: skip
    for day in range(30):  # 30 tokens a day: the 700 left run out in 23 days
        usage(cast["alice"], at=NOW - dt.timedelta(days=day + 1), input_tokens=20, output_tokens=10)
    daily_usage_rollup()
    alerts_check(now=NOW)
    pacing = AlertEvent.objects.get(kind="pacing")
    assert pacing.message == (
        "At the pace of the last 30 days (30 tokens a day), Employee E1's allowance runs out "
        "around 2026-07-08, before the period ends on 2026-12-31."
    )


def test_cost_center_cap_alert_prints_dollars(cast) -> None:  # type: ignore[no-untyped-def]
    cast["eng"].annual_cap = Decimal("100.00")
    cast["eng"].save()
    CostCenterSpend.objects.create(
        cost_center=cast["eng"], fiscal_year=2026, spent=Decimal("100.0100000000")
    )
    [alert_id] = alerts_check(now=NOW)
    assert AlertEvent.objects.get(pk=alert_id).message == (
        "Cost center eng (Cost center eng) has spent $100.01 of its $100.00 FY2026 cap."
    )


def test_personal_statement_mail(cast) -> None:  # type: ignore[no-untyped-def]
    Allowance.objects.create(
        employee=cast["alice"], fiscal_year=2026, amount=Decimal("12000.0000000000"),
        prorate=False, used=Decimal("1350.0000000000"),
    )  # fmt: skip
    may = dt.datetime(2026, 5, 3, tzinfo=UTC)
    usage(cast["alice"], at=may, cost="1.5", model="gpt-a", input_tokens=1000, output_tokens=200)
    usage(cast["alice"], at=may, cost="0.0012", model="gpt-b", input_tokens=100, output_tokens=50)
    daily_usage_rollup()
    with time_machine.travel(NOW, tick=False):  # the statement reads the allowance as of today
        assert personal_statements_send_as_needed(now=NOW) == 1
    [sent] = mail.outbox
    assert sent.body == (
        "Your LLM usage in 2026-05: 2 requests, 1,350 tokens, cost $1.50.\n"
        "Top models: gpt-a ($1.50), gpt-b ($0.0012).\n"
        "Remaining allowance: 10,650 tokens.\n"
        "Projected run-out: 2027-01-22.\n\n"  # 10,650 left at May's 45 tokens a day
        "Open My tokens: http://127.0.0.1:8000/me/"
    )
