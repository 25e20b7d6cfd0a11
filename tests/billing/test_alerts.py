"""billing.alerts: thresholds once per period, pacing, cost-center caps, personal statements."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.core import mail

from billing.alerts import alert_notify, alerts_check, personal_statements_send_as_needed
from billing.models import AlertEvent
from billing.rollup import daily_usage_rollup
from budgets.models import Allowance, CostCenterSpend, Policy
from tests.billing.factories import usage
from tests.clock import local

pytestmark = pytest.mark.django_db
UTC = dt.UTC
NOW = local(2026, 6, 15, 12)


@pytest.fixture
def allowance(cast):  # type: ignore[no-untyped-def]
    Policy.objects.create(cost_center=cast["eng"], alert_thresholds=[50, 80, 100])
    cast["manager"].email = "manager@example.com"
    cast["manager"].save()
    return Allowance.objects.create(
        employee=cast["alice"], fiscal_year=2026, amount=Decimal(1000), prorate=False
    )


def test_thresholds_fire_once_each(cast, allowance, django_capture_on_commit_callbacks) -> None:
    Allowance.objects.filter(pk=allowance.pk).update(used=Decimal(820))
    with django_capture_on_commit_callbacks(execute=True):
        first = alerts_check(now=NOW)
    kinds = sorted(AlertEvent.objects.values_list("kind", "threshold"))
    assert ("threshold", 50) in kinds and ("threshold", 80) in kinds
    assert ("threshold", 100) not in kinds
    assert len(mail.outbox) == len(first)
    assert set(mail.outbox[0].to) == {cast["alice"].email, "manager@example.com"}

    assert alerts_check(now=NOW) == []  # re-running raises nothing new
    Allowance.objects.filter(pk=allowance.pk).update(used=Decimal(1000))
    again = alerts_check(now=NOW)
    assert list(AlertEvent.objects.filter(pk__in=again).values_list("threshold", flat=True)) == [
        100
    ]
    assert alerts_check(now=NOW + dt.timedelta(days=1)) == []


def test_pacing_alert_when_projected_to_run_out(cast, allowance) -> None:
    Allowance.objects.filter(pk=allowance.pk).update(used=Decimal(300))
    for day in range(30):  # 30 tokens a day in the last 30 days: 700 left runs out in ~23 days
        usage(cast["alice"], at=NOW - dt.timedelta(days=day + 1), input_tokens=20, output_tokens=10)
    daily_usage_rollup()
    ids = alerts_check(now=NOW)
    pacing = AlertEvent.objects.get(pk__in=ids, kind="pacing")
    assert "2026-07-08" in pacing.message
    assert alerts_check(now=NOW) == []


def test_cost_center_cap_alerts_managers_and_finance(cast) -> None:
    cast["eng"].annual_cap = Decimal("100.00")
    cast["eng"].save()
    cast["finance"].email = "fin@example.com"
    cast["finance"].save()
    cast["manager"].email = "manager@example.com"
    cast["manager"].save()
    spend = CostCenterSpend.objects.create(
        cost_center=cast["eng"], fiscal_year=2026, spent=Decimal("99.99")
    )
    assert alerts_check(now=NOW) == []
    spend.spent = Decimal("100.01")
    spend.save()
    [alert_id] = alerts_check(now=NOW)
    alert = AlertEvent.objects.get(pk=alert_id)
    assert alert.recipients == ["fin@example.com", "manager@example.com"]
    assert alert_notify(alert_id=alert_id) is True
    assert alert_notify(alert_id=alert_id) is False  # sent once
    assert len(mail.outbox) == 1


def test_chat_webhook_is_posted(cast, allowance, settings, monkeypatch) -> None:
    posted = []

    class Ok:
        def raise_for_status(self) -> None:
            pass

    monkeypatch.setattr(
        "billing.alerts.httpx.post", lambda url, **kw: posted.append((url, kw)) or Ok()
    )
    settings.TB_ALERT_WEBHOOK_URL = "https://chat.example/hook"
    Allowance.objects.filter(pk=allowance.pk).update(used=Decimal(600))
    [alert_id] = alerts_check(now=NOW)
    alert_notify(alert_id=alert_id)
    assert posted[0][0] == "https://chat.example/hook"
    assert "50%" in posted[0][1]["json"]["text"]


def test_personal_statements_are_emailed_once(cast, allowance) -> None:
    usage(cast["alice"], at=local(2026, 5, 3), cost="1.5", model="gpt-a")
    daily_usage_rollup()
    assert personal_statements_send_as_needed(now=NOW) == 1
    assert personal_statements_send_as_needed(now=NOW) == 0
    [message] = mail.outbox
    assert message.to == [cast["alice"].email]
    assert "2026-05" in message.subject and "1.5" in message.body
