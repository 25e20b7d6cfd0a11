"""One write path for the model catalogue: every write through the REST API and the pages goes
through `metering.catalog_services`, so each writes its audit event and publishes the routes
invalidation on `tb:invalidate:<db>` (observed on real Redis); a refusal writes and publishes
nothing."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from budgets.models import AuditEvent
from metering.models import ModelPrice, ModelRoute, Upstream
from tests.budgets.conftest import Cast
from tests.metering.test_invalidation import channel, received  # noqa: F401 (fixture)

pytestmark = pytest.mark.django_db(transaction=True)
ROUTES_CHANGED = [{"cache": "routes", "entry": None}]


@pytest.fixture
def catalogue(cast: Cast) -> dict[str, Any]:
    upstream = Upstream.objects.create(
        name="openai", kind="openai", base_url="https://api.openai.com/v1",
        credential_env="OPENAI_API_KEY",
    )  # fmt: skip
    route = ModelRoute.objects.create(
        public_name="gpt-4o", upstream=upstream, upstream_model="gpt-4o-2024-08-06"
    )
    now = timezone.now()
    ModelPrice.objects.create(
        model="gpt-4o-2024-08-06", input_per_mtok=Decimal("2.5"), output_per_mtok=Decimal(10),
        effective_from=now - dt.timedelta(days=30), source="catalog",
    )  # fmt: skip
    scheduled = ModelPrice.objects.create(
        model="gpt-4o-2024-08-06", input_per_mtok=Decimal(2), output_per_mtok=Decimal(8),
        effective_from=now + dt.timedelta(days=10), source="override",
    )  # fmt: skip
    return {"upstream": upstream, "route": route, "scheduled": scheduled}


def _price(**changes: Any) -> dict[str, Any]:
    start = timezone.now() + dt.timedelta(days=20)
    return {"model": "gpt-4o-2024-08-06", "input_per_mtok": "1.25", "output_per_mtok": "5",
            "effective_from": start.isoformat(), **changes}  # fmt: skip


# (method, path, body, expected status, audit action)
API_WRITES = [
    ("post", "/api/v1/upstreams/",
     {"name": "azure", "kind": "openai", "base_url": "https://azure.example/v1",
      "credential_env": "TB_UPSTREAM_KEY_AZURE"}, 201, "upstream.create"),
    ("put", "/api/v1/upstreams/openai/",
     {"name": "openai", "kind": "openai", "base_url": "https://eu.api.openai.com/v1",
      "credential_env": "OPENAI_API_KEY"}, 200, "upstream.update"),
    ("patch", "/api/v1/upstreams/openai/", {"read_timeout": "30"}, 200, "upstream.update"),
    ("post", "/api/v1/model-routes/",
     {"public_name": "fast", "upstream": "openai", "upstream_model": "gpt-4o-mini"}, 201,
     "route.create"),
    ("put", "/api/v1/model-routes/gpt-4o/",
     {"public_name": "gpt-4o", "upstream": "openai", "upstream_model": "gpt-4o-2024-11-20"}, 200,
     "route.update"),
    ("patch", "/api/v1/model-routes/gpt-4o/", {"active": False}, 200, "route.update"),
    ("delete", "/api/v1/model-routes/gpt-4o/", None, 204, "route.delete"),
    ("post", "/api/v1/prices/", _price, 201, "price.create"),
    ("put", "/api/v1/prices/{scheduled}/", _price, 200, "price.update"),
    ("patch", "/api/v1/prices/{scheduled}/", {"output_per_mtok": "7.5"}, 200, "price.update"),
    ("delete", "/api/v1/prices/{scheduled}/", None, 204, "price.delete"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "status", "action"), API_WRITES)
def test_every_api_write_is_audited_and_invalidates_the_routes(
    catalogue: dict[str, Any], api: Any, method: str, path: str, body: Any,
    channel: Any,  # noqa: F811
    status: int, action: str,
) -> None:  # fmt: skip
    url = path.format(scheduled=catalogue["scheduled"].pk)
    payload = body() if callable(body) else body
    response = getattr(api("admin"), method)(url, payload, format="json")
    assert response.status_code == status, response.content
    event = AuditEvent.objects.get()
    assert (event.action, event.source, event.actor_label) == (action, "api", "admin")
    assert (event.before is None) == (method == "post")
    assert (event.after is None) == (method == "delete")
    assert received(channel) == ROUTES_CHANGED


def test_an_unused_upstream_deleted_through_the_api_is_audited(
    catalogue: dict[str, Any],
    api: Any,
    channel: Any,  # noqa: F811
) -> None:
    ModelRoute.objects.all().delete()
    assert api("admin").delete("/api/v1/upstreams/openai/").status_code == 204
    assert not Upstream.objects.exists()
    event = AuditEvent.objects.get()
    assert (event.action, event.before["name"]) == ("upstream.delete", "openai")
    assert received(channel) == ROUTES_CHANGED


def _state() -> list[Any]:
    return [
        list(Upstream.objects.order_by("pk").values()),
        list(ModelRoute.objects.order_by("pk").values()),
        list(ModelPrice.objects.order_by("pk").values()),
    ]


REFUSED = [
    # A price already in force is never edited or removed: a new row supersedes it.
    ("patch", "/api/v1/prices/{catalog}/", {"input_per_mtok": "1"}, 400, "source"),
    ("delete", "/api/v1/prices/{catalog}/", None, 400, "source"),
    ("patch", "/api/v1/prices/{in_force}/", {"input_per_mtok": "1"}, 400, "effective_from"),
    ("delete", "/api/v1/prices/{in_force}/", None, 400, "effective_from"),
    ("patch", "/api/v1/prices/{scheduled}/",
     {"effective_from": "2020-01-01T00:00:00Z"}, 400, "effective_from"),
    ("patch", "/api/v1/prices/{scheduled}/", {"output_per_mtok": "-1"}, 400, "output_per_mtok"),
    ("post", "/api/v1/prices/", {"input_per_mtok": "-1"}, 400, "input_per_mtok"),
    ("patch", "/api/v1/upstreams/openai/", {"credential_env": "DATABASE_URL"}, 400,
     "credential_env"),
    ("patch", "/api/v1/upstreams/openai/", {"connect_timeout": "0"}, 400, "connect_timeout"),
    ("patch", "/api/v1/upstreams/openai/", {"base_url": "ftp://x"}, 400, "base_url"),
    ("patch", "/api/v1/model-routes/gpt-4o/", {"upstream_model": "  "}, 400, "upstream_model"),
    ("delete", "/api/v1/upstreams/openai/", None, 409, "routes"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "status", "field"), REFUSED)
def test_a_refused_api_write_changes_audits_and_publishes_nothing(
    catalogue: dict[str, Any], api: Any, method: str, path: str, body: Any,
    channel: Any,  # noqa: F811
    status: int, field: str,
) -> None:  # fmt: skip
    in_force = ModelPrice.objects.create(
        model="gpt-4o-2024-08-06", input_per_mtok=Decimal(2), output_per_mtok=Decimal(8),
        effective_from=timezone.now() - dt.timedelta(days=1), source="override",
    )  # fmt: skip
    catalog = ModelPrice.objects.get(source="catalog")
    url = path.format(catalog=catalog.pk, in_force=in_force.pk, scheduled=catalogue["scheduled"].pk)
    payload = _price(**body) if method == "post" else body
    before = _state()
    response = getattr(api("admin"), method)(url, payload, format="json")
    assert response.status_code == status, response.content
    assert field in response.json()
    assert _state() == before
    assert not AuditEvent.objects.exists()
    assert received(channel, 0.3) == []


def _page(cast: Cast) -> Client:
    client = Client()
    client.force_login(cast.users["admin"])
    return client


def test_every_page_write_is_audited_and_invalidates_the_routes(
    catalogue: dict[str, Any],
    cast: Cast,
    channel: Any,  # noqa: F811
) -> None:
    client = _page(cast)
    upstream, route = catalogue["upstream"], catalogue["route"]
    route_form = {"public_name": "fast", "upstream": str(upstream.pk),
                  "upstream_model": "gpt-4o-mini", "default_max_output_tokens": "512",
                  "active": "on"}  # fmt: skip
    price_form = {"model": "gpt-4o-mini", "input_per_mtok": "0.15", "output_per_mtok": "0.6",
                  "cached_input_per_mtok": "", "cache_write_per_mtok": "",
                  "energy_wh_per_1k_input": "", "energy_wh_per_1k_output": "",
                  "effective_from": "2026-01-01T00:00"}  # fmt: skip
    writes = [
        ("/manage/models/routes/new/", route_form, "route.create"),
        (f"/manage/models/routes/{route.pk}/",
         {**route_form, "public_name": "gpt-4o", "upstream_model": "gpt-4o-2024-11-20"},
         "route.update"),
        (f"/manage/models/upstreams/{upstream.pk}/",
         {"base_url": "https://eu.api.openai.com/v1", "connect_timeout": "5",
          "read_timeout": "60", "active": "on"}, "upstream.update"),
        ("/manage/models/prices/new/", price_form, "price.create"),
    ]  # fmt: skip
    for path, form, action in writes:
        response = client.post(path, form)
        assert response.status_code == 302, (path, response.content)
        event = AuditEvent.objects.order_by("-pk").first()
        assert event is not None and (event.action, event.source) == (action, "admin")
        assert received(channel) == ROUTES_CHANGED, path
    assert AuditEvent.objects.count() == len(writes)
