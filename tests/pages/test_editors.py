"""The policy editor and the model catalogue editors, through Django's test client: who may open
them, errors beside their fields with nothing written, and audited saves (the browser journeys
are in test_editor_journeys.py)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from budgets.balance import current_fiscal_year
from budgets.models import Adjustment, Allowance, AuditEvent, CostCenter, Employee, Policy
from budgets.requests import budget_request_create, budget_request_decide
from budgets.services import adjustment_create
from metering.models import ModelPrice, ModelRoute, Upstream
from metering.services import key_create, key_revoke

SECRET = "sk-live-do-not-show-0123456789"


@pytest.fixture
def catalogue(db: None, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    users = get_user_model()
    made = {n: users.objects.create_user(n, f"{n}@example.com", "pw") for n in
            ("admin", "finance", "manager", "employee")}  # fmt: skip
    made["admin"].is_staff = True
    made["admin"].save()
    made["finance"].groups.add(Group.objects.get_or_create(name="finance")[0])
    acme = CostCenter.objects.create(code="acme", name="Acme")
    eng = CostCenter.objects.create(code="eng", name="Engineering", parent=acme)
    eng.managers.add(made["manager"])
    Employee.objects.create(
        employee_id="E-1", email="e1@example.com", name="Erin", cost_center=eng,
        user=made["employee"],
    )  # fmt: skip
    Policy.objects.create(cost_center=acme, default_allowance=Decimal(500_000))
    monkeypatch.setenv("TB_UPSTREAM_KEY_PAGES_TEST", SECRET)
    upstream = Upstream.objects.create(
        name="openai", kind="openai", base_url="https://api.openai.com/v1",
        credential_env="TB_UPSTREAM_KEY_PAGES_TEST",
    )  # fmt: skip
    for name in ("gpt-4o", "gpt-4o-mini"):
        ModelRoute.objects.create(public_name=name, upstream=upstream, upstream_model=name)
    ModelPrice.objects.create(
        model="gpt-4o", input_per_mtok=Decimal("2.5"), output_per_mtok=Decimal(10),
        effective_from=timezone.now() - dt.timedelta(days=30), source="catalog",
    )  # fmt: skip
    return {**made, "acme": acme, "eng": eng, "upstream": upstream}


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


GOOD_POLICY = {
    "default_allowance": "750000",
    "default_unit": "tokens",
    "default_release": "upfront",
    "allowed_models": ["gpt-4o", "gpt-4o-mini"],
    "alert_thresholds": "80, 50, 100",
    "limit_mode": "soft",
    "soft_overage_percent": "10",
    "per_request_token_cap": "20000",
    "over_budget": "clamp",
    "requests_per_minute": "60",
    "tokens_per_minute": "",
    "downgrade_from": ["gpt-4o", ""],
    "downgrade_to": ["gpt-4o-mini", ""],
    "downgrade_at_percent": "80",
}


def _catalogue_state() -> tuple[list, list, list, int]:
    return (
        list(Upstream.objects.values()),
        list(ModelRoute.objects.values()),
        list(ModelPrice.objects.values()),
        AuditEvent.objects.count(),
    )


@pytest.mark.parametrize("persona", ["finance", "manager", "employee"])
def test_only_admins_open_or_post_the_editors(catalogue: dict[str, Any], persona: str) -> None:
    client = client_for(catalogue[persona])
    eng, upstream = catalogue["eng"], catalogue["upstream"]
    route = ModelRoute.objects.get(public_name="gpt-4o")
    paths = [
        f"/manage/policies/{eng.pk}/",
        "/manage/models/",
        "/manage/models/routes/new/",
        f"/manage/models/routes/{route.pk}/",
        f"/manage/models/upstreams/{upstream.pk}/",
        "/manage/models/prices/new/",
    ]
    before = _catalogue_state()
    policies = list(Policy.objects.values())
    for path in paths:
        assert client.get(path).status_code == 403, path
        response = client.post(path, {**GOOD_POLICY, "public_name": "x", "active": "on"})
        assert response.status_code == 403, path
        assert b'data-testid="forbidden"' in response.content
    assert _catalogue_state() == before
    assert list(Policy.objects.values()) == policies
    # Nor are the editors offered to them.
    page = client.get("/manage/policies/" if persona != "employee" else "/me/").content
    assert b"/manage/models/" not in page
    assert f"/manage/policies/{catalogue['acme'].pk}/".encode() not in page
    assert b"Create or change its policy" not in page


def test_policy_editor_prefills_the_inherited_policy_and_saves_its_own(
    catalogue: dict[str, Any],
) -> None:
    client = client_for(catalogue["admin"])
    eng = catalogue["eng"]
    response = client.get(f"/manage/policies/?cost_center={eng.pk}")
    assert response.status_code == 302 and response["Location"] == f"/manage/policies/{eng.pk}/"
    page = client.get(f"/manage/policies/{eng.pk}/").content.decode()
    assert "uses the whole policy of <strong>Acme</strong>" in page
    assert 'value="500000"' in page

    response = client.post(f"/manage/policies/{eng.pk}/", GOOD_POLICY)
    assert response.status_code == 302
    policy = Policy.objects.get(cost_center=eng)
    assert policy.default_allowance == Decimal(750_000)
    assert policy.alert_thresholds == [50, 80, 100]
    assert policy.allowed_models == ["gpt-4o", "gpt-4o-mini"]
    assert policy.downgrade_models == {"gpt-4o": "gpt-4o-mini"}
    assert policy.downgrade_at_percent == 80
    assert (policy.limit_mode, policy.soft_overage_percent) == ("soft", 10)
    assert (policy.per_request_token_cap, policy.requests_per_minute) == (20000, 60)
    assert policy.tokens_per_minute is None
    event = AuditEvent.objects.get(object_type="budgets.policy", object_id=str(policy.pk))
    assert (event.action, event.source, event.actor) == ("create", "admin", catalogue["admin"])

    page = client.get(f"/manage/policies/{eng.pk}/").content.decode()
    assert "gpt-4o → gpt-4o-mini" in page  # the audit trail shows the rule
    # Saving the same values again writes no second event.
    client.post(f"/manage/policies/{eng.pk}/", GOOD_POLICY)
    assert AuditEvent.objects.filter(object_type="budgets.policy").count() == 1


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"alert_thresholds": "50, 2000"}, "alert_thresholds", "percentages from 1 to 1000"),
        ({"alert_thresholds": "50, eighty"}, "alert_thresholds", "Whole percentages"),
        ({"default_allowance": "lots"}, "default_allowance", "A number"),
        ({"default_allowance": "-5"}, "default_allowance", "Must not be negative"),
        ({"requests_per_minute": "1.5"}, "requests_per_minute", "A whole number"),
        ({"downgrade_at_percent": ""}, "downgrade_at_percent", "at which share"),
        ({"downgrade_at_percent": "150"}, "downgrade_at_percent", "less than or equal to 100"),
        ({"downgrade_to": ["gpt-4o", ""]}, "downgrade_models", "a different model"),
        ({"downgrade_to": ["", ""]}, "downgrade_models", "Choose both models"),
        ({"limit_mode": "maybe"}, "limit_mode", "Choose one"),
    ],
)
def test_policy_errors_show_beside_the_field_and_nothing_is_saved(
    catalogue: dict[str, Any], change: dict[str, Any], field: str, message: str
) -> None:
    client = client_for(catalogue["admin"])
    acme = catalogue["acme"]
    before = list(Policy.objects.values())
    events = AuditEvent.objects.count()
    response = client.post(f"/manage/policies/{acme.pk}/", {**GOOD_POLICY, **change})
    assert response.status_code == 400
    page = response.content.decode()
    assert f'id="{field}-error"' in page
    assert message in page
    assert list(Policy.objects.values()) == before
    assert AuditEvent.objects.count() == events


def test_an_unknown_cost_center_is_not_found(catalogue: dict[str, Any]) -> None:
    assert client_for(catalogue["admin"]).get("/manage/policies/999999/").status_code == 404


def test_models_page_names_the_credential_variable_but_never_its_value(
    catalogue: dict[str, Any],
) -> None:
    client = client_for(catalogue["admin"])
    upstream = catalogue["upstream"]
    for path in ("/manage/models/", f"/manage/models/upstreams/{upstream.pk}/"):
        page = client.get(path).content.decode()
        assert "TB_UPSTREAM_KEY_PAGES_TEST" in page and SECRET not in page
        assert "within" in page  # the cache delay is stated
    response = client.post(
        f"/manage/models/upstreams/{upstream.pk}/",
        {
            "base_url": "https://llm.example.com/v1",
            "connect_timeout": "5",
            "read_timeout": "120.5",
            "credential_env": "SOMETHING_ELSE",  # not a field of the form: ignored
            "api_key": SECRET,
        },
    )
    assert response.status_code == 302
    upstream.refresh_from_db()
    assert upstream.base_url == "https://llm.example.com/v1"
    assert (upstream.connect_timeout, upstream.read_timeout) == (Decimal(5), Decimal("120.5"))
    assert upstream.active is False  # the unticked box turns it off
    assert upstream.credential_env == "TB_UPSTREAM_KEY_PAGES_TEST"
    event = AuditEvent.objects.get(action="upstream.update")
    assert SECRET not in str(event.after) and event.source == "admin"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"base_url": "ftp://x"}, "base_url"),
        ({"connect_timeout": "0"}, "connect_timeout"),
        ({"read_timeout": "soon"}, "read_timeout"),
    ],
)
def test_upstream_errors_change_nothing(
    catalogue: dict[str, Any], change: dict[str, str], field: str
) -> None:
    client = client_for(catalogue["admin"])
    upstream = catalogue["upstream"]
    before = _catalogue_state()
    data = {"base_url": "https://x.example", "connect_timeout": "5", "read_timeout": "60"}
    response = client.post(f"/manage/models/upstreams/{upstream.pk}/", {**data, **change})
    assert response.status_code == 400
    assert f'id="{field}-error"' in response.content.decode()
    assert _catalogue_state() == before


def test_an_upstreams_region_is_edited_beside_its_url(catalogue: dict[str, Any]) -> None:
    """A Vertex upstream moved to another region: the base URL and the region change together,
    and a region that is not the URL's is refused beside its field with nothing written. An
    OpenAI upstream has no such field."""
    client = client_for(catalogue["admin"])
    location = "https://{0}-aiplatform.googleapis.com/v1/projects/p-1/locations/{0}"
    vertex = Upstream.objects.create(
        name="vertex", kind="vertex", base_url=location.format("us-east5"), api_version="us-east5"
    )
    page = client.get(f"/manage/models/upstreams/{vertex.pk}/").content.decode()
    assert '<label for="api_version">Region</label>' in page and 'value="us-east5"' in page
    plain = client.get(f"/manage/models/upstreams/{catalogue['upstream'].pk}/").content.decode()
    assert 'name="api_version"' not in plain
    form = {"connect_timeout": "5", "read_timeout": "60", "active": "on"}
    before = _catalogue_state()
    moved = {**form, "base_url": location.format("europe-west1"), "api_version": "us-east5"}
    response = client.post(f"/manage/models/upstreams/{vertex.pk}/", moved)
    assert response.status_code == 400
    assert 'id="api_version-error"' in response.content.decode()
    assert "europe-west1" in response.content.decode()
    assert _catalogue_state() == before
    moved["api_version"] = "europe-west1"
    assert client.post(f"/manage/models/upstreams/{vertex.pk}/", moved).status_code == 302
    vertex.refresh_from_db()
    assert (vertex.base_url, vertex.api_version) == (
        location.format("europe-west1"),
        "europe-west1",
    )
    event = AuditEvent.objects.filter(action="upstream.update").latest("pk")
    assert event.after["api_version"] == "europe-west1"


def test_admin_adds_and_edits_a_route(catalogue: dict[str, Any]) -> None:
    client = client_for(catalogue["admin"])
    upstream = catalogue["upstream"]
    form = {
        "public_name": "gpt-4o",
        "upstream": str(upstream.pk),
        "upstream_model": "gpt-4o-2024-11-20",
        "default_max_output_tokens": "2048",
        "active": "on",
    }
    before = _catalogue_state()
    response = client.post("/manage/models/routes/new/", form)  # the name is taken
    assert response.status_code == 400
    assert 'id="public_name-error"' in response.content.decode()
    assert _catalogue_state() == before

    response = client.post("/manage/models/routes/new/", {**form, "public_name": "fast"})
    assert response.status_code == 302
    made = ModelRoute.objects.get(public_name="fast")
    assert (made.upstream_model, made.default_max_output_tokens) == ("gpt-4o-2024-11-20", 2048)
    assert made.active and not made.unmetered_cost

    response = client.post(
        f"/manage/models/routes/{made.pk}/",
        {**form, "public_name": "fast", "default_max_output_tokens": "1,024",
         "unmetered_cost": "on"},
    )  # fmt: skip
    assert response.status_code == 302
    made.refresh_from_db()
    assert (made.default_max_output_tokens, made.unmetered_cost) == (1024, True)
    actions = list(
        AuditEvent.objects.filter(object_type="metering.modelroute").values_list("action", "source")
    )
    assert sorted(actions) == [("route.create", "admin"), ("route.update", "admin")]


def test_admin_adds_a_price_override_in_exact_decimals(catalogue: dict[str, Any]) -> None:
    client = client_for(catalogue["admin"])
    form = {
        "model": "gpt-4o",
        "input_per_mtok": "2.12345678",
        "output_per_mtok": "8.1",
        "cached_input_per_mtok": "",
        "cache_write_per_mtok": "",
        "energy_wh_per_1k_input": "0.3",
        "energy_wh_per_1k_output": "",
        "effective_from": "2026-01-01T00:00",
    }
    before = _catalogue_state()
    response = client.post("/manage/models/prices/new/", form)  # one energy figure only
    assert response.status_code == 400
    assert 'id="energy_wh_per_1k_output-error"' in response.content.decode()
    response = client.post("/manage/models/prices/new/", {**form, "output_per_mtok": "-1"})
    assert response.status_code == 400
    assert _catalogue_state() == before

    response = client.post("/manage/models/prices/new/", {**form, "energy_wh_per_1k_output": "1.2"})
    assert response.status_code == 302
    price = ModelPrice.objects.get(source="override")
    assert price.input_per_mtok == Decimal("2.12345678")
    assert price.output_per_mtok == Decimal("8.1")
    assert price.cached_input_per_mtok is None
    assert (price.energy_wh_per_1k_input, price.energy_wh_per_1k_output) == (
        Decimal("0.3"),
        Decimal("1.2"),
    )
    assert timezone.localtime(price.effective_from).replace(tzinfo=None) == dt.datetime(2026, 1, 1)
    assert AuditEvent.objects.filter(action="price.create", source="admin").count() == 1
    page = client.get("/manage/models/").content.decode()
    assert "2.12345678" in page and "(admin override)" in page  # now the route's price

    # The same model, source and start again is refused beside the form, nothing written.
    before = _catalogue_state()
    response = client.post("/manage/models/prices/new/", {**form, "energy_wh_per_1k_output": "1.2"})
    assert response.status_code == 400 and b"Nothing was saved" in response.content
    assert _catalogue_state() == before


def test_audit_trail_shows_top_ups_key_revokes_and_decisions(catalogue: dict[str, Any]) -> None:
    admin, manager = catalogue["admin"], catalogue["manager"]
    erin = Employee.objects.get(employee_id="E-1")
    other = Employee.objects.create(
        employee_id="E-2", email="e2@example.com", name="Olga", cost_center=catalogue["eng"]
    )
    year = current_fiscal_year()
    allowance = Allowance.objects.create(
        employee=erin, fiscal_year=year, amount=Decimal(1000), prorate=False
    )
    adjustment_create(actor=admin, allowance=allowance, kind=Adjustment.Kind.TOP_UP,
                      amount=Decimal(500), reason="launch week", source="admin")  # fmt: skip
    key, _ = key_create(employee=erin, name="laptop", actor=admin, source="admin")
    key_revoke(key=key, actor=admin, source="admin")
    request = budget_request_create(user=catalogue["employee"], amount=Decimal(200), reason="demo")
    budget_request_decide(actor=manager, request_id=request.pk, approve=True)
    key_create(employee=other, name="olga-key", actor=admin, source="admin")
    assert AuditEvent.objects.count() >= 6

    page = client_for(admin).get(f"/manage/employees/{erin.pk}/").content.decode()
    trail = page.split("<h2>Audit trail</h2>")[1].split("</section>")[0]
    assert "Nothing recorded yet" not in trail
    assert "Created ledger entry" in trail and "launch week" in page
    assert "Revoked API key" in trail and "laptop" in trail
    assert "Decided budget request" in trail and "Created budget request" in trail
    assert "olga-key" not in trail  # another employee's key is not on Erin's page
    finance = client_for(catalogue["finance"]).get(f"/manage/employees/{erin.pk}/")
    finance_trail = finance.content.decode().split("<h2>Audit trail</h2>")[1]
    assert "Created ledger entry" in finance_trail and "API key" not in finance_trail

    empty = client_for(admin).get(f"/manage/employees/{other.pk}/").content.decode()
    assert "Created API key" in empty.split("<h2>Audit trail</h2>")[1]


def test_managers_land_on_their_team_dashboard_led_by_pending_requests_and_employees_see_theirs(
    catalogue: dict[str, Any],
) -> None:
    erin = Employee.objects.get(employee_id="E-1")
    Allowance.objects.create(
        employee=erin, fiscal_year=current_fiscal_year(), amount=Decimal(1000), prorate=False
    )
    manager, employee = catalogue["manager"], catalogue["employee"]

    def pending_on_landing() -> str:
        landing = client_for(manager).get("/", follow=True)
        assert landing.redirect_chain == [("/manage/team/", 302)]
        page = landing.content.decode()
        return page.split('data-testid="pending-approvals"')[1].split("</section>")[0]

    assert "Nothing waiting." in pending_on_landing()
    asked = budget_request_create(user=employee, amount=Decimal(300), reason="a demo")
    assert "a demo" in pending_on_landing()
    assert client_for(employee).get("/")["Location"] == "/me/"  # never their own request
    page = client_for(employee).get("/me/").content.decode()
    assert 'data-testid="my-requests"' in page and "Waiting for your managers" in page

    budget_request_decide(actor=manager, request_id=asked.pk, approve=False, note="Not now")
    assert "Nothing waiting." in pending_on_landing()
    page = client_for(employee).get("/me/").content.decode()
    assert "Declined by manager" in page and "Not now" in page


def test_a_roster_that_deactivates_people_needs_a_confirmation_naming_how_many(
    catalogue: dict[str, Any],
) -> None:
    admin = client_for(catalogue["admin"])
    Employee.objects.create(employee_id="E-2", email="e2@example.com", name="Olga",
                            cost_center=catalogue["eng"])  # fmt: skip
    roster = b"employee_id,email,name,cost_center,allowance\nN-1,n1@example.com,Nora,eng,1000\n"
    upload = SimpleUploadedFile("roster.csv", roster, content_type="text/csv")
    preview = admin.post("/manage/roster/", {"action": "preview", "file": upload})
    page = preview.content.decode()
    assert "2 to deactivate" in page and "Apply and deactivate 2" in page
    assert 'name="confirm_deactivate" value="2"' in page

    refused = admin.post("/manage/roster/", {"action": "apply"})
    assert refused.status_code == 400 and "confirm that 2 employees" in refused.content.decode()
    wrong = admin.post("/manage/roster/", {"action": "apply", "confirm_deactivate": "1"})
    assert wrong.status_code == 400
    assert Employee.objects.filter(active=True).count() == 2  # nothing changed
    assert not Employee.objects.filter(employee_id="N-1").exists()

    done = admin.post("/manage/roster/", {"action": "apply", "confirm_deactivate": "2"})
    assert done.status_code == 302
    assert set(Employee.objects.filter(active=True).values_list("employee_id", flat=True)) == {
        "N-1"
    }


def test_roster_template_and_export_reimport_as_no_change(catalogue: dict[str, Any]) -> None:
    erin = Employee.objects.get(employee_id="E-1")
    Allowance.objects.create(employee=erin, fiscal_year=current_fiscal_year(),
                             amount=Decimal("250000.0000000000"), prorate=False)  # fmt: skip
    admin = client_for(catalogue["admin"])
    template = admin.get("/manage/roster/template.csv").content.decode()
    assert template.splitlines()[0] == (
        "employee_id,email,name,cost_center,allowance,unit,start_date,end_date"
    )
    export = b"".join(admin.get("/manage/roster/export.csv").streaming_content).decode()
    assert export.splitlines()[1] == "E-1,e1@example.com,Erin,eng,250000,tokens,,"
    assert client_for(catalogue["employee"]).get("/manage/roster/export.csv").status_code == 403

    upload = SimpleUploadedFile("roster.csv", export.encode(), content_type="text/csv")
    page = admin.post("/manage/roster/", {"action": "preview", "file": upload}).content.decode()
    assert "0 to create" in page and "0 to update" in page and "0 to deactivate" in page


def test_a_downgrade_to_a_dearer_model_warns_and_saves_only_when_confirmed(
    catalogue: dict[str, Any],
) -> None:
    ModelPrice.objects.create(
        model="gpt-4o-mini", input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.6"),
        effective_from=timezone.now() - dt.timedelta(days=30), source="catalog",
    )  # fmt: skip
    admin, eng = client_for(catalogue["admin"]), catalogue["eng"]
    path = f"/manage/policies/{eng.pk}/"
    assert admin.post(path, GOOD_POLICY).status_code == 302  # gpt-4o → mini: cheaper, no question

    upside_down = {**GOOD_POLICY, "downgrade_from": ["gpt-4o-mini"], "downgrade_to": ["gpt-4o"]}
    warned = admin.post(path, upside_down)
    page = warned.content.decode()
    assert warned.status_code == 400
    assert "gpt-4o-mini → gpt-4o costs 16.7x as much ($0.75 → $12.50 per million" in page
    assert 'name="confirm_pricier"' in page
    assert Policy.objects.get(cost_center=eng).downgrade_models == {"gpt-4o": "gpt-4o-mini"}

    assert admin.post(path, {**upside_down, "confirm_pricier": "yes"}).status_code == 302
    assert Policy.objects.get(cost_center=eng).downgrade_models == {"gpt-4o-mini": "gpt-4o"}
