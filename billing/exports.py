"""Finance exports of chargeback statements, written as generators so memory stays flat.

Each CSV export reads statement lines with `iterator(chunk_size=...)` and yields encoded chunks
of rows; the XLSX export streams rows into xlsxwriter's constant-memory mode on a temporary file.
Money is written as exact decimal strings, never through float.

Names, codes and GL codes come from users and HR files, so no cell may start a formula when a
spreadsheet opens the file (OWASP "CSV injection"): a CSV text cell starting with `=`, `+`,
`-`, `@`, tab or carriage return gets a leading `'`, which spreadsheets show as text; numbers
(negative amounts included) are left as they are. XLSX cells are typed: text is written as
text (never parsed as a formula), numbers as numbers.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import IO, Any

from django.conf import settings
from django.db.models import QuerySet

from billing.models import ChargebackStatement, StatementLine, units_to_cost
from billing.periods import local_tz
from budgets.fiscal import add_months

CHUNK = 2000  # rows per database round trip; small enough to keep memory flat
CENT = Decimal("0.01")
FORMATS = {
    "csv": ("text/csv", "csv"),
    "focus": ("text/csv", "csv"),
    "journal": ("text/csv", "csv"),
    "xlsx": ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx"),
}


@dataclass(frozen=True)
class LineRow:
    statement_id: int
    period: dt.date
    status: str
    currency: str
    invoice_id: str
    cost_center_code: str
    cost_center_name: str
    gl_code: str
    kind: str
    usage_month: dt.date
    employee_id: str
    employee_name: str
    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost_units: int

    @property
    def cost(self) -> Decimal:
        return units_to_cost(self.cost_units)


_LINE_FIELDS = (
    "statement_id", "statement__period", "statement__status", "statement__currency",
    "statement__stripe_invoice_id", "statement__cost_center__code",
    "statement__cost_center__name", "statement__cost_center__gl_code", "kind", "usage_month",
    "employee__employee_id", "employee__name", "model", "requests", "input_tokens",
    "output_tokens", "cached_input_tokens", "cache_write_tokens", "reasoning_tokens",
    "cost_units",
)  # fmt: skip


def line_rows(lines: QuerySet[StatementLine], *, by_center: bool = False) -> Iterator[LineRow]:
    """Statement lines as flat rows, in a stable order (by period, then cost center, or the
    other way round with by_center), fetched in chunks."""
    keys = ["statement__period", "statement__cost_center__code"]
    if by_center:
        keys.reverse()
    ordered = lines.order_by(*keys, "usage_month", "employee__employee_id", "model").values_list(
        *_LINE_FIELDS
    )
    for values in ordered.iterator(chunk_size=CHUNK):
        yield LineRow(*values)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def spreadsheet_text(value: Any) -> Any:
    """A CSV cell that no spreadsheet reads as a formula: text starting with a formula
    character gets a leading `'`; numbers, and decimal strings such as "-1.50", pass as is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def _csv_stream(header: list[str], rows: Iterable[list[Any]]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for count, row in enumerate(rows, 1):
        writer.writerow([spreadsheet_text(cell) for cell in row])
        if count % 500 == 0:  # batch rows per chunk: fewer, larger writes to the socket
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def _money(value: Decimal) -> str:
    return format(value, "f")


# --- finance CSV ------------------------------------------------------------------------------

FINANCE_HEADER = [
    "period", "statement_id", "status", "cost_center", "cost_center_name", "gl_code",
    "line_kind", "usage_month", "employee_id", "employee_name", "model", "requests",
    "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens",
    "reasoning_tokens", "cost", "currency",
]  # fmt: skip


def finance_csv(lines: QuerySet[StatementLine]) -> Iterator[bytes]:
    """One row per statement line with period, cost center and GL code, employee, tokens, cost."""
    return _csv_stream(
        FINANCE_HEADER,
        (
            [
                f"{r.period:%Y-%m}",
                r.statement_id,
                r.status,
                r.cost_center_code,
                r.cost_center_name,
                r.gl_code,
                r.kind,
                f"{r.usage_month:%Y-%m}",
                r.employee_id,
                r.employee_name,
                r.model,
                r.requests,
                r.input_tokens,
                r.output_tokens,
                r.cached_input_tokens,
                r.cache_write_tokens,
                r.reasoning_tokens,
                _money(r.cost),
                r.currency,
            ]
            for r in line_rows(lines)
        ),
    )


# --- FOCUS 1.2 CSV -------------------------------------------------------------------------------

FOCUS_HEADER = [
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingAccountType",
    "BillingCurrency", "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory",
    "ChargeClass", "ChargeDescription", "ChargeFrequency", "ChargePeriodEnd",
    "ChargePeriodStart", "ConsumedQuantity", "ConsumedUnit", "ContractedCost",
    "EffectiveCost", "InvoiceId", "InvoiceIssuerName", "ListCost", "PricingCategory",
    "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "ServiceCategory",
    "ServiceName", "ServiceSubcategory", "SkuId", "SkuMeter", "SubAccountId",
    "SubAccountName", "SubAccountType", "Tags",
    "x_EmployeeId", "x_Model", "x_LineKind", "x_UsageMonth", "x_RequestCount",
    "x_InputTokens", "x_OutputTokens", "x_CachedInputTokens", "x_CacheWriteTokens",
    "x_ReasoningTokens", "x_GLCode", "x_StatementId", "x_StatementStatus",
]  # fmt: skip
FOCUS_VERSION = "1.2"


def _utc_month(month: dt.date) -> tuple[str, str]:
    """A local month as FOCUS [start, end) timestamps in UTC with a Z suffix."""
    tz = local_tz()
    bounds = (month, add_months(month, 1))
    start, end = (dt.datetime.combine(b, dt.time.min, tzinfo=tz).astimezone(dt.UTC) for b in bounds)
    return start.strftime("%Y-%m-%dT%H:%M:%SZ"), end.strftime("%Y-%m-%dT%H:%M:%SZ")


def _per_million(tokens: int) -> str:
    # PricingQuantity is a decimal in FOCUS; six places keep it exact for whole tokens.
    return f"{Decimal(tokens).scaleb(-6):.6f}"


def _publishers() -> dict[str, str]:
    """Public model name -> provider label, from the routes (one small query)."""
    from metering.models import ModelRoute, Upstream

    labels = dict(Upstream.Kind.choices)
    return {
        name: labels.get(kind, kind)
        for name, kind in ModelRoute.objects.values_list("public_name", "upstream__kind")
    }


def focus_csv(lines: QuerySet[StatementLine]) -> Iterator[bytes]:
    """FOCUS 1.2 rows, one per statement line; custom columns carry the `x_` prefix.

    Late-usage adjustment lines are Usage rows with ChargeClass "Correction" and their
    original month as the charge period; the billing period is the statement's month.
    Prices are per million tokens (PricingUnit "1000000 Tokens"). InvoiceId is the Stripe
    invoice id once there is one, else the statement's own reference: a chargeback statement
    is the provisional invoice its rows belong to.
    """
    account_id = settings.TB_FOCUS_BILLING_ACCOUNT_ID
    account_name = settings.TB_FOCUS_BILLING_ACCOUNT_NAME
    issuer = settings.TB_FOCUS_INVOICE_ISSUER
    publishers = _publishers()
    months: dict[dt.date, tuple[str, str]] = {}

    def rows() -> Iterator[list[Any]]:
        for r in line_rows(lines):
            billing = months.setdefault(r.period, _utc_month(r.period))
            charge = months.setdefault(r.usage_month, _utc_month(r.usage_month))
            cost = _money(r.cost)
            tokens = r.input_tokens + r.output_tokens
            correction = r.kind == StatementLine.Kind.ADJUSTMENT
            description = f"{r.model} tokens for {r.employee_id}"
            if correction:
                description += f" (late usage from {r.usage_month:%Y-%m})"
            tags = {"cost_center": r.cost_center_code, "employee": r.employee_id}
            yield [
                cost, account_id, account_name, "Internal Chargeback", r.currency,
                billing[1], billing[0], "Usage", "Correction" if correction else "",
                description, "Usage-Based", charge[1], charge[0], tokens, "Tokens", cost,
                cost, r.invoice_id or f"TB-{r.period:%Y%m}-{r.cost_center_code}", issuer,
                cost, "Standard", _per_million(tokens), "1000000 Tokens", account_name,
                publishers.get(r.model, account_name), "AI and Machine Learning",
                "LLM Gateway", "Generative AI", r.model, "Tokens", r.cost_center_code,
                r.cost_center_name, "Cost Center", json.dumps(tags, sort_keys=True),
                r.employee_id, r.model, r.kind, f"{r.usage_month:%Y-%m}", r.requests,
                r.input_tokens, r.output_tokens, r.cached_input_tokens,
                r.cache_write_tokens, r.reasoning_tokens, r.gl_code, r.statement_id,
                r.status,
            ]  # fmt: skip

    return _csv_stream(FOCUS_HEADER, rows())


# --- journal CSV ---------------------------------------------------------------------------------

JOURNAL_HEADER = [
    "journal_date", "period", "entry", "account", "cost_center", "debit", "credit",
    "currency", "description", "reference",
]  # fmt: skip


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def journal_csv(statements: QuerySet[ChargebackStatement]) -> Iterator[bytes]:
    """Two balanced rows per statement: debit the cost center's GL code, credit the central
    AI expense account (settings TB_JOURNAL_CREDIT_ACCOUNT), in cents, dated the month end."""
    credit_account = settings.TB_JOURNAL_CREDIT_ACCOUNT

    def rows() -> Iterator[list[Any]]:
        qs = statements.select_related("cost_center").order_by("period", "cost_center__code")
        for s in qs.iterator(chunk_size=CHUNK):
            amount = cents(s.total)
            if not amount:
                continue
            date = add_months(s.period, 1) - dt.timedelta(days=1)
            cc = s.cost_center
            text = f"LLM usage chargeback {s.period:%Y-%m} {cc.code}"
            ref = f"TB-{s.period:%Y%m}-{cc.code}"
            entry = f"{ref}-{s.pk}"
            debit_account = cc.gl_code or cc.code
            yield [date, f"{s.period:%Y-%m}", entry, debit_account, cc.code, amount, "",
                   s.currency, text, ref]  # fmt: skip
            yield [date, f"{s.period:%Y-%m}", entry, credit_account, cc.code, "", amount,
                   s.currency, text, ref]  # fmt: skip

    return _csv_stream(JOURNAL_HEADER, rows())


# --- XLSX ------------------------------------------------------------------------------------------


def xlsx_file(
    statements: QuerySet[ChargebackStatement], lines: QuerySet[StatementLine]
) -> IO[bytes]:
    """A workbook (summary sheet + one sheet per cost center) in a rewound temporary file.

    constant_memory makes xlsxwriter flush each row as written, so rows must come in sheet
    order: lines are read ordered by cost center, and each center's sheet is filled in turn.
    """
    import xlsxwriter

    # The caller streams and then closes the file (file_chunks), so no context manager here.
    out = tempfile.TemporaryFile()  # noqa: SIM115
    book = xlsxwriter.Workbook(
        out,
        # Typed writes below; these keep any untyped write from turning text into a formula.
        {
            "constant_memory": True,
            "in_memory": False,
            "strings_to_formulas": False,
            "strings_to_numbers": False,
            "strings_to_urls": False,
        },
    )
    money = book.add_format({"num_format": "#,##0.0000"})
    bold = book.add_format({"bold": True})
    summary = book.add_worksheet("Summary")
    head = ["Period", "Cost center", "Name", "GL code", "Status", "Requests", "Tokens",
            "Cost", "Currency", "Cost (exact)"]  # fmt: skip
    _typed_row(summary, 0, head, bold)
    row = 0
    for row, s in enumerate(
        statements.select_related("cost_center")
        .order_by("cost_center__code", "period")
        .iterator(chunk_size=CHUNK),
        1,
    ):
        _typed_row(summary, row, [f"{s.period:%Y-%m}", s.cost_center.code, s.cost_center.name,
                                  s.cost_center.gl_code, s.status, s.requests,
                                  s.total_tokens])  # fmt: skip
        # Excel holds numbers as doubles, so the number column is for arithmetic in the sheet
        # and the exact amount is written beside it as text.
        summary.write_number(row, 7, float(s.total), money)
        summary.write_string(row, 8, s.currency)
        summary.write_string(row, 9, _money(s.total))
    sheet = None
    current = None
    names: set[str] = {"Summary"}
    line_head = ["Period", "Kind", "Usage month", "Employee", "Name", "Model", "Requests",
                 "Input tokens", "Output tokens", "Cached input", "Cache write", "Reasoning",
                 "Cost", "Cost (exact)"]  # fmt: skip
    r = 0
    for line in line_rows(lines, by_center=True):
        if line.cost_center_code != current:
            current = line.cost_center_code
            name = _sheet_name(current, names)
            sheet = book.add_worksheet(name)
            _typed_row(sheet, 0, line_head, bold)
            r = 0
        r += 1
        assert sheet is not None  # the first line opened one
        _typed_row(sheet, r, [f"{line.period:%Y-%m}", line.kind, f"{line.usage_month:%Y-%m}",
                              line.employee_id, line.employee_name, line.model, line.requests,
                              line.input_tokens, line.output_tokens, line.cached_input_tokens,
                              line.cache_write_tokens, line.reasoning_tokens])  # fmt: skip
        sheet.write_number(r, 12, float(line.cost), money)
        sheet.write_string(r, 13, _money(line.cost))
    book.close()
    out.seek(0)
    return out


def _typed_row(sheet: Any, row: int, values: list[Any], style: Any = None) -> None:
    """Write text as text cells and whole numbers as number cells (never `write`, which would
    read a text starting with `=` as a formula)."""
    for column, value in enumerate(values):
        if isinstance(value, int) and not isinstance(value, bool):
            sheet.write_number(row, column, value, style)
        else:
            sheet.write_string(row, column, str(value), style)


def _sheet_name(code: str, taken: set[str]) -> str:
    base = "".join(c for c in code if c not in "[]:*?/\\")[:31] or "sheet"
    name, n = base, 1
    while name.lower() in {t.lower() for t in taken}:
        n += 1
        name = f"{base[: 31 - len(str(n)) - 1]}~{n}"
    taken.add(name)
    return name


def file_chunks(handle: IO[bytes], size: int = 64 * 1024) -> Iterator[bytes]:
    try:
        while chunk := handle.read(size):
            yield chunk
    finally:
        handle.close()
