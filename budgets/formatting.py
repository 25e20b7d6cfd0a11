"""One way to print numbers: tokens as plain integers, money as fixed-point, never exponents.

`Decimal.normalize()` turns 874800 into `8.748E+5`, and `str()` of a Decimal with ten places
prints `110.0000000000`; a client doing `int(header)` crashes on the first and a reader stumbles
on the second. Every header, error message, e-mail and page goes through these helpers.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

type Number = int | Decimal | str

CENT = Decimal("0.01")
FOUR_PLACES = Decimal("0.0001")


def plain(value: Number | None) -> str:
    """Digits only, no exponent, no trailing zeros: for headers and machine-read text.

    >>> plain(Decimal("874800.0000")), plain(Decimal("0.0012500000")), plain(Decimal("3E+4"))
    ('874800', '0.00125', '30000')
    """
    number = Decimal(value or 0)
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


def tokens_int(value: Number | None) -> int:
    """A token figure as a whole number (a partial token never exists; round half up)."""
    return int(Decimal(value or 0).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def tokens_text(value: Number | None) -> str:
    """Whole tokens with thousands grouped, for people: '1,374,769'."""
    return f"{tokens_int(value):,}"


def usd_text(value: Number | None) -> str:
    """Dollars with two decimals (four below one cent, so small charges never read $0.00)."""
    number = Decimal(value or 0)
    places = FOUR_PLACES if 0 < abs(number) < CENT else CENT
    return f"${number.quantize(places, rounding=ROUND_HALF_UP):,}"


def amount_text(value: Number | None, unit: str) -> str:
    """An allowance figure in its unit: '$12.50' for USD allowances, '1,200 tokens' otherwise."""
    if unit == "usd":
        return usd_text(value)
    return f"{tokens_text(value)} tokens"
