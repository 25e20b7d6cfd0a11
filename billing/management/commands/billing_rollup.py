"""Fold new usage into DailyUsage, or rebuild a date range."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand

from billing.rollup import daily_usage_rebuild, daily_usage_rollup


class Command(BaseCommand):
    help = "Incremental DailyUsage rollup; with --rebuild-from/--rebuild-to, recompute days."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--rebuild-from", type=dt.date.fromisoformat)
        parser.add_argument("--rebuild-to", type=dt.date.fromisoformat, help="exclusive")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["rebuild_from"] and opts["rebuild_to"]:
            groups = daily_usage_rebuild(start=opts["rebuild_from"], end=opts["rebuild_to"])
            self.stdout.write(f"rebuilt {groups} groups")
            return
        result = daily_usage_rollup()
        self.stdout.write(f"folded ids ({result.from_id}, {result.to_id}]: {result.groups} groups")
