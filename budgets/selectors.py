"""Reads of the budgets domain. Each selector owns its query's shape (scoping by role,
select_related) so API views, admin pages and commands never build budget queries themselves."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import QuerySet

from budgets import roles
from budgets.balance import QuotaView, quota_get
from budgets.models import (
    Adjustment,
    Allowance,
    AuditEvent,
    CostCenter,
    Employee,
    EmployeeMove,
    Policy,
)


def cost_center_list(*, user: Any) -> QuerySet[CostCenter]:
    return roles.visible_cost_centers(user).select_related("parent").prefetch_related("managers")


def employee_list(*, user: Any) -> QuerySet[Employee]:
    return roles.visible_employees(user).select_related("cost_center", "user")


def employee_moves(*, employee: Employee) -> QuerySet[EmployeeMove]:
    return employee.moves.select_related("from_cost_center", "to_cost_center", "actor")


def allowance_list(*, user: Any) -> QuerySet[Allowance]:
    qs = Allowance.objects.select_related("employee", "employee__cost_center")
    if roles.sees_all(user):
        return qs
    return qs.filter(employee__in=roles.visible_employees(user))


def adjustment_list(*, user: Any) -> QuerySet[Adjustment]:
    qs = Adjustment.objects.select_related("allowance", "allowance__employee", "actor")
    if roles.sees_all(user):
        return qs
    return qs.filter(allowance__employee__in=roles.visible_employees(user))


def policy_list(*, user: Any) -> QuerySet[Policy]:
    """Policies of the cost centers the user can see (employees read their own rules)."""
    return Policy.objects.select_related("cost_center").filter(
        cost_center__in=roles.visible_cost_centers(user)
    )


def audit_event_list() -> QuerySet[AuditEvent]:
    """Every audit event, newest first (only admins may call this through the API)."""
    return AuditEvent.objects.select_related("actor")


def employee_quota(*, employee: Employee, day: dt.date | None = None) -> QuotaView:
    return quota_get(employee, day=day)


def policy_resolve(cost_center: CostCenter) -> Policy | None:
    """The policy in force for `cost_center`: its own, else the nearest ancestor's.

    Inheritance is whole-policy: a cost center with a policy of its own uses every field of it
    and nothing from its ancestors; there is no field-by-field merge. This keeps the rule a
    reader sees in one place the rule that applies. Returns None when no ancestor has one.
    """
    seen: set[int] = set()
    node: CostCenter | None = cost_center
    while node is not None and node.pk not in seen:
        seen.add(node.pk)
        policy = Policy.objects.filter(cost_center_id=node.pk).first()
        if policy is not None:
            return policy
        node = node.parent
    return None


def policy_resolve_many(cost_center_ids: set[int]) -> dict[int, Policy | None]:
    """`policy_resolve` for many cost centers with two queries (roster imports)."""
    parents = dict(CostCenter.objects.values_list("id", "parent_id"))
    policies = {p.cost_center_id: p for p in Policy.objects.all()}
    resolved: dict[int, Policy | None] = {}
    for cc_id in cost_center_ids:
        node: int | None = cc_id
        seen: set[int] = set()
        found = None
        while node is not None and node not in seen:
            seen.add(node)
            if node in policies:
                found = policies[node]
                break
            node = parents.get(node)
        resolved[cc_id] = found
    return resolved


def cost_center_ancestor_ids(cost_center: CostCenter) -> list[int]:
    """Ids from `cost_center`'s parent up to the root."""
    parents = dict(CostCenter.objects.values_list("id", "parent_id"))
    found: list[int] = []
    node = parents.get(cost_center.pk)
    while node is not None and node not in found and node != cost_center.pk:
        found.append(node)
        node = parents.get(node)
    return found
