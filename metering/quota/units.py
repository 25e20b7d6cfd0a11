"""Amounts as Redis counts them: integers, tokens or USD in units of 1e-10 (the database's
own precision). Lua numbers are doubles: USD comparisons are exact up to 2**53 units (about
$900,000 per counter); above that a comparison may be off by a few units of 1e-10 USD."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal

from budgets import ledger

SCALE = 10**10
PLACES = Decimal("1e-10")


def to_units(amount: Decimal, unit: str, *, up: bool = False) -> int:
    """An amount as the integer Redis counts: tokens, or USD in units of 1e-10."""
    if unit == ledger.TOKENS:
        return int(amount.to_integral_value(rounding=ROUND_CEILING if up else ROUND_HALF_EVEN))
    rounding = ROUND_CEILING if up else ROUND_HALF_EVEN
    return int(amount.quantize(PLACES, rounding=rounding) * SCALE)


def from_units(units: int | str, unit: str) -> Decimal:
    value = Decimal(int(units))
    return value if unit == ledger.TOKENS else value / SCALE


def money(amount: Decimal) -> Decimal:
    """A cost at the database's precision (as the DecimalField would store it)."""
    return amount.quantize(PLACES, rounding=ROUND_HALF_EVEN)


def rate(price: Decimal, unit: str) -> str:
    """A per-token price as the reserve script multiplies it: 1 for token budgets."""
    return "1" if unit == ledger.TOKENS else format(price * SCALE, "f")
