"""Reads for the metering pages (keys, recent calls, the model catalogue)."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

from django.db.models import Count, Q, QuerySet

from budgets.models import Employee
from metering.models import ModelPrice, ModelRoute, Upstream, UsageRecord, VirtualKey
from metering.selectors import pick_price

RECENT_CALLS = 15


def keys_of(*, employee: Employee) -> QuerySet[VirtualKey]:
    """The employee's keys, live ones first."""
    return employee.keys.order_by("revoked_at", "-created_at")


def key_model_choices(*, employee: Employee) -> list[str]:
    """Models a new key of the employee may be narrowed to: those their policy allows, or every
    routed model when the policy allows all."""
    from budgets.selectors import policy_resolve

    policy = policy_resolve(employee.cost_center)
    allowed = list(policy.allowed_models or []) if policy is not None else []
    routed = list(ModelRoute.objects.order_by("public_name").values_list("public_name", flat=True))
    return sorted(allowed) if allowed else routed


def recent_calls(*, employee: Employee, limit: int = RECENT_CALLS) -> list[UsageRecord]:
    """The latest calls without any prompt or completion text (the proxy never stores them; the
    `only()` keeps it that way should a column be added)."""
    return list(
        UsageRecord.objects.filter(employee=employee)
        .only(
            "created_at",
            "model",
            "input_tokens",
            "output_tokens",
            "cost",
            "intent",
            "status_code",
            "streamed",
            "estimated",
            "key__name",
        )
        .select_related("key")
        .order_by("-created_at")[:limit]
    )


@dataclass
class RouteRow:
    route: ModelRoute
    price: ModelPrice | None  # in force now, by the proxy's rule (an override beats catalogue)


@dataclass
class Catalogue:
    upstreams: list[Upstream]
    routes: list[RouteRow]
    prices: list[ModelPrice]  # of the routed upstream models, and every override
    other_prices: int  # catalogue rows of models no route serves, not listed
    in_force: set[int]  # ids of the rows in force now


def catalogue_view(*, now: dt.datetime) -> Catalogue:
    """The models page: upstreams (each with whether its credential variable is set in this
    process's environment, never its value), routes with the price each is charged at now,
    and the price rows that matter to them. Three queries whatever the catalogue's size."""
    upstreams = list(Upstream.objects.order_by("name"))
    for upstream in upstreams:
        upstream.credential_set = bool(
            upstream.credential_env and os.environ.get(upstream.credential_env)
        )
    routes = list(
        ModelRoute.objects.select_related("upstream")
        .annotate(deployment_count=Count("deployments"))
        .order_by("public_name")
    )
    routed = {r.upstream_model for r in routes} | {r.public_name for r in routes}
    prices = list(
        ModelPrice.objects.filter(
            Q(model__in=routed) | Q(source=ModelPrice.Source.OVERRIDE)
        ).order_by("model", "-effective_from", "-id")
    )
    by_model: dict[str, list[ModelPrice]] = {}
    for price in prices:
        by_model.setdefault(price.model, []).append(price)
    rows = [RouteRow(r, pick_price(by_model.get(r.upstream_model, []), now)) for r in routes]
    in_force = {
        chosen.pk for rows_ in by_model.values() if (chosen := pick_price(rows_, now)) is not None
    }
    other = ModelPrice.objects.exclude(model__in=routed).exclude(source=ModelPrice.Source.OVERRIDE)
    return Catalogue(upstreams, rows, prices, other.count(), in_force)


def upstreams() -> list[Upstream]:
    return list(Upstream.objects.order_by("name"))


def upstream_model_names() -> list[str]:
    """Upstream model names the routes use, for the price form's suggestions."""
    return sorted(set(ModelRoute.objects.values_list("upstream_model", flat=True)))
