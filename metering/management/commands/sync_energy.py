"""`manage.py sync_energy`: fill missing energy coefficients of priced models from EcoLogits."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from metering.energy import energy_defaults_sync


class _DryRun(Exception):
    pass


class Command(BaseCommand):
    help = (
        "Fill Wh per 1,000 input and output tokens on the price rows of every priced model "
        "that has no energy coefficient yet, from the EcoLogits package's bundled data and "
        "method (see metering/energy.py: marginal energy of 1,000 output tokens, midpoint of "
        "EcoLogits' range; input 0, as the methodology has no input-token term). Offline and "
        "deterministic; never overwrites a coefficient; every filled row is audited with its "
        "source."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Show what would be filled, fill nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            with transaction.atomic():
                result = energy_defaults_sync()
                for default, rows in result.filled:
                    self.stdout.write(
                        f"{default.model}: {default.wh_per_1k_input} Wh per 1k input, "
                        f"{default.wh_per_1k_output} Wh per 1k output (range "
                        f"{default.output_low}-{default.output_high}; {default.source}, "
                        f"{default.reference}) on {rows} price row(s)"
                    )
                for name in result.unmatched:
                    self.stderr.write(f"EcoLogits does not know {name!r}; set its coefficients")
                self.stdout.write(
                    f"{len(result.filled)} model(s) filled, {len(result.kept)} kept as set, "
                    f"{len(result.unmatched)} unknown to EcoLogits."
                )
                if options["dry_run"]:
                    raise _DryRun
        except _DryRun:
            self.stdout.write("Dry run: nothing was saved.")
