"""Value-report benchmark on PostgreSQL: 1 million usage records and 100,000 outcomes.

    .venv/bin/python bench/value.py [--records 1000000] [--outcomes 100000]
        [--database-url postgres://postgres@127.0.0.1:5432/test] [--keep]

Creates a scratch database, generates a month of usage (the same SQL generator as
bench/billing_rollup.py), rolls it up, records outcomes on every tenth call with set-based SQL
(accepted, rejected and a business outcome, some with values), sets energy coefficients on two
models, then times the value report by each dimension and the model comparison for the month,
as an admin (every row in scope), then the job that stores the month's reports by every
dimension (first run, and a re-run over unchanged data, which writes no row) and reading a
stored report. Target: each report under 10 s.

A quick check on a busy machine: --records 20000 --outcomes 2000 --employees 200
--cost-centers 10.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.billing_rollup import admin_exec, generate, scratch_url  # noqa: E402


def outcomes_generate(count: int) -> None:
    """`count` outcomes on every tenth usage record, copied attribution and all, in one INSERT."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO metering_outcome (recorded_by_id, client_id, request_id, intent,"
            " employee_id, cost_center_id, model, day, kind, value_units, quantity, note, source,"
            " created_at)"
            " SELECT NULL, 'b' || u.id, u.request_id, u.intent, u.employee_id, u.cost_center_id,"
            " u.model, (u.created_at AT TIME ZONE 'UTC')::date,"
            " (ARRAY['accepted','accepted','accepted','rejected','ticket resolved'])"
            "[1 + (u.id / 10) %% 5],"
            " CASE WHEN u.id %% 3 = 0 THEN 25000000000 ELSE NULL END, 1, '', 'bench', now()"
            " FROM metering_usagerecord u WHERE u.id %% 10 = 0 ORDER BY u.id LIMIT %s",
            [count],
        )
        cur.execute("ANALYZE metering_outcome")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--outcomes", type=int, default=100_000)
    parser.add_argument("--employees", type=int, default=10_000)
    parser.add_argument("--cost-centers", type=int, default=200)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()

    name, url = scratch_url(args.database_url, prefix="value")
    admin_exec(args.database_url, f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    try:
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.core.management import call_command
        from django.db import connection

        from billing.rollup import daily_usage_rollup
        from billing.value import DIMENSIONS, model_comparison, value_report
        from metering.models import Intent, ModelPrice, Outcome

        call_command("migrate", verbosity=0, skip_checks=True)
        t = time.perf_counter()
        generate(args.records, args.employees, args.cost_centers)
        daily_usage_rollup()
        outcomes_generate(args.outcomes)
        print(
            f"{args.records:,} usage records, {Outcome.objects.count():,} outcomes, rolled up, "
            f"in {time.perf_counter() - t:.1f} s"
        )
        since = dt.datetime(2025, 12, 1, tzinfo=dt.UTC)
        for model, e_in, e_out in (("gpt-a", "0.3", "1.2"), ("gpt-b", "0.1", "0.4")):
            ModelPrice.objects.create(
                model=model, input_per_mtok=1, output_per_mtok=4, effective_from=since,
                energy_wh_per_1k_input=Decimal(e_in), energy_wh_per_1k_output=Decimal(e_out),
            )  # fmt: skip
        Intent.objects.create(name="code", expected_value=Decimal(2))
        admin = get_user_model().objects.create(username="bench-admin", is_staff=True)
        connection.close()

        start, end = dt.date(2026, 1, 1), dt.date(2026, 2, 1)
        worst = 0.0
        for dimension in DIMENSIONS:
            t = time.perf_counter()
            rows = value_report(dimension=dimension, start=start, end=end, user=admin)
            took = time.perf_counter() - t
            worst = max(worst, took)
            print(f"value report by {dimension:<12} {len(rows):>6,} rows in {took:.2f} s")
        t = time.perf_counter()
        comparison = model_comparison(start=start, end=end, user=admin)
        took = time.perf_counter() - t
        worst = max(worst, took)
        print(f"model comparison: {len(comparison)} intents in {took:.2f} s")
        print(f"VALUE slowest report {worst:.2f} s (target < 10 s)")

        from billing.models import ValueReport
        from billing.value_store import value_report_served, value_report_store

        now = dt.datetime(2026, 2, 2, 6, tzinfo=dt.UTC)  # January is the last complete month
        for label, at in (("stored", now), ("re-run, unchanged", now + dt.timedelta(hours=1))):
            t = time.perf_counter()
            value_report_store(period=start, now=at)
            took = time.perf_counter() - t
            rows = ValueReport.objects.filter(period__since=start).count()
            print(f"value report job ({label}): {rows:,} rows, every dimension, in {took:.2f} s")
        for dimension in DIMENSIONS:
            t = time.perf_counter()
            served = value_report_served(dimension=dimension, start=start, end=end, user=admin)
            took = time.perf_counter() - t
            assert served.stored
            print(f"stored report by {dimension:<12} {len(served.rows):>6,} rows in {took:.2f} s")
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            admin_exec(args.database_url, f'DROP DATABASE IF EXISTS "{name}"')


if __name__ == "__main__":
    main()
