"""Property tests of the allowance arithmetic and the quota ledger."""

from __future__ import annotations

import contextlib
import datetime as dt
from decimal import Decimal
from fractions import Fraction
from unittest import mock

from django.core.exceptions import ValidationError
from django.db import transaction
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgets import balance, ledger, services
from budgets.fiscal import add_months, fiscal_year_bounds, month_start
from budgets.models import Adjustment, Allowance, CostCenter, Employee
from metering.quota import db as quota_db

QUANTA = {"tokens": Fraction(1), "usd": Fraction(1, 100)}


def _floor_to(value: Fraction, unit: str) -> Fraction:
    quantum = QUANTA[unit]
    return (value // quantum) * quantum


@st.composite
def employment(draw: st.DrawFn) -> tuple[int, int, dt.date | None, dt.date | None]:
    """A fiscal year, its start month, and optional start/end dates that may fall inside it."""
    start_month = draw(st.integers(1, 12))
    fiscal_year = draw(st.integers(2020, 2030))
    first, following = fiscal_year_bounds(fiscal_year, start_month)
    days = (following - first).days
    start = draw(st.none() | st.integers(-30, days - 1).map(lambda n: first + dt.timedelta(n)))
    end = draw(st.none() | st.integers(0, days + 30).map(lambda n: first + dt.timedelta(n)))
    if start and end and end < start:
        start, end = end, start
    return fiscal_year, start_month, start, end


amounts = st.sampled_from(["tokens", "usd"]).flatmap(
    lambda unit: st.tuples(
        st.just(unit),
        st.integers(0, 10**13).map(
            lambda n: Decimal(n) if unit == "tokens" else Decimal(n).scaleb(-2)
        ),
    )
)


@given(amounts, employment(), st.booleans())
def test_proration_is_exact_to_the_unit(
    unit_amount: tuple[str, Decimal],
    job: tuple[int, int, dt.date | None, dt.date | None],
    prorate: bool,
) -> None:
    unit, amount = unit_amount
    fiscal_year, start_month, start, end = job
    grant = ledger.prorated_amount(
        amount,
        unit,
        fiscal_year=fiscal_year,
        start_month=start_month,
        employee_start=start,
        employee_end=end,
        prorate=prorate,
    )
    if not prorate:
        assert grant == amount
        return
    first, following = fiscal_year_bounds(fiscal_year, start_month)
    period = ledger.active_period(fiscal_year, start_month, start, end)
    exact = Fraction(amount) * period.days / (following - first).days
    assert Fraction(grant) == _floor_to(exact, unit)
    assert 0 <= grant <= amount


@given(amounts, employment(), st.sampled_from(["upfront", "monthly"]))
def test_monthly_shares_sum_to_the_grant(
    unit_amount: tuple[str, Decimal],
    job: tuple[int, int, dt.date | None, dt.date | None],
    release: str,
) -> None:
    unit, grant = unit_amount
    fiscal_year, start_month, start, end = job
    period = ledger.active_period(fiscal_year, start_month, start, end)
    if period.days == 0:
        return

    def released(day: dt.date) -> Decimal:
        return ledger.released_amount(
            grant,
            unit,
            release=release,
            fiscal_year=fiscal_year,
            start_month=start_month,
            period=period,
            today=day,
        )

    # Release days: the first active day, then every month start inside the period.
    days = [period.start]
    day = add_months(month_start(period.start), 1)
    while day < period.end:
        days.append(day)
        day = add_months(day, 1)
    cumulative = [released(d) for d in days]
    shares = [b - a for a, b in zip([Decimal(0), *cumulative], cumulative, strict=False)]
    assert sum(shares) == grant
    assert all(share >= 0 for share in shares)
    assert released(period.start - dt.timedelta(days=1)) == 0
    assert released(period.end) == grant
    if release == "monthly":
        months = len(days)
        for k, share in enumerate(shares, start=1):
            expected = _floor_to(Fraction(grant) * k / months, unit) - _floor_to(
                Fraction(grant) * (k - 1) / months, unit
            )
            assert Fraction(share) == expected
        # Nothing more is released between one release day and the next.
        for d, following in zip(days, [*days[1:], period.end], strict=True):
            assert released(following - dt.timedelta(days=1)) == released(d)


# --- the ledger under any sequence of operations --------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("top_up"), st.integers(1, 5_000)),
        st.tuples(st.just("correction"), st.integers(-5_000, 5_000).filter(bool)),
        st.tuples(st.just("reserve"), st.integers(0, 3_000), st.integers(1, 3_000), st.booleans()),
        st.tuples(st.just("settle"), st.integers(0, 50), st.fractions(0, 1)),
        st.tuples(st.just("release"), st.integers(0, 50)),
    ),
    max_size=25,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.integers(0, 20_000),
    st.sampled_from(["upfront", "monthly"]),
    st.sampled_from(["tokens", "usd"]),
    st.dates(dt.date(2026, 1, 1), dt.date(2026, 12, 31)),
    operations,
)
def test_ledger_invariants_hold_for_any_sequence(
    db: None, amount: int, release: str, unit: str, day: dt.date, ops: list[tuple]
) -> None:
    # Each example runs in a savepoint that is rolled back, so examples never see each other;
    # "today" is the drawn day for the ledger and the services alike.
    with (
        mock.patch("budgets.balance.today", return_value=day),
        mock.patch("budgets.services.today", return_value=day),
        override_settings(TB_FISCAL_YEAR_START_MONTH=1),
        transaction.atomic(),
    ):
        _run_sequence(Decimal(amount), release, unit, day, ops)
        transaction.set_rollback(True)


def _run_sequence(amount: Decimal, release: str, unit: str, day: dt.date, ops: list[tuple]) -> None:
    center = CostCenter.objects.create(code="prop", name="Prop")
    employee = Employee.objects.create(employee_id="P-1", email="p@example.com", cost_center=center)
    scale = Decimal(1) if unit == "tokens" else Decimal("0.01")
    allowance = Allowance.objects.create(
        employee=employee,
        fiscal_year=balance.current_fiscal_year(day),
        unit=unit,
        amount=amount * scale,
        release=release,
    )
    price = Decimal("0.01")  # per token, so a USD estimate is a whole number of cents
    holds: list[quota_db.Hold] = []
    used = Decimal(0)
    rule = balance.LimitRule()  # hard limit
    for op in ops:
        if op[0] in ("top_up", "correction"):
            # A correction below what is used or held is refused (and writes nothing).
            with contextlib.suppress(ValidationError):
                services.adjustment_create(
                    actor=None,
                    allowance=allowance,
                    kind=op[0],
                    amount=Decimal(op[1]) * scale,
                    reason="property",
                )
        elif op[0] == "reserve":
            estimate = ledger.CallEstimate(op[1], op[2], price, price)
            hold = quota_db.quota_reserve(
                employee=employee, estimate=estimate, rule=rule, clamp=op[3], day=day
            )
            if isinstance(hold, quota_db.Hold):
                holds.append(hold)
        elif op[0] == "settle" and holds:
            hold = holds.pop(op[1] % len(holds))
            tokens = int(hold.tokens * op[2])  # the actual call used at most what was held
            cost = Decimal(tokens) * price
            assert quota_db.quota_settle(hold=hold, tokens=tokens, cost=cost)
            used += Decimal(tokens) if unit == "tokens" else cost
        elif op[0] == "release" and holds:
            assert quota_db.quota_release(hold=holds.pop(op[1] % len(holds)))
        view = balance.quota_get(employee, day=day)
        assert view.remaining == view.released - view.used - view.reserved
        assert view.remaining >= 0  # the hard limit never goes below zero
        assert view.used == used
        assert view.reserved == sum((h.amount for h in holds), Decimal(0))
        total = sum(Adjustment.objects.filter(allowance=allowance).values_list("amount", flat=True))
        allowance.refresh_from_db()
        assert allowance.adjustments_total == total
        grant, _ = balance.allowance_released(allowance, employee, day)
        assert view.allowance == grant + total
