"""50 threads reserving against one allowance at once never hold more than it has.

Runs when DATABASE_URL points at PostgreSQL (the suite's second pass). It is never skipped on
that pass: an unreachable server fails the database setup, so CI cannot pass without it.
"""

from __future__ import annotations

import os
import threading
import time
from decimal import Decimal

import pytest
from django.db import OperationalError, connection

from budgets import balance, ledger
from budgets.models import Allowance, CostCenter, Employee, Reservation
from metering.quota import db as quota_db

ON_POSTGRES = os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))
THREADS = 50


@pytest.mark.postgres
@pytest.mark.skipif(not ON_POSTGRES, reason="needs DATABASE_URL=postgres://...")
def test_fifty_threads_never_reserve_more_than_the_allowance(transactional_db: None) -> None:
    assert connection.vendor == "postgresql"
    center = CostCenter.objects.create(code="race", name="Race")
    employee = Employee.objects.create(employee_id="R-1", email="r@example.com", cost_center=center)
    day = balance.today()
    allowance = Allowance.objects.create(
        employee=employee,
        fiscal_year=balance.current_fiscal_year(day),
        amount=Decimal(1_000),
        prorate=False,
    )
    # 30 tokens per call, no clamping: exactly 33 calls fit in 1000 tokens.
    estimate = ledger.CallEstimate(10, 20, Decimal(0), Decimal(0))
    barrier = threading.Barrier(THREADS)
    results: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def connect() -> None:
        # The server is shared: wait for a free connection slot rather than fail on
        # "too many clients", which says nothing about the ledger.
        for attempt in range(20):
            try:
                connection.ensure_connection()
                return
            except OperationalError:
                connection.close()
                time.sleep(0.1 * (attempt + 1))
        connection.ensure_connection()

    def worker() -> None:
        try:
            connect()
            barrier.wait(timeout=60)
            result = quota_db.quota_reserve(
                employee=employee, estimate=estimate, rule=balance.LimitRule(), clamp=False, day=day
            )
            with lock:
                results.append(result)
        except BaseException as exc:  # collected and re-raised in the main thread
            with lock:
                errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    holds = [r for r in results if isinstance(r, quota_db.Hold)]
    refusals = [r for r in results if isinstance(r, ledger.Refusal)]
    assert (len(holds), len(refusals)) == (33, 17)
    assert {r.code for r in refusals} == {"employee_allowance"}
    allowance.refresh_from_db()
    assert allowance.reserved == Decimal(990)
    assert Reservation.objects.filter(allowance=allowance).count() == 33
    assert balance.quota_get(employee, day=day).remaining == Decimal(10)
