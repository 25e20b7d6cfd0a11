"""Compare the Redis quota counters with the database and repair drift."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from metering.quota.reconcile import holds_reconcile, quotas_reconcile


class Command(BaseCommand):
    help = "Report (and unless --dry-run, repair) drift between Redis counters and the database."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--dry-run", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.REDIS_URL:
            raise CommandError("REDIS_URL is not set: there are no Redis counters.")
        drifts = quotas_reconcile(repair=not options["dry_run"])
        for drift in drifts:
            state = "repaired" if drift.repaired else "not repaired"
            self.stdout.write(
                f"{drift.counter}: redis {drift.redis_used} database {drift.database_used} {state}"
            )
        self.stdout.write(f"{len(drifts)} counters drifted")
        if options["dry_run"]:
            return
        holds = holds_reconcile()
        for name, was, now in holds.reserved:
            self.stdout.write(f"{name}: reserved {was} open holds {now} repaired")
        self.stdout.write(
            f"{holds.released} dead holds given back, "
            f"{len(holds.reserved)} reserved counters repaired"
        )
