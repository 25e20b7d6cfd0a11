"""Template helpers that bring billing's reads to pages of the lower apps: the employee page
(budgets) shows the usage history without budgets importing billing."""

from __future__ import annotations

from typing import Any

from django import template

from billing.usage_history import employee_usage_history as history_of
from budgets.models import Employee

register = template.Library()


@register.simple_tag
def employee_usage_history(employee: Employee) -> dict[str, Any]:
    """The employee's fiscal year from the daily rollup: burn-down and breakdowns. The page
    that calls it has already decided the reader may see the employee."""
    return history_of(employee=employee)
