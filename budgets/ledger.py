"""Allowance arithmetic and reservation planning (pure functions, no I/O).

Amounts are Decimal. A token allowance is counted in whole tokens; a money allowance in cents
for grants and releases (usage itself is charged to the exact cost, which may have more places).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from budgets.fiscal import add_months, fiscal_year_bounds, month_start, months_between

TOKENS = "tokens"
USD = "usd"
QUANTUM = {TOKENS: Decimal(1), USD: Decimal("0.01")}


def quantize_down(amount: Decimal, unit: str) -> Decimal:
    return amount.quantize(QUANTUM[unit], rounding=ROUND_DOWN)


@dataclass(frozen=True)
class ActivePeriod:
    start: dt.date  # inclusive
    end: dt.date  # exclusive

    @property
    def days(self) -> int:
        return max(0, (self.end - self.start).days)


def active_period(
    fiscal_year: int,
    start_month: int,
    employee_start: dt.date | None,
    employee_end: dt.date | None,
) -> ActivePeriod:
    """The part of the fiscal year the employee is employed (end date is their last day)."""
    fy_start, fy_end = fiscal_year_bounds(fiscal_year, start_month)
    start = max(fy_start, employee_start) if employee_start else fy_start
    end = min(fy_end, employee_end + dt.timedelta(days=1)) if employee_end else fy_end
    return ActivePeriod(start, max(start, end))


def prorated_amount(
    amount: Decimal,
    unit: str,
    *,
    fiscal_year: int,
    start_month: int,
    employee_start: dt.date | None,
    employee_end: dt.date | None,
    prorate: bool = True,
) -> Decimal:
    """The year's grant: the full amount, or its share of days employed, rounded down."""
    if not prorate:
        return amount
    fy_start, fy_end = fiscal_year_bounds(fiscal_year, start_month)
    period = active_period(fiscal_year, start_month, employee_start, employee_end)
    return quantize_down(amount * period.days / (fy_end - fy_start).days, unit)


def released_amount(
    grant: Decimal,
    unit: str,
    *,
    release: str,
    fiscal_year: int,
    start_month: int,
    period: ActivePeriod,
    today: dt.date,
) -> Decimal:
    """How much of the grant is released on `today`.

    Upfront: all of it from the first active day. Monthly: one share at the start of each active
    month, cumulative; the cumulative formula floor(grant * k / n) makes the last month release
    exactly the remainder, so the shares always add up to the grant to the unit.
    """
    if period.days == 0 or today < period.start:
        return Decimal(0)
    if release == "upfront" or today >= period.end:
        return grant
    last_day = period.end - dt.timedelta(days=1)
    total_months = months_between(period.start, last_day)
    elapsed = months_between(period.start, today)
    return quantize_down(grant * elapsed / total_months, unit)


def next_release_date(period: ActivePeriod, release: str, today: dt.date) -> dt.date | None:
    if release == "upfront" or today >= period.end:
        return None
    if today < period.start:
        return period.start
    following = add_months(month_start(today), 1)
    return following if following < period.end else None


# --- reservation planning ----------------------------------------------------------------


@dataclass(frozen=True)
class Headroom:
    """What one budget (allowance, cost-center cap, key cap) still allows, in its own unit."""

    code: str  # names the budget in a refusal, e.g. "employee_allowance"
    unit: str  # TOKENS or USD
    available: Decimal
    held: Decimal = Decimal(0)  # what open holds of other calls take out of `available`


@dataclass(frozen=True)
class CallEstimate:
    prompt_tokens: int
    max_output_tokens: int
    input_price_per_token: Decimal  # worst input rate (cache writes may cost more than input)
    output_price_per_token: Decimal

    def cost(self, output_tokens: int) -> Decimal:
        return (
            self.prompt_tokens * self.input_price_per_token
            + output_tokens * self.output_price_per_token
        )

    def amount(self, unit: str, output_tokens: int) -> Decimal:
        if unit == TOKENS:
            return Decimal(self.prompt_tokens + output_tokens)
        return self.cost(output_tokens)


@dataclass(frozen=True)
class ReservationPlan:
    output_tokens: int  # the max_tokens the upstream call may use
    tokens: int
    cost: Decimal
    clamped: bool


@dataclass(frozen=True)
class Refusal:
    code: str
    available: Decimal
    unit: str
    # True when the call would fit once other calls' holds are settled: worth waiting for,
    # since holds are worst cases and usually settle for less.
    waitable: bool = False


def plan_reservation(
    headrooms: list[Headroom], estimate: CallEstimate, *, clamp: bool, min_output_tokens: int = 1
) -> ReservationPlan | Refusal:
    """Reserve the whole call when every budget can pay for it; otherwise, with `clamp`, lower
    the output to what the tightest budget can still pay for, as long as the prompt and at least
    `min_output_tokens` fit. A budget that cannot pay for that is named in the refusal."""
    allowed = estimate.max_output_tokens
    for room in headrooms:
        fits = _output_that_fits(room.available, room.unit, estimate)
        if not _enough(fits, estimate, clamp=clamp, min_output_tokens=min_output_tokens):
            unheld = _output_that_fits(room.available + room.held, room.unit, estimate)
            return Refusal(
                code=room.code,
                available=max(room.available, Decimal(0)),
                unit=room.unit,
                waitable=room.held > 0
                and _enough(unheld, estimate, clamp=clamp, min_output_tokens=min_output_tokens),
            )
        allowed = min(allowed, fits)
    return ReservationPlan(
        output_tokens=allowed,
        tokens=estimate.prompt_tokens + allowed,
        cost=estimate.cost(allowed),
        clamped=allowed < estimate.max_output_tokens,
    )


def _enough(fits: int, estimate: CallEstimate, *, clamp: bool, min_output_tokens: int) -> bool:
    if not clamp:
        return fits >= estimate.max_output_tokens
    return fits >= min(min_output_tokens, estimate.max_output_tokens)


def _output_that_fits(available: Decimal, unit: str, estimate: CallEstimate) -> int:
    """The largest output token count whose worst-case charge fits in `available` (-1 if the
    prompt alone does not fit)."""
    left = available - estimate.amount(unit, 0)
    if left < 0:
        return -1
    per_token = Decimal(1) if unit == TOKENS else estimate.output_price_per_token
    if per_token == 0:
        return estimate.max_output_tokens
    return min(estimate.max_output_tokens, int(left // per_token))
