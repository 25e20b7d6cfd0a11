"""The roster's two downloads for admins: an empty template with an example row, and the
current roster in the same columns, so an edited export re-imports as a no-op plus the edits.

Exports keep machine values (plain decimals, ISO dates), not the pages' formatting."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from io import StringIO

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from budgets.balance import current_fiscal_year
from budgets.formatting import plain
from budgets.page_selectors import roster_rows
from budgets.pages import require_admin
from budgets.roster import OPTIONAL_COLUMNS, REQUIRED_COLUMNS

COLUMNS = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
EXAMPLE = ("E1001", "ada@example.com", "Ada Lovelace", "eng", "1000000", "tokens",
           "2026-01-05", "")  # fmt: skip


def _line(values: tuple[str, ...] | list[str]) -> str:
    out = StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue()


@login_required
def roster_template(request: HttpRequest) -> HttpResponse:
    require_admin(request.user)
    response = HttpResponse(_line(COLUMNS) + _line(EXAMPLE), content_type="text/csv")
    response["Content-Disposition"] = 'attachment; filename="roster-template.csv"'
    return response


@login_required
def roster_export(request: HttpRequest) -> StreamingHttpResponse:
    """Active employees with this fiscal year's allowance, streamed (rosters run to thousands)."""
    require_admin(request.user)
    year = current_fiscal_year()

    def lines() -> Iterator[str]:
        yield _line(COLUMNS)
        for row in roster_rows(fiscal_year=year):
            yield _line([
                row["employee_id"], row["email"], row["name"], row["cost_center__code"],
                plain(row["amount"]) if row["amount"] is not None else "",
                row["unit"] or "",
                row["start_date"].isoformat() if row["start_date"] else "",
                row["end_date"].isoformat() if row["end_date"] else "",
            ])  # fmt: skip

    response = StreamingHttpResponse(lines(), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="roster-FY{year}.csv"'
    return response
