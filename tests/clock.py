"""Instants for tests, in the billing time zone (`TB_TIME_ZONE`), so a test that means "noon on
5 March" means it in whatever zone the suite runs in (scripts/test.sh runs the date-sensitive
tests in zones far from UTC)."""

from __future__ import annotations

import datetime as dt

from billing.periods import local_tz


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=local_tz())


def local_at(day: dt.date, hour: int = 12) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), tzinfo=local_tz())
