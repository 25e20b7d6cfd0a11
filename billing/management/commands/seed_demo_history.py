"""Months of demo usage on top of `seed_demo`, so every page has something to show: more
employees across the cost centers, calls over the last months with models and intents, the
daily rollup, statements for each ended month, and the oldest months finalized.

Idempotent: usage rows have deterministic request ids and are inserted once; the rollup, the
month close and finalizing are catch-ups that skip what is done. Randomness is seeded, so two
databases seeded the same day hold the same history.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from billing.models import ChargebackStatement
from billing.rollup import daily_usage_rollup, local_tz
from billing.statements import last_complete_month, statement_finalize, statements_close_month
from budgets.fiscal import add_months, fiscal_year_bounds
from budgets.models import Allowance, CostCenter, Employee
from budgets.quota import current_fiscal_year
from metering.management.commands.seed_demo import DEMO_PRICES
from metering.models import UsageRecord

FIRST = ["Ana", "Ben", "Chen", "Dana", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kofi",
         "Lena", "Mo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara"]  # fmt: skip
LAST = ["Ng", "Okafor", "Patel", "Quist", "Rossi", "Silva", "Tanaka", "Uddin", "Vogel", "Wu"]
CENTERS = ["eng-platform", "eng", "sales", "finance"]
MODELS = ["gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5", "claude-haiku-4-5", "o4-mini"]
INTENTS = ["code-review", "support-reply", "summarize", "sql-help", "proposal", ""]
ALLOWANCES = [500_000, 1_000_000, 2_000_000]


def _cost(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    inp, out, _, _ = DEMO_PRICES[model]
    cost = (Decimal(inp) * input_tokens + Decimal(out) * output_tokens) / 1_000_000
    return cost.quantize(Decimal("1e-10"))


class Command(BaseCommand):
    help = "Add months of demo usage, rollups and closed months on top of seed_demo."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--months", type=int, default=5)
        parser.add_argument("--extra-employees", type=int, default=36)

    def handle(self, *args: Any, months: int = 5, extra_employees: int = 36, **opts: Any) -> None:
        call_command("seed_demo", stdout=self.stdout)
        rng = random.Random(7)
        employees = self._employees(rng, extra_employees)
        added = self._usage(rng, employees, months)
        daily_usage_rollup()
        now = timezone.now()
        last = last_complete_month(now)
        first = add_months(last, -(months - 1))
        period = first
        while period <= last:
            statements_close_month(period=period, now=now)
            period = add_months(period, 1)
        # Every ended month but the last is final, so the finance page shows both states.
        for statement in ChargebackStatement.objects.filter(period__lt=last, status="draft"):
            statement_finalize(statement_id=statement.pk, now=now)
        self.stdout.write(f"Demo history: {added} usage records added over {months} months.")

    def _employees(self, rng: random.Random, count: int) -> list[Employee]:
        centers = {c.code: c for c in CostCenter.objects.filter(code__in=CENTERS)}
        year = current_fiscal_year()
        for i in range(count):
            name = f"{FIRST[i % len(FIRST)]} {LAST[(i * 7) % len(LAST)]}"
            employee, _ = Employee.objects.get_or_create(
                employee_id=f"E{5000 + i}",
                defaults={
                    "email": f"demo{5000 + i}@example.com",
                    "name": name,
                    "cost_center": centers[CENTERS[i % len(CENTERS)]],
                },
            )
            Allowance.objects.get_or_create(
                employee=employee,
                fiscal_year=year,
                defaults={"amount": Decimal(rng.choice(ALLOWANCES)), "prorate": False},
            )
        return list(Employee.objects.filter(active=True).select_related("cost_center"))

    @transaction.atomic
    def _usage(self, rng: random.Random, employees: list[Employee], months: int) -> int:
        tz = local_tz()
        today = timezone.localdate()
        start = add_months(today.replace(day=1), -(months - 1))
        year = current_fiscal_year()
        records: list[UsageRecord] = []
        workdays = sum(
            1 for i in range((today - start).days) if (start + dt.timedelta(days=i)).weekday() < 5
        )
        allowances = dict(
            Allowance.objects.filter(fiscal_year=year).values_list("employee_id", "amount")
        )
        for employee in employees:
            # Each employee spends a share of their allowance over the history; a few spend
            # fast enough to run out before the year ends, which the burn-down then shows.
            share = rng.choice([0.15, 0.25, 0.35, 0.45, 0.7])
            target = int(allowances.get(employee.pk, Decimal(500_000)) * Decimal(share))
            calls_per_day = rng.choice([1, 2, 4])
            per_call = max(target // max(workdays * calls_per_day, 1), 400)
            favourite = rng.choice(MODELS)
            day = start
            while day < today:
                if day.weekday() < 5:
                    for n in range(rng.randint(0, 2 * calls_per_day)):
                        model = favourite if rng.random() < 0.6 else rng.choice(MODELS)
                        size = int(per_call * rng.uniform(0.4, 1.6))
                        inp, out = size * 4 // 5, max(size // 5, 1)
                        at = dt.datetime.combine(
                            day, dt.time(rng.randint(8, 18), rng.randint(0, 59)), tzinfo=tz
                        )
                        records.append(
                            UsageRecord(
                                request_id=f"demo-{employee.employee_id}-{day:%Y%m%d}-{n}",
                                created_at=at,
                                employee=employee,
                                cost_center=employee.cost_center,
                                model=model,
                                upstream_model=model,
                                provider="anthropic" if model.startswith("claude") else "openai",
                                endpoint="chat.completions",
                                input_tokens=inp,
                                output_tokens=out,
                                cost=_cost(model, inp, out),
                                latency_ms=rng.randint(300, 4000),
                                status_code=200,
                                intent=rng.choice(INTENTS),
                            )
                        )
                day += dt.timedelta(days=1)
        ids = {r.request_id for r in records}
        existing = set(
            UsageRecord.objects.filter(request_id__in=ids).values_list("request_id", flat=True)
        )
        fresh = [r for r in records if r.request_id not in existing]
        UsageRecord.objects.bulk_create(fresh, batch_size=1000)
        # The history bypasses the proxy, so charge this year's share to the allowances here,
        # with F() so a live call settling at the same moment is not overwritten.
        charged: dict[int, Decimal] = {}
        for record in fresh:
            if record.created_at.astimezone(tz).date() >= _fy_start(year):
                charged[record.employee_id] = charged.get(record.employee_id, Decimal(0)) + (
                    record.input_tokens + record.output_tokens
                )
        for employee_id, tokens in charged.items():
            Allowance.objects.filter(
                employee_id=employee_id, fiscal_year=year, unit="tokens"
            ).update(used=F("used") + tokens)
        return len(fresh)


def _fy_start(year: int) -> dt.date:
    return fiscal_year_bounds(year, settings.TB_FISCAL_YEAR_START_MONTH)[0]
