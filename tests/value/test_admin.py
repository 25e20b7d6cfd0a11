"""Admin pages of intents, outcomes, budget requests and stored value reports: they load for an
admin, saves go through the services, and a budget request decided in the admin is audited
like one decided through the API."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from billing.models import ValueReport, ValueReportPeriod
from billing.value_store import value_report_store
from budgets.models import Adjustment, AuditEvent, BudgetRequest
from budgets.requests import budget_request_create
from metering.models import Intent, ModelRoute, Outcome, Upstream
from tests.clock import local
from tests.value.test_value_reports import recorded  # noqa: F401  (fixture)

MODELS = [
    ("metering", Intent, 200),
    ("metering", Outcome, 403),
    ("budgets", BudgetRequest, 403),
    ("billing", ValueReport, 403),
    ("billing", ValueReportPeriod, 403),
]


@pytest.fixture
def browser(cast: Any) -> Client:
    user = cast.users["admin"]
    user.is_superuser = True
    user.save()
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def stored(recorded: Any) -> ValueReportPeriod:  # noqa: F811
    return value_report_store(period=dt.date(2026, 3, 1), now=local(2026, 4, 2))


@pytest.fixture
def pending(cast: Any) -> BudgetRequest:
    return budget_request_create(
        user=cast.users["employee"], amount=Decimal(5000), reason="Hackathon"
    )


@pytest.mark.parametrize(("app", "model", "add_status"), MODELS, ids=lambda m: str(m))
def test_changelist_add_and_change_pages(
    browser: Client, stored: Any, pending: Any, app, model, add_status
) -> None:
    name = model._meta.model_name
    assert browser.get(reverse(f"admin:{app}_{name}_changelist")).status_code == 200
    assert browser.get(reverse(f"admin:{app}_{name}_add")).status_code == add_status
    obj = model.objects.first()
    assert obj is not None
    assert browser.get(reverse(f"admin:{app}_{name}_change", args=[obj.pk])).status_code == 200


def test_outcomes_are_searchable_by_request_id_and_intent(browser: Client, recorded) -> None:  # noqa: F811
    url = reverse("admin:metering_outcome_changelist")
    request_id = recorded["e1"].request_id
    page = browser.get(url, {"q": request_id}).content.decode()
    assert "1 result" in page
    assert "2 results" not in browser.get(url, {"q": "code"}).content.decode()
    assert Outcome.objects.filter(intent="code").count() == 4


def test_stored_rows_show_the_derived_figures(browser: Client, stored: Any) -> None:
    page = browser.get(
        reverse("admin:billing_valuereport_changelist"), {"dimension__exact": "model"}
    ).content.decode()
    assert "258.333333" in page  # big's return on spend, as the API derives it


def test_intent_saved_through_the_service_keeps_the_recommendation(browser: Client) -> None:
    upstream = Upstream.objects.create(name="mock", kind="openai", base_url="http://127.0.0.1:1")
    ModelRoute.objects.create(public_name="small", upstream=upstream, upstream_model="small")
    intent = Intent.objects.create(name="code", recommended_model="small")
    url = reverse("admin:metering_intent_change", args=[intent.pk])
    form = {"name": "code", "description": "Coding help", "owner_cost_center": "",
            "expected_value": "4.5", "default_model": "small"}  # fmt: skip
    assert browser.post(url, form).status_code == 302
    intent.refresh_from_db()
    assert (intent.description, intent.expected_value, intent.default_model) == (
        "Coding help", Decimal("4.5"), "small",
    )  # fmt: skip
    assert intent.recommended_model == "small"  # read-only: the job's to write
    # a default model without a route is refused by the service, and nothing changes
    response = browser.post(url, {**form, "default_model": "nowhere"}, follow=True)
    assert "Not saved" in response.content.decode()
    intent.refresh_from_db()
    assert intent.default_model == "small"


def test_budget_request_approved_in_the_admin_is_audited(browser: Client, cast, pending) -> None:
    made = pending
    url = reverse("admin:budgets_budgetrequest_changelist")
    response = browser.post(url, {"action": "approve", "_selected_action": [made.pk]})
    assert response.status_code == 302
    made.refresh_from_db()
    adjustment = Adjustment.objects.get(kind="request")
    assert (made.status, made.decided_by, made.adjustment) == (
        "approved", cast.users["admin"], adjustment,
    )  # fmt: skip
    assert (adjustment.actor, adjustment.amount) == (cast.users["admin"], Decimal(5000))
    actions = set(
        AuditEvent.objects.filter(actor=cast.users["admin"]).values_list("object_type", "action")
    )
    assert {("budgets.budgetrequest", "decide"), ("budgets.adjustment", "create")} <= actions
    # decided once: a second approval is refused and writes nothing
    browser.post(url, {"action": "approve", "_selected_action": [made.pk]})
    assert Adjustment.objects.filter(kind="request").count() == 1


def test_nobody_decides_their_own_request_in_the_admin(cast) -> None:
    manager = cast.users["manager"]
    manager.is_staff = manager.is_superuser = True
    manager.save()
    made = budget_request_create(user=manager, amount=Decimal(100), reason="Own")
    client = Client()
    client.force_login(manager)
    url = reverse("admin:budgets_budgetrequest_changelist")
    client.post(url, {"action": "approve", "_selected_action": [made.pk]})
    made.refresh_from_db()
    assert made.status == "pending"
    assert not Adjustment.objects.filter(kind="request").exists()
