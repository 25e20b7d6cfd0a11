"""Template helpers for the pages: the role-aware navigation and number formatting."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString

from budgets import formatting, roles
from budgets.formatting import compact, usd_text

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
    """A figure for people: grouped, at most two decimals (three significant digits below 1)."""
    if value is None or value == "":
        return "\u2013"
    return formatting.decimal_text(value)


@register.filter
def exact(value: Any) -> str:
    """Every significant place, grouped: prices per million tokens read back as typed."""
    if value is None or value == "":
        return "\u2013"
    return formatting.exact_text(value)


@register.filter
def tokens(value: Any) -> str:
    """Whole tokens, grouped: '1,374,769'."""
    if value is None or value == "":
        return "\u2013"
    return formatting.tokens_text(value)


@register.filter
def money(value: Any) -> str:
    """Two decimals for display (exact figures stay in the exports), or four below one cent."""
    if value is None or value == "":
        return "\u2013"
    return usd_text(value)


@register.filter
def short(value: Any) -> SafeString:
    """The compact form with the exact figure on hover: <abbr title="1,234,567">1.2M</abbr>."""
    number = Decimal(value or 0)
    text = compact(number)
    exact = formatting.decimal_text(number)
    if text == exact:
        return format_html("{}", text)
    return format_html('<abbr title="{}">{}</abbr>', exact, text)


@register.filter
def pct(value: Any) -> str:
    """A fraction as a percentage: 0.829694 -> '83.0%'."""
    if value is None or value == "":
        return "\u2013"
    return formatting.percent_text(value)


@register.filter
def ratio(value: Any) -> str:
    """A multiple (return on spend): 471.381141 -> '471.4x'."""
    if value is None or value == "":
        return "\u2013"
    return formatting.ratio_text(value)


@register.filter
def day(value: Any) -> str:
    return formatting.date_text(value)


@register.filter
def when(value: Any) -> str:
    return formatting.datetime_text(value)


@register.filter
def label(value: Any) -> str:
    """The one name for a missing grouping key on every page: '(untagged)'."""
    return formatting.label_text(value)


@register.filter
def amount(value: Any, unit: str) -> str:
    """An allowance figure in its unit: dollars for USD allowances, whole tokens otherwise."""
    return money(value) if unit == "usd" else tokens(value)


@register.filter
def amount_words(value: Any, unit: str) -> str:
    """An allowance figure with its unit named: '$12.50' or '1,200 tokens'."""
    if value is None or value == "":
        return "\u2013"
    return formatting.amount_text(value, unit)
