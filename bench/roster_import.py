"""Roster import speed: 10,000 employees, dry run, apply, re-import, and a month's changes.

    .venv/bin/python bench/roster_import.py                  # throwaway SQLite file
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test .venv/bin/python bench/roster_import.py

Runs on a throwaway database: a temporary SQLite file, or with a PostgreSQL DATABASE_URL a fresh
database created on that server and dropped at the end. Migrates it, seeds 50 cost centers,
generates the CSV and times `budgets.roster.roster_import` (parsing, validation, diff and the
bulk writes with their audit events) as the API and the command call it.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@contextmanager
def throwaway_database() -> Iterator[str]:
    """Yield a DATABASE_URL for a database that exists only for this run."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        with tempfile.TemporaryDirectory(prefix="tb-bench-") as folder:
            yield f"sqlite:///{folder}/bench.sqlite3"
        return
    import psycopg

    name = f"tb_bench_roster_{os.getpid()}"
    parts = urlsplit(url)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def roster_csv(rows: int, cost_centers: list[str], *, seed: int, start: int = 0) -> str:
    rng = random.Random(seed)
    lines = ["employee_id,email,name,cost_center,allowance,unit,start_date,end_date"]
    for n in range(start, start + rows):
        joined = f"20{rng.randint(10, 25)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        lines.append(
            f"E-{n:06d},person{n}@example.com,Person {n},{rng.choice(cost_centers)},"
            f"{rng.choice([250_000, 500_000, 1_000_000, 2_000_000])},tokens,{joined},"
        )
    return "\n".join(lines) + "\n"


def month_of_changes(content: str, cost_centers: list[str], *, seed: int) -> str:
    """5 % change team or allowance, 2 % leave, 1 % join."""
    rng = random.Random(seed)
    header, *rows = content.strip().split("\n")
    kept = []
    for row in rows:
        draw = rng.random()
        if draw < 0.02:
            continue
        if draw < 0.07:
            cells = row.split(",")
            cells[3] = rng.choice(cost_centers)
            cells[4] = str(int(cells[4]) + 100_000)
            row = ",".join(cells)
        kept.append(row)
    joiners = roster_csv(len(rows) // 100, cost_centers, seed=seed, start=len(rows)).split("\n")
    return "\n".join([header, *kept, *joiners[1:]])


def timed(label: str, call: Callable[[], Any]) -> tuple[str, float, Any]:
    started = time.perf_counter()
    result = call()
    return label, time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--cost-centers", type=int, default=50)
    args = parser.parse_args()

    with throwaway_database() as url:
        os.environ["DATABASE_URL"] = url
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        from budgets.models import AuditEvent, CostCenter, Employee, Policy
        from budgets.roster import roster_import

        call_command("migrate", verbosity=0)
        root = CostCenter.objects.create(code="company", name="Company")
        Policy.objects.create(cost_center=root, default_allowance=500_000)
        codes = [f"team-{n:03d}" for n in range(args.cost_centers)]
        CostCenter.objects.bulk_create(
            [CostCenter(code=code, name=code.title(), parent=root) for code in codes]
        )
        first = roster_csv(args.rows, codes, seed=1).encode()
        second = month_of_changes(first.decode(), codes, seed=2).encode()

        runs = [
            timed(
                "dry run, empty database",
                lambda: roster_import(content=first, actor="bench", dry_run=True),
            ),
            timed("apply (all created)", lambda: roster_import(content=first, actor="bench")),
            timed("re-import same file", lambda: roster_import(content=first, actor="bench")),
            timed(
                "dry run, a month of changes",
                lambda: roster_import(content=second, actor="bench", dry_run=True),
            ),
            timed("apply a month of changes", lambda: roster_import(content=second, actor="bench")),
        ]
        print(
            f"Roster import, {args.rows} rows, {connection.vendor} ({connection.settings_dict['NAME']})"
        )
        print(f"{'run':<30} {'seconds':>8}  created updated deactivated unchanged")
        for label, seconds, result in runs:
            c = result.counts
            print(
                f"{label:<30} {seconds:>8.2f}  {c['created']:>7} {c['updated']:>7} "
                f"{c['deactivated']:>11} {c['unchanged']:>9}"
            )
        print(
            f"rows now: {Employee.objects.count()} employees, "
            f"{AuditEvent.objects.count()} audit events"
        )


if __name__ == "__main__":
    main()
