"""Template helpers for the pages: the role-aware navigation and number formatting."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import template

from budgets import roles
from budgets.charts import compact
from budgets.formatting import usd_text

register = template.Library()


@register.simple_tag(takes_context=True)
def tb_roles(context: Any) -> dict[str, bool]:
    """What the signed-in user may open, so the navigation only offers reachable pages."""
    user = context["request"].user
    admin = roles.is_admin(user)
    finance = roles.is_finance(user)
    manager = bool(roles.managed_cost_center_ids(user))
    return {
        "employee": roles.employee_of(user) is not None,
        "admin": admin,
        "finance": finance,
        "manager": manager,
        "manages": admin or manager,
        "reads_all": admin or finance,
        "statements": admin or finance or manager,
    }


@register.filter
def num(value: Any) -> str:
    """Group thousands and drop trailing zeros: 1234567.5000 -> '1,234,567.5'."""
    if value is None or value == "":
        return "\u2013"
    number = Decimal(value)
    if number == number.to_integral_value():
        return f"{int(number):,}"
    text = f"{number.normalize():,f}"
    return text


@register.filter
def money(value: Any) -> str:
    """Two decimals for display (exact figures stay in the exports), or four below one cent."""
    if value is None or value == "":
        return "\u2013"
    return usd_text(value)


@register.filter
def short(value: Any) -> str:
    return compact(Decimal(value or 0))


@register.filter
def amount(value: Any, unit: str) -> str:
    """An allowance figure in its unit: dollars for USD allowances, whole tokens otherwise."""
    return money(value) if unit == "usd" else num(value)
