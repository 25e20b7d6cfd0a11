"""Price arithmetic (exact Decimal) and the price-in-force selector."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from types import SimpleNamespace

import pytest

from metering.models import ModelPrice
from metering.pricing import FREE, PriceQuote, cost_of, quote_from, worst_input_rate
from metering.providers.base import Usage
from metering.selectors import price_in_force

D = Decimal
UTC = dt.UTC


def test_quote_is_per_token_and_exact() -> None:
    quote = PriceQuote.per_million("m", input=D("2.5"), output=D("10"), cached_input=D("1.25"))
    assert quote.input == D("0.0000025")
    assert quote.output == D("0.00001")
    assert quote.cached_input == D("0.00000125")
    assert quote.cache_write == D("0.0000025")  # falls back to input


def test_cached_and_cache_write_fall_back_to_input() -> None:
    row = SimpleNamespace(
        model="m",
        input_per_mtok=D("3"),
        output_per_mtok=D("15"),
        cached_input_per_mtok=None,
        cache_write_per_mtok=None,
        pk=7,
    )
    quote = quote_from(row)
    assert quote.cached_input == quote.cache_write == quote.input == D("0.000003")
    assert quote.price_id == 7


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        # OpenAI: 1000 prompt (200 cached), 500 completion (100 reasoning, inside output).
        (Usage(1000, 500, 200, 0, 100), D("800") * D("3") + 200 * D("0.3") + 500 * D("15")),
        # Anthropic: 100 plain + 300 cache write + 600 cache read = 1000 input.
        (
            Usage(1000, 50, 600, 300, 0),
            100 * D("3") + 600 * D("0.3") + 300 * D("3.75") + 50 * D("15"),
        ),
        (Usage(0, 0), D(0)),
        (Usage(1, 0), D("3")),
        # Inconsistent upstream numbers never make the plain part negative.
        (Usage(10, 0, 8, 8, 0), 8 * D("0.3") + 8 * D("3.75")),
    ],
)
def test_cost_of_prices_each_kind_once(usage: Usage, expected: Decimal) -> None:
    quote = PriceQuote.per_million(
        "claude", input=D("3"), output=D("15"), cached_input=D("0.3"), cache_write=D("3.75")
    )
    assert cost_of(usage, quote) == expected / 1_000_000


def test_cost_is_exact_for_tiny_prices() -> None:
    quote = PriceQuote.per_million("emb", input=D("0.02"), output=D("0"))
    assert cost_of(Usage(input_tokens=3), quote) == D("0.00000006")
    assert isinstance(cost_of(Usage(input_tokens=3), quote), Decimal)


def test_floats_are_refused() -> None:
    with pytest.raises(TypeError):
        PriceQuote.per_million("m", input=2.5, output=D(1))  # type: ignore[arg-type]


def test_worst_input_rate_takes_the_dearest_input_kind() -> None:
    quote = PriceQuote.per_million(
        "m", input=D("3"), output=D("15"), cached_input=D("0.3"), cache_write=D("3.75")
    )
    assert worst_input_rate(quote) == D("0.00000375")
    assert worst_input_rate(PriceQuote.per_million("m", input=D(1), output=D(2))) == D("0.000001")


def test_free_quote_costs_nothing() -> None:
    assert cost_of(Usage(10**6, 10**6, 10, 10, 10), FREE) == 0


def _price(model: str, when: dt.datetime, source: str, inp: str) -> ModelPrice:
    return ModelPrice.objects.create(
        model=model,
        input_per_mtok=D(inp),
        output_per_mtok=D("1"),
        effective_from=when,
        source=source,
    )


@pytest.mark.django_db
def test_price_in_force_latest_start_and_overrides_win() -> None:
    t0 = dt.datetime(2025, 1, 1, tzinfo=UTC)
    t1 = dt.datetime(2025, 6, 1, tzinfo=UTC)
    t2 = dt.datetime(2025, 9, 1, tzinfo=UTC)
    cat = ModelPrice.Source.CATALOG
    over = ModelPrice.Source.OVERRIDE
    _price("gpt-x", t0, cat, "5")
    _price("gpt-x", t2, cat, "4")
    _price("other", t0, over, "9")

    assert price_in_force("gpt-x", t0 - dt.timedelta(seconds=1)) is None
    assert price_in_force("gpt-x", t0).input_per_mtok == D("5")
    assert price_in_force("gpt-x", t2).input_per_mtok == D("4")

    _price("gpt-x", t1, over, "3")  # negotiated from June
    assert price_in_force("gpt-x", t1 - dt.timedelta(seconds=1)).input_per_mtok == D("5")
    assert price_in_force("gpt-x", t1).input_per_mtok == D("3")
    # A newer catalogue row does not displace the override in force.
    assert price_in_force("gpt-x", t2).input_per_mtok == D("3")
    assert price_in_force("nope", t2) is None
