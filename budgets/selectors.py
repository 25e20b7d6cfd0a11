"""Reads of the budgets domain. Each selector owns its query's shape (scoping by role,
select_related) so API views, admin pages and commands never build budget queries themselves."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
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


def policy_nearest(
    cost_center_id: int, *, parents: Mapping[int, int | None], own: Mapping[int, Policy]
) -> Policy | None:
    """The one rule of policy inheritance: the policy of the nearest cost center, starting at
    `cost_center_id` and walking `parents` up to the root, that has one of its own (`own`).

    Inheritance is whole-policy: a cost center with a policy of its own uses every field of it
    and nothing from its ancestors; there is no field-by-field merge. This keeps the rule a
    reader sees in one place the rule that applies. None when no ancestor has one (a cycle in
    the tree ends the walk)."""
    seen: set[int] = set()
    node: int | None = cost_center_id
    while node is not None and node not in seen:
        if node in own:
            return own[node]
        seen.add(node)
        node = parents.get(node)
    return None


def policy_resolve(cost_center: CostCenter) -> Policy | None:
    """The policy in force for `cost_center` (`policy_nearest`), in two queries."""
    parents = dict(CostCenter.objects.values_list("id", "parent_id"))
    chain = [cost_center.pk, *cost_center_ancestor_ids(cost_center, parents=parents)]
    own = {p.cost_center_id: p for p in Policy.objects.filter(cost_center_id__in=chain)}
    return policy_nearest(cost_center.pk, parents=parents, own=own)


def policy_resolve_many(cost_center_ids: set[int] | None = None) -> dict[int, Policy | None]:
    """`policy_resolve` for many cost centers (every one when None) with two queries."""
    parents = dict(CostCenter.objects.values_list("id", "parent_id"))
    own = {p.cost_center_id: p for p in Policy.objects.all()}
    wanted = parents.keys() if cost_center_ids is None else cost_center_ids
    return {cc_id: policy_nearest(cc_id, parents=parents, own=own) for cc_id in wanted}


def cost_center_ancestor_ids(
    cost_center: CostCenter, *, parents: Mapping[int, int | None] | None = None
) -> list[int]:
    """Ids from `cost_center`'s parent up to the root (`parents`: id -> parent id, loaded
    when not given)."""
    if parents is None:
        parents = dict(CostCenter.objects.values_list("id", "parent_id"))
    found: list[int] = []
    node = parents.get(cost_center.pk)
    while node is not None and node not in found and node != cost_center.pk:
        found.append(node)
        node = parents.get(node)
    return found
