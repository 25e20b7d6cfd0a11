"""Fiscal calendar arithmetic (pure, no I/O).

A fiscal year is named after the calendar year it starts in: with a start month of 4, fiscal
year 2026 runs from 2026-04-01 (inclusive) to 2027-04-01 (exclusive).
"""

from __future__ import annotations

import datetime as dt


def fiscal_year_of(day: dt.date, start_month: int) -> int:
    return day.year if day.month >= start_month else day.year - 1


def fiscal_year_bounds(fiscal_year: int, start_month: int) -> tuple[dt.date, dt.date]:
    """Return (first day, first day of the next fiscal year)."""
    return dt.date(fiscal_year, start_month, 1), dt.date(fiscal_year + 1, start_month, 1)


def add_months(day: dt.date, months: int) -> dt.date:
    index = day.month - 1 + months
    return dt.date(day.year + index // 12, index % 12 + 1, 1)


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def months_between(first: dt.date, last: dt.date) -> int:
    """Number of calendar months whose start lies in [month_start(first), last]."""
    return (last.year - first.year) * 12 + last.month - first.month + 1
