"""Write a month's chargeback export to a file or stdout, streamed."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from billing import exports
from billing.models import ChargebackStatement, StatementLine
from billing.selectors import parse_period


class Command(BaseCommand):
    help = "Export a month's statements: --format csv|focus|xlsx|journal."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--period", required=True, help="YYYY-MM")
        parser.add_argument("--format", default="csv", choices=sorted(exports.FORMATS))
        parser.add_argument("--cost-center", help="Only this cost center (code)")
        parser.add_argument("--output", "-o", help="File to write (default stdout; xlsx needs one)")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            period = parse_period(opts["period"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        statements = ChargebackStatement.objects.filter(period=period)
        if opts["cost_center"]:
            statements = statements.filter(cost_center__code=opts["cost_center"])
        lines = StatementLine.objects.filter(statement__in=statements)
        fmt = opts["format"]
        if fmt == "xlsx" and not opts["output"]:
            raise CommandError("--output is required for xlsx")
        chunks = {
            "csv": lambda: exports.finance_csv(lines),
            "focus": lambda: exports.focus_csv(lines),
            "journal": lambda: exports.journal_csv(statements),
            "xlsx": lambda: exports.file_chunks(exports.xlsx_file(statements, lines)),
        }[fmt]()
        if opts["output"]:
            with open(opts["output"], "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
        else:
            for chunk in chunks:
                sys.stdout.buffer.write(chunk)
