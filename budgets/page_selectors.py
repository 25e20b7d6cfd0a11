"""Reads for the admin and manager pages: the cost-center tree with its totals, the employees
table (built to stay fast at 10,000 employees) and an employee's history."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Count, DecimalField, F, FilteredRelation, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce

from budgets import roles
from budgets.formatting import decimal_text
from budgets.models import (
    Adjustment,
    Allowance,
    AuditEvent,
    BudgetRequest,
    CostCenter,
    Employee,
    Policy,
    Unit,
)

ZERO = Value(Decimal(0), output_field=DecimalField(max_digits=24, decimal_places=10))


@dataclass
class Totals:
    allowance: Decimal = Decimal(0)
    used: Decimal = Decimal(0)
    employees: int = 0

    @property
    def remaining(self) -> Decimal:
        return self.allowance - self.used

    def add(self, other: Totals) -> None:
        self.allowance += other.allowance
        self.used += other.used
        self.employees += other.employees


@dataclass
class Node:
    center: CostCenter
    depth: int
    own: dict[str, Totals] = field(default_factory=dict)
    subtree: dict[str, Totals] = field(default_factory=dict)

    def total(self, unit: str) -> Totals:
        return self.subtree.get(unit, Totals())

    @property
    def percent_used(self) -> int:
        t = self.total(Unit.TOKENS)
        return 0 if t.allowance <= 0 else min(100, int(t.used * 100 / t.allowance))


def cost_center_tree(*, user: Any, fiscal_year: int) -> list[Node]:
    """Visible cost centers depth-first, each with its own and its subtree's allowance totals
    (grant plus adjustments) and use, per unit. Two queries whatever the size of the tree."""
    centers = list(roles.visible_cost_centers(user).order_by("code"))
    ids = {c.pk for c in centers}
    sums = (
        Allowance.objects.filter(fiscal_year=fiscal_year, employee__cost_center_id__in=ids)
        .order_by()
        .values("employee__cost_center_id", "unit")
        .annotate(a=Sum("amount"), j=Sum("adjustments_total"), u=Sum("used"), r=Sum("reserved"))
    )
    own: dict[int, dict[str, Totals]] = {}
    for row in sums:
        own.setdefault(row["employee__cost_center_id"], {})[row["unit"]] = Totals(
            allowance=(row["a"] or 0) + (row["j"] or 0),
            used=(row["u"] or 0) + (row["r"] or 0),
        )
    counts = (
        Employee.objects.filter(cost_center_id__in=ids, active=True)
        .order_by()
        .values("cost_center_id")
        .annotate(n=Count("id"))
    )
    for row in counts:
        own.setdefault(row["cost_center_id"], {}).setdefault(Unit.TOKENS, Totals()).employees = row[
            "n"
        ]
    children: dict[int | None, list[CostCenter]] = {}
    for center in centers:
        parent = center.parent_id if center.parent_id in ids else None
        children.setdefault(parent, []).append(center)
    ordered: list[Node] = []

    def walk(center: CostCenter, depth: int) -> Node:
        node = Node(center, depth, own=own.get(center.pk, {}))
        ordered.append(node)
        for unit, totals in node.own.items():
            node.subtree.setdefault(unit, Totals()).add(totals)
        for child in children.get(center.pk, []):
            for unit, totals in walk(child, depth + 1).subtree.items():
                node.subtree.setdefault(unit, Totals()).add(totals)
        return node

    for root in children.get(None, []):
        walk(root, 0)
    return ordered


SORTS = {
    "employee_id": "employee_id",
    "name": "name",
    "cost_center": "cost_center__code",
    "allowance": "allowance_total",
    "used": "allowance_used",
    "remaining": "allowance_remaining",
}


def employee_table(
    *,
    user: Any,
    fiscal_year: int,
    search: str = "",
    cost_center_ids: set[int] | None = None,
    status: str = "active",
    sort: str = "employee_id",
) -> QuerySet[Employee]:
    """Visible employees with this year's allowance figures as columns, filtered and sorted.

    The figures come from one LEFT JOIN on the unique (employee, fiscal year) allowance, so the
    database filters, sorts and pages 10,000 rows in one statement (correlated subqueries would
    be evaluated again for every row an OFFSET skips); pages slice the queryset.
    """

    def column(name: str) -> Coalesce:
        return Coalesce(F(f"year_allowance__{name}"), ZERO)

    qs = (
        roles.visible_employees(user)
        .select_related("cost_center")
        .annotate(
            year_allowance=FilteredRelation(
                "allowances", condition=Q(allowances__fiscal_year=fiscal_year)
            )
        )
        .annotate(
            allowance_total=column("amount") + column("adjustments_total"),
            allowance_used=column("used") + column("reserved"),
            allowance_unit=F("year_allowance__unit"),
        )
        .annotate(allowance_remaining=F("allowance_total") - F("allowance_used"))
    )
    if search:
        qs = qs.filter(
            Q(employee_id__icontains=search)
            | Q(name__icontains=search)
            | Q(email__icontains=search)
        )
    if cost_center_ids:
        qs = qs.filter(cost_center_id__in=roles.subtree_ids(cost_center_ids))
    if status == "active":
        qs = qs.filter(active=True)
    elif status == "inactive":
        qs = qs.filter(active=False)
    field_name = SORTS.get(sort.lstrip("-"), "employee_id")
    return qs.order_by(("-" if sort.startswith("-") else "") + field_name, "pk")


def employee_audit_filter(employee: Employee, *, with_keys: bool) -> Q:
    """Every audit event about the employee: the employee row, their allowances, the ledger
    adjustments on those (top-ups, corrections, approvals), their budget requests and their
    API keys (only for readers who may see the keys: finance may not). The events name the object they changed, not the employee, so the ids are
    gathered first (a handful of small indexed reads; the keys live in metering, reached
    through the app registry so the import arrow stays one way)."""
    from django.apps import apps

    def ids(queryset: Any) -> list[str]:
        return [str(pk) for pk in queryset.values_list("pk", flat=True)]

    keys = apps.get_model("metering", "VirtualKey").objects.filter(employee=employee)
    related = {
        "budgets.employee": [str(employee.pk)],
        "budgets.allowance": ids(employee.allowances.all()),
        "budgets.adjustment": ids(Adjustment.objects.filter(allowance__employee=employee)),
        "budgets.budgetrequest": ids(BudgetRequest.objects.filter(employee=employee)),
        "metering.virtualkey": ids(keys) if with_keys else [],
    }
    condition = Q(pk__in=[])
    for object_type, object_ids in related.items():
        if object_ids:
            condition |= Q(object_type=object_type, object_id__in=object_ids)
    return condition


def employee_history(
    *, employee: Employee, fiscal_year: int, with_keys: bool = False
) -> dict[str, Any]:
    allowance = Allowance.objects.filter(employee=employee, fiscal_year=fiscal_year).first()
    adjustments = (
        Adjustment.objects.filter(allowance__employee=employee)
        .select_related("allowance", "actor")
        .order_by("-created_at", "-id")[:50]
    )
    events = list(
        AuditEvent.objects.filter(employee_audit_filter(employee, with_keys=with_keys))
        .select_related("actor")
        .order_by("-created_at", "-id")[:50]
    )
    for event in events:
        event.changes = audit_changes(event.before, event.after)
        event.what = audit_what(event)
    return {"allowance": allowance, "adjustments": list(adjustments), "events": events}


AUDIT_VERBS = {"create": "Created", "update": "Changed", "deactivate": "Deactivated",
               "decide": "Decided", "move": "Moved", "key.create": "Created",
               "key.revoke": "Revoked"}  # fmt: skip
AUDIT_NOUNS = {"budgets.employee": "employee", "budgets.allowance": "allowance",
               "budgets.adjustment": "ledger entry", "budgets.budgetrequest": "budget request",
               "metering.virtualkey": "API key"}  # fmt: skip


def audit_what(event: AuditEvent) -> str:
    """'Revoked API key: demo (tb-eV4B…)' — the action in words, with the object's name."""
    verb = AUDIT_VERBS.get(event.action, event.action.replace(".", " ").capitalize())
    noun = AUDIT_NOUNS.get(event.object_type, event.object_type.split(".")[-1])
    return f"{verb} {noun}" + (f": {event.object_repr}" if event.object_repr else "")


SKIPPED_FIELDS = {"id", "created_at", "updated_at"}


def _plain(value: Any, name: str = "") -> Any:
    """A snapshot value for people: '500000.0000000000' -> '500,000', 0.062502 -> '0.0625'
    (audit snapshots keep the database's decimal places); ids stay as they are."""
    if name == "id" or name.endswith("_id"):
        return value
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) or (
        isinstance(value, str) and value.replace(".", "", 1).lstrip("-").isdigit()
    ):
        return decimal_text(Decimal(str(value)))
    if isinstance(value, dict):  # a policy's downgrade map, a price's energy estimate
        if len(value) > 4 or any(isinstance(v, dict | list) for v in value.values()):
            # A record of its own (an estimate's sources): named, not spelled out in a cell;
            # the audit API has every field.
            return (
                "{"
                + ", ".join(str(k) for k in list(value)[:3])
                + (", …}" if len(value) > 3 else "}")
            )
        return "{" + ", ".join(f"{k} → {_plain(v, str(k))}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(str(_plain(item)) for item in value) + "]"
    return value


def audit_changes(before: dict | None, after: dict | None) -> str:
    """'amount: 1000 → 2000; unit: tokens' — what changed, readable in a table cell."""
    before, after = before or {}, after or {}
    parts = []
    for name in sorted(set(before) | set(after)):
        if name in SKIPPED_FIELDS or before.get(name) == after.get(name):
            continue
        old, new = _plain(before.get(name), name), _plain(after.get(name), name)
        parts.append(f"{name}: {old} → {new}" if name in before else f"{name}: {new}")
    return "; ".join(parts)


def cost_center_choices(*, user: Any) -> list[CostCenter]:
    """Visible cost centers for a picker: code and name only, by code."""
    return list(roles.visible_cost_centers(user).only("pk", "code", "name").order_by("code"))


def routed_model_names() -> list[str]:
    """Public model names of every route, for the policy editor's model pickers. Routes live in
    metering, which imports budgets; asking the app registry keeps the import arrow one way."""
    from django.apps import apps

    route = apps.get_model("metering", "ModelRoute")
    return list(route.objects.order_by("public_name").values_list("public_name", flat=True))


def policy_audit(*, policy: Policy | None, limit: int = 20) -> list[AuditEvent]:
    """The latest audit events of one policy, each with a readable `changes` line."""
    if policy is None or policy.pk is None:
        return []
    events = list(
        AuditEvent.objects.filter(object_type="budgets.policy", object_id=str(policy.pk))
        .select_related("actor")
        .order_by("-created_at", "-id")[:limit]
    )
    for event in events:
        event.changes = audit_changes(event.before, event.after)
    return events


def pending_approvals_count(*, user: Any) -> int:
    """Pending budget requests the user could decide: in the subtree they manage (everything
    for admins), never their own."""
    if not (roles.is_admin(user) or roles.managed_cost_center_ids(user)):
        return 0
    from budgets.requests import budget_requests_visible

    return (
        budget_requests_visible(user)
        .filter(status=BudgetRequest.Status.PENDING)
        .exclude(Q(requested_by=user) | Q(employee__user=user))
        .count()
    )


def own_budget_requests(*, employee: Employee, limit: int = 10) -> list[BudgetRequest]:
    """The employee's latest budget requests with their state, newest first."""
    return list(
        BudgetRequest.objects.filter(employee=employee)
        .select_related("allowance", "adjustment", "decided_by")
        .order_by("-created_at", "-id")[:limit]
    )


def roster_rows(*, fiscal_year: int) -> Iterator[dict[str, Any]]:
    """Active employees in roster columns with the fiscal year's allowance grant (None when
    they have none), by HR id, in chunks: one query, however long the roster."""
    return (
        Employee.objects.filter(active=True)
        .annotate(year=FilteredRelation("allowances", condition=Q(allowances__fiscal_year=fiscal_year)))
        .values("employee_id", "email", "name", "cost_center__code", "start_date", "end_date",
                amount=F("year__amount"), unit=F("year__unit"))
        .order_by("employee_id")
        .iterator(chunk_size=2000)
    )  # fmt: skip


def model_list_prices(*, names: set[str]) -> dict[str, Decimal]:
    """Input + output dollars per million tokens now in force for each routed model name
    (through its route's upstream model), for the policy editor's downgrade check. Prices live
    in metering; the app registry keeps the import arrow one way."""
    from django.apps import apps
    from django.utils import timezone

    routes = dict(
        apps.get_model("metering", "ModelRoute")
        .objects.filter(public_name__in=names)
        .values_list("public_name", "upstream_model")
    )
    upstream = {routes.get(name, name) for name in names}
    latest: dict[str, Decimal] = {}
    prices = (
        apps.get_model("metering", "ModelPrice")
        .objects.filter(model__in=upstream, effective_from__lte=timezone.now())
        .order_by("model", "-effective_from", "-id")
        .values_list("model", "input_per_mtok", "output_per_mtok")
    )
    for model, input_price, output_price in prices:
        latest.setdefault(model, input_price + output_price)
    return {
        name: latest[routes.get(name, name)] for name in names if routes.get(name, name) in latest
    }


def cost_center_parent_choices(*, user: Any, moving: CostCenter | None) -> list[CostCenter]:
    """Where the user may put a cost center (new, or `moving`): the visible ones they may place
    under, without `moving` and its own subtree (a cost center never sits below itself)."""
    centers = [c for c in cost_center_choices(user=user) if roles.can_place_cost_center(user, c)]
    if moving is None or moving.pk is None:
        return centers
    below = roles.subtree_ids({moving.pk})
    return [c for c in centers if c.pk not in below]


def editable_cost_center_ids(*, user: Any, centers: list[CostCenter]) -> set[int]:
    """Which of `centers` the user may edit (one query for the managers they are one of)."""
    if roles.is_admin(user):
        return {c.pk for c in centers}
    managed = roles.managed_cost_center_ids(user)
    own = set(user.managed_cost_centers.values_list("id", flat=True))
    return {c.pk for c in centers if c.pk in managed and c.pk not in own}


def users_by_username(*, names: set[str]) -> dict[str, Any]:
    """The logins with these usernames, by username (a name not found is absent)."""
    users = get_user_model().objects.filter(username__in=names).only("pk", "username")
    return {u.username: u for u in users}


def cost_center_audit(*, cost_center: CostCenter, limit: int = 20) -> list[AuditEvent]:
    """The latest audit events of one cost center, each with a readable `changes` line."""
    events = list(
        AuditEvent.objects.filter(object_type="budgets.costcenter", object_id=str(cost_center.pk))
        .select_related("actor")
        .order_by("-created_at", "-id")[:limit]
    )
    for event in events:
        event.changes = audit_changes(event.before, event.after)
    return events


def live_key_names(*, employee: Employee) -> list[str]:
    """Names of the employee's keys that work today (not revoked, not expired)."""
    from django.utils import timezone

    keys = employee.keys.filter(revoked_at__isnull=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
    )
    return list(keys.order_by("name").values_list("name", flat=True))


def managed_by(*, user: Any) -> list[CostCenter]:
    """The cost centers `user` manages directly (none for no user)."""
    if user is None:
        return []
    return list(user.managed_cost_centers.order_by("code"))
