"""State changes of the model catalogue: upstreams, model routes and price overrides.

Each function validates, saves and writes an audit event in one transaction, and raises
`django.core.exceptions.ValidationError` with a field -> messages dict for anything the caller
got wrong, so a page can show the message beside its field and nothing is saved.

These are the catalogue's only write path: the pages and the REST API (`metering.apis`) both
call them, so every change is validated, audited and invalidated the same way.

Credentials never pass through here: an upstream's `credential_env` is the *name* of an
environment variable, set in configuration; these functions never read its value. The name
itself must be on the allow-list (`credential_env_check`): a configured prefix or one of the
configured names, never any other server variable.

The proxy holds routes and their prices in per-process caches (`metering.cache.routes`, at most
`TB_KEY_CACHE_SECONDS`). A change made here drops this process's entries once the transaction
commits and publishes an invalidation (`tb:invalidate:<db>`) so every other proxy process drops
them too, without waiting for their lifetime.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypedDict

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import ProtectedError
from django.utils import timezone

from budgets.audit import audit_record, snapshot
from budgets.invalidation import invalidation_publish
from metering import cache
from metering.models import Deployment, ModelPrice, ModelRoute, ModelRouteAlias, Upstream
from metering.upstream import REGION_IN_HOST, credential_env_allowed

MAX_CONNECT_TIMEOUT = Decimal(120)  # seconds; beyond this a dead upstream holds workers too long
MAX_READ_TIMEOUT = Decimal(3600)


class UpstreamData(TypedDict, total=False):
    name: str
    kind: str
    base_url: str
    credential_env: str
    api_version: str
    connect_timeout: Decimal
    read_timeout: Decimal
    active: bool


class RouteData(TypedDict, total=False):
    public_name: str
    upstream: Upstream
    upstream_model: str
    default_max_output_tokens: int
    unmetered_cost: bool
    active: bool
    fallback_models: list[str]


class DeploymentData(TypedDict, total=False):
    upstream: Upstream
    upstream_model: str
    weight: int
    priority: int
    rpm: int | None
    tpm: int | None


class PriceData(TypedDict, total=False):
    model: str
    provider: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None
    cache_write_per_mtok: Decimal | None
    energy_wh_per_1k_input: Decimal | None
    energy_wh_per_1k_output: Decimal | None
    effective_from: dt.datetime


UPSTREAM_FIELDS = tuple(UpstreamData.__annotations__)
ROUTE_FIELDS = tuple(RouteData.__annotations__)
DEPLOYMENT_FIELDS = tuple(DeploymentData.__annotations__)
PRICE_FIELDS = tuple(PriceData.__annotations__)


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError({field: [message]})


def _known(data: Any, allowed: tuple[str, ...]) -> None:
    unknown = set(data) - set(allowed)
    if unknown:
        raise TypeError(f"cannot set {', '.join(sorted(unknown))}")


def _set(instance: Any, data: dict[str, Any], allowed: tuple[str, ...]) -> list[str]:
    """Set the given fields; return the names of those that changed."""
    _known(data, allowed)
    changed = []
    for name, value in data.items():
        if getattr(instance, name) != value:
            setattr(instance, name, value)
            changed.append(name)
    return changed


def _routes_changed() -> None:
    transaction.on_commit(cache.routes.invalidate)
    invalidation_publish(cache="routes")  # every other proxy process, once committed


def credential_env_check(name: str) -> None:
    """Refuse a credential variable outside the allow-list (empty: the upstream needs no key)."""
    if name and not credential_env_allowed(name):
        allowed = ", ".join(settings.TB_UPSTREAM_CREDENTIAL_NAMES)
        raise _invalid(
            "credential_env",
            f"Name a variable starting with {settings.TB_UPSTREAM_CREDENTIAL_PREFIX} "
            f"(TB_UPSTREAM_CREDENTIAL_PREFIX) or one of: {allowed} "
            "(TB_UPSTREAM_CREDENTIAL_NAMES).",
        )


class UpstreamInUse(Exception):
    """The upstream still serves routes (named in `routes`): it is not deleted."""

    def __init__(self, upstream: Upstream, routes: list[str]) -> None:
        super().__init__(f"Upstream {upstream.name} is used by {len(routes)} route(s).")
        self.routes = routes


_VERTEX_PATH = re.compile(r"/v1(?:beta1)?/projects/[^/]+/locations/([^/]+)/?")


def _check_vertex(upstream: Upstream) -> None:
    """A Vertex AI upstream's base URL names the project and the region
    (`https://{region}-aiplatform.googleapis.com/v1/projects/{project}/locations/{region}`)
    and its `api_version` is that region."""
    path = urllib.parse.urlsplit(upstream.base_url).path
    found = _VERTEX_PATH.fullmatch(path)
    if found is None:
        raise _invalid(
            "base_url",
            "Use the Vertex AI location URL: "
            "https://{region}-aiplatform.googleapis.com/v1/projects/{project}/locations/{region}.",
        )
    if not upstream.api_version:
        raise _invalid("api_version", "Set the Vertex AI region (us-east5, europe-west1, global).")
    if found.group(1) != upstream.api_version:
        raise _invalid(
            "api_version", f"The region must be the base URL's location ({found.group(1)})."
        )


_AWS_REGION = re.compile(r"[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}")


def _check_bedrock(upstream: Upstream) -> None:
    """A Bedrock upstream's region (`api_version`), when set, is an AWS region, and the base
    URL's own (`bedrock-runtime.{region}.amazonaws.com`) when the URL names one: a signature
    for one region is refused by another."""
    region = upstream.api_version
    if not region:
        return
    if not _AWS_REGION.fullmatch(region):
        raise _invalid("api_version", "Use an AWS region, e.g. us-east-1 or eu-west-1.")
    found = REGION_IN_HOST.search(urllib.parse.urlsplit(upstream.base_url).netloc)
    if found is not None and found.group(1) != region:
        raise _invalid(
            "api_version", f"The region must be the base URL's ({found.group(1)}), or empty."
        )


def _check_upstream(upstream: Upstream) -> None:
    credential_env_check(upstream.credential_env)
    if not upstream.base_url.startswith(("http://", "https://")):
        raise _invalid("base_url", "Use an http(s) URL.")
    if upstream.kind in (Upstream.Kind.VERTEX, Upstream.Kind.VERTEX_ANTHROPIC):
        _check_vertex(upstream)
    if upstream.kind in (Upstream.Kind.BEDROCK, Upstream.Kind.BEDROCK_ANTHROPIC):
        _check_bedrock(upstream)
    if not 0 < upstream.connect_timeout <= MAX_CONNECT_TIMEOUT:
        raise _invalid("connect_timeout", f"More than 0 and at most {MAX_CONNECT_TIMEOUT} s.")
    if not 0 < upstream.read_timeout <= MAX_READ_TIMEOUT:
        raise _invalid("read_timeout", f"More than 0 and at most {MAX_READ_TIMEOUT} s.")


def upstream_create(*, actor: Any, data: UpstreamData, source: str = "api") -> Upstream:
    """Add an upstream; its credential variable (a name, never a value) must be allowed."""
    _known(data, UPSTREAM_FIELDS)
    upstream = Upstream(**data)
    return _create(upstream, _check_upstream, "upstream.create", actor, source)


def upstream_update(
    *, actor: Any, upstream: Upstream, data: UpstreamData, source: str = "api"
) -> Upstream:
    """Change an upstream's fields; a new credential variable must be on the allow-list."""
    return _update(
        upstream, dict(data), UPSTREAM_FIELDS, _check_upstream, "upstream.update", actor, source
    )


def upstream_delete(*, actor: Any, upstream: Upstream, source: str = "api") -> None:
    """Delete an upstream no route uses; one in use raises `UpstreamInUse` naming its routes
    (the routes' foreign key protects it, so a route added meanwhile refuses the delete too)."""

    def in_use() -> UpstreamInUse:
        names = ModelRoute.objects.filter(
            models.Q(upstream=upstream) | models.Q(deployments__upstream=upstream)
        ).values_list("public_name", flat=True)
        return UpstreamInUse(upstream, sorted(set(names)))

    try:
        with transaction.atomic():
            if upstream.routes.exists() or upstream.deployments.exists():
                raise in_use()
            _delete(upstream, "upstream.delete", actor, source)
    except ProtectedError:
        raise in_use() from None


def _create[M: models.Model](
    instance: M, check: Callable[[M], None], action: str, actor: Any, source: str
) -> M:
    """Validate, save and audit a new row in one transaction."""
    with transaction.atomic():
        check(instance)
        instance.full_clean()
        instance.save()
        audit_record(
            actor=actor, action=action, obj=instance, after=snapshot(instance), source=source
        )
        _routes_changed()
    return instance


def _delete(instance: models.Model, action: str, actor: Any, source: str) -> None:
    """Audit and delete a row in one transaction (the event keeps the row's last state)."""
    with transaction.atomic():
        before = snapshot(instance)
        audit_record(actor=actor, action=action, obj=instance, before=before, source=source)
        instance.delete()
        _routes_changed()


def _update[M: models.Model](
    instance: M,
    data: dict[str, Any],
    fields: Any,
    check: Callable[[M], None],
    action: str,
    actor: Any,
    source: str,
) -> M:
    """Lock the row, apply `data`, validate, save and audit; a no-op change writes nothing."""
    with transaction.atomic():
        locked = type(instance)._default_manager.select_for_update().get(pk=instance.pk)
        before = snapshot(locked)
        if not _set(locked, data, fields):
            return locked
        check(locked)
        locked.full_clean()
        locked.save()
        audit_record(
            actor=actor,
            action=action,
            obj=locked,
            before=before,
            after=snapshot(locked),
            source=source,
        )
        _routes_changed()
    return locked


def _check_route(route: ModelRoute) -> None:
    route.public_name = route.public_name.strip()
    route.upstream_model = route.upstream_model.strip()
    if not route.public_name:
        raise _invalid("public_name", "Give the name clients ask for, e.g. gpt-4o-mini.")
    if not route.upstream_model:
        raise _invalid("upstream_model", "Give the model name the upstream expects.")
    if ModelRouteAlias.objects.filter(name=route.public_name).exists():
        raise _invalid("public_name", "Already an alias of another route.")
    if not 0 < route.default_max_output_tokens <= 1_000_000:
        raise _invalid("default_max_output_tokens", "From 1 to 1,000,000 tokens.")
    _check_fallbacks(route)


def _check_fallbacks(route: ModelRoute) -> None:
    """Fallback models: public names of other routes, each once, at most MAX_FALLBACKS."""
    names = route.fallback_models
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _invalid("fallback_models", "A list of model names.")
    names = [n.strip() for n in names]
    if len(names) > MAX_FALLBACKS or len(set(names)) != len(names):
        raise _invalid("fallback_models", f"At most {MAX_FALLBACKS} different model names.")
    if route.public_name in names:
        raise _invalid("fallback_models", "A route cannot fall back to itself.")
    known = set(
        ModelRoute.objects.filter(public_name__in=names).values_list("public_name", flat=True)
    )
    missing = [n for n in names if n not in known]
    if missing:
        raise _invalid("fallback_models", "No route named " + ", ".join(missing))
    route.fallback_models = names


MAX_FALLBACKS = 5
MAX_DEPLOYMENTS = 20


def route_create(*, actor: Any, data: RouteData, source: str = "api") -> ModelRoute:
    """Create a route and its first deployment (its upstream and upstream model)."""
    _known(data, ROUTE_FIELDS)
    with transaction.atomic():
        route = _create(ModelRoute(**data), _check_route, "route.create", actor, source)
        Deployment.objects.create(
            route=route, upstream=route.upstream, upstream_model=route.upstream_model
        )
    return route


def route_update(
    *, actor: Any, route: ModelRoute, data: RouteData, source: str = "api"
) -> ModelRoute:
    """Update a route; a new upstream or upstream model is its first deployment's too."""
    with transaction.atomic():
        updated = _update(
            route, dict(data), ROUTE_FIELDS, _check_route, "route.update", actor, source
        )
        first = updated.deployments.first()
        if first is None:
            Deployment.objects.create(
                route=updated, upstream=updated.upstream, upstream_model=updated.upstream_model
            )
        elif (first.upstream_id, first.upstream_model) != (
            updated.upstream_id,
            updated.upstream_model,
        ):
            first.upstream, first.upstream_model = updated.upstream, updated.upstream_model
            first.save(update_fields=["upstream", "upstream_model"])
    return updated


def _deployment_row(route: ModelRoute, index: int, data: DeploymentData) -> Deployment:
    _known(data, DEPLOYMENT_FIELDS)
    field = f"deployments[{index}]"
    upstream = data.get("upstream")
    if not isinstance(upstream, Upstream):
        raise _invalid(field, "Choose an upstream.")
    model = str(data.get("upstream_model") or "").strip()
    if not model or len(model) > 200:
        raise _invalid(field, "Give the model name the upstream expects (at most 200 characters).")
    weight, priority = data.get("weight", 1), data.get("priority", 0)
    if not isinstance(weight, int) or not 1 <= weight <= 1000:
        raise _invalid(field, "A weight from 1 to 1000.")
    if not isinstance(priority, int) or not 0 <= priority <= 100:
        raise _invalid(field, "A priority from 0 (first) to 100.")
    for name in ("rpm", "tpm"):
        value = data.get(name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise _invalid(field, f"{name}: a positive whole number, or none.")
    return Deployment(
        route=route,
        upstream=upstream,
        upstream_model=model,
        weight=weight,
        priority=priority,
        rpm=data.get("rpm"),
        tpm=data.get("tpm"),
    )


def _deployments_snapshot(route: ModelRoute) -> list[dict[str, Any]]:
    return [
        {
            "upstream": d.upstream_id,
            "upstream_model": d.upstream_model,
            "weight": d.weight,
            "priority": d.priority,
            "rpm": d.rpm,
            "tpm": d.tpm,
        }
        for d in route.deployments.all()
    ]


def route_deployments_set(
    *, actor: Any, route: ModelRoute, deployments: list[DeploymentData], source: str = "api"
) -> list[Deployment]:
    """Replace the route's deployments (at least one). The route's own upstream and upstream
    model become the first deployment's (best priority, then the order given)."""
    if not deployments:
        raise _invalid("deployments", "A route needs at least one deployment.")
    if len(deployments) > MAX_DEPLOYMENTS:
        raise _invalid("deployments", f"At most {MAX_DEPLOYMENTS} deployments.")
    with transaction.atomic():
        locked = ModelRoute.objects.select_for_update().get(pk=route.pk)
        rows = [_deployment_row(locked, i, data) for i, data in enumerate(deployments)]
        before = _deployments_snapshot(locked)
        locked.deployments.all().delete()
        Deployment.objects.bulk_create(rows)
        after = _deployments_snapshot(locked)
        first = locked.deployments.first()
        assert first is not None
        if (locked.upstream_id, locked.upstream_model) != (first.upstream_id, first.upstream_model):
            locked.upstream_id, locked.upstream_model = first.upstream_id, first.upstream_model
            locked.save(update_fields=["upstream", "upstream_model"])
        if before != after:
            audit_record(
                actor=actor,
                action="route.deployments",
                obj=locked,
                before={"deployments": before},
                after={"deployments": after},
                source=source,
            )
        _routes_changed()
    return list(locked.deployments.select_related("upstream"))


def route_delete(*, actor: Any, route: ModelRoute, source: str = "api") -> None:
    """Delete a route: clients asking for its name get the unknown-model error from then on
    (usage records keep the model names they were charged under)."""
    _delete(route, "route.delete", actor, source)


def route_aliases_set(
    *, actor: Any, route: ModelRoute, names: list[str], source: str = "api"
) -> list[str]:
    """Replace the route's aliases. A name that is another route's public name or alias, or
    the route's own public name, is refused and nothing changes."""
    wanted = sorted({name.strip() for name in names})
    for name in wanted:
        if not name or not cache.name_valid(name, max_length=cache.MODEL_NAME_MAX_LENGTH):
            raise _invalid("aliases", f"'{name}' cannot be a model name.")
    with transaction.atomic():
        locked = ModelRoute.objects.select_for_update().get(pk=route.pk)
        if locked.public_name in wanted:
            raise _invalid("aliases", f"'{locked.public_name}' is this route's own name.")
        taken = set(
            ModelRoute.objects.filter(public_name__in=wanted).values_list("public_name", flat=True)
        )
        taken |= set(
            ModelRouteAlias.objects.filter(name__in=wanted)
            .exclude(route=locked)
            .values_list("name", flat=True)
        )
        if taken:
            raise _invalid(
                "aliases", "Already the name of another route: " + ", ".join(sorted(taken))
            )
        before = sorted(locked.aliases.values_list("name", flat=True))
        if before == wanted:
            return wanted
        locked.aliases.exclude(name__in=wanted).delete()
        ModelRouteAlias.objects.bulk_create(
            [ModelRouteAlias(name=name, route=locked) for name in wanted if name not in before]
        )
        audit_record(
            actor=actor,
            action="route.aliases",
            obj=locked,
            before={"aliases": before},
            after={"aliases": wanted},
            source=source,
        )
        _routes_changed()
    return wanted


def _check_price(price: ModelPrice) -> None:
    price.model = price.model.strip()
    if not price.model:
        raise _invalid("model", "Give the upstream model name the price is for.")
    for name in (
        "input_per_mtok",
        "output_per_mtok",
        "cached_input_per_mtok",
        "cache_write_per_mtok",
        "energy_wh_per_1k_input",
        "energy_wh_per_1k_output",
    ):
        value = getattr(price, name)
        if value is not None and (not value.is_finite() or value < 0):
            raise _invalid(name, "A number, 0 or more.")
    if (price.energy_wh_per_1k_input is None) != (price.energy_wh_per_1k_output is None):
        raise _invalid("energy_wh_per_1k_output", "Give both energy coefficients, or neither.")
    if price.effective_from is None or price.effective_from.tzinfo is None:
        raise _invalid("effective_from", "Give the moment the price starts.")


def price_override_create(*, actor: Any, data: PriceData, source: str = "api") -> ModelPrice:
    """Append a negotiated price: an override row wins over catalogue rows from its start
    (see `metering.selectors.pick_price`). Price rows in force are never edited, so past calls
    keep the price they were charged at; a new row supersedes one."""
    _known(data, PRICE_FIELDS)
    price = ModelPrice(**data, source=ModelPrice.Source.OVERRIDE)
    return _create(price, _check_price, "price.create", actor, source)


def _check_scheduled(price: ModelPrice) -> None:
    """Only an override not yet in force may change or go: a price that has applied to calls
    stays as it was (supersede it with a new row instead)."""
    if price.source != ModelPrice.Source.OVERRIDE:
        raise _invalid("source", "Catalogue prices come from the price sync; add an override.")
    if price.effective_from <= timezone.now():
        raise _invalid(
            "effective_from",
            "This price is already in force: add a new price from the moment it should change.",
        )


def price_override_update(
    *, actor: Any, price: ModelPrice, data: PriceData, source: str = "api"
) -> ModelPrice:
    """Correct an override that is not yet in force (its new start must be ahead too)."""
    _check_scheduled(price)

    def check(locked: ModelPrice) -> None:
        _check_price(locked)
        _check_scheduled(locked)

    return _update(price, dict(data), PRICE_FIELDS, check, "price.update", actor, source)


def price_override_delete(*, actor: Any, price: ModelPrice, source: str = "api") -> None:
    """Withdraw an override that is not yet in force."""
    with transaction.atomic():
        locked = ModelPrice.objects.select_for_update().get(pk=price.pk)
        _check_scheduled(locked)
        _delete(locked, "price.delete", actor, source)
