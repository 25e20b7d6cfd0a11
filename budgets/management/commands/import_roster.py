"""`manage.py import_roster roster.csv [--dry-run]`: see budgets.roster for the rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from budgets.roster import RosterInvalid, roster_import


class Command(BaseCommand):
    help = (
        "Import the HR roster CSV (employee_id,email,name,cost_center,allowance[,unit,"
        "start_date,end_date]). Active employees missing from the file are deactivated."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path)
        parser.add_argument(
            "--dry-run", action="store_true", help="Show the changes without writing them."
        )
        parser.add_argument("--actor", help="Username recorded in the audit trail.")
        parser.add_argument("--json", action="store_true", help="Print the full diff as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["path"]
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc.strerror}") from exc
        actor: Any = "command:import_roster"
        if options["actor"]:
            try:
                actor = get_user_model().objects.get(username=options["actor"])
            except get_user_model().DoesNotExist as exc:
                raise CommandError(f"No user {options['actor']!r}.") from exc
        try:
            result = roster_import(
                content=content, actor=actor, dry_run=options["dry_run"], source="import"
            )
        except RosterInvalid as exc:
            for error in exc.errors:
                where = f"row {error.row}" if error.row else "file"
                column = f", column {error.column}" if error.column else ""
                self.stderr.write(f"{where}{column}: {error.message}")
            raise CommandError(f"{exc.total} error(s); nothing was imported.") from exc
        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict(), indent=2))
            return
        counts = ", ".join(f"{count} {name}" for name, count in result.counts.items())
        prefix = "Dry run, nothing written: " if result.dry_run else "Imported: "
        self.stdout.write(f"{prefix}{counts} (fiscal year {result.fiscal_year}).")
