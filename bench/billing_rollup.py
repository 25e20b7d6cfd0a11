"""Billing benchmark on PostgreSQL: rollup, month close, FOCUS export.

    .venv/bin/python bench/billing_rollup.py [--records 10000000] [--employees 10000]
        [--cost-centers 200] [--database-url postgres://postgres@127.0.0.1:5432/test] [--keep]

Creates a scratch database next to the one in --database-url, migrates it, generates the data
with set-based SQL (generate_series; no Python loop over rows), then times:
  1. the incremental DailyUsage rollup folding every record (one INSERT ... SELECT ... GROUP BY
     ... ON CONFLICT statement), and a second run (nothing to do);
  2. closing the month: draft statements for every cost center, lines per employee x model;
  3. the month's FOCUS CSV export through the management command in a child process, with its
     peak RSS next to that of a child that only starts Django (the flat-memory baseline).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def scratch_url(base: str, name: str | None = None, prefix: str = "billing") -> tuple[str, str]:
    """A database name on the server of `base` (`name`, else a new one per process) and its URL."""
    name = name or f"tb_bench_{prefix}_{os.getpid()}"
    return name, urlunparse(urlparse(base)._replace(path=f"/{name}"))


def admin_exec(base: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql)


def generate(records: int, employees: int, centers: int) -> None:
    """People, cost centers and a month (January 2026) of usage, all in SQL."""
    from django.db import connection

    from metering.models import UsageRecord

    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO budgets_costcenter (code, name, gl_code, stripe_customer_id, created_at)"
            " SELECT 'cc-' || g, 'Cost center ' || g, '6' || lpad(g::text, 4, '0'), '', now()"
            " FROM generate_series(1, %s) g",
            [centers],
        )
        cur.execute(
            "INSERT INTO budgets_employee (employee_id, email, name, cost_center_id, active,"
            " created_at, updated_at)"
            " SELECT 'E' || g, 'e' || g || '@example.com', 'Employee ' || g,"
            " (SELECT min(id) FROM budgets_costcenter) + (g %% %s), true, now(), now()"
            " FROM generate_series(0, %s - 1) g",
            [centers, employees],
        )
        # Column values for every usage field; anything added later must be nullable or have
        # a default, or the benchmark says so.
        exprs = {
            "request_id": "'r' || g",
            "created_at": "timestamptz '2026-01-01 00:00:00+00' + (g %% 2678400) * interval '1 s'",
            "employee_id": "e0 + (g %% %(employees)s)",
            "cost_center_id": "c0 + ((g %% %(employees)s) %% %(centers)s)",
            "provider": "'openai'",
            "model": "(ARRAY['gpt-a','gpt-b','claude-c'])[1 + (g / 7) %% 3]",
            "upstream_model": "''",
            "endpoint": "'chat.completions'",
            "input_tokens": "100 + g %% 900",
            "output_tokens": "20 + g %% 300",
            "cached_input_tokens": "g %% 50",
            "cache_write_tokens": "0",
            "reasoning_tokens": "g %% 10",
            "cost": "(100 + g %% 900) * 0.0000025 + (20 + g %% 300) * 0.00001",
            "latency_ms": "200",
            "status_code": "200",
            "streamed": "false",
            "estimated": "false",
            "usage_source": "'provider'",
            "clamped": "false",
            "intent": "(ARRAY['', 'code'])[1 + (g / 13) %% 2]",
            "error_type": "''",
        }
        columns, values = [], []
        for field in UsageRecord._meta.concrete_fields:
            if field.primary_key:
                continue
            if field.column in exprs:
                columns.append(field.column)
                values.append(exprs[field.column])
            elif not field.null:
                raise SystemExit(f"bench needs a value for new column {field.column}")
        cur.execute("SELECT min(id) FROM budgets_employee")
        e0 = cur.fetchone()[0]
        cur.execute("SELECT min(id) FROM budgets_costcenter")
        c0 = cur.fetchone()[0]
        cur.execute("ALTER TABLE metering_usagerecord SET UNLOGGED")  # load speed only
        batch = 1_000_000
        params = {"employees": employees, "centers": centers}
        select = ", ".join(v % params for v in values)
        for start in range(0, records, batch):
            stop = min(records, start + batch) - 1
            cur.execute(
                f"INSERT INTO metering_usagerecord ({', '.join(columns)}) "
                f"SELECT {select} FROM generate_series({start}, {stop}) g, "
                f"(SELECT {e0} AS e0, {c0} AS c0) base"
            )
            print(f"  generated {stop + 1:,} usage records", flush=True)
        cur.execute("ANALYZE metering_usagerecord")


def peak_rss_mb(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one child process (its own rusage, from wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{cmd} failed with {proc.returncode}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--employees", type=int, default=10_000)
    parser.add_argument("--cost-centers", type=int, default=200)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--reuse", help="a database kept by --keep: skip generating data")
    args = parser.parse_args()

    name, url = scratch_url(args.database_url, args.reuse)
    if args.reuse:
        args.keep = True
    else:
        admin_exec(args.database_url, f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        from billing.models import ChargebackStatement, DailyUsage, StatementLine
        from billing.rollup import daily_usage_rollup
        from billing.statements import statements_close_month

        call_command("migrate", verbosity=0, skip_checks=True)
        if args.reuse:
            with connection.cursor() as cur:
                cur.execute(
                    "TRUNCATE billing_dailyusage, billing_statementline, "
                    "billing_stripeinvoiceitem, billing_chargebackstatement, billing_watermark"
                )
                cur.execute("SELECT count(*) FROM metering_usagerecord")
                args.records = cur.fetchone()[0]
        else:
            t = time.perf_counter()
            generate(args.records, args.employees, args.cost_centers)
            print(f"data generated in {time.perf_counter() - t:.1f} s")

        t = time.perf_counter()
        result = daily_usage_rollup()
        rollup_s = time.perf_counter() - t
        print(
            f"ROLLUP {args.records:,} records -> {DailyUsage.objects.count():,} daily rows "
            f"in {rollup_s:.1f} s (target < 60 s)"
        )
        t = time.perf_counter()
        again = daily_usage_rollup()
        print(f"second rollup run: {again.groups} groups in {time.perf_counter() - t:.2f} s")
        assert result.to_id > 0 and again.groups == 0

        connection.close()
        t = time.perf_counter()
        close = statements_close_month(
            period=dt.date(2026, 1, 1), now=dt.datetime(2026, 2, 1, 6, tzinfo=dt.UTC)
        )
        close_s = time.perf_counter() - t
        print(
            f"CLOSE {args.employees:,} employees / {args.cost_centers} cost centers: "
            f"{close.created} statements, {StatementLine.objects.count():,} lines "
            f"in {close_s:.1f} s (target < 30 s)"
        )
        t = time.perf_counter()
        statements_close_month(
            period=dt.date(2026, 1, 1), now=dt.datetime(2026, 2, 1, 7, tzinfo=dt.UTC)
        )
        print(f"second close (no change): {time.perf_counter() - t:.1f} s")
        total = sum(ChargebackStatement.objects.values_list("total_units", flat=True))
        rolled = sum(DailyUsage.objects.values_list("cost_units", flat=True).iterator())
        assert total == rolled, (total, rolled)

        env = {**os.environ, "DATABASE_URL": url}
        python = sys.executable
        _, base_rss = peak_rss_mb([python, "-c", "import django; django.setup()"], env)
        out = Path(f"/tmp/{name}-focus.csv")
        took, export_rss = peak_rss_mb(
            [python, "manage.py", "billing_export", "--period", "2026-01", "--format", "focus",
             "--output", str(out), "--skip-checks"],
            env,
        )  # fmt: skip
        rows = sum(1 for _ in out.open()) - 1
        print(
            f"FOCUS export: {rows:,} rows, {out.stat().st_size / 1e6:.1f} MB in {took:.1f} s; "
            f"peak RSS {export_rss:.0f} MB (Django alone {base_rss:.0f} MB)"
        )
        out.unlink()
    finally:
        try:
            from django.db import connections

            connections.close_all()
        except Exception:
            pass
        if not args.keep:
            admin_exec(args.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
