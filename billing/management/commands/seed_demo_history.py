"""Months of demo usage on top of `seed_demo`, so every page has something to show: more
employees across the cost centers, calls over the last months with models and intents, the
daily rollup, statements for each ended month, and the oldest months finalized.

For the Value page: the intents of the demo calls in the catalogue (expected value per accepted
outcome, default model), outcomes on a share of the calls (accepted / rejected feedback, and
named business outcomes with a money value, recorded by a demo integration user), energy
coefficients of the demo models (EcoLogits estimates through `metering.energy`, the same as
`manage.py sync_energy`; never measurements), a downgrade rule in the Sales policy, and the
stored value reports.

Idempotent: usage rows and outcomes have deterministic ids and are inserted once; catalogue
entries and the policy are created only when missing (an admin's later edits stay); the rollup,
the month close and finalizing are catch-ups that skip what is done. Randomness is seeded (per
call for outcomes), so two databases seeded the same day hold the same history.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from billing.models import ChargebackStatement
from billing.periods import last_complete_month, local_tz
from billing.rollup import daily_usage_rollup
from billing.statements import statement_finalize, statements_close_month
from billing.value_store import value_reports_store_as_needed
from budgets.balance import current_fiscal_year
from budgets.fiscal import add_months, fiscal_year_bounds
from budgets.models import Allowance, CostCenter, Employee, Policy
from budgets.services import policy_set
from metering.energy import energy_defaults_sync
from metering.management.commands.seed_demo import DEMO_PRICES
from metering.models import Intent, Outcome, UsageRecord
from metering.outcomes import OUTCOME_WRITERS_GROUP, VALUE_SCALE, intent_save

FIRST = ["Ana", "Ben", "Chen", "Dana", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kofi",
         "Lena", "Mo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara"]  # fmt: skip
LAST = ["Ng", "Okafor", "Patel", "Quist", "Rossi", "Silva", "Tanaka", "Uddin", "Vogel", "Wu"]
CENTERS = ["eng-platform", "eng", "sales", "finance"]
MODELS = ["gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5", "claude-haiku-4-5", "o4-mini"]
INTENTS = ["code-review", "support-reply", "summarize", "sql-help", "proposal", ""]
ALLOWANCES = [500_000, 1_000_000, 2_000_000]
ACTOR = "command:seed_demo_history"


@dataclass(frozen=True)
class DemoIntent:
    description: str
    owner: str | None  # cost-center code
    expected_value: str  # USD one accepted outcome is worth
    default_model: str
    feedback_share: float  # of the intent's calls that get accepted / rejected feedback
    business: tuple[str, float, str, str] | None  # kind, share of calls, value low, value high


INTENTS_CATALOGUE = {
    "code-review": DemoIntent(
        "Review comments on pull requests", "eng", "1.50", "claude-sonnet-4-5", 0.7,
        ("pr_merged", 0.10, "5", "12"),
    ),
    "support-reply": DemoIntent(
        "Draft replies to customer tickets", None, "1", "gpt-4o-mini", 0.8,
        ("ticket_resolved", 0.12, "3", "6"),
    ),
    "summarize": DemoIntent(
        "Summaries of documents and threads", None, "0.25", "gpt-4o-mini", 0.3, None
    ),
    "sql-help": DemoIntent(
        "Queries for reports", "finance", "2", "gpt-4o", 0.5, ("report_shipped", 0.05, "15", "40")
    ),
    "proposal": DemoIntent(
        "Sales proposals", "sales", "5", "claude-sonnet-4-5", 0.4,
        ("deal_won", 0.01, "200", "800"),
    ),
}  # fmt: skip
# Chance that feedback on a call accepts it: the larger models are accepted a little more often,
# except where a small model does as well or better (support replies, summaries), so the model
# comparison has a switch to recommend.
ACCEPTANCE = {
    "gpt-4o-mini": 0.80,
    "gpt-4o": 0.87,
    "o4-mini": 0.80,
    "claude-haiku-4-5": 0.82,
    "claude-sonnet-4-5": 0.89,
}
ACCEPTANCE_BY_INTENT = {
    ("support-reply", "gpt-4o-mini"): 0.96,
    ("summarize", "gpt-4o-mini"): 0.9,
    ("summarize", "claude-haiku-4-5"): 0.9,
}
SALES_DOWNGRADES = {"gpt-4o": "gpt-4o-mini", "claude-sonnet-4-5": "claude-haiku-4-5"}


def _cost(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    inp, out, _, _ = DEMO_PRICES[model]
    cost = (Decimal(inp) * input_tokens + Decimal(out) * output_tokens) / 1_000_000
    return cost.quantize(Decimal("1e-10"))


class Command(BaseCommand):
    help = (
        "Add demo usage on top of seed_demo: --months complete months before the current one "
        "plus the current month up to yesterday, rolled up, with a statement for each "
        "complete month (the last one a draft, older ones final)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--months", type=int, default=5, help="complete months of history (at least 1)"
        )
        parser.add_argument("--extra-employees", type=int, default=36)

    def handle(self, *args: Any, months: int = 5, extra_employees: int = 36, **opts: Any) -> None:
        if months < 1:
            raise CommandError("--months must be at least 1.")
        call_command("seed_demo", stdout=self.stdout)
        rng = random.Random(7)
        employees = self._employees(rng, extra_employees)
        added = self._usage(rng, employees, months)
        daily_usage_rollup()
        self._catalogue()
        outcomes = self._outcomes()
        energy = energy_defaults_sync(actor=ACTOR)
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
        value_reports_store_as_needed(now=now)
        self.stdout.write(f"Demo history: {added} usage records added over {months} months.")
        self.stdout.write(
            f"Demo value: {outcomes} outcomes added; energy coefficients filled for "
            f"{len(energy.filled)} model(s) from EcoLogits estimates (not measurements)."
        )

    def _catalogue(self) -> None:
        """The demo intents and the Sales policy's downgrade rule, each only when missing."""
        centers = {c.code: c for c in CostCenter.objects.all()}
        known = set(Intent.objects.values_list("name", flat=True))
        for name, spec in INTENTS_CATALOGUE.items():
            if name not in known:
                intent_save(
                    name=name,
                    description=spec.description,
                    owner_cost_center=centers.get(spec.owner or ""),
                    expected_value=Decimal(spec.expected_value),
                    default_model=spec.default_model,
                )
        sales = centers.get("sales")
        if sales is not None and not Policy.objects.filter(cost_center=sales).exists():
            policy_set(
                actor=ACTOR,
                cost_center=sales,
                data={
                    "default_allowance": Decimal(500_000),
                    "alert_thresholds": [50, 80, 100],
                    "downgrade_models": SALES_DOWNGRADES,
                    "downgrade_at_percent": 80,
                },
                source="command",
            )

    def _outcomes(self) -> int:
        """Feedback and business outcomes on the demo calls of catalogued intents. Each call's
        outcomes are decided by a generator seeded with its request id, so reruns and other
        databases decide alike; the unique (recorder, client id) keeps reruns from adding
        any twice."""
        users = get_user_model()
        recorder, made = users.objects.get_or_create(username="demo-integration")
        if made:
            recorder.set_unusable_password()
            recorder.save()
            recorder.groups.add(Group.objects.get_or_create(name=OUTCOME_WRITERS_GROUP)[0])
        tz = local_tz()
        calls = (
            UsageRecord.objects.filter(
                request_id__startswith="demo-", intent__in=list(INTENTS_CATALOGUE)
            )
            .order_by("request_id")
            .values_list(
                "request_id", "created_at", "employee_id", "cost_center_id", "model", "intent"
            )
        )
        existing = set(
            Outcome.objects.filter(recorded_by=recorder).values_list("client_id", flat=True)
        )
        fresh: list[Outcome] = []
        for request_id, at, employee_id, center_id, model, intent in calls.iterator():
            rng = random.Random(f"outcome:{request_id}")
            spec = INTENTS_CATALOGUE[intent]
            common = {
                "recorded_by": recorder,
                "request_id": request_id,
                "intent": intent,
                "employee_id": employee_id,
                "cost_center_id": center_id,
                "model": model,
                "day": at.astimezone(tz).date(),
                "source": "demo",
            }
            if rng.random() < spec.feedback_share:
                rate = ACCEPTANCE_BY_INTENT.get((intent, model), ACCEPTANCE[model])
                kind = Outcome.ACCEPTED if rng.random() < rate else Outcome.REJECTED
                fresh.append(Outcome(client_id=f"demo-feedback-{request_id}", kind=kind, **common))
            if spec.business and rng.random() < spec.business[1]:
                kind, _, low, high = spec.business
                cents = rng.randint(int(Decimal(low) * 100), int(Decimal(high) * 100))
                fresh.append(
                    Outcome(
                        client_id=f"demo-{kind}-{request_id}",
                        kind=kind,
                        value_units=cents * VALUE_SCALE // 100,
                        **common,
                    )
                )
        fresh = [o for o in fresh if o.client_id not in existing]
        Outcome.objects.bulk_create(fresh, batch_size=1000)
        return len(fresh)

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
        # `months` complete months before the current one, then the current month up to
        # yesterday: on the 1st the history still has every month its help promises.
        start = add_months(today.replace(day=1), -months)
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
