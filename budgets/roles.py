"""Who may see what. Roles: admin (staff or group `budget-admins`), finance (group `finance`,
read-only on budgets), cost-center manager (their subtree), employee (only themselves).

Every API and page scopes its querysets through these helpers, and asks the `can_*` rules
below (one function per action) before it changes anything.
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


def is_self(user: Any, employee: Employee) -> bool:
    """Whether `employee` is the signed-in user's own record."""
    # Services also get labels ("command:…") and None as actors: those are nobody's self.
    if not getattr(user, "is_authenticated", False):
        return False
    return employee.user_id is not None and employee.user_id == user.pk


def manages(user: Any, employee: Employee) -> bool:
    """Admins, and managers of the employee's cost center or one above it (themselves included:
    a manager reads their own record like their team's)."""
    return is_admin(user) or employee.cost_center_id in managed_cost_center_ids(user)


# --- one rule per action: pages, API and services ask these, never the roles directly --------
#
# Segregation of duties: nobody changes their own budget, by any route. A manager's allowance
# is steered by the manager above them (or an admin); an admin's by another admin.


def can_read_budgets(user: Any) -> bool:
    """The budget pages (/manage/): admins, finance and managers; employees use My tokens."""
    return sees_all(user) or bool(managed_cost_center_ids(user))


def can_set_allowance(user: Any, employee: Employee) -> bool:
    """Grant or change the base allowance (roster, API, bulk assign): admins only, so the base
    grant matches HR's roster; never one's own."""
    return is_admin(user) and not is_self(user, employee)


def can_adjust_allowance(user: Any, employee: Employee) -> bool:
    """Add a top-up, correction or approved request: admins and the employee's managers, never
    on one's own allowance."""
    return manages(user, employee) and not is_self(user, employee)


def can_see_keys(user: Any, employee: Employee) -> bool:
    """Names, prefixes and use of the employee's API keys: the employee, their managers and
    admins. Finance reads budgets, not credentials."""
    return is_self(user, employee) or manages(user, employee)


def can_manage_keys(user: Any, employee: Employee) -> bool:
    """Create or revoke the employee's keys: whoever may see them."""
    return can_see_keys(user, employee)


# Cost centers: admins shape the whole tree; a manager shapes only what lies below the cost
# centers they manage. The cost center they manage themselves (its cap, name, managers, place)
# is set from above, so nobody raises their own team's ceiling.


def can_place_cost_center(user: Any, parent: CostCenter | None) -> bool:
    """Create a cost center under `parent`, or move one there: admins anywhere (a root too),
    managers only under a cost center of their subtree."""
    if is_admin(user):
        return True
    return parent is not None and parent.pk in managed_cost_center_ids(user)


def can_edit_cost_center(user: Any, cost_center: CostCenter) -> bool:
    """Rename, re-cap, re-staff or move `cost_center`: admins, and managers of a cost center
    above it (never the ones they manage themselves)."""
    if is_admin(user):
        return True
    if cost_center.pk not in managed_cost_center_ids(user):
        return False
    return not cost_center.managers.filter(pk=user.pk).exists()


def can_edit_employees(user: Any) -> bool:
    """Create employees, give them a login, deactivate them: admins (HR's roster owns the
    people; managers steer their allowances with top-ups)."""
    return is_admin(user)


# --- dashboards: one per role, each the landing page of its role ------------------------------
#
# A person may hold several roles (an admin who also manages a team): each dashboard asks its
# own rule, and `landing_dashboard` picks the one the person lands on, widest role first.

ADMIN_DASHBOARD = "admin"
FINANCE_DASHBOARD = "finance"
TEAM_DASHBOARD = "team"
EMPLOYEE_DASHBOARD = "me"


def can_see_admin_dashboard(user: Any) -> bool:
    """Spend against allowances, top cost centers, alerts, imports and changes: admins."""
    return is_admin(user)


def can_see_team_dashboard(user: Any) -> bool:
    """The team's burn-down, pacing and pending approvals: whoever manages a cost center."""
    return bool(managed_cost_center_ids(user))


def can_see_finance_dashboard(user: Any) -> bool:
    """Month close, drafts, exports, Stripe state and the spend trend: finance and admins."""
    return is_finance(user) or is_admin(user)


def dashboards_of(user: Any) -> list[str]:
    """Every dashboard the user may open, in landing order."""
    rules = (
        (ADMIN_DASHBOARD, can_see_admin_dashboard),
        (FINANCE_DASHBOARD, can_see_finance_dashboard),
        (TEAM_DASHBOARD, can_see_team_dashboard),
        (EMPLOYEE_DASHBOARD, lambda u: employee_of(u) is not None),
    )
    return [name for name, rule in rules if rule(user)]


def landing_dashboard(user: Any) -> str | None:
    """The dashboard the user lands on (None: no role here)."""
    found = dashboards_of(user)
    return found[0] if found else None
