"""Upstreams: a credential variable outside the allow-list is refused (and never read), and an
upstream still used by routes is not deleted: 409 naming the routes."""

from __future__ import annotations

import pytest

from budgets.models import AuditEvent
from metering.models import ModelRoute, Upstream
from metering.upstream import UpstreamTarget, upstream_headers
from tests.budgets.conftest import Cast

PROVIDER_SECRET = "sk-provider-secret-123"


def _upstream(api, credential_env: str):  # type: ignore[no-untyped-def]
    return api("admin").post(
        "/api/v1/upstreams/",
        {"name": "evil", "kind": "openai", "base_url": "https://collector.example/v1",
         "credential_env": credential_env},
        format="json",
    )  # fmt: skip


@pytest.mark.parametrize("name", ["TB_SECRET_KEY", "DATABASE_URL", "TB_UPSTREAM_KEY_", "HOME"])
def test_a_server_variable_is_refused(cast: Cast, api, name: str) -> None:
    response = _upstream(api, name)
    assert response.status_code == 400
    message = response.json()["credential_env"][0]
    assert "TB_UPSTREAM_KEY_" in message and "OPENAI_API_KEY" in message
    assert not Upstream.objects.exists()


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "TB_UPSTREAM_KEY_VLLM"])
def test_a_provider_variable_is_accepted(cast: Cast, api, name: str) -> None:
    response = _upstream(api, name)
    assert response.status_code == 201, response.content
    assert Upstream.objects.get().credential_env == name


def _target(credential_env: str) -> UpstreamTarget:
    return UpstreamTarget(
        kind="openai", base_url="https://collector.example/v1", credential_env=credential_env,
        api_version="", connect_timeout=10, read_timeout=60,
    )  # fmt: skip


def test_a_row_naming_a_server_variable_sends_nothing(monkeypatch, settings) -> None:
    """A row written before the allow-list (or straight to the database) gets no secret."""
    monkeypatch.setenv("TB_SECRET_KEY", "the-django-secret")
    monkeypatch.setenv("TB_UPSTREAM_KEY_OK", PROVIDER_SECRET)
    refused = upstream_headers(_target("TB_SECRET_KEY"), {}, "req-1")
    assert "authorization" not in refused
    assert "the-django-secret" not in str(refused)
    allowed = upstream_headers(_target("TB_UPSTREAM_KEY_OK"), {}, "req-2")
    assert allowed["authorization"] == f"Bearer {PROVIDER_SECRET}"
    settings.TB_UPSTREAM_CREDENTIAL_NAMES = ["TB_SECRET_KEY"]  # an operator's explicit choice
    assert upstream_headers(_target("TB_SECRET_KEY"), {}, "req-3")["authorization"] == (
        "Bearer the-django-secret"
    )


def test_deleting_an_upstream_in_use_is_409_naming_its_routes(cast: Cast, api) -> None:
    upstream = Upstream.objects.create(name="openai", kind="openai", base_url="https://x.example")
    for name in ("gpt-b", "gpt-a"):
        ModelRoute.objects.create(public_name=name, upstream=upstream, upstream_model=name)
    audit = AuditEvent.objects.count()
    response = api("admin").delete("/api/v1/upstreams/openai/")
    assert response.status_code == 409
    assert response.json() == {
        "detail": "Upstream openai is used by 2 route(s): point them at another upstream or "
        "delete them first.",
        "routes": ["gpt-a", "gpt-b"],
    }
    assert Upstream.objects.filter(pk=upstream.pk).exists()
    assert ModelRoute.objects.count() == 2 and AuditEvent.objects.count() == audit

    ModelRoute.objects.all().delete()
    assert api("admin").delete("/api/v1/upstreams/openai/").status_code == 204
    assert not Upstream.objects.exists()


def test_only_admins_delete_upstreams(cast: Cast, api) -> None:
    Upstream.objects.create(name="openai", kind="openai", base_url="https://x.example")
    for persona in ("finance", "manager", "employee", "outsider"):
        assert api(persona).delete("/api/v1/upstreams/openai/").status_code == 403
    assert Upstream.objects.count() == 1
