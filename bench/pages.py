"""Page benchmark on PostgreSQL: server time of each page with 10,000 employees and 10 million
usage records.

    .venv/bin/python bench/pages.py [--records 10000000] [--employees 10000]
        [--database-url postgres://postgres@127.0.0.1:5432/test] [--keep] [--reuse NAME]

Generates the data in a scratch database with bench/billing_rollup.py's set-based SQL (January
2026), gives every employee an allowance, rolls the usage up and closes the month, then renders
every page through Django's full request handler (middleware, sessions, templates) in this
process and reports the median and worst of several renders. Target: under 300 ms each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.billing_rollup import admin_exec, generate, scratch_url  # noqa: E402

RUNS = 7
TARGET_MS = 300


def prepare(args: argparse.Namespace) -> None:
    import datetime as dt

    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import connection

    from billing.rollup import daily_usage_rollup
    from billing.statements import statements_close_month
    from budgets.models import CostCenter

    t = time.perf_counter()
    generate(args.records, args.employees, args.cost_centers)
    print(f"data generated in {time.perf_counter() - t:.1f} s", flush=True)
    with connection.cursor() as cur:
        # A two-level tree: every tenth cost center parents the nine after it.
        cur.execute(
            "UPDATE budgets_costcenter c SET parent_id = p.id FROM budgets_costcenter p"
            " WHERE p.id = c.id - ((c.id - (SELECT min(id) FROM budgets_costcenter)) % 10)"
            " AND p.id <> c.id"
        )
        cur.execute(
            "INSERT INTO budgets_allowance (employee_id, fiscal_year, unit, amount, release,"
            " prorate, rollover, rollover_percent, used, reserved, adjustments_total,"
            " created_at, updated_at)"
            " SELECT e.id, 2026, 'tokens', 2000000, 'upfront', false, 'none', 0,"
            " coalesce(u.t, 0), 0, 0, now(), now() FROM budgets_employee e LEFT JOIN"
            " (SELECT employee_id, sum(input_tokens + output_tokens) t"
            "  FROM metering_usagerecord GROUP BY employee_id) u ON u.employee_id = e.id"
        )
        cur.execute("ANALYZE")
    t = time.perf_counter()
    daily_usage_rollup()
    statements_close_month(
        period=dt.date(2026, 1, 1), now=dt.datetime(2026, 2, 1, 6, tzinfo=dt.UTC)
    )
    with connection.cursor() as cur:
        cur.execute("ANALYZE")  # as autovacuum would after the rollup: plans see the new rows
    print(f"rollup and close in {time.perf_counter() - t:.1f} s", flush=True)
    users = get_user_model()
    admin = users.objects.create_superuser("bench-admin", "admin@example.com", "x")
    catalogue(admin)
    finance = users.objects.create_user("bench-finance", "finance@example.com", "x")
    finance.groups.add(Group.objects.get_or_create(name="finance")[0])
    manager = users.objects.create_user("bench-manager", "manager@example.com", "x")
    # The manager of the first parent cost center: a team of ten cost centers (a twentieth of
    # the employees and of the usage).
    CostCenter.objects.filter(parent__isnull=True).order_by("id").first().managers.add(manager)
    employee = users.objects.create_user("bench-employee", "e0@example.com", "x")
    with connection.cursor() as cur:
        cur.execute(
            "UPDATE budgets_employee SET user_id = %s WHERE id = (SELECT min(id) FROM"
            " budgets_employee)",
            [employee.pk],
        )


def reused_database_ready() -> None:
    """A database kept by an earlier version of this benchmark: the users it lacks, and fresh
    planner statistics after the migrations just applied (which may have filled new tables)."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from budgets.models import CostCenter

    manager, made = get_user_model().objects.get_or_create(
        username="bench-manager", defaults={"email": "manager@example.com"}
    )
    if made:
        CostCenter.objects.filter(parent__isnull=True).order_by("id").first().managers.add(manager)
    with connection.cursor() as cur:
        cur.execute("ANALYZE")


def catalogue(admin: object) -> None:
    """Routes and prices for the generated models, and policies through the service (so the
    editor's audit trail has rows): every parent cost center gets one with a downgrade rule,
    changed a few times."""
    import datetime as dt
    from decimal import Decimal

    from budgets.models import CostCenter
    from budgets.services import policy_set
    from metering.models import ModelPrice, ModelRoute, Upstream

    upstream = Upstream.objects.create(
        name="bench",
        kind="openai",
        base_url="http://127.0.0.1:9/v1",
        credential_env="TB_UPSTREAM_KEY_BENCH",
    )
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    for name in ("gpt-a", "gpt-b", "claude-c"):
        ModelRoute.objects.create(public_name=name, upstream=upstream, upstream_model=name)
        for months, source in ((0, "catalog"), (6, "catalog"), (9, "override")):
            ModelPrice.objects.create(
                model=name, input_per_mtok=Decimal("2.5") - months / Decimal(10),
                output_per_mtok=Decimal(10), source=source,
                effective_from=start + dt.timedelta(days=30 * months),
            )  # fmt: skip
    for center in CostCenter.objects.filter(parent__isnull=True):
        for allowance in (500_000, 750_000, 1_000_000):
            policy_set(
                actor=admin, cost_center=center, source="admin",
                data={"default_allowance": Decimal(allowance), "alert_thresholds": [50, 80],
                      "downgrade_models": {"gpt-a": "gpt-b"}, "downgrade_at_percent": 80},
            )  # fmt: skip


def value_reports_ensure() -> None:
    """Store January's value reports as the hourly job would (finance's Value page reads
    them; an employee's slice is always computed)."""
    import datetime as dt

    from billing.models import ValueReportPeriod
    from billing.value_store import value_report_store

    january = dt.date(2026, 1, 1)
    if ValueReportPeriod.objects.filter(since=january).exists():
        return
    t = time.perf_counter()
    value_report_store(period=january, now=dt.datetime(2026, 2, 1, 7, tzinfo=dt.UTC))
    print(f"value reports stored in {time.perf_counter() - t:.1f} s", flush=True)


def measure() -> list[tuple[str, str, float, float]]:
    from django.contrib.auth import get_user_model
    from django.db import reset_queries
    from django.test import Client
    from django.test.utils import override_settings

    from billing.models import ChargebackStatement
    from budgets.models import CostCenter, Employee
    from metering.models import ModelRoute, Upstream

    users = get_user_model()
    statement = ChargebackStatement.objects.order_by("-total_units").first()
    someone = Employee.objects.order_by("-id").first()
    parent = CostCenter.objects.filter(parent__isnull=True).order_by("id").first()
    leaf = CostCenter.objects.filter(parent__isnull=False).order_by("-id").first()
    route = ModelRoute.objects.order_by("id").first()
    team_member = (
        Employee.objects.filter(
            cost_center__in=CostCenter.objects.filter(parent=parent)
            | CostCenter.objects.filter(pk=parent.pk)
        )
        .order_by("id")
        .first()
    )
    upstream = Upstream.objects.order_by("id").first()
    pages = {
        "bench-employee": ["/me/", "/value/?period=2026-01"],
        "bench-admin": [
            "/manage/overview/",
            "/manage/overview/?month=2026-01",  # the generated month: every record in it
            "/manage/cost-centers/",
            "/manage/cost-centers/new/",
            f"/manage/cost-centers/{leaf.pk}/",  # the editor with its parent choices and audit
            "/manage/employees/",
            "/manage/employees/new/",
            f"/manage/employees/{someone.pk}/deactivate/",
            "/manage/employees/?page=150",
            "/manage/employees/?sort=-used",
            "/manage/employees/?q=Employee+99",
            f"/manage/employees/{someone.pk}/",
            "/manage/policies/",
            f"/manage/policies/{parent.pk}/",  # its own policy and its audit trail
            f"/manage/policies/{leaf.pk}/",  # inherited from its parent
            "/manage/models/",
            "/manage/models/routes/new/",
            f"/manage/models/routes/{route.pk}/",
            f"/manage/models/upstreams/{upstream.pk}/",
            "/manage/models/prices/new/",
        ],
        "bench-manager": ["/manage/team/", f"/manage/employees/{team_member.pk}/"],
        "bench-finance": [
            "/finance/",
            "/finance/statements/?period=2026-01",
            "/value/?period=2026-01",
            "/value/?period=2026-01&dimension=employee",
            f"/finance/statements/{statement.pk}/",
        ],
    }
    results = []
    with override_settings(ALLOWED_HOSTS=["*"], DEBUG=False):
        for username, paths in pages.items():
            client = Client()
            client.force_login(users.objects.get(username=username))
            for path in paths:
                timings = []
                for _ in range(RUNS):
                    reset_queries()
                    start = time.perf_counter()
                    response = client.get(path)
                    body = response.content
                    timings.append((time.perf_counter() - start) * 1000)
                    assert response.status_code == 200, (path, response.status_code)
                    assert body
                results.append((username, path, statistics.median(timings), max(timings[1:])))
    return results


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

    name, url = scratch_url(args.database_url, args.reuse, prefix="pages")
    if not args.reuse:
        admin_exec(args.database_url, f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, skip_checks=True)
        if not args.reuse:
            prepare(args)
        else:
            reused_database_ready()
        value_reports_ensure()
        print(f"{'user':<15} {'page':<40} {'median ms':>10} {'worst ms':>9}")
        slow = 0
        for username, path, median, worst in measure():
            flag = "" if median < TARGET_MS else "  over target"
            slow += bool(flag)
            print(f"{username:<15} {path:<40} {median:>10.1f} {worst:>9.1f}{flag}")
        print(f"{'all pages' if not slow else f'{slow} page(s) not'} under {TARGET_MS} ms (median)")
    finally:
        from django.db import connections

        connections.close_all()
        if not (args.keep or args.reuse):
            admin_exec(args.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
