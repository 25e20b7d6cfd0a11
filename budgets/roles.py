"""Who may see what. Roles: admin (staff or group `budget-admins`), finance (group `finance`,
read-only on budgets), cost-center manager (their subtree), employee (only themselves).

Every API and page scopes its querysets through these helpers.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet

from budgets.models import CostCenter, Employee

ADMIN_GROUP = "budget-admins"
FINANCE_GROUP = "finance"


def _groups(user: Any) -> set[str]:
    cached = getattr(user, "_tb_groups", None)
    if cached is None:
        cached = set(user.groups.values_list("name", flat=True)) if user.is_authenticated else set()
        user._tb_groups = cached
    return cached


def is_admin(user: Any) -> bool:
    return bool(user and user.is_authenticated and (user.is_staff or ADMIN_GROUP in _groups(user)))


def is_finance(user: Any) -> bool:
    return bool(user and user.is_authenticated and FINANCE_GROUP in _groups(user))


def employee_of(user: Any) -> Employee | None:
    if not user or not user.is_authenticated:
        return None
    try:
        return user.employee
    except Employee.DoesNotExist:
        return None


def subtree_ids(root_ids: list[int] | set[int]) -> set[int]:
    """The given cost centers and all their descendants (breadth-first, one query per level)."""
    found = set(root_ids)
    frontier = set(root_ids)
    while frontier:
        frontier = (
            set(CostCenter.objects.filter(parent_id__in=frontier).values_list("id", flat=True))
            - found
        )
        found |= frontier
    return found


def managed_cost_center_ids(user: Any) -> set[int]:
    """Cost centers the user manages, with their subtrees (empty for non-managers)."""
    if not user or not user.is_authenticated:
        return set()
    cached = getattr(user, "_tb_managed", None)
    if cached is None:
        roots = set(user.managed_cost_centers.values_list("id", flat=True))
        cached = subtree_ids(roots) if roots else set()
        user._tb_managed = cached
    return cached


def sees_all(user: Any) -> bool:
    """Admins and finance read every budget object."""
    return is_admin(user) or is_finance(user)


def visible_cost_centers(user: Any) -> QuerySet[CostCenter]:
    qs = CostCenter.objects.all()
    if sees_all(user):
        return qs
    ids = managed_cost_center_ids(user)
    employee = employee_of(user)
    if employee is not None:
        ids = ids | {employee.cost_center_id}
    return qs.filter(id__in=ids)


def visible_employees(user: Any) -> QuerySet[Employee]:
    qs = Employee.objects.all()
    if sees_all(user):
        return qs
    condition = Q(cost_center_id__in=managed_cost_center_ids(user))
    if (employee := employee_of(user)) is not None:
        condition |= Q(pk=employee.pk)
    return qs.filter(condition)


def can_manage_employee(user: Any, employee: Employee) -> bool:
    """Change budgets or keys of `employee`: admins, and managers of their cost center's tree."""
    return is_admin(user) or employee.cost_center_id in managed_cost_center_ids(user)
