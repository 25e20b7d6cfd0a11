"""A bounded schemathesis run over /api/schema/: every operation, as an admin and as an
employee, with generated parameters and bodies; no answer may be a 5xx or break the schema.

Bounded for CI on two cores: a few derandomized examples per operation (the same ones every
run), no shrinking budget to speak of, and the application called in-process through WSGI on
the test database (the cast of tests/budgets/conftest.py gives the lists real rows).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import schemathesis
import time_machine
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.utils import timezone
from hypothesis import HealthCheck, Phase, settings
from rest_framework.authtoken.models import Token

from budgets.requests import budget_request_create
from metering.services import key_create
from tests.budgets.conftest import Cast

EXAMPLES = 3
CHECKS = [schemathesis.checks.not_a_server_error, schemathesis.checks.response_schema_conformance]

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application())


@pytest.fixture(autouse=True)
def _keep_the_test_connection() -> Iterator[None]:
    """The WSGI handler closes database connections when a request ends, which would close the
    test's transaction; Django's own test client holds them open the same way."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def now() -> dt.datetime:
    """One instant for the whole test (answers do not move while schemathesis checks them),
    taken from the clock, so the cast's allowances are of the same fiscal year."""
    return timezone.now()


@pytest.fixture
def personas(cast: Cast, now: dt.datetime) -> dict[str, dict[str, str]]:
    """Token headers of an admin and of an employee, who has a key and a pending request (so
    those lists have rows, `decided_by` still null)."""
    with time_machine.travel(now, tick=False):
        key_create(employee=cast.employee, name="laptop", actor=None)
        budget_request_create(user=cast.users["employee"], amount=Decimal(10), reason="Demo")
    return {
        name: {"Authorization": f"Token {Token.objects.create(user=cast.users[name]).key}"}
        for name in ("admin", "employee")
    }


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(
    case: Any, personas: dict[str, dict[str, str]], now: dt.datetime
) -> None:
    # Each generated request is sent as both personas (one generation, two answers to check).
    for headers in personas.values():
        with time_machine.travel(now, tick=False):
            response = case.call(headers=headers)
        case.validate_response(response, checks=CHECKS)
