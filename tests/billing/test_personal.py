"""billing.personal and the My tokens page: pacing, run-out projection and the burn-down, on
whatever day the suite runs (scripts/test.sh runs this at month, year and fiscal-year edges)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient

from billing.personal import PACING_DAYS
from billing.rollup import daily_usage_rollup
from budgets.balance import current_fiscal_year, today
from budgets.fiscal import fiscal_year_bounds
from budgets.models import Allowance
from tests.billing.factories import EmployeeFactory, usage
from tests.clock import local_at

pytestmark = pytest.mark.django_db


@pytest.fixture
def spender() -> tuple[object, object]:
    """An employee with 10,000 tokens this fiscal year, 3,000 used, who spent 100 tokens on
    each of the last PACING_DAYS days (so 7,000 left run out in 70 days at that pace)."""
    user = get_user_model().objects.create_user("pat", password="pw-for-tests-only")
    employee = EmployeeFactory(user=user)
    Allowance.objects.create(
        employee=employee,
        fiscal_year=current_fiscal_year(),
        amount=Decimal(10_000),
        prorate=False,
        used=Decimal(3_000),
    )
    day = today()
    for back in range(1, PACING_DAYS + 1):
        usage(
            employee, at=local_at(day - dt.timedelta(days=back)), input_tokens=60, output_tokens=40
        )
    daily_usage_rollup()
    return user, employee


def test_statement_projects_the_run_out_from_the_last_thirty_days(spender) -> None:
    user, _ = spender
    client = APIClient()
    client.force_authenticate(user)
    day = today()
    response = client.get(f"/api/v1/me/statements/?period={day:%Y-%m}")
    assert response.status_code == 200, response.content
    (statement,) = response.json()["results"]
    assert statement["period"] == f"{day:%Y-%m}"
    assert statement["remaining"] == "7000"
    assert statement["projected_run_out"] == (day + dt.timedelta(days=70)).isoformat()
    # This month's own figures hold only this month's local days.
    this_month = sum(
        1
        for back in range(1, PACING_DAYS + 1)
        if (day - dt.timedelta(days=back)).month == day.month
    )
    assert (statement["requests"], statement["total_tokens"]) == (this_month, 100 * this_month)


def test_my_tokens_page_draws_the_burn_down_with_the_run_out(spender) -> None:
    user, _ = spender
    client = Client()
    client.force_login(user)
    page = client.get("/me/").content.decode()
    day = today()
    run_out = day + dt.timedelta(days=70)
    _, year_end = fiscal_year_bounds(current_fiscal_year(), settings.TB_FISCAL_YEAR_START_MONTH)
    assert f"Allowance remaining over fiscal year {current_fiscal_year()}" in page
    assert "At your pace of 100 tokens a day" in page or "lasts the whole year" in page
    if run_out < year_end:
        assert f"runs out on\n        <strong>{run_out.day} {run_out:%B %Y}</strong>" in page
        assert f"runs out {run_out:%d %b}" in page  # the mark on the chart
    else:
        assert "At your current pace it lasts the whole year" in page
