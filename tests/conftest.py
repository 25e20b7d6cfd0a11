"""Shared fixtures: the cast of personas, a per-run test database name, and the test clock.

`TB_TEST_CLOCK` (an ISO date-time, read in `TB_TIME_ZONE` when it names no offset) starts every
test at that instant, with the clock running from there: `scripts/test.sh` runs the
date-sensitive tests (marker `clock`) at the first and last minute of a month, on 1 January,
on 29 February and on the last day of a fiscal year, so no test passes only on the day it was
written. Subprocesses (the servers of the end-to-end tests) keep the real clock.
"""

from __future__ import annotations

import datetime as dt
import os
import zoneinfo
from collections.abc import Iterator

import pytest
import time_machine


def _test_clock() -> dt.datetime | None:
    raw = os.environ.get("TB_TEST_CLOCK", "").strip()
    if not raw:
        return None
    instant = dt.datetime.fromisoformat(raw)
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=zoneinfo.ZoneInfo(os.environ.get("TB_TIME_ZONE", "UTC")))
    return instant


TEST_CLOCK = _test_clock()


def pytest_configure(config: pytest.Config) -> None:
    # From collection on, so module-level values such as `FY = current_fiscal_year()` are taken
    # at the test clock's instant too; each test then starts again at that instant.
    if TEST_CLOCK is not None:
        time_machine.travel(TEST_CLOCK, tick=True).start()


@pytest.fixture(autouse=True)
def _test_clock_travel() -> Iterator[None]:
    """Every test starts at `TB_TEST_CLOCK` when it is set (the clock then runs on)."""
    if TEST_CLOCK is None:
        yield
        return
    with time_machine.travel(TEST_CLOCK, tick=True):
        yield


# The tests whose outcome depends on the date: month close, rollups, proration, monthly
# release, fiscal years, pacing alerts, the burn-down, personal statements, value reports and the
# demo history. They run in-process, so the test clock reaches every line they exercise. Tests
# of who may do what, schemas, admin pages and sign-in are left out: they run once per database.
DATE_SENSITIVE = (
    "tests/billing/test_alerts.py",
    "tests/billing/test_apis.py",
    "tests/billing/test_personal.py",
    "tests/billing/test_rollup.py",
    "tests/billing/test_statements.py",
    "tests/budgets/test_apis.py",
    "tests/budgets/test_formatting.py",
    "tests/budgets/test_jobs.py",
    "tests/budgets/test_ledger_properties.py",
    "tests/budgets/test_roster.py",
    "tests/budgets/test_services.py",
    "tests/metering/proxy/test_budget.py",
    "tests/metering/test_apis.py",
    "tests/pages/test_seed_demo_history.py",
    "tests/value/test_budget_requests.py",
    "tests/value/test_outcomes.py",
    "tests/value/test_request_pages.py",
    "tests/value/test_sync_energy.py",
    "tests/value/test_value_page.py",
    "tests/value/test_value_reports.py",
    "tests/value/test_value_store.py",
)


ON_POSTGRES = os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath
    # The production path is PostgreSQL with Redis; its end-to-end tests (several workers, the
    # consumer, Redis restarts) run in the PostgreSQL pass, not again on the embedded default.
    elsewhere = pytest.mark.skip(reason="production path: runs with DATABASE_URL=postgres://...")
    for item in items:
        path = item.path.relative_to(root).as_posix()
        if path.startswith(DATE_SENSITIVE):
            item.add_marker(pytest.mark.clock)
        if not ON_POSTGRES and item.get_closest_marker("production"):
            item.add_marker(elsewhere)


def pytest_report_header() -> str | None:
    if TEST_CLOCK is None:
        return None
    return f"test clock: every test starts at {TEST_CLOCK.isoformat()}"


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """Give each test run its own database (several runs may share one PostgreSQL server)."""
    from django.conf import settings

    suffix = os.environ.get("TB_TEST_DB_SUFFIX") or str(os.getpid())
    test = settings.DATABASES["default"].setdefault("TEST", {})
    name = test.get("NAME")
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        base = name or str(settings.BASE_DIR / ".test-db.sqlite3")
        test["NAME"] = f"{base}.{suffix}"
    else:
        test["NAME"] = f"test_{settings.DATABASES['default']['NAME']}_{suffix}"


def is_postgres() -> bool:
    from django.db import connection

    return connection.vendor == "postgresql"
