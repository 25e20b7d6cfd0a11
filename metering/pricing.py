"""Price arithmetic (pure: no I/O; takes a ModelPrice row or anything with its fields).

Prices are stored per million tokens; a PriceQuote holds them per token, exactly (dividing a
Decimal by 10**6 only moves its exponent). Costs are exact Decimals; nothing is rounded here.
Which price is in force at a moment is a database question: see `metering.selectors.pick_price`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from metering.providers.base import Usage

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class PriceQuote:
    """USD per token (not per million) of each kind for one model. Cached input and cache writes
    fall back to the plain input rate when the price list has no separate rate for them."""

    model: str
    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal
    price_id: int | None = None  # the ModelPrice row it came from, for the record

    @classmethod
    def per_million(
        cls,
        model: str,
        *,
        input: Decimal,  # the wire name; shadows the builtin here only
        output: Decimal,
        cached_input: Decimal | None = None,
        cache_write: Decimal | None = None,
        price_id: int | None = None,
    ) -> PriceQuote:
        """A quote from prices per million tokens."""
        return cls(
            model=model,
            input=_per_token(input),
            output=_per_token(output),
            cached_input=_per_token(input if cached_input is None else cached_input),
            cache_write=_per_token(input if cache_write is None else cache_write),
            price_id=price_id,
        )


def _per_token(per_million: Decimal) -> Decimal:
    if not isinstance(per_million, Decimal):
        raise TypeError(f"prices must be Decimal, not {type(per_million).__name__}")
    return per_million.scaleb(-6)


def quote_from(price: Any) -> PriceQuote:
    """A quote from a `ModelPrice` row (or any object with the same per-million fields)."""
    return PriceQuote.per_million(
        price.model,
        input=price.input_per_mtok,
        output=price.output_per_mtok,
        cached_input=price.cached_input_per_mtok,
        cache_write=price.cache_write_per_mtok,
        price_id=getattr(price, "pk", None),
    )


def cost_of(usage: Usage, quote: PriceQuote) -> Decimal:
    """The exact USD cost of `usage`.

    (input - cached - cache_write) * input_rate + cached * cached_rate
    + cache_write * cache_write_rate + output * output_rate.

    Cached and cache-write tokens are parts of `input_tokens` and reasoning tokens part of
    `output_tokens` (the normalised Usage), so each token is priced once. Should an upstream
    report more cached + cache-write tokens than input, the plain part counts as zero rather
    than negative.
    """
    plain = max(0, usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens)
    return (
        plain * quote.input
        + usage.cached_input_tokens * quote.cached_input
        + usage.cache_write_tokens * quote.cache_write
        + usage.output_tokens * quote.output
    )


def worst_input_rate(quote: PriceQuote) -> Decimal:
    """The highest rate any input token can cost (cache writes usually cost more than plain
    input), for a reservation that must never undershoot."""
    return max(quote.input, quote.cached_input, quote.cache_write)


# Self-hosted routes marked unmetered-cost: tokens are counted, money is not.
FREE = PriceQuote(model="", input=ZERO, output=ZERO, cached_input=ZERO, cache_write=ZERO)
