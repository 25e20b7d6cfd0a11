"""Demo data for the embedded default: a small company, upstreams, routes, prices, a key.

Idempotent: running it again changes nothing that exists. Routes go to the built-in mock
upstream unless a provider key (OPENAI_API_KEY / ANTHROPIC_API_KEY) is configured.
"""

from __future__ import annotations

import os
import secrets
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from budgets import roles
from budgets.balance import current_fiscal_year
from budgets.models import Allowance, CostCenter, Employee, Policy
from metering.models import ModelPrice, ModelRoute, ModelRouteAlias, Upstream, VirtualKey
from metering.services import key_create

# USD per million tokens: input, output, cached input, cache write.
DEMO_PRICES = {
    "gpt-4o-mini": ("0.15", "0.60", "0.075", None),
    "gpt-4o": ("2.50", "10.00", "1.25", None),
    "o4-mini": ("1.10", "4.40", "0.275", None),
    "text-embedding-3-small": ("0.02", "0", None, None),
    "claude-sonnet-4-5": ("3.00", "15.00", "0.30", "3.75"),
    "claude-haiku-4-5": ("1.00", "5.00", "0.10", "1.25"),
    # The models Claude Code 2.1.332 asks for: its default (opus) and what it rewrites the
    # sonnet / haiku names and older opus names to (prices from the genai-prices catalogue).
    "claude-opus-5-5": ("4.00", "20.00", "0.20", "5.00"),
    "claude-sonnet-5-5": ("2.00", "10.00", "0.10", "2.50"),
    "claude-haiku-5-5": ("0.10", "0.50", "0.01", "0.125"),
    # Codex CLI 0.171.0's default model; the catalogue has no price for it yet, so the demo
    # takes gpt-6.1-sol's.
    "gpt-6.2-sol": ("2.00", "10.00", "0.10", None),
}
OPENAI_MODELS = ["gpt-4o-mini", "gpt-4o", "o4-mini", "text-embedding-3-small", "gpt-6.2-sol"]
ANTHROPIC_MODELS = [
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
    "claude-opus-5-5",
    "claude-sonnet-5-5",
    "claude-haiku-5-5",
]
# Other names clients send for the same upstream model (dated snapshots).
ALIASES = {
    "claude-sonnet-4-5": ["claude-sonnet-4-5-20250929"],
    "claude-haiku-4-5": ["claude-haiku-4-5-20251001"],
}

TREE = [
    ("acme", "Acme Corp", None, "6000"),
    ("eng", "Engineering", "acme", "6100"),
    ("eng-platform", "Platform team", "eng", "6110"),
    ("sales", "Sales", "acme", "6200"),
    ("finance", "Finance", "acme", "6300"),
]
PEOPLE = [
    ("E1001", "ada@example.com", "Ada Lovelace", "eng-platform", 2_000_000),
    ("E1002", "grace@example.com", "Grace Hopper", "eng", 2_000_000),
    ("E1003", "alan@example.com", "Alan Turing", "eng-platform", 1_000_000),
    ("E2001", "mary@example.com", "Mary Jackson", "sales", 500_000),
    ("E3001", "frank@example.com", "Frank Pacioli", "finance", 250_000),
]


class Command(BaseCommand):
    help = "Create demo data (idempotent) and print the logins and a demo API key."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--password", default=os.environ.get("TB_DEMO_PASSWORD", ""))

    @transaction.atomic
    def handle(self, *args: Any, password: str = "", **options: Any) -> None:
        users = get_user_model()
        password = password or secrets.token_urlsafe(9)
        created_admin = not users.objects.filter(username="admin").exists()
        if created_admin:
            users.objects.create_superuser("admin", "admin@example.com", password)
        Group.objects.get_or_create(name=roles.ADMIN_GROUP)
        finance_group, _ = Group.objects.get_or_create(name=roles.FINANCE_GROUP)

        centers: dict[str, CostCenter] = {}
        for code, name, parent, gl in TREE:
            centers[code], _ = CostCenter.objects.get_or_create(
                code=code, defaults={"name": name, "parent": centers.get(parent), "gl_code": gl}
            )
        Policy.objects.get_or_create(
            cost_center=centers["acme"],
            defaults={"default_allowance": Decimal(1_000_000), "alert_thresholds": [50, 80, 100]},
        )
        year = current_fiscal_year()
        demo_key = None
        for employee_id, email, name, center, amount in PEOPLE:
            user, made = users.objects.get_or_create(
                username=email.split("@")[0], defaults={"email": email}
            )
            if made:
                user.set_password(password)
                user.save()
            employee, _ = Employee.objects.get_or_create(
                employee_id=employee_id,
                defaults={
                    "email": email,
                    "name": name,
                    "cost_center": centers[center],
                    "user": user,
                },
            )
            Allowance.objects.get_or_create(
                employee=employee,
                fiscal_year=year,
                defaults={"amount": Decimal(amount), "prorate": False},
            )
            if employee_id == "E1001" and not VirtualKey.objects.filter(employee=employee).exists():
                _, demo_key = key_create(
                    employee=employee, name="demo", actor=None, source="command"
                )
        grace = users.objects.get(username="grace")
        centers["eng"].managers.add(grace)
        users.objects.get(username="frank").groups.add(finance_group)

        self._seed_routes()
        if created_admin:
            self.stdout.write(
                f"Admin login: admin / {password}  (employees: ada, grace, alan, mary, frank)"
            )
        if demo_key:
            self.stdout.write(f"Demo API key for Ada (shown once): {demo_key}")

    def _seed_routes(self) -> None:
        openai_key = bool(os.environ.get("OPENAI_API_KEY"))
        anthropic_key = bool(os.environ.get("ANTHROPIC_API_KEY"))
        mock = settings.TB_MOCK_UPSTREAM_URL
        openai_up, _ = Upstream.objects.get_or_create(
            name="openai" if openai_key else "mock-openai",
            defaults={
                "kind": Upstream.Kind.OPENAI,
                "base_url": "https://api.openai.com/v1" if openai_key else mock,
                "credential_env": "OPENAI_API_KEY" if openai_key else "",
            },
        )
        anthropic_up, _ = Upstream.objects.get_or_create(
            name="anthropic" if anthropic_key else "mock-anthropic",
            defaults={
                "kind": Upstream.Kind.ANTHROPIC,
                "base_url": "https://api.anthropic.com" if anthropic_key else mock,
                "credential_env": "ANTHROPIC_API_KEY" if anthropic_key else "",
            },
        )
        for model in OPENAI_MODELS:
            ModelRoute.objects.get_or_create(
                public_name=model, defaults={"upstream": openai_up, "upstream_model": model}
            )
        for model in ANTHROPIC_MODELS:
            ModelRoute.objects.get_or_create(
                public_name=model, defaults={"upstream": anthropic_up, "upstream_model": model}
            )
        for model, names in ALIASES.items():
            route = ModelRoute.objects.get(public_name=model)
            for name in names:
                ModelRouteAlias.objects.get_or_create(name=name, defaults={"route": route})
        start = timezone.now().replace(
            year=2024, month=1, day=1, hour=0, minute=0, second=0, microsecond=0
        )
        for model, (inp, out, cached, write) in DEMO_PRICES.items():
            if ModelPrice.objects.filter(model=model).exists():
                continue
            ModelPrice.objects.create(
                model=model,
                provider="anthropic" if model.startswith("claude") else "openai",
                input_per_mtok=Decimal(inp),
                output_per_mtok=Decimal(out),
                cached_input_per_mtok=Decimal(cached) if cached else None,
                cache_write_per_mtok=Decimal(write) if write else None,
                effective_from=start,
                source=ModelPrice.Source.CATALOG,
            )
