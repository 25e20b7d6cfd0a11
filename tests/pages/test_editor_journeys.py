"""The policy and model catalogue editors in a real browser against the live server: an admin
edits a policy with a downgrade rule and a route and a price that the running proxy then
charges; managers and employees neither see nor reach the editors."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from openai import OpenAI
from playwright.sync_api import expect

from budgets.models import AuditEvent, Policy
from metering.models import ModelPrice, ModelRoute, UsageRecord
from metering.services import key_create

pytestmark = pytest.mark.e2e


def _second_route(cast: Any) -> None:
    upstream = ModelRoute.objects.get(public_name="gpt-4o-mini").upstream
    ModelRoute.objects.create(public_name="gpt-4o", upstream=upstream, upstream_model="gpt-4o")


def test_admin_edits_a_policy_with_a_downgrade_rule(cast: Any, sign_in: Any) -> None:
    _second_route(cast)
    admin = sign_in("admin")
    admin.goto("/manage/policies/")
    admin.page.select_option("#pick-cost-center", label="eng · Engineering")
    admin.page.get_by_role("button", name="Create or change its policy").click()
    expect(admin.page.locator("h1")).to_contain_text("Policy of Engineering")
    expect(admin.page.locator("main")).to_contain_text("uses the whole policy of Acme")
    expect(admin.page.locator("#default_allowance")).to_have_value("500000")

    admin.page.fill("#default_allowance", "800000")
    admin.page.fill("#alert_thresholds", "50, 80, 2000")
    admin.page.get_by_label("Model asked for, row 1").select_option("gpt-4o")
    admin.page.get_by_label("Served instead by, row 1").select_option("gpt-4o-mini")
    admin.page.fill("#downgrade_at_percent", "80")
    admin.page.get_by_role("button", name="Save policy").click()
    error = admin.page.locator("#alert_thresholds-error")
    expect(error).to_contain_text("percentages from 1 to 1000")  # beside its field
    expect(admin.page.locator("#alert_thresholds")).to_have_attribute("aria-invalid", "true")
    # The form keeps what was typed, and nothing was saved.
    expect(admin.page.locator("#default_allowance")).to_have_value("800000")
    expect(admin.page.get_by_label("Served instead by, row 1")).to_have_value("gpt-4o-mini")
    admin.shot("admin-policy-error")
    assert not Policy.objects.filter(cost_center=cast.eng).exists()

    admin.page.fill("#alert_thresholds", "50, 80, 100")
    admin.page.get_by_role("button", name="Save policy").click()
    expect(admin.page.locator(".messages")).to_contain_text("Policy of Engineering saved")
    audit = admin.page.get_by_test_id("policy-audit")
    expect(audit).to_contain_text("create")
    expect(audit).to_contain_text("gpt-4o → gpt-4o-mini")
    expect(audit).to_contain_text("admin")
    admin.shot("admin-policy-saved")
    policy = Policy.objects.get(cost_center=cast.eng)
    assert policy.downgrade_models == {"gpt-4o": "gpt-4o-mini"}
    assert (policy.downgrade_at_percent, policy.default_allowance) == (80, Decimal(800_000))
    assert AuditEvent.objects.filter(object_type="budgets.policy", source="admin").count() == 1

    admin.goto("/manage/policies/")
    expect(admin.page.get_by_test_id("policies")).to_contain_text("gpt-4o → gpt-4o-mini from 80%")
    admin.shot("admin-policies-list")


def test_admin_edits_a_route_and_adds_a_price_the_proxy_charges(
    cast: Any, sign_in: Any, live_url: str
) -> None:
    admin = sign_in("admin")
    admin.goto("/manage/models/")
    expect(admin.page.get_by_test_id("cache-note")).to_contain_text("Running proxies pick up")
    upstreams = admin.page.get_by_test_id("upstreams")
    expect(upstreams).to_contain_text("TB_UPSTREAM_KEY_TEST")
    expect(upstreams).not_to_contain_text("sk-provider")  # the key's value is never shown
    admin.shot("admin-models")

    admin.page.get_by_role("link", name="Edit route gpt-4o-mini").click()
    admin.page.fill("#default_max_output_tokens", "lots")
    admin.page.get_by_role("button", name="Save route").click()
    expect(admin.page.locator("#default_max_output_tokens-error")).to_be_visible()
    admin.page.fill("#default_max_output_tokens", "512")
    admin.page.get_by_role("button", name="Save route").click()
    expect(admin.page.locator(".messages")).to_contain_text("Route gpt-4o-mini saved")
    assert ModelRoute.objects.get(public_name="gpt-4o-mini").default_max_output_tokens == 512

    admin.page.get_by_role("link", name="Add a price override").click()
    admin.page.fill("#model", "gpt-4o-mini")
    admin.page.fill("#input_per_mtok", "0.1")
    admin.page.fill("#output_per_mtok", "0.4")
    admin.page.fill("#energy_wh_per_1k_input", "0.05")
    admin.page.fill("#energy_wh_per_1k_output", "0.2")
    admin.shot("admin-price-override-form")
    admin.page.get_by_role("button", name="Add price override").click()
    expect(admin.page.locator(".messages")).to_contain_text("Price override for gpt-4o-mini")
    routes = admin.page.get_by_test_id("routes")
    expect(routes).to_contain_text("$0.1 / $0.4 (admin override)")
    admin.shot("admin-models-after-override")
    override = ModelPrice.objects.get(source="override")
    assert (override.input_per_mtok, override.output_per_mtok) == (Decimal("0.1"), Decimal("0.4"))

    # The running proxy (its caches expire at once in the tests) charges the new price.
    _, raw = key_create(employee=cast.employee, name="journey", actor=None)
    client = OpenAI(base_url=f"{live_url}/v1", api_key=raw, max_retries=0)
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}]
    )
    assert reply.usage is not None
    record = UsageRecord.objects.get(employee=cast.employee)
    expected = (
        Decimal(record.input_tokens) * Decimal("0.1")
        + Decimal(record.output_tokens) * Decimal("0.4")
    ) / 1_000_000
    assert record.cost == expected.quantize(Decimal("1e-10"))


@pytest.mark.parametrize("persona", ["manager", "employee"])
def test_others_neither_see_nor_reach_the_editors(cast: Any, sign_in: Any, persona: str) -> None:
    _second_route(cast)
    person = sign_in(persona)
    nav = person.page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Models")).to_have_count(0)
    if persona == "manager":
        person.goto("/manage/policies/")
        expect(person.page.locator("main")).not_to_contain_text("Create or change its policy")
        expect(person.page.get_by_role("link", name=re.compile("^Edit"))).to_have_count(0)
        person.shot("manager-policies-read-only")
    else:
        expect(nav.get_by_role("link", name="Policies")).to_have_count(0)
    route = ModelRoute.objects.get(public_name="gpt-4o")
    for path in (
        f"/manage/policies/{cast.eng.pk}/",
        "/manage/models/",
        f"/manage/models/routes/{route.pk}/",
        "/manage/models/prices/new/",
    ):
        response = person.goto(path)
        assert response is not None and response.status == 403, path
        expect(person.page.get_by_test_id("forbidden")).to_be_visible()
    person.shot(f"{persona}-policy-editor-forbidden")
    assert not Policy.objects.filter(cost_center=cast.eng).exists()
