"""The metering REST API: keys, upstreams, routes, prices, usage, and who may see what."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from budgets.models import AuditEvent
from metering.models import ModelPrice, ModelRoute, Upstream, UsageRecord, VirtualKey
from metering.selectors import key_hash
from tests.metering.conftest import Cast

pytestmark = pytest.mark.django_db


def keys_url(employee_id: str) -> str:
    return f"/api/v1/employees/{employee_id}/keys/"


def test_employee_creates_own_key_shown_once_and_stored_hashed(cast: Cast, api) -> None:
    response = api("employee").post(keys_url("E-100"), {"name": "laptop"}, format="json")
    assert response.status_code == 201, response.data
    raw = response.data["key"]
    assert raw.startswith("tb-") and len(raw) >= 3 + 43  # 32 random bytes, urlsafe base64
    key = VirtualKey.objects.get()
    assert key.key_hash == key_hash(raw) and raw not in key.key_hash
    assert key.prefix == raw[:12] and key.employee == cast.employee
    listed = api("employee").get(keys_url("E-100")).data["results"]
    assert [item["name"] for item in listed] == ["laptop"]
    assert "key" not in listed[0] and "key_hash" not in listed[0]
    event = AuditEvent.objects.get(action="key.create")
    assert "key_hash" not in event.after and raw not in str(event.after)


@pytest.mark.parametrize(
    ("persona", "employee_id", "status"),
    [
        ("employee", "E-100", 201),  # themselves
        ("employee", "S-200", 404),  # someone else: not even visible
        ("manager", "E-100", 201),  # their subtree
        ("manager", "S-200", 404),  # outside it
        ("admin", "S-200", 201),
        ("finance", "E-100", 403),  # reads budgets, does not mint keys
        ("outsider", "E-100", 404),
        ("anonymous", "E-100", 401),
    ],
)
def test_who_may_create_keys(cast: Cast, api, persona: str, employee_id: str, status: int) -> None:
    response = api(persona).post(keys_url(employee_id), {"name": "k"}, format="json")
    assert response.status_code in ({status} if status != 401 else {401, 403})
    assert VirtualKey.objects.count() == (1 if status == 201 else 0)


def test_revoke_takes_effect_and_is_audited(cast: Cast, api) -> None:
    created = api("employee").post(keys_url("E-100"), {"name": "k"}, format="json").data
    response = api("employee").post(f"{keys_url('E-100')}{created['id']}/revoke/")
    assert response.status_code == 200 and response.data["revoked"] is True
    assert VirtualKey.objects.get().revoked_at is not None
    assert AuditEvent.objects.filter(action="key.revoke").count() == 1
    # Someone who may not manage the key cannot revoke it.
    other = api("admin").post(keys_url("S-200"), {"name": "theirs"}, format="json").data
    refused = api("employee").post(f"{keys_url('S-200')}{other['id']}/revoke/")
    assert refused.status_code == 404
    assert VirtualKey.objects.get(pk=other["id"]).revoked_at is None


@pytest.mark.parametrize(
    "payload",
    [
        {},  # no name
        {"name": "k", "cap_tokens": -5},
        {"name": "k", "allowed_models": "gpt-4o"},
        {"name": "k", "expires_at": "2001-01-01T00:00:00Z"},
        {"name": "k\x00"},
        {"name": "laptop\x1b[31m"},
        {"name": "k", "default_intent": "re\nview"},
        {"name": "k", "allowed_models": ["gpt\x07"]},
    ],
)
def test_bad_key_requests_are_400_and_create_nothing(cast: Cast, api, payload: dict) -> None:
    response = api("employee").post(keys_url("E-100"), payload, format="json")
    assert response.status_code == 400
    assert VirtualKey.objects.count() == 0


@pytest.mark.parametrize("path", ["/api/v1/upstreams/", "/api/v1/model-routes/", "/api/v1/prices/"])
@pytest.mark.parametrize("persona", ["finance", "manager", "employee", "outsider"])
def test_only_admins_configure_upstreams_routes_and_prices(
    cast: Cast, api, path: str, persona: str
) -> None:
    payloads = {
        "/api/v1/upstreams/": {"name": "x", "kind": "openai", "base_url": "https://example.com"},
        "/api/v1/model-routes/": {"public_name": "m", "upstream": "x", "upstream_model": "m"},
        "/api/v1/prices/": {
            "model": "m",
            "input_per_mtok": "1",
            "output_per_mtok": "2",
            "effective_from": "2026-01-01T00:00:00Z",
        },
    }
    assert api(persona).post(path, payloads[path], format="json").status_code == 403
    read = api(persona).get(path).status_code
    assert read == (200 if path == "/api/v1/prices/" else 403)


def test_admin_configures_an_upstream_route_and_negotiated_price(
    cast: Cast, api, monkeypatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-provider-secret-123")
    admin = api("admin")
    upstream = admin.post(
        "/api/v1/upstreams/",
        {
            "name": "openai",
            "kind": "openai",
            "base_url": "https://api.openai.com/v1",
            "credential_env": "OPENAI_API_KEY",
        },
        format="json",
    )
    assert upstream.status_code == 201, upstream.data
    # The API names the variable and says whether it is set; the provider key never leaves.
    assert upstream.data["credential_configured"] is True
    assert "sk-provider-secret-123" not in str(admin.get("/api/v1/upstreams/").data)
    route = admin.post(
        "/api/v1/model-routes/",
        {"public_name": "gpt-4o", "upstream": "openai", "upstream_model": "gpt-4o-2024-08-06"},
        format="json",
    )
    assert route.status_code == 201, route.data
    price = admin.post(
        "/api/v1/prices/",
        {
            "model": "gpt-4o-2024-08-06",
            "input_per_mtok": "2.00",
            "output_per_mtok": "8.00",
            "effective_from": "2026-01-01T00:00:00Z",
        },
        format="json",
    )
    assert price.status_code == 201 and price.data["source"] == "override"
    assert ModelRoute.objects.get().upstream == Upstream.objects.get(name="openai")
    assert ModelPrice.objects.get().input_per_mtok == Decimal("2.00")
    bad = admin.post(
        "/api/v1/prices/",
        {
            "model": "m",
            "input_per_mtok": "-1",
            "output_per_mtok": "1",
            "effective_from": "2026-01-01T00:00:00Z",
        },
        format="json",
    )
    assert bad.status_code == 400 and ModelPrice.objects.count() == 1
    ftp = admin.post(
        "/api/v1/upstreams/",
        {"name": "bad", "kind": "openai", "base_url": "ftp://x"},
        format="json",
    )
    assert ftp.status_code == 400


def _record(cast: Cast, employee, request_id: str, **fields) -> UsageRecord:
    return UsageRecord.objects.create(
        request_id=request_id,
        created_at=fields.pop("created_at", timezone.now()),
        employee=employee,
        cost_center=employee.cost_center,
        model=fields.pop("model", "gpt-4o-mini"),
        endpoint="chat",
        input_tokens=10,
        output_tokens=5,
        cost=Decimal("0.0000045"),
        status_code=200,
        **fields,
    )


def test_usage_is_scoped_by_role_and_filterable(cast: Cast, api) -> None:
    _record(cast, cast.employee, "req_mine", intent="support")
    _record(cast, cast.other, "req_other")
    _record(
        cast,
        cast.employee,
        "req_old",
        created_at=timezone.now() - dt.timedelta(days=40),
        model="o4-mini",
    )

    def ids(persona: str, query: str = "") -> set[str]:
        response = api(persona).get(f"/api/v1/usage/{query}")
        assert response.status_code == 200
        return {item["request_id"] for item in response.data["results"]}

    assert ids("employee") == {"req_mine", "req_old"}
    assert ids("manager") == {"req_mine", "req_old"}  # eng subtree, not sales
    assert ids("admin") == ids("finance") == {"req_mine", "req_other", "req_old"}
    assert ids("outsider") == set()
    assert ids("admin", "?cost_center=sales") == {"req_other"}
    assert ids("admin", "?model=o4-mini") == {"req_old"}
    assert ids("admin", "?intent=support") == {"req_mine"}
    since = (timezone.now() - dt.timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert ids("admin", f"?since={since}") == {"req_mine", "req_other"}
    assert api("employee").get("/api/v1/usage/req_other/").status_code == 404
    assert api("anonymous").get("/api/v1/usage/").status_code in (401, 403)
