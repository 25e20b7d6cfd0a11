"""Run the rollup and the month close now (what the beat jobs do), and print a summary."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand
from django.utils import timezone

from billing.selectors import usage_reconcile
from billing.statements import statements_close_as_needed
from budgets.formatting import plain


class Command(BaseCommand):
    help = "Fold new usage and create or refresh chargeback drafts for every ended month."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--now", help="ISO datetime to close as of (default: now)")

    def handle(self, *args: Any, **opts: Any) -> None:
        now = dt.datetime.fromisoformat(opts["now"]) if opts["now"] else timezone.now()
        if timezone.is_naive(now):
            now = timezone.make_aware(now)
        for result in statements_close_as_needed(now=now):
            self.stdout.write(
                f"{result.period:%Y-%m}: {result.created} created, {result.refreshed} refreshed, "
                f"{result.removed} removed, {result.skipped_final} final left as they are"
            )
        rec = usage_reconcile()
        self.stdout.write(
            f"usage {plain(rec.usage_total)} = statements {plain(rec.statements_total)} + open "
            f"{plain(rec.open_total)} + not rolled up {plain(rec.unrolled_total)}: "
            f"{'balanced' if rec.balanced else 'NOT BALANCED'}"
        )
