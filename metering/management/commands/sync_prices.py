"""`manage.py sync_prices`: add catalogue price rows from the bundled genai-prices data."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.utils import timezone

from metering.price_catalog import prices_sync


class _DryRun(Exception):
    pass


class Command(BaseCommand):
    help = (
        "Seed or refresh catalogue prices (OpenAI, Anthropic and every routed model) from the "
        "genai-prices package's bundled snapshot. Idempotent; never touches override rows."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Show what would be added, add nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            with transaction.atomic():
                result = prices_sync(now=timezone.now())
                self._report(result)
                if options["dry_run"]:
                    raise _DryRun
        except _DryRun:
            self.stdout.write("Dry run: nothing was saved.")

    def _report(self, result: Any) -> None:
        for row in result.added:
            self.stdout.write(
                f"added {row.model} ({row.provider}) from {row.effective_from:%Y-%m-%d %H:%M}: "
                f"input {row.input_per_mtok}, output {row.output_per_mtok}, "
                f"cached {row.cached_input_per_mtok}, cache write {row.cache_write_per_mtok} "
                "USD per million tokens"
            )
        for name in result.unmatched:
            self.stderr.write(f"no catalogue price for routed model {name!r}; add an override")
        self.stdout.write(f"{len(result.added)} price rows added.")
