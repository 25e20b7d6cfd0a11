"""GET /v1/budget: the allowance, the key's cap left, the pace of the last 7 days and the
projected run-out date, exact, at a frozen instant; never billed."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest
import time_machine

from budgets.balance import QuotaView
from metering.models import UsageRecord, VirtualKey
from metering.proxy import budget
from metering.services import key_create
from tests.budgets.factories import AllowanceFactory
from tests.clock import local

NOW = local(2026, 3, 10, 12)


def view(unit: str = "tokens", remaining: str = "929500") -> QuotaView:
    return QuotaView(
        2026,
        unit,
        Decimal(1_000_000),
        Decimal(1_000_000),
        Decimal(70_000),
        Decimal(500),
        Decimal(remaining),
        dt.date(2026, 12, 31),
        None,
        1,
    )


@pytest.mark.parametrize(
    ("remaining", "per_day", "run_out"),
    [
        (Decimal(929_500), Decimal(10_000), dt.date(2026, 6, 10)),
        (Decimal(0), Decimal(10_000), dt.date(2026, 3, 10)),
        (Decimal(-5), Decimal(1), dt.date(2026, 3, 10)),
        (Decimal(100), Decimal(0), None),
        (Decimal(10) ** 12, Decimal(1), None),
    ],
)
def test_run_out_date(remaining: Decimal, per_day: Decimal, run_out: dt.date | None) -> None:
    assert budget.run_out_date(dt.date(2026, 3, 10), remaining, per_day) == run_out


def test_money_figures_are_plain_and_exact() -> None:
    body = budget.budget_body(
        view("usd", "12.5000"), budget.KeyCap(None, 0, 0), Decimal("7.000007"), NOW.date()
    )
    assert body["remaining"] == "12.5"
    assert body["pace"]["per_day"] == "1.000001"
    assert body["pace"]["projected_run_out"] == "2026-03-22"  # 12.5 / 1.000001 = 12.49... days
    assert body["key"] == {"cap_tokens": None, "cap_left": None}


def record(employee: Any, key_id: int, at: dt.datetime, inp: int, out: int) -> UsageRecord:
    return UsageRecord.objects.create(
        request_id=f"req_{at.timestamp()}",
        created_at=at,
        employee_id=employee.pk,
        key_id=key_id,
        cost_center_id=employee.cost_center_id,
        model="m",
        endpoint="chat",
        input_tokens=inp,
        output_tokens=out,
        cost=Decimal("0.01"),
        status_code=200,
    )


@pytest.mark.django_db(transaction=True)
def test_the_budget_of_a_key_at_a_frozen_instant(client: Any, settings: Any) -> None:
    settings.TB_FISCAL_YEAR_START_MONTH = 1
    with time_machine.travel(NOW, tick=False):
        allowance = AllowanceFactory(amount=Decimal(1_000_000), prorate=False)
        allowance.used, allowance.reserved = Decimal(70_000), Decimal(500)
        allowance.save()
        employee = allowance.employee
        key, raw = key_create(employee=employee, name="agent", actor=None, cap_tokens=50_000)
        VirtualKey.objects.filter(pk=key.pk).update(used_tokens=12_000, reserved_tokens=1_000)
        # 70,000 tokens in the 7 complete days before today; the day before them and today
        # itself are outside the pace.
        record(employee, key.pk, local(2026, 3, 3, 0, 0), 30_000, 10_000)
        record(employee, key.pk, local(2026, 3, 9, 23, 59), 25_000, 5_000)
        record(employee, key.pk, local(2026, 3, 2, 23, 59), 99_000, 0)
        record(employee, key.pk, local(2026, 3, 10, 8, 0), 77_000, 0)
        records = UsageRecord.objects.count()
        response = client.get("/v1/budget", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 200
    assert response["cache-control"] == "no-store"
    assert json.loads(response.content) == {
        "object": "budget",
        "unit": "tokens",
        "fiscal_year": 2026,
        "allowance": "1000000",
        "released": "1000000",
        "used": "70000",
        "reserved": "500",
        "remaining": "929500",
        "period_end": "2026-12-31",
        "next_release": None,
        "key": {"cap_tokens": "50000", "cap_left": "37000"},
        "pace": {
            "days": 7,
            "spent": "70000",
            "per_day": "10000",
            "projected_run_out": "2026-06-10",
        },
    }
    # Never billed: nothing recorded, held or charged.
    allowance.refresh_from_db()
    assert (allowance.used, allowance.reserved) == (Decimal(70_000), Decimal(500))
    assert UsageRecord.objects.count() == records


@pytest.mark.django_db(transaction=True)
def test_budget_refusals_are_provider_shaped(client: Any) -> None:
    response = client.get("/v1/budget")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    response = client.get(
        "/v1/budget", HTTP_X_API_KEY="tb-nope", HTTP_ANTHROPIC_VERSION="2023-06-01"
    )
    assert response.status_code == 401
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "authentication_error"
    allowance = AllowanceFactory()
    _, raw = key_create(employee=allowance.employee, name="k", actor=None)
    response = client.post("/v1/budget", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 405
