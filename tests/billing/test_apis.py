"""billing.apis: scoping by role, finalize, immutability, exports, daily usage, personal."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
from django.test import override_settings

from billing.models import ChargebackStatement
from billing.statements import statements_close_as_needed
from tests.billing.conftest import client_for
from tests.billing.factories import usage
from tests.clock import local

pytestmark = pytest.mark.django_db


def body(response) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join(response.streaming_content)


@pytest.mark.parametrize(
    ("persona", "codes"),
    [
        ("admin", ["eng", "eng-ml", "sales"]),
        ("finance", ["eng", "eng-ml", "sales"]),
        ("manager", ["eng", "eng-ml"]),
        ("employee", ["eng"]),
        ("outsider", []),
    ],
)
def test_statement_list_is_scoped(january, persona: str, codes: list[str]) -> None:
    response = client_for(january[persona]).get("/api/v1/statements/?period=2026-01")
    assert response.status_code == 200
    assert sorted(s["cost_center"] for s in response.json()["results"]) == codes


def test_detail_has_lines_subtotals_and_subtree_total(january) -> None:
    eng = ChargebackStatement.objects.get(cost_center=january["eng"])
    data = client_for(january["finance"]).get(f"/api/v1/statements/{eng.id}/").json()
    assert data["total"] == "1.7345678901"
    assert data["subtree_total"] == "3.7345678901"  # eng + eng-ml
    assert [(line["employee_id"], line["model"], line["cost"]) for line in data["lines"]] == [
        ("E1", "gpt-a", "1.2345678901"),
        ("E1", "gpt-b", "0.5000000000"),
    ]
    assert data["subtotals"] == [
        {"employee_id": "E1", "requests": 2, "tokens": 300, "cost": "1.7345678901"}
    ]


def test_employee_sees_only_own_lines(january) -> None:
    january["bob"].cost_center = january["eng"]
    january["bob"].save()
    usage(january["bob"], at=local(2026, 1, 11))
    statements_close_as_needed(now=local(2026, 2, 2))
    eng = ChargebackStatement.objects.get(cost_center=january["eng"])
    data = client_for(january["employee"]).get(f"/api/v1/statements/{eng.id}/").json()
    assert {line["employee_id"] for line in data["lines"]} == {"E1"}
    data = client_for(january["manager"]).get(f"/api/v1/statements/{eng.id}/").json()
    assert {line["employee_id"] for line in data["lines"]} == {"E1", "E2"}


@pytest.mark.parametrize("persona", ["manager", "employee", "outsider"])
def test_only_finance_and_admins_finalize(january, persona: str) -> None:
    eng = ChargebackStatement.objects.get(cost_center=january["eng"])
    response = client_for(january[persona]).post(f"/api/v1/statements/{eng.id}/finalize/")
    assert response.status_code in (403, 404)
    eng.refresh_from_db()
    assert eng.status == "draft"


def test_finalize_then_refuse_edits(january) -> None:
    eng = ChargebackStatement.objects.get(cost_center=january["eng"])
    client = client_for(january["finance"])
    response = client.post(f"/api/v1/statements/{eng.id}/finalize/")
    assert (response.status_code, response.json()["status"]) == (200, "final")
    assert client.post(f"/api/v1/statements/{eng.id}/finalize/").status_code == 409
    for method in ("put", "patch", "delete"):
        assert getattr(client, method)(f"/api/v1/statements/{eng.id}/", {}).status_code == 405
    eng.refresh_from_db()
    assert (eng.status, eng.total_units) == ("final", 17_345_678_901)


def test_admin_refuses_edits_of_final_statements(january, client) -> None:  # type: ignore[no-untyped-def]
    from billing.statements import statement_finalize

    eng = ChargebackStatement.objects.get(cost_center=january["eng"])
    statement_finalize(statement_id=eng.id)
    client.force_login(january["admin"])
    january["admin"].is_superuser = True
    january["admin"].save()
    url = f"/admin/billing/chargebackstatement/{eng.id}/change/"
    response = client.post(url, {"status": "draft"})
    assert response.status_code in (200, 403)
    eng.refresh_from_db()
    assert eng.status == "final"
    delete = client.post(f"/admin/billing/chargebackstatement/{eng.id}/delete/", {"post": "yes"})
    assert delete.status_code == 403
    assert ChargebackStatement.objects.filter(pk=eng.id).exists()


def test_finance_csv_export_month(january) -> None:
    response = client_for(january["finance"]).get(
        "/api/v1/statements/export/?period=2026-01&format=csv"
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(body(response).decode())))
    assert [(r["cost_center"], r["gl_code"], r["employee_id"], r["cost"]) for r in rows] == [
        ("eng", "6100", "E1", "1.2345678901"),
        ("eng", "6100", "E1", "0.5000000000"),
        ("eng-ml", "6110", "E2", "2.0000000000"),
        ("sales", "6200", "E3", "3.3333333333"),
    ]
    assert {r["currency"] for r in rows} == {"USD"}


def test_manager_month_export_is_limited_to_subtree(january) -> None:
    response = client_for(january["manager"]).get(
        "/api/v1/statements/export/?period=2026-01&format=csv"
    )
    rows = list(csv.DictReader(io.StringIO(body(response).decode())))
    assert {r["cost_center"] for r in rows} == {"eng", "eng-ml"}
    assert (
        client_for(january["employee"])
        .get("/api/v1/statements/export/?period=2026-01&format=csv")
        .status_code
        == 403
    )


@override_settings(TB_JOURNAL_CREDIT_ACCOUNT="7990")
def test_journal_export_balances_per_cost_center(january) -> None:
    response = client_for(january["finance"]).get(
        "/api/v1/statements/export/?period=2026-01&format=journal"
    )
    rows = list(csv.DictReader(io.StringIO(body(response).decode())))
    assert [(r["account"], r["debit"], r["credit"]) for r in rows] == [
        ("6100", "1.73", ""), ("7990", "", "1.73"),
        ("6110", "2.00", ""), ("7990", "", "2.00"),
        ("6200", "3.33", ""), ("7990", "", "3.33"),
    ]  # fmt: skip
    assert {r["journal_date"] for r in rows} == {"2026-01-31"}


def test_focus_export_columns_and_values(january) -> None:
    response = client_for(january["finance"]).get(
        "/api/v1/statements/export/?period=2026-01&format=focus"
    )
    rows = list(csv.DictReader(io.StringIO(body(response).decode())))
    first = rows[0]
    # The billing month is a month of the billing time zone, written in UTC as FOCUS asks.
    assert (
        first["BillingPeriodStart"] == f"{local(2026, 1, 1).astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"
    )
    assert first["BillingPeriodEnd"] == f"{local(2026, 2, 1).astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"
    assert (first["BilledCost"], first["EffectiveCost"]) == ("1.2345678901", "1.2345678901")
    assert (first["ChargeCategory"], first["ChargeClass"]) == ("Usage", "")
    assert first["ServiceCategory"] == "AI and Machine Learning"
    assert json.loads(first["Tags"]) == {"cost_center": "eng", "employee": "E1"}
    assert all(c[0].isupper() or c.startswith("x_") for c in first)


def test_xlsx_export_has_summary_and_a_sheet_per_cost_center(january) -> None:
    import zipfile

    response = client_for(january["finance"]).get(
        "/api/v1/statements/export/?period=2026-01&format=xlsx"
    )
    with zipfile.ZipFile(io.BytesIO(body(response))) as book:
        workbook = book.read("xl/workbook.xml").decode()
    for name in ("Summary", "eng", "eng-ml", "sales"):
        assert f'name="{name}"' in workbook


def test_single_statement_export_and_bad_format(january) -> None:
    eng = ChargebackStatement.objects.get(cost_center=january["eng"])
    client = client_for(january["finance"])
    response = client.get(f"/api/v1/statements/{eng.id}/export/?format=csv")
    assert len(list(csv.DictReader(io.StringIO(body(response).decode())))) == 2
    assert client.get(f"/api/v1/statements/{eng.id}/export/?format=pdf").status_code == 400


def test_daily_usage_grouping_and_scope(january) -> None:
    response = client_for(january["finance"]).get(
        "/api/v1/daily-usage/?group_by=cost_center,model&from=2026-01-01&to=2026-01-31"
    )
    assert response.json()["results"] == [
        {"cost_center": "eng", "model": "gpt-a", "requests": 1, "input_tokens": 100,
         "output_tokens": 50, "cached_input_tokens": 0, "cache_write_tokens": 0,
         "reasoning_tokens": 0, "cost": "1.2345678901"},
        {"cost_center": "eng", "model": "gpt-b", "requests": 1, "input_tokens": 100,
         "output_tokens": 50, "cached_input_tokens": 0, "cache_write_tokens": 0,
         "reasoning_tokens": 0, "cost": "0.5000000000"},
        {"cost_center": "eng-ml", "model": "gpt-a", "requests": 1, "input_tokens": 100,
         "output_tokens": 50, "cached_input_tokens": 0, "cache_write_tokens": 0,
         "reasoning_tokens": 0, "cost": "2.0000000000"},
        {"cost_center": "sales", "model": "gpt-a", "requests": 1, "input_tokens": 100,
         "output_tokens": 50, "cached_input_tokens": 0, "cache_write_tokens": 0,
         "reasoning_tokens": 0, "cost": "3.3333333333"},
    ]  # fmt: skip
    mine = client_for(january["employee"]).get("/api/v1/daily-usage/?group_by=month,intent")
    assert [(r["month"], r["intent"], r["cost"]) for r in mine.json()["results"]] == [
        ("2026-01", "", "0.5000000000"),
        ("2026-01", "code", "1.2345678901"),
    ]
    managed = client_for(january["manager"]).get("/api/v1/daily-usage/?group_by=employee")
    assert [r["employee"] for r in managed.json()["results"]] == ["E1", "E2"]
    bad = client_for(january["finance"]).get("/api/v1/daily-usage/?group_by=planet")
    assert bad.status_code == 400


def test_my_statements(january) -> None:
    data = client_for(january["employee"]).get("/api/v1/me/statements/").json()["results"]
    assert len(data) == 1
    mine = data[0]
    assert (mine["period"], mine["requests"], mine["cost"]) == ("2026-01", 2, "1.7345678901")
    assert [m["model"] for m in mine["top_models"]] == ["gpt-a", "gpt-b"]
    assert [i["intent"] for i in mine["top_intents"]] == ["code"]
    assert client_for(january["outsider"]).get("/api/v1/me/statements/").status_code == 403
