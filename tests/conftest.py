"""Shared fixtures: the cast of personas and a per-run test database name."""

from __future__ import annotations

import os

import pytest


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
