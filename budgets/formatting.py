"""One way to print numbers: tokens as plain integers, money as fixed-point, never exponents.

`Decimal.normalize()` turns 874800 into `8.748E+5`, and `str()` of a Decimal with ten places
prints `110.0000000000`; a client doing `int(header)` crashes on the first and a reader stumbles
on the second. Every header, error message, e-mail and page goes through these helpers.
"""

from __future__ import annotations

import datetime as dt
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


def compact(value: Number | None) -> str:
    """1234567 -> '1.2M': for chart labels and tight cells; pages show the exact figure on hover.

    >>> compact(1234567), compact(950), compact(Decimal("-2500")), compact(999960)
    ('1.2M', '950', '-2.5k', '1M')
    """
    number = Decimal(value or 0)
    sign = "-" if number < 0 else ""
    number = abs(number)
    if number < 1000:
        return f"{sign}{decimal_text(number)}"
    # Rounded before choosing the suffix, so 999,960 reads '1M', not '1000k'.
    for limit, suffix in ((Decimal(10**3), "k"), (Decimal(10**6), "M"), (Decimal(10**9), "B")):
        scaled = (number / limit).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
        if scaled < 1000 or suffix == "B":
            break
    return f"{sign}{format(scaled, ',f').removesuffix('.0')}{suffix}"


def usd_compact(value: Number | None) -> str:
    """Dollars in the compact form for chart labels: '$1.8k', '$3.89', '-$250'."""
    number = Decimal(value or 0)
    sign = "-" if number < 0 else ""
    if abs(number) < 1000:
        return sign + usd_text(abs(number))
    return f"{sign}${compact(abs(number))}"


def decimal_text(value: Number | None, places: int = 2) -> str:
    """A measured figure for people: grouped, at most `places` decimals, no trailing zeros;
    below 1 three significant digits so 0.000237 never reads 0.

    >>> decimal_text(Decimal("471.381141")), decimal_text(Decimal("0.000236793")), decimal_text(3)
    ('471.38', '0.000237', '3')
    """
    number = Decimal(value or 0)
    if number == number.to_integral_value():
        return f"{int(number):,}"
    if abs(number) < 1:
        exponent = number.adjusted()  # position of the first significant digit
        places = max(places, -exponent + 2)
    rounded = number.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    text = f"{rounded:,f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def exact_text(value: Number | None) -> str:
    """Every significant place, grouped, no trailing zeros: for rates people type in and must
    read back exactly (a price per million tokens): Decimal('2.1234567800') -> '2.12345678'."""
    text = plain(value)
    whole, _, fraction = text.partition(".")
    grouped = f"{int(whole):,}" if whole not in ("", "-") else whole
    if whole.startswith("-") and int(whole) == 0:
        grouped = "-0"
    return grouped + (f".{fraction}" if fraction else "")


def percent_text(ratio: Number | None, places: int = 1) -> str:
    """A fraction as a percentage: Decimal('0.829694') -> '83.0%'."""
    number = Decimal(ratio or 0) * 100
    return f"{number.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP):f}%"


def ratio_text(value: Number | None) -> str:
    """A multiple such as return on spend: Decimal('471.381141') -> '471.4x'."""
    number = Decimal(value or 0)
    return f"{number.quantize(Decimal('0.1'), rounding=ROUND_HALF_UP):,f}x"


def date_text(value: dt.date | None) -> str:
    """A day as people read it everywhere: '2 Dec 2026' (ISO stays in exports and the API)."""
    if value is None:
        return "\u2013"
    return f"{value.day} {value:%b %Y}"


def datetime_text(value: dt.datetime | None) -> str:
    """An instant in the server's time zone, to the minute: '2 Dec 2026, 14:05'."""
    if value is None:
        return "\u2013"
    from django.utils import timezone

    local = timezone.localtime(value) if timezone.is_aware(value) else value
    return f"{date_text(local.date())}, {local:%H:%M}"


UNTAGGED = "(untagged)"


def label_text(key: object) -> str:
    """A grouping key (intent, model, cost center) for people; a missing one is '(untagged)'."""
    return str(key) if key not in (None, "") else UNTAGGED
