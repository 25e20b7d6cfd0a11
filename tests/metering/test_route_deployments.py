"""A route's deployments and fallback models on the catalogue's write paths (service, API,
Models page, admin) and as the proxy loads them."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from budgets.models import AuditEvent
from metering import catalog_services, selectors
from metering.models import Deployment, ModelPrice, ModelRoute, Upstream

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup() -> dict[str, Any]:
    admin = get_user_model().objects.create_user("admin", "a@example.com", "pw", is_staff=True)
    admin.is_superuser = True
    admin.save()
    openai_up = Upstream.objects.create(name="openai", kind="openai", base_url="https://o.test")
    azure = Upstream.objects.create(
        name="azure", kind="azure_openai", base_url="https://a.test", api_version="2024-10-21"
    )
    for model, price in (("gpt-4o", "2.5"), ("gpt-4o-eu", "3")):
        ModelPrice.objects.create(
            model=model,
            input_per_mtok=Decimal(price),
            output_per_mtok=Decimal(10),
            effective_from=timezone.now() - dt.timedelta(days=1),
            source="catalog",
        )
    route = catalog_services.route_create(
        actor=None,
        data={"public_name": "gpt-4o", "upstream": openai_up, "upstream_model": "gpt-4o"},
    )
    return {"admin": admin, "openai": openai_up, "azure": azure, "route": route}


def test_a_new_route_has_its_upstream_as_first_deployment(setup: dict[str, Any]) -> None:
    deployments = list(setup["route"].deployments.values_list("upstream__name", "upstream_model"))
    assert deployments == [("openai", "gpt-4o")]


def test_setting_deployments_makes_the_best_one_the_route_s_own(setup: dict[str, Any]) -> None:
    catalog_services.route_deployments_set(
        actor=setup["admin"],
        route=setup["route"],
        deployments=[
            {"upstream": setup["openai"], "upstream_model": "gpt-4o", "priority": 1},
            {"upstream": setup["azure"], "upstream_model": "gpt-4o-eu", "weight": 3, "rpm": 60},
        ],
    )
    route = ModelRoute.objects.get(pk=setup["route"].pk)
    assert (route.upstream_id, route.upstream_model) == (setup["azure"].pk, "gpt-4o-eu")
    event = AuditEvent.objects.get(action="route.deployments")
    assert len(event.after["deployments"]) == 2
    info = selectors.route_info_load("gpt-4o")
    assert info is not None
    assert [(d.upstream_name, d.weight, d.priority, d.rpm) for d in info.deployments] == [
        ("azure", 3, 0, 60),
        ("openai", 1, 1, None),
    ]
    assert info.upstream_model == "gpt-4o-eu"  # the first deployment's
    assert [p.model for p in info.deployments[1].prices] == ["gpt-4o"]


@pytest.mark.parametrize(
    ("rows", "field"),
    [
        ([], "deployments"),
        ([{"upstream_model": "x"}], "deployments[0]"),
        ([{"upstream": None, "upstream_model": "x"}], "deployments[0]"),
        ([{"upstream": "openai", "upstream_model": " "}], "deployments[0]"),
        ([{"upstream": "openai", "upstream_model": "x", "weight": 0}], "deployments[0]"),
        ([{"upstream": "openai", "upstream_model": "x", "priority": 101}], "deployments[0]"),
        ([{"upstream": "openai", "upstream_model": "x", "rpm": 0}], "deployments[0]"),
    ],
)
def test_wrong_deployments_are_refused_and_nothing_changes(
    setup: dict[str, Any], rows: list[dict], field: str
) -> None:
    for row in rows:
        if row.get("upstream") == "openai":
            row["upstream"] = setup["openai"]
    with pytest.raises(ValidationError) as refused:
        catalog_services.route_deployments_set(actor=None, route=setup["route"], deployments=rows)
    assert field in refused.value.message_dict
    assert Deployment.objects.filter(route=setup["route"]).count() == 1


def test_changing_the_route_s_upstream_model_changes_its_first_deployment(
    setup: dict[str, Any],
) -> None:
    catalog_services.route_update(
        actor=None, route=setup["route"], data={"upstream_model": "gpt-4o-eu"}
    )
    assert list(setup["route"].deployments.values_list("upstream_model", flat=True)) == [
        "gpt-4o-eu"
    ]


def test_fallback_models_must_be_other_routes(setup: dict[str, Any]) -> None:
    route = setup["route"]
    for wrong in (["gpt-4o"], ["nope"], ["a", "a"]):
        with pytest.raises(ValidationError) as refused:
            catalog_services.route_update(actor=None, route=route, data={"fallback_models": wrong})
        assert "fallback_models" in refused.value.message_dict
    catalog_services.route_create(
        actor=None,
        data={"public_name": "mini", "upstream": setup["openai"], "upstream_model": "gpt-4o"},
    )
    catalog_services.route_update(actor=None, route=route, data={"fallback_models": [" mini"]})
    info = selectors.route_info_load("gpt-4o")
    assert info is not None and info.fallback_models == ("mini",)


def test_a_route_without_deployment_rows_is_served_by_its_own_fields(
    setup: dict[str, Any],
) -> None:
    ModelRoute.objects.create(public_name="bare", upstream=setup["openai"], upstream_model="m")
    info = selectors.route_info_load("bare")
    assert info is not None
    assert [(d.id, d.upstream_model) for d in info.deployments] == [(None, "m")]
    Upstream.objects.filter(pk=setup["openai"].pk).update(active=False)
    assert selectors.route_info_load("bare") is None


def test_deployments_on_switched_off_upstreams_are_left_out(setup: dict[str, Any]) -> None:
    catalog_services.route_deployments_set(
        actor=None,
        route=setup["route"],
        deployments=[
            {"upstream": setup["openai"], "upstream_model": "gpt-4o"},
            {"upstream": setup["azure"], "upstream_model": "gpt-4o-eu", "priority": 1},
        ],
    )
    Upstream.objects.filter(pk=setup["openai"].pk).update(active=False)
    info = selectors.route_info_load("gpt-4o")
    assert info is not None and [d.upstream_name for d in info.deployments] == ["azure"]
    Upstream.objects.filter(pk=setup["azure"].pk).update(active=False)
    assert selectors.route_info_load("gpt-4o") is None


def test_an_upstream_a_deployment_uses_is_not_deleted(setup: dict[str, Any]) -> None:
    catalog_services.route_deployments_set(
        actor=None,
        route=setup["route"],
        deployments=[
            {"upstream": setup["openai"], "upstream_model": "gpt-4o"},
            {"upstream": setup["azure"], "upstream_model": "gpt-4o-eu", "priority": 1},
        ],
    )
    with pytest.raises(catalog_services.UpstreamInUse) as in_use:
        catalog_services.upstream_delete(actor=None, upstream=setup["azure"])
    assert in_use.value.routes == ["gpt-4o"]


def test_the_data_migration_makes_each_route_s_upstream_its_first_deployment(
    setup: dict[str, Any],
) -> None:
    import importlib

    migration = importlib.import_module("metering.migrations.0008_route_first_deployment")
    bare = ModelRoute.objects.create(public_name="old", upstream=setup["azure"], upstream_model="x")
    migration.forwards(apps, None)
    assert list(bare.deployments.values_list("upstream__name", "upstream_model")) == [
        ("azure", "x")
    ]
    assert setup["route"].deployments.count() == 1  # routes with deployments are left alone


def test_the_api_reads_and_replaces_deployments(setup: dict[str, Any]) -> None:
    client = APIClient()
    client.force_authenticate(setup["admin"])
    body = {
        "deployments": [
            {"upstream": "azure", "upstream_model": "gpt-4o-eu", "weight": 2},
            {"upstream": "openai", "upstream_model": "gpt-4o", "priority": 1, "tpm": 100000},
        ],
        "fallback_models": [],
    }
    response = client.patch("/api/v1/model-routes/gpt-4o/", body, format="json")
    assert response.status_code == 200, response.content
    got = client.get("/api/v1/model-routes/gpt-4o/").json()
    assert got["upstream"] == "azure"
    assert [(d["upstream"], d["weight"], d["priority"], d["tpm"]) for d in got["deployments"]] == [
        ("azure", 2, 0, None),
        ("openai", 1, 1, 100000),
    ]
    created = client.post(
        "/api/v1/model-routes/",
        {"public_name": "pooled", "deployments": body["deployments"]},
        format="json",
    )
    assert created.status_code == 201, created.content
    assert len(created.json()["deployments"]) == 2
    refused = client.patch("/api/v1/model-routes/gpt-4o/", {"deployments": []}, format="json")
    assert refused.status_code == 400
    assert Deployment.objects.filter(route=setup["route"]).count() == 2


def test_the_models_page_edits_deployments(setup: dict[str, Any]) -> None:
    client = Client()
    client.force_login(setup["admin"])
    route = setup["route"]
    page = client.get(f"/manage/models/routes/{route.pk}/").content.decode()
    assert 'data-testid="deployments-form"' in page and 'value="gpt-4o"' in page
    form = {
        "deployment_count": "3",
        "d0-upstream": str(setup["openai"].pk),
        "d0-upstream_model": "gpt-4o",
        "d0-weight": "1",
        "d0-priority": "1",
        "d1-upstream": str(setup["azure"].pk),
        "d1-upstream_model": "gpt-4o-eu",
        "d1-weight": "4",
        "d1-priority": "0",
        "d1-rpm": "1,000",
        "d2-upstream_model": "",  # a blank row
    }
    response = client.post(f"/manage/models/routes/{route.pk}/deployments/", form)
    assert response.status_code == 302
    assert list(route.deployments.values_list("upstream__name", "weight", "rpm")) == [
        ("azure", 4, 1000),
        ("openai", 1, None),
    ]
    listing = client.get("/manage/models/").content.decode()
    assert "and 1 more deployment" in listing
    bad = client.post(
        f"/manage/models/routes/{route.pk}/deployments/",
        {"deployment_count": "1", "d0-upstream_model": "x", "d0-weight": "heavy"},
    )
    assert bad.status_code == 400 and 'data-testid="deployment-errors"' in bad.content.decode()
    assert route.deployments.count() == 2


def test_the_admin_edits_deployments_inline(setup: dict[str, Any]) -> None:
    client = Client()
    client.force_login(setup["admin"])
    route = setup["route"]
    first = route.deployments.get()
    form = {
        "public_name": "gpt-4o",
        "default_max_output_tokens": "4096",
        "active": "on",
        "fallback_models": "[]",
        "deployments-TOTAL_FORMS": "2",
        "deployments-INITIAL_FORMS": "1",
        "deployments-MIN_NUM_FORMS": "1",
        "deployments-MAX_NUM_FORMS": "1000",
        "deployments-0-id": str(first.pk),
        "deployments-0-route": str(route.pk),
        "deployments-0-upstream": str(setup["openai"].pk),
        "deployments-0-upstream_model": "gpt-4o",
        "deployments-0-weight": "1",
        "deployments-0-priority": "2",
        "deployments-1-route": str(route.pk),
        "deployments-1-upstream": str(setup["azure"].pk),
        "deployments-1-upstream_model": "gpt-4o-eu",
        "deployments-1-weight": "1",
        "deployments-1-priority": "0",
    }
    response = client.post(f"/admin/metering/modelroute/{route.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    route.refresh_from_db()
    assert (route.upstream_id, route.upstream_model) == (setup["azure"].pk, "gpt-4o-eu")
    assert route.deployments.count() == 2
    event = AuditEvent.objects.get(action="route.deployments")
    assert event.source == "admin" and len(event.after["deployments"]) == 2


def test_the_model_list_has_routes_some_active_upstream_serves(setup: dict[str, Any]) -> None:
    from types import SimpleNamespace

    anyone: Any = SimpleNamespace(may_use=lambda model: True)
    catalog_services.route_deployments_set(
        actor=None,
        route=setup["route"],
        deployments=[
            {"upstream": setup["openai"], "upstream_model": "gpt-4o"},
            {"upstream": setup["azure"], "upstream_model": "gpt-4o-eu", "priority": 1},
        ],
    )
    ModelRoute.objects.create(public_name="bare", upstream=setup["openai"], upstream_model="m")
    names = [r.public_name for r in selectors.routes_for_key(anyone)]
    assert names == ["bare", "gpt-4o"]
    Upstream.objects.filter(pk=setup["openai"].pk).update(active=False)
    assert [r.public_name for r in selectors.routes_for_key(anyone)] == ["gpt-4o"]
    Upstream.objects.filter(pk=setup["azure"].pk).update(active=False)
    assert selectors.routes_for_key(anyone) == []
