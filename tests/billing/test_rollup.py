"""billing.rollup: incremental fold, idempotence, rebuild, and exact totals."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db.models import Count, Sum
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.models import CostCenterDay, DailyUsage, units_to_cost
from billing.rollup import daily_usage_rebuild, daily_usage_rollup
from metering.models import UsageRecord
from tests.billing.factories import CostCenterFactory, EmployeeFactory, usage
from tests.clock import local

pytestmark = pytest.mark.django_db
UTC = dt.UTC


def _rollup_totals() -> dict:
    agg = DailyUsage.objects.aggregate(
        requests=Sum("requests"),
        input=Sum("input_tokens"),
        output=Sum("output_tokens"),
        cached=Sum("cached_input_tokens"),
        write=Sum("cache_write_tokens"),
        reasoning=Sum("reasoning_tokens"),
        cost=Sum("cost_units"),
    )
    return {k: (units_to_cost(v) if k == "cost" else v or 0) for k, v in agg.items()}


def _raw_totals() -> dict:
    records = list(UsageRecord.objects.all())
    return {
        "requests": len(records),
        "input": sum(r.input_tokens for r in records),
        "output": sum(r.output_tokens for r in records),
        "cached": sum(r.cached_input_tokens for r in records),
        "write": sum(r.cache_write_tokens for r in records),
        "reasoning": sum(r.reasoning_tokens for r in records),
        "cost": sum((r.cost for r in records), Decimal(0)),
    }


def _snapshot() -> list[tuple]:
    return list(
        DailyUsage.objects.order_by("day", "employee_id", "cost_center_id", "model", "intent")
        .values_list(
            "day", "employee_id", "cost_center_id", "model", "intent", "requests",
            "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens",
            "reasoning_tokens", "cost_units",
        )
    )  # fmt: skip


def test_rollup_groups_by_day_employee_cost_center_model_intent() -> None:
    alice = EmployeeFactory()
    other_cc = CostCenterFactory()
    day = local(2026, 3, 5, 10)
    usage(alice, at=day, cost="0.0000000001", intent="code")
    usage(alice, at=day + dt.timedelta(hours=1), cost="1.2500000000", intent="code")
    usage(alice, at=day, intent="chat")
    usage(alice, at=day, model="other")
    usage(alice, at=day, cost_center=other_cc)  # before a move: stays with the old center
    usage(alice, at=day + dt.timedelta(days=1))

    result = daily_usage_rollup()

    assert result.groups == 5
    row = DailyUsage.objects.get(day=dt.date(2026, 3, 5), intent="code")
    assert (row.requests, row.input_tokens, row.output_tokens) == (2, 200, 100)
    assert row.cost == Decimal("1.2500000001")
    assert DailyUsage.objects.filter(cost_center=other_cc).count() == 1


def test_rollup_is_incremental_and_idempotent() -> None:
    alice = EmployeeFactory()
    at = local(2026, 3, 5, 10)
    usage(alice, at=at, cost="0.5")
    daily_usage_rollup()
    before = _snapshot()

    assert daily_usage_rollup().groups == 0
    assert _snapshot() == before

    usage(alice, at=at, cost="0.25")
    daily_usage_rollup()
    assert DailyUsage.objects.get().cost == Decimal("0.75")
    assert DailyUsage.objects.get().requests == 2


def test_late_record_with_old_created_at_is_counted() -> None:
    alice = EmployeeFactory()
    usage(alice, at=local(2026, 3, 5))
    daily_usage_rollup()
    usage(alice, at=local(2026, 1, 2), cost="2")  # arrives late
    daily_usage_rollup()
    assert DailyUsage.objects.get(day=dt.date(2026, 1, 2)).cost == Decimal(2)


@override_settings(TIME_ZONE="America/New_York")
def test_days_follow_the_billing_time_zone() -> None:
    alice = EmployeeFactory()
    usage(alice, at=dt.datetime(2026, 3, 1, 3, tzinfo=UTC))  # still Feb 28 in New York
    daily_usage_rollup()
    assert DailyUsage.objects.get().day == dt.date(2026, 2, 28)


def test_rebuild_gives_the_same_numbers() -> None:
    alice, bob = EmployeeFactory(), EmployeeFactory()
    for day in range(1, 8):
        at = local(2026, 3, day, 12)
        usage(alice, at=at, cost=f"0.{day}")
        usage(bob, at=at, model="m2", cost="0.0000000003")
        daily_usage_rollup()
    incremental = _snapshot()

    daily_usage_rebuild(start=dt.date(2026, 3, 2), end=dt.date(2026, 3, 5))
    assert _snapshot() == incremental
    DailyUsage.objects.all().delete()
    daily_usage_rebuild(start=dt.date(2026, 1, 1), end=dt.date(2027, 1, 1))
    assert _snapshot() == incremental


def test_rebuild_leaves_unfolded_records_to_the_next_run() -> None:
    alice = EmployeeFactory()
    at = local(2026, 3, 5)
    usage(alice, at=at, cost="1")
    daily_usage_rollup()
    usage(alice, at=at, cost="2")
    daily_usage_rebuild(start=dt.date(2026, 3, 1), end=dt.date(2026, 4, 1))
    assert DailyUsage.objects.get().cost == Decimal(1)
    daily_usage_rollup()
    assert DailyUsage.objects.get().cost == Decimal(3)


record_strategy = st.fixed_dictionaries(
    {
        "emp": st.integers(0, 2),
        "cc": st.integers(0, 1),
        "minute": st.integers(0, 60 * 24 * 40),
        "model": st.sampled_from(["a", "b"]),
        "intent": st.sampled_from(["", "x"]),
        "cost": st.decimals(
            min_value=0, max_value=Decimal("99.9999999999"), places=10, allow_nan=False
        ),
        "tokens": st.tuples(*[st.integers(0, 10**9)] * 5),
        "fold_after": st.booleans(),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(record_strategy, max_size=25))
def test_rollup_totals_equal_raw_totals_exactly(records: list[dict]) -> None:
    DailyUsage.objects.all().delete()
    UsageRecord.objects.all().delete()
    centers = list(CostCenterFactory.create_batch(2))
    people = [EmployeeFactory(cost_center=centers[0]) for _ in range(3)]
    start = local(2026, 1, 20)
    for rec in records:
        inp, out, cached, write, reasoning = rec["tokens"]
        usage(
            people[rec["emp"]],
            cost_center=centers[rec["cc"]],
            at=start + dt.timedelta(minutes=rec["minute"]),
            model=rec["model"],
            intent=rec["intent"],
            cost=rec["cost"],
            input_tokens=inp,
            output_tokens=out,
            cached_input_tokens=cached,
            cache_write_tokens=write,
            reasoning_tokens=reasoning,
        )
        if rec["fold_after"]:
            daily_usage_rollup()
    daily_usage_rollup()
    assert _rollup_totals() == _raw_totals()
    # Per cost center too: the grouping never moves cost between centers.
    per_cc_rollup = dict(
        DailyUsage.objects.values_list("cost_center").annotate(Sum("cost_units")).order_by()
    )
    for cc in centers:
        raw = sum((r.cost for r in UsageRecord.objects.filter(cost_center=cc)), Decimal(0))
        assert units_to_cost(per_cc_rollup.get(cc.id, 0)) == raw
    assert DailyUsage.objects.aggregate(n=Count("id"))["n"] <= len(records)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_uncommitted_smaller_id_holds_the_watermark_back() -> None:
    """PostgreSQL: id 1 is taken by a transaction that commits after id 2 is visible."""
    from django.db import connection

    from tests.conftest import is_postgres

    if not is_postgres():
        pytest.skip("PostgreSQL commit-order behaviour")
    import psycopg

    alice = EmployeeFactory()
    at = local(2026, 3, 5)
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    slow = psycopg.connect(**{k: v for k, v in params.items() if k != "prepare_threshold"})
    try:
        slow.execute(
            "INSERT INTO metering_usagerecord (request_id, created_at, employee_id, "
            "cost_center_id, provider, model, upstream_model, endpoint, input_tokens, "
            "output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens, cost, "
            "latency_ms, status_code, streamed, estimated, usage_source, clamped, intent, "
            "error_type, attempts) VALUES ('slow', %s, %s, %s, '', 'gpt-test', '', 'x', 1, 1, 0, "
            "0, 0, 5, 0, 200, false, false, 'provider', false, '', '', 1)",
            [at, alice.id, alice.cost_center_id],
        )
        usage(alice, at=at, cost="1")  # commits with a larger id while 'slow' is open
        daily_usage_rollup()
        assert DailyUsage.objects.count() == 0  # not safe yet: a smaller id may still commit
        slow.commit()
        daily_usage_rollup()
        assert DailyUsage.objects.get().cost == Decimal(6)
        assert daily_usage_rollup().groups == 0
        assert DailyUsage.objects.get().requests == 2
    finally:
        slow.close()


def _per_center_from_daily() -> list[tuple]:
    """DailyUsage summed per day and cost center: what CostCenterDay must hold."""
    return [
        tuple(row.values())
        for row in DailyUsage.objects.order_by("day", "cost_center_id")
        .values("day", "cost_center_id")
        .annotate(r=Sum("requests"), i=Sum("input_tokens"), o=Sum("output_tokens"),
                  c=Sum("cached_input_tokens"), w=Sum("cache_write_tokens"),
                  x=Sum("reasoning_tokens"), u=Sum("cost_units"))
    ]  # fmt: skip


def _per_center() -> list[tuple]:
    return list(
        CostCenterDay.objects.order_by("day", "cost_center_id").values_list(
            "day", "cost_center_id", "requests", "input_tokens", "output_tokens",
            "cached_input_tokens", "cache_write_tokens", "reasoning_tokens", "cost_units",
        )
    )  # fmt: skip


def test_the_per_cost_center_fold_always_equals_the_daily_rollup_summed() -> None:
    """Incremental runs (a day folded in several runs, a person moved to another cost center
    mid-month) and a rebuild keep CostCenterDay equal to DailyUsage grouped by day and cost
    center, to the last 1e-10 of a dollar."""
    alice, bob = EmployeeFactory(), EmployeeFactory()
    other = CostCenterFactory()
    for day in range(1, 6):
        usage(alice, at=local(2026, 3, day, 9), cost=f"0.{day}", input_tokens=day * 10)
        usage(bob, at=local(2026, 3, day, 10), model="m2", cost="0.0000000003")
        if day == 3:
            usage(alice, at=local(2026, 3, day, 11), cost="1.5", cost_center=other)
        daily_usage_rollup()
        usage(alice, at=local(2026, 3, day, 23), cost="0.25")  # folded by the next run
    daily_usage_rollup()
    assert _per_center() == _per_center_from_daily()
    assert CostCenterDay.objects.filter(cost_center=other).get().cost == Decimal("1.5")

    daily_usage_rebuild(start=dt.date(2026, 3, 2), end=dt.date(2026, 3, 4))
    assert _per_center() == _per_center_from_daily()
    assert len(_per_center()) == 11  # 5 days x 2 cost centers, and the move on the 3rd
