"""The role dashboards: who may open which (through budgets.roles), where each role lands, and
what each shows, on a frozen clock (20 March 2026, noon in the billing zone) so the month-over-
month and pacing figures are exact."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client

from billing.models import AlertEvent
from billing.rollup import daily_usage_rollup
from billing.statements import statements_close_month
from budgets import roles
from budgets.models import Adjustment, Allowance, BudgetRequest, CostCenter, Employee
from budgets.requests import budget_request_create
from budgets.roster import roster_import
from tests.billing.factories import usage
from tests.clock import local, local_at

NOW = local(2026, 3, 20, 12)
FEB, MARCH = dt.date(2026, 2, 1), dt.date(2026, 3, 1)

pytestmark = pytest.mark.clock


@pytest.fixture
def frozen(settings: Any) -> Iterator[None]:
    """20 March 2026 in a fiscal year from January (the figures below are that year's), in
    whatever billing zone the suite runs in."""
    settings.TB_FISCAL_YEAR_START_MONTH = 1
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def org(db: None, frozen: None) -> dict[str, Any]:
    """acme > eng (managed by `manager`; Erin) and acme > sales (Sam). Erin spent 15,000 tokens
    ($0.10) every day of February and 30,000 ($0.30) every day of March before today, 990,000
    of her 1,000,000; Sam one call of 1,000 tokens ($0.05) on 5 March."""
    users = get_user_model()
    made = {n: users.objects.create_user(n, f"{n}@example.com", "pw") for n in
            ("admin", "finance", "manager", "employee", "other", "outsider")}  # fmt: skip
    made["admin"].is_staff = True
    made["admin"].save()
    made["finance"].groups.add(Group.objects.get_or_create(name="finance")[0])
    acme = CostCenter.objects.create(code="acme", name="Acme")
    eng = CostCenter.objects.create(code="eng", name="Engineering", parent=acme)
    sales = CostCenter.objects.create(code="sales", name="Sales", parent=acme)
    eng.managers.add(made["manager"])
    erin = Employee.objects.create(employee_id="E-1", email="erin@example.com", name="Erin",
                                   cost_center=eng, user=made["employee"])  # fmt: skip
    sam = Employee.objects.create(employee_id="S-1", email="sam@example.com", name="Sam",
                                  cost_center=sales, user=made["other"])  # fmt: skip
    for day in range(1, 29):
        usage(erin, at=local_at(dt.date(2026, 2, day)), cost="0.10",
              input_tokens=10_000, output_tokens=5_000, model="gpt-small", intent="support")  # fmt: skip
    for day in range(1, 20):
        usage(erin, at=local_at(dt.date(2026, 3, day)), cost="0.30",
              input_tokens=20_000, output_tokens=10_000, model="gpt-large")  # fmt: skip
    usage(sam, at=local_at(dt.date(2026, 3, 5)), cost="0.05", input_tokens=600, output_tokens=400)
    daily_usage_rollup()
    # The ledger's figures, as the proxy would have settled them.
    Allowance.objects.create(employee=erin, fiscal_year=2026, amount=Decimal(1_000_000),
                             used=Decimal(990_000), prorate=False)  # fmt: skip
    Allowance.objects.create(employee=sam, fiscal_year=2026, amount=Decimal(300_000),
                             used=Decimal(1_000), prorate=False)  # fmt: skip
    statements_close_month(period=FEB, now=NOW)
    return {**made, "erin": erin, "sam": sam, "eng": eng, "sales": sales}


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


DASHBOARDS = {"admin": "/manage/overview/", "team": "/manage/team/", "finance": "/finance/"}


@pytest.mark.parametrize(
    ("persona", "allowed", "lands_on"),
    [
        ("admin", {"admin", "finance"}, "/manage/overview/"),
        ("finance", {"finance"}, "/finance/"),
        ("manager", {"team"}, "/manage/team/"),
        ("employee", set(), "/me/"),
        ("outsider", set(), None),
    ],
)
def test_each_role_opens_its_dashboards_only_and_lands_on_its_own(
    org: dict[str, Any], persona: str, allowed: set[str], lands_on: str | None
) -> None:
    client = client_for(org[persona])
    for name, path in DASHBOARDS.items():
        assert client.get(path).status_code == (200 if name in allowed else 403), (persona, path)
    home = client.get("/")
    if lands_on is None:
        assert home.status_code == 403
    else:
        assert home.status_code == 302 and home["Location"] == lands_on


def test_the_rules_name_every_dashboard_in_landing_order(org: dict[str, Any]) -> None:
    org["eng"].managers.add(org["admin"])  # an admin who also manages a team
    admin = get_user_model().objects.get(pk=org["admin"].pk)
    assert roles.dashboards_of(admin) == ["admin", "finance", "team"]
    assert roles.landing_dashboard(admin) == "admin"
    assert roles.dashboards_of(org["manager"]) == ["team"]
    assert roles.dashboards_of(org["employee"]) == ["me"]
    assert roles.landing_dashboard(org["outsider"]) is None


def test_a_manager_with_pending_requests_lands_on_the_team_dashboard_led_by_them(
    org: dict[str, Any],
) -> None:
    budget_request_create(user=org["employee"], amount=Decimal(200_000), reason="launch week")
    client = client_for(org["manager"])
    assert client.get("/")["Location"] == "/manage/team/"
    page = client.get("/manage/team/").content.decode()
    pending = page.index('data-testid="pending-approvals"')
    assert pending < page.index('data-testid="running-out"')
    section = page[pending:].split("</section>")[0]
    assert "launch week" in section and '<td class="n">200,000</td>' in section


def test_admin_dashboard_compares_the_month_and_lists_cost_centers_alerts_and_changes(
    org: dict[str, Any],
) -> None:
    AlertEvent.objects.create(kind=AlertEvent.Kind.THRESHOLD, employee=org["erin"],
                              cost_center=org["eng"], period="FY2026", threshold=80,
                              subject_key=f"emp:{org['erin'].pk}", message="80%")  # fmt: skip
    roster = ("employee_id,email,name,cost_center,allowance\n"
              "E-1,erin@example.com,Erin,eng,1000000\nS-1,sam@example.com,Sam,sales,300000\n"
              "N-1,nora@example.com,Nora,sales,250000\n")  # fmt: skip
    roster_import(content=roster, actor=org["admin"])
    page = client_for(org["admin"]).get("/manage/overview/").content.decode()
    # March to the 20th: Erin 19 x $0.30 + Sam $0.05; February's first 20 days: 20 x $0.10.
    assert "$5.75" in page and "+187.5% against $2.00 over the same 20 days of February" in page
    assert "February ended at $2.80" in page
    # 991,000 of 1,550,000 tokens granted (Nora's 250,000 from the roster); 79 of 365 days gone.
    assert "63.9%" in page and "991,000 tokens used of 1,550,000 tokens" in page
    assert "21.6% of the year gone: ahead of the year" in page
    top = page.split('data-testid="top-cost-centers"')[1].split("</section>")[0]
    assert top.index("Engineering") < top.index("Sales")
    assert "$5.70" in top and "$2.00" in top  # Engineering, against its same days of February
    assert "Allowance threshold crossed (80%)" in page
    imports = page.split('data-testid="roster-imports"')[1].split("</section>")[0]
    assert "admin" in imports and '<td class="n">1</td>' in imports  # Nora, created


def test_admin_dashboard_reads_a_past_month_whole(org: dict[str, Any]) -> None:
    page = client_for(org["admin"]).get("/manage/overview/?month=2026-02").content.decode()
    assert "Spend in February" in page and "$2.80" in page
    assert "Nothing spent over the same days of January" in page


def test_team_dashboard_shows_the_burn_down_and_who_runs_out(org: dict[str, Any]) -> None:
    page = client_for(org["manager"]).get("/manage/team/").content.decode()
    # Only Erin is on the team: 10,000 left at 24,500 a day (735,000 over the last 30 days).
    assert "1,000,000 tokens for 1 person; 990,000 tokens used (99.0%)" in page
    running = page.split('data-testid="running-out"')[1].split("</section>")[0]
    assert "Erin" in running and "10,000 tokens" in running and "24,500 tokens" in running
    assert "20 Mar 2026" in running and "Sam" not in running
    assert 'data-testid="team-burn-down"' in page and "<svg" in page
    assert "runs out on <strong>20 Mar 2026</strong>" in page


def test_a_manager_decides_on_the_dashboard_and_returns_to_it(org: dict[str, Any]) -> None:
    asked = budget_request_create(user=org["employee"], amount=Decimal(50_000), reason="demo")
    response = client_for(org["manager"]).post(
        f"/manage/requests/{asked.pk}/", {"decision": "approve", "next": "/manage/team/"}
    )
    assert response.status_code == 302 and response["Location"] == "/manage/team/"
    asked.refresh_from_db()
    assert asked.status == BudgetRequest.Status.APPROVED
    assert Adjustment.objects.get(pk=asked.adjustment_id).amount == Decimal(50_000)
    # Any other return address falls back to Approvals.
    again = budget_request_create(user=org["employee"], amount=Decimal(1), reason="more")
    response = client_for(org["manager"]).post(
        f"/manage/requests/{again.pk}/", {"decision": "decline", "next": "https://evil.example/"}
    )
    assert response["Location"] == "/manage/requests/"


def test_finance_dashboard_shows_the_close_drafts_exports_stripe_and_trend(
    org: dict[str, Any],
) -> None:
    page = client_for(org["finance"]).get("/finance/").content.decode()
    close = page.split('data-testid="month-close"')[1].split("</section>")[0]
    assert "Close of February 2026" in close and "1 of 1 statements are still drafts" in close
    assert "$2.80" in close
    drafts = page.split('data-testid="drafts"')[1].split("</section>")[0]
    assert "Engineering" in drafts and "February 2026" in drafts
    assert "/finance/statements/export/?period=2026-02&amp;format=xlsx" in page
    assert "TB_STRIPE_SECRET_KEY" in page  # not configured in tests
    assert "$5.75" in page.split('data-testid="month-to-date"')[1].split("</section>")[0]
    trend = page.split('data-testid="spend-trend"')[1].split("</section>")[0]
    assert "<svg" in trend and 'February 2026</td><td class="n">$2.80' in trend


def test_employee_page_shows_usage_history_from_the_rollup(org: dict[str, Any]) -> None:
    for persona in ("admin", "manager"):
        page = client_for(org[persona]).get(f"/manage/employees/{org['erin'].pk}/")
        text = page.content.decode()
        history = text.split('data-testid="usage-history"')[1]
        assert "runs out on <strong>20 Mar 2026</strong>" in history
        by_model = text.split('data-testid="usage-by-model"')[1].split("</section>")[0]
        assert "gpt-large" in by_model and "570,000" in by_model and "$5.70" in by_model
        by_intent = text.split('data-testid="usage-by-intent"')[1].split("</section>")[0]
        assert "support" in by_intent and "(untagged)" in by_intent
        assert text.index('data-testid="usage-history"') < text.index("<h2>Audit trail</h2>")
    # A manager of another team does not reach Sam's page at all.
    assert client_for(org["manager"]).get(f"/manage/employees/{org['sam'].pk}/").status_code == 404
