"""billing.statements: close, finalize, late usage adjustments, moves, reconciliation."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal

import pytest

from billing.models import ChargebackStatement, StatementLine, units_to_cost
from billing.rollup import daily_usage_rollup
from billing.selectors import usage_reconcile
from billing.statements import (
    StatementStateError,
    statement_finalize,
    statement_mark_paid,
    statements_close_as_needed,
)
from metering.models import UsageRecord
from tests.billing.factories import CostCenterFactory, EmployeeFactory, usage
from tests.clock import local_at

pytestmark = pytest.mark.django_db
UTC = dt.UTC
JAN, FEB, MAR = dt.date(2026, 1, 1), dt.date(2026, 2, 1), dt.date(2026, 3, 1)


def at(day: dt.date, hour: int = 12) -> dt.datetime:
    return local_at(day, hour)


def lines_of(statement: ChargebackStatement) -> list[tuple]:
    return list(
        statement.lines.order_by("usage_month", "employee_id", "model").values_list(
            "kind", "usage_month", "employee__employee_id", "model", "requests", "cost_units"
        )
    )


def test_close_builds_lines_per_employee_and_model() -> None:
    cc = CostCenterFactory(code="eng")
    alice = EmployeeFactory(employee_id="A", cost_center=cc)
    bob = EmployeeFactory(employee_id="B", cost_center=cc)
    usage(alice, at=at(dt.date(2026, 1, 3)), cost="1.5", model="m1")
    usage(alice, at=at(dt.date(2026, 1, 30)), cost="0.25", model="m1")
    usage(alice, at=at(dt.date(2026, 1, 30)), cost="0.0000000001", model="m2")
    usage(bob, at=at(dt.date(2026, 1, 31), 23), cost="2", model="m1")
    usage(bob, at=at(dt.date(2026, 2, 1)), cost="100", model="m1")  # February: not yet

    statements_close_as_needed(now=at(dt.date(2026, 2, 1), 1))

    statement = ChargebackStatement.objects.get()
    assert (statement.period, statement.status) == (JAN, "draft")
    assert statement.total == Decimal("3.7500000001")
    assert statement.requests == 4
    assert lines_of(statement) == [
        ("usage", JAN, "A", "m1", 2, 17_500_000_000),
        ("usage", JAN, "A", "m2", 1, 1),
        ("usage", JAN, "B", "m1", 1, 20_000_000_000),
    ]


def test_close_is_idempotent_and_refreshes_drafts() -> None:
    alice = EmployeeFactory()
    usage(alice, at=at(dt.date(2026, 1, 3)), cost="1")
    now = at(dt.date(2026, 2, 2))
    statements_close_as_needed(now=now)
    first = list(ChargebackStatement.objects.values_list("id", "total_units"))
    first_lines = list(StatementLine.objects.values_list("statement_id", "cost_units"))
    statements_close_as_needed(now=now)
    assert list(ChargebackStatement.objects.values_list("id", "total_units")) == first
    assert list(StatementLine.objects.values_list("statement_id", "cost_units")) == first_lines

    usage(alice, at=at(dt.date(2026, 1, 4)), cost="2")  # late, but January is still a draft
    statements_close_as_needed(now=now)
    assert ChargebackStatement.objects.get().total == Decimal(3)


def test_mover_appears_on_each_statement_for_their_share() -> None:
    old, new = CostCenterFactory(), CostCenterFactory()
    alice = EmployeeFactory(cost_center=old)
    usage(alice, at=at(dt.date(2026, 1, 5)), cost="1")
    alice.cost_center = new
    alice.save()
    usage(alice, at=at(dt.date(2026, 1, 20)), cost="4")

    statements_close_as_needed(now=at(dt.date(2026, 2, 1)))

    assert ChargebackStatement.objects.get(cost_center=old).total == Decimal(1)
    assert ChargebackStatement.objects.get(cost_center=new).total == Decimal(4)


def test_final_statement_never_changes_and_late_usage_becomes_next_month_adjustment() -> None:
    cc = CostCenterFactory()
    alice = EmployeeFactory(employee_id="A", cost_center=cc)
    usage(alice, at=at(dt.date(2026, 1, 10)), cost="1")
    statements_close_as_needed(now=at(dt.date(2026, 2, 1)))
    january = ChargebackStatement.objects.get(period=JAN)
    statement_finalize(statement_id=january.id, now=at(dt.date(2026, 2, 2)))
    frozen = lines_of(january)

    usage(alice, at=at(dt.date(2026, 1, 31)), cost="0.5")  # late January usage
    usage(alice, at=at(dt.date(2026, 2, 10)), cost="2")
    statements_close_as_needed(now=at(dt.date(2026, 2, 15)))  # mid-month: nothing new closes
    january.refresh_from_db()
    assert (january.total, lines_of(january)) == (Decimal(1), frozen)
    assert not ChargebackStatement.objects.filter(period=FEB).exists()

    statements_close_as_needed(now=at(dt.date(2026, 3, 1)))
    february = ChargebackStatement.objects.get(period=FEB)
    assert lines_of(february) == [
        ("adjustment", JAN, "A", "gpt-test", 1, 5_000_000_000),
        ("usage", FEB, "A", "gpt-test", 1, 20_000_000_000),
    ]
    assert february.total == Decimal("2.5")
    january.refresh_from_db()
    assert lines_of(january) == frozen

    # Finalizing February and re-closing never bills the late usage twice.
    statement_finalize(statement_id=february.id, now=at(dt.date(2026, 3, 2)))
    statements_close_as_needed(now=at(dt.date(2026, 4, 1)))
    assert not ChargebackStatement.objects.filter(period=MAR).exists()


def test_finalize_refuses_non_drafts_and_unfinished_months() -> None:
    alice = EmployeeFactory()
    usage(alice, at=at(dt.date(2026, 1, 10)))
    statements_close_as_needed(now=at(dt.date(2026, 2, 1)))
    statement = ChargebackStatement.objects.get()
    with pytest.raises(StatementStateError):
        statement_finalize(statement_id=statement.id, now=at(dt.date(2026, 1, 31)))
    statement_finalize(statement_id=statement.id, now=at(dt.date(2026, 2, 1)))
    with pytest.raises(StatementStateError):
        statement_finalize(statement_id=statement.id, now=at(dt.date(2026, 2, 1)))
    statement_mark_paid(statement_id=statement.id)
    statement_mark_paid(statement_id=statement.id)
    statement.refresh_from_db()
    assert statement.status == "paid"


def test_totals_reconcile_to_the_unit() -> None:
    centers = CostCenterFactory.create_batch(3)
    people = [EmployeeFactory(cost_center=centers[i % 3]) for i in range(6)]
    costs = ["0.0000000001", "0.3333333333", "1.1", "7.0000000009", "0.01"]
    for i, person in enumerate(people):
        for month in (1, 2, 3):
            usage(person, at=at(dt.date(2026, month, 1 + i)), cost=costs[(i + month) % 5])
    statements_close_as_needed(now=at(dt.date(2026, 2, 1)))
    for statement in ChargebackStatement.objects.all():
        statement_finalize(statement_id=statement.id, now=at(dt.date(2026, 2, 1)))
    usage(people[0], at=at(dt.date(2026, 1, 28)), cost="0.0000000007")  # late
    statements_close_as_needed(now=at(dt.date(2026, 3, 2)))
    usage(people[1], at=at(dt.date(2026, 1, 29)), cost="5")  # late, waits for March's close

    assert usage_reconcile().balanced  # the $5 is not rolled up yet
    assert usage_reconcile().unrolled_total == Decimal(5)
    daily_usage_rollup()
    result = usage_reconcile()

    raw = sum((r.cost for r in UsageRecord.objects.all()), Decimal(0))
    on_statements = units_to_cost(sum(s.total_units for s in ChargebackStatement.objects.all()))
    assert result.usage_total == raw
    assert result.statements_total == on_statements
    assert result.statements_total + result.open_total == raw
    march = sum((r.cost for r in UsageRecord.objects.filter(created_at__gte=at(MAR, 0))), 0)
    assert result.open_total == march + Decimal(5)


def test_commands_close_and_export(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from django.core.management import call_command

    alice = EmployeeFactory()
    usage(alice, at=at(dt.date(2026, 1, 10)), cost="1.25")
    out = io.StringIO()
    call_command("billing_close", now=local_at(dt.date(2026, 2, 1), 6).isoformat(), stdout=out)
    assert "2026-01: 1 created" in out.getvalue() and "balanced" in out.getvalue()
    target = tmp_path / "focus.csv"
    call_command("billing_export", period="2026-01", format="focus", output=str(target))
    rows = list(csv.DictReader(target.open()))
    assert [r["BilledCost"] for r in rows] == ["1.2500000000"]
    call_command("billing_export", period="2026-01", format="xlsx", output=str(tmp_path / "x.xlsx"))
    assert (tmp_path / "x.xlsx").stat().st_size > 0
