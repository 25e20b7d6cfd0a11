"""Apply the usage dead letters that could not be written, once their cause is fixed."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from metering.usage_stream import dead_letters_replay


class Command(BaseCommand):
    help = (
        "Replay unapplied usage dead letters (idempotent: a record already in the database is "
        "charged nothing again)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "ids", nargs="*", type=int, help="Dead letter ids (default: every unapplied one)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        result = dead_letters_replay(ids=options["ids"] or None)
        self.stdout.write(
            f"{result.replayed} replayed, {result.failing} still failing, "
            f"{result.new} usage records written"
        )
