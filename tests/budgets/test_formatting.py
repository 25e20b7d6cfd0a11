from decimal import Decimal

import pytest

from budgets.formatting import amount_text, plain, tokens_text, usd_text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("874800"), "874800"),
        (Decimal("8.748E+5"), "874800"),
        (Decimal("3E+4"), "30000"),
        (Decimal("110.0000000000"), "110"),
        (Decimal("0.0012500000"), "0.00125"),
        (Decimal("-19471841113093"), "-19471841113093"),
        (None, "0"),
        (0, "0"),
    ],
)
def test_plain_never_prints_an_exponent(value, expected):
    assert plain(value) == expected


def test_people_read_grouped_tokens_and_fixed_point_dollars():
    assert tokens_text(Decimal("1374769.0000000000")) == "1,374,769"
    assert usd_text(Decimal("1234.5")) == "$1,234.50"
    assert usd_text(Decimal("0.00125")) == "$0.0013"
    assert amount_text(Decimal("110.0000000000"), "tokens") == "110 tokens"
    assert amount_text(Decimal("12.5"), "usd") == "$12.50"
