"""Route aliases: several public names for one route, through the API, the selectors and the
route cache; a refused alias change writes nothing."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from budgets.models import AuditEvent
from metering import cache
from metering.models import ModelPrice, ModelRoute, ModelRouteAlias, Upstream
from metering.selectors import route_info_load
from tests.metering.conftest import Cast

pytestmark = pytest.mark.django_db


@pytest.fixture
def routes(cast: Cast) -> dict[str, ModelRoute]:
    up = Upstream.objects.create(name="anthropic", kind="anthropic", base_url="https://a.test")
    priced = ModelRoute.objects.create(
        public_name="claude-sonnet-4-5", upstream=up, upstream_model="claude-sonnet-4-5"
    )
    unpriced = ModelRoute.objects.create(
        public_name="claude-unpriced", upstream=up, upstream_model="claude-unpriced"
    )
    ModelPrice.objects.create(
        model="claude-sonnet-4-5",
        input_per_mtok=Decimal("3"),
        output_per_mtok=Decimal("15"),
        effective_from=timezone.now() - dt.timedelta(days=1),
    )
    return {"priced": priced, "unpriced": unpriced}


def test_admin_sets_aliases_and_each_name_finds_the_route(cast: Cast, api, routes) -> None:
    admin = api("admin")
    url = "/api/v1/model-routes/claude-sonnet-4-5/"
    reply = admin.patch(url, {"aliases": ["claude-sonnet-4-5-20250929", "sonnet"]}, format="json")
    assert reply.status_code == 200, reply.data
    assert reply.data["aliases"] == ["claude-sonnet-4-5-20250929", "sonnet"]
    assert admin.get(url).data["aliases"] == ["claude-sonnet-4-5-20250929", "sonnet"]
    assert AuditEvent.objects.filter(action="route.aliases").count() == 1
    for name in ("claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "sonnet"):
        info = route_info_load(name)
        assert info is not None
        # Every name is served by one route and recorded under its own public name.
        assert (info.public_name, info.upstream_model) == ("claude-sonnet-4-5", "claude-sonnet-4-5")
        assert info.price_at(timezone.now()).input_per_mtok == Decimal("3")
    cache.routes.invalidate()
    assert cache.routes.get("sonnet").public_name == "claude-sonnet-4-5"
    # Replacing the list drops the names left out.
    reply = admin.patch(url, {"aliases": ["sonnet"]}, format="json")
    assert reply.data["aliases"] == ["sonnet"]
    assert route_info_load("claude-sonnet-4-5-20250929") is None


def test_an_alias_of_an_unpriced_route_has_no_price(cast: Cast, api, routes) -> None:
    reply = api("admin").patch(
        "/api/v1/model-routes/claude-unpriced/", {"aliases": ["cheap"]}, format="json"
    )
    assert reply.status_code == 200
    info = route_info_load("cheap")
    assert info.public_name == "claude-unpriced"
    assert info.price_at(timezone.now()) is None  # the proxy refuses a priced call for it


def test_inactive_route_hides_its_aliases(routes) -> None:
    ModelRouteAlias.objects.create(name="sonnet", route=routes["priced"])
    ModelRoute.objects.filter(pk=routes["priced"].pk).update(active=False)
    assert route_info_load("sonnet") is None


@pytest.mark.parametrize(
    ("route", "aliases"),
    [
        ("claude-sonnet-4-5", ["claude-unpriced"]),  # another route's public name
        ("claude-sonnet-4-5", ["claude-sonnet-4-5"]),  # its own name
        ("claude-sonnet-4-5", ["taken"]),  # another route's alias
        ("claude-sonnet-4-5", ["bad\x00name"]),
        ("claude-sonnet-4-5", ["x" * 201]),
    ],
)
def test_refused_aliases_change_nothing(cast: Cast, api, routes, route, aliases) -> None:
    ModelRouteAlias.objects.create(name="taken", route=routes["unpriced"])
    ModelRouteAlias.objects.create(name="kept", route=routes["priced"])
    events = AuditEvent.objects.count()
    reply = api("admin").patch(
        f"/api/v1/model-routes/{route}/", {"aliases": aliases}, format="json"
    )
    assert reply.status_code == 400, reply.data
    assert "aliases" in reply.data
    assert sorted(ModelRouteAlias.objects.values_list("name", "route__public_name")) == [
        ("kept", "claude-sonnet-4-5"),
        ("taken", "claude-unpriced"),
    ]
    assert AuditEvent.objects.count() == events


def test_a_new_route_cannot_take_an_alias_name(cast: Cast, api, routes) -> None:
    ModelRouteAlias.objects.create(name="sonnet", route=routes["priced"])
    reply = api("admin").post(
        "/api/v1/model-routes/",
        {"public_name": "sonnet", "upstream": "anthropic", "upstream_model": "x"},
        format="json",
    )
    assert reply.status_code == 400
    assert not ModelRoute.objects.filter(public_name="sonnet").exists()


def test_only_admins_set_aliases(cast: Cast, api, routes) -> None:
    reply = api("manager").patch(
        "/api/v1/model-routes/claude-sonnet-4-5/", {"aliases": ["sonnet"]}, format="json"
    )
    assert reply.status_code == 403
    assert not ModelRouteAlias.objects.exists()


def test_demo_routes_cover_the_clis_default_models(monkeypatch) -> None:
    from django.core.management import call_command

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    call_command("seed_demo", stdout=open("/dev/null", "w"))  # noqa: SIM115
    now = timezone.now()
    # Claude Code 2.1.332's default and rewrite targets; Codex 0.171.0's default; dated names.
    for name, public in [
        ("claude-opus-5-5", "claude-opus-5-5"),
        ("claude-sonnet-5-5", "claude-sonnet-5-5"),
        ("claude-haiku-5-5", "claude-haiku-5-5"),
        ("gpt-6.2-sol", "gpt-6.2-sol"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ]:
        info = route_info_load(name)
        assert info is not None and info.public_name == public, name
        assert info.price_at(now) is not None, name
