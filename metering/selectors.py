"""Reads for the proxy: what a key may do, where a model goes, and what it costs.

The loaders here run on a cache miss (see metering/cache.py); each returns a frozen snapshot
so the hot path never touches the ORM while the cache is warm.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from budgets.balance import LimitRule, current_fiscal_year
from budgets.models import Allowance, CostCenter, Employee, Policy
from budgets.selectors import policy_nearest
from metering.deployments import DeploymentInfo
from metering.models import Deployment, Intent, ModelPrice, ModelRoute, Upstream, VirtualKey
from metering.upstream import UpstreamTarget


def key_hash(raw_key: str) -> str:
    """Keys carry 256 random bits, so one fast hash is enough (no password hashing)."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    key_id: int
    employee_id: int
    employee_active: bool
    employee_start: dt.date | None
    employee_end: dt.date | None
    cost_center_id: int
    revoked: bool
    expires_at: dt.datetime | None
    key_models: frozenset[str]
    policy_models: frozenset[str]
    per_request_token_cap: int | None
    clamp: bool
    rule: LimitRule
    capped_cost_center_ids: tuple[int, ...]
    cap_tokens: int | None
    default_intent: str
    allowance_unit: str  # of this fiscal year's allowance ("tokens" when there is none)
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    # What the Redis quota backend needs besides the counters; None without an allowance.
    # Also loaded without Redis when the policy downgrades models (the share used needs it).
    limits: QuotaLimits | None = None
    # Budget-aware routing from the policy: (model, cheaper stand-in) pairs, and the share of
    # the allowance (percent) past which calls for the model go to its stand-in.
    downgrades: tuple[tuple[str, str], ...] = ()
    downgrade_at_percent: int | None = None

    def usable(self, now: dt.datetime) -> bool:
        """Not revoked or expired, and its owner is active and still employed."""
        return (
            not self.revoked
            and self.employee_active
            and (self.expires_at is None or self.expires_at > now)
            and (self.employee_end is None or self.employee_end >= timezone.localdate(now))
            and (self.employee_start is None or self.employee_start <= timezone.localdate(now))
        )

    def may_use(self, model: str) -> bool:
        if self.key_models and model not in self.key_models:
            return False
        return not self.policy_models or model in self.policy_models

    def downgrade_for(self, model: str) -> str | None:
        for source, target in self.downgrades:
            if source == model:
                return target
        return None

    def employee(self) -> Employee:
        """An unsaved stand-in carrying what the ledger reads (id and employment dates)."""
        return Employee(
            id=self.employee_id, start_date=self.employee_start, end_date=self.employee_end
        )


@dataclass(frozen=True)
class QuotaLimits:
    """The budgets a call draws on, as of the moment the key was loaded (cached like the key,
    so an adjustment or a cap change reaches every process within the cache bound).

    The Redis quota backend keeps only the counters (used, reserved); the limits travel with
    each call, which keeps Redis state rebuildable from the database at any time."""

    allowance_id: int
    fiscal_year: int
    unit: str
    limit: Decimal  # released + adjustments, with the soft overage applied
    period_end: dt.date  # exclusive end of the fiscal year: counters expire after it
    # Capped cost centers (id, code, cap in USD), ascending id.
    cost_center_caps: tuple[tuple[int, str, Decimal], ...]
    granted: Decimal = Decimal(0)  # released + adjustments: the allowance proper, no overage


def quota_limits_load(
    employee: Employee, rule: LimitRule, chain: list[CostCenter]
) -> QuotaLimits | None:
    from budgets.balance import allowance_released, today
    from budgets.fiscal import fiscal_year_bounds

    day = today()
    fiscal_year = current_fiscal_year(day)
    allowance = Allowance.objects.filter(employee=employee, fiscal_year=fiscal_year).first()
    if allowance is None:
        return None
    _, released = allowance_released(allowance, employee, day)
    granted = released + allowance.adjustments_total
    return QuotaLimits(
        allowance_id=allowance.pk,
        fiscal_year=fiscal_year,
        unit=allowance.unit,
        limit=rule.limit(granted, allowance.unit),
        granted=granted,
        period_end=fiscal_year_bounds(fiscal_year, settings.TB_FISCAL_YEAR_START_MONTH)[1],
        cost_center_caps=tuple(
            sorted((n.pk, n.code, n.annual_cap) for n in chain if n.annual_cap is not None)
        ),
    )


def cost_center_chain(cost_center_id: int) -> list[CostCenter]:
    """The cost center and its ancestors, nearest first."""
    chain: list[CostCenter] = []
    seen: set[int] = set()
    current: int | None = cost_center_id
    while current is not None and current not in seen:
        seen.add(current)
        node = CostCenter.objects.select_related("policy").filter(pk=current).first()
        if node is None:
            break
        chain.append(node)
        current = node.parent_id
    return chain


def policy_from_chain(chain: list[CostCenter]) -> Policy | None:
    """The policy in force for the first of `chain` (`budgets.selectors.policy_nearest`)."""
    if not chain:
        return None
    parents = {node.pk: node.parent_id for node in chain}
    own = {node.pk: node.policy for node in chain if hasattr(node, "policy")}
    return policy_nearest(chain[0].pk, parents=parents, own=own)


def key_info_load(hashed: str) -> KeyInfo | None:
    key = VirtualKey.objects.select_related("employee").filter(key_hash=hashed).first()
    if key is None:
        return None
    employee = key.employee
    chain = cost_center_chain(employee.cost_center_id)
    policy = policy_from_chain(chain)
    rule = LimitRule.from_policy(policy)
    downgrades = tuple(sorted((policy.downgrade_models or {}).items())) if policy else ()
    limits = (
        quota_limits_load(employee, rule, chain)
        if settings.REDIS_URL or (downgrades and policy and policy.downgrade_at_percent)
        else None
    )
    return KeyInfo(
        key_id=key.pk,
        employee_id=employee.pk,
        employee_active=employee.active,
        employee_start=employee.start_date,
        employee_end=employee.end_date,
        cost_center_id=employee.cost_center_id,
        revoked=key.revoked_at is not None,
        expires_at=key.expires_at,
        key_models=frozenset(key.allowed_models or ()),
        policy_models=frozenset(policy.allowed_models or ()) if policy else frozenset(),
        per_request_token_cap=policy.per_request_token_cap if policy else None,
        clamp=policy is None or policy.over_budget == Policy.OverBudget.CLAMP,
        rule=rule,
        # Lock order for the ledger: ascending id (see metering.quota.db).
        capped_cost_center_ids=tuple(sorted(n.pk for n in chain if n.annual_cap is not None)),
        cap_tokens=key.cap_tokens,
        default_intent=key.default_intent,
        allowance_unit=limits.unit
        if limits
        else Allowance.objects.filter(employee=employee, fiscal_year=current_fiscal_year())
        .values_list("unit", flat=True)
        .first()
        or "tokens",
        requests_per_minute=policy.requests_per_minute if policy else None,
        tokens_per_minute=policy.tokens_per_minute if policy else None,
        limits=limits,
        downgrades=downgrades,
        downgrade_at_percent=policy.downgrade_at_percent if policy else None,
    )


@dataclass(frozen=True)
class IntentRoute:
    """Where `auto:<intent>` goes: the models to try, best first (the value report's
    recommendation, then the intent's default model)."""

    intent: str
    candidates: tuple[str, ...]


def intent_route_load(name: str) -> IntentRoute | None:
    intent = Intent.objects.filter(name=name).values("recommended_model", "default_model").first()
    if intent is None:
        return None
    candidates = tuple(
        dict.fromkeys(m for m in (intent["recommended_model"], intent["default_model"]) if m)
    )
    return IntentRoute(intent=name, candidates=candidates)


@dataclass(frozen=True)
class RouteInfo:
    public_name: str
    upstream_id: int
    upstream_name: str
    upstream_model: str
    target: UpstreamTarget
    default_max_output_tokens: int
    unmetered_cost: bool
    prices: tuple[ModelPrice, ...]  # in force now or later, ascending effective_from
    # Every deployment of the route; the fields above are the first one's (or, once the proxy
    # chose one, the chosen one's: `for_deployment`).
    deployments: tuple[DeploymentInfo, ...] = ()
    fallback_models: tuple[str, ...] = ()
    deployment: DeploymentInfo | None = None

    def for_deployment(self, d: DeploymentInfo) -> RouteInfo:
        """This route as served by `d`: its upstream, model and prices."""
        return dataclasses.replace(
            self,
            upstream_id=d.upstream_id,
            upstream_name=d.upstream_name,
            upstream_model=d.upstream_model,
            target=d.target,
            prices=d.prices,
            deployment=d,
        )

    def price_at(self, at: dt.datetime) -> ModelPrice | None:
        return pick_price(self.prices, at)


def pick_price(prices: Iterable[ModelPrice], at: dt.datetime) -> ModelPrice | None:
    """The price in force at `at`: an override in force beats any catalogue row (a negotiated
    price stays until an admin ends it with a newer override); within a source the latest
    start wins."""
    best: ModelPrice | None = None
    for price in prices:
        if price.effective_from > at:
            continue
        if best is None or _price_rank(price) >= _price_rank(best):
            best = price
    return best


def _price_rank(price: ModelPrice) -> tuple[int, dt.datetime, int]:
    override = 1 if price.source == ModelPrice.Source.OVERRIDE else 0
    return (override, price.effective_from, price.pk or 0)


def price_in_force(model: str, at: dt.datetime) -> ModelPrice | None:
    """The price of upstream model `model` at `at` (the rule the proxy applies from its cache)."""
    return pick_price(ModelPrice.objects.filter(model=model, effective_from__lte=at), at)


def route_info_load(public_name: str) -> RouteInfo | None:
    """The route a client's model name is served by: its public name, else one of its aliases
    (the entry then carries the route's own public name, which the record keeps)."""
    routes = ModelRoute.objects.select_related("upstream").filter(active=True)
    route = routes.filter(public_name=public_name).first()
    if route is None:
        route = routes.filter(aliases__name=public_name).first()
    if route is None:
        return None
    now = timezone.now()
    rows: list[tuple[int | None, Upstream, str, int, int, int | None, int | None]] = [
        (d.pk, d.upstream, d.upstream_model, d.weight, d.priority, d.rpm, d.tpm)
        for d in Deployment.objects.select_related("upstream").filter(
            route=route, upstream__active=True
        )
    ]
    if not rows and not Deployment.objects.filter(route=route).exists() and route.upstream.active:
        rows = [(None, route.upstream, route.upstream_model, 1, 0, None, None)]
    if not rows:
        return None  # every deployment's upstream is switched off
    prices: dict[str, tuple[ModelPrice, ...]] = {}
    deployments = []
    for pk, upstream, model, weight, priority, rpm, tpm in rows:
        if model not in prices:
            prices[model] = tuple(prices_relevant(model, now))
        deployments.append(
            DeploymentInfo(
                key=f"{route.public_name}@{upstream.name}/{model}",
                id=pk,
                upstream_id=upstream.pk,
                upstream_name=upstream.name,
                upstream_model=model,
                target=upstream_target(upstream),
                prices=prices[model],
                weight=weight,
                priority=priority,
                rpm=rpm,
                tpm=tpm,
            )
        )
    first = deployments[0]
    fallbacks = route.fallback_models if isinstance(route.fallback_models, list) else []
    return RouteInfo(
        public_name=route.public_name,
        upstream_id=first.upstream_id,
        upstream_name=first.upstream_name,
        upstream_model=first.upstream_model,
        target=first.target,
        default_max_output_tokens=route.default_max_output_tokens,
        unmetered_cost=route.unmetered_cost,
        prices=first.prices,
        deployments=tuple(deployments),
        fallback_models=tuple(m for m in fallbacks if isinstance(m, str) and m),
    )


def upstream_target(upstream: Upstream) -> UpstreamTarget:
    return UpstreamTarget(
        kind=upstream.kind,
        base_url=upstream.base_url,
        credential_env=upstream.credential_env,
        api_version=upstream.api_version,
        connect_timeout=float(upstream.connect_timeout),
        read_timeout=float(upstream.read_timeout),
    )


def prices_relevant(model: str, now: dt.datetime) -> list[ModelPrice]:
    """The rows that can be in force from `now` on: per source, the latest one already started,
    and every one starting later."""
    rows = list(ModelPrice.objects.filter(model=model).order_by("effective_from"))
    keep: list[ModelPrice] = []
    for source in (ModelPrice.Source.CATALOG, ModelPrice.Source.OVERRIDE):
        started = [p for p in rows if p.source == source and p.effective_from <= now]
        if started:
            keep.append(started[-1])
        keep.extend(p for p in rows if p.source == source and p.effective_from > now)
    return sorted(keep, key=lambda p: p.effective_from)


def routes_for_key(info: KeyInfo) -> list[ModelRoute]:
    """The active routes the key may use that some active upstream serves."""
    served = Q(upstream__active=True, deployments__isnull=True) | Q(
        deployments__upstream__active=True
    )
    routes = (
        ModelRoute.objects.select_related("upstream")
        .filter(served, active=True)
        .distinct()
        .order_by("public_name")
    )
    return [route for route in routes if info.may_use(route.public_name)]


def aliases_for_key(info: KeyInfo, routed: Iterable[str]) -> list[str]:
    """The `auto:<intent>` names that lead somewhere for this key (a candidate it may use
    among the routed models)."""
    usable = set(routed)
    found = []
    rows = Intent.objects.values_list("name", "recommended_model", "default_model")
    for name, recommended, default in rows.order_by("name"):
        if any(m in usable for m in (recommended, default) if m):
            found.append(f"auto:{name}")
    return found
