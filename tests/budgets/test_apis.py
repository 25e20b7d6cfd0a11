"""Budgets API behaviour: exact payloads, filters, and clear 400s that change nothing."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from budgets.balance import current_fiscal_year
from budgets.fiscal import fiscal_year_bounds
from budgets.models import Adjustment, Allowance, AuditEvent, Employee
from tests.budgets.conftest import Cast, row_counts

FY = current_fiscal_year()


def test_my_quota_has_exact_decimal_strings(cast: Cast, api: Any) -> None:
    Allowance.objects.filter(pk=cast.employee_allowance.pk).update(
        used=Decimal(1234), reserved=Decimal(66), adjustments_total=Decimal(100)
    )
    response = api("employee").get("/api/v1/me/quota/")
    assert response.status_code == 200
    _, next_year = fiscal_year_bounds(FY, settings.TB_FISCAL_YEAR_START_MONTH)
    assert response.json() == {
        "employee": "E-100",
        "fiscal_year": FY,
        "unit": "tokens",
        "allowance": "1000100",
        "released": "1000100",
        "used": "1234",
        "reserved": "66",
        "remaining": "998800",
        "period_end": (next_year - dt.timedelta(days=1)).isoformat(),
        "next_release": None,
    }


def test_employee_filters_search_and_ordering(cast: Cast, api: Any) -> None:
    client = api("admin")

    def ids(query: str) -> list[str]:
        return [
            e["employee_id"] for e in client.get(f"/api/v1/employees/?{query}").json()["results"]
        ]

    Employee.objects.filter(pk=cast.other.pk).update(active=False)
    assert ids("cost_center=eng-ml") == ["E-100"]
    assert ids("active=false") == ["S-200"]
    assert ids("search=manager@") == ["M-1"]
    assert ids("ordering=-employee_id") == ["S-200", "M-1", "E-100"]


def test_create_employee_then_allowance_from_policy(cast: Cast, api: Any) -> None:
    client = api("admin")
    response = client.post(
        "/api/v1/employees/",
        {"employee_id": "N-1", "email": "N1@Example.com", "name": "N One", "cost_center": "eng"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["email"] == "n1@example.com"
    response = client.post("/api/v1/allowances/", {"employee": "N-1"}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["fiscal_year"], body["amount"], body["unit"], body["used"]) == (
        FY,
        "500000",
        "tokens",
        "0",
    )
    event = AuditEvent.objects.filter(object_type="budgets.allowance").get()
    assert (event.action, event.source, event.actor.username) == ("create", "api", "admin")


def test_ledger_counters_are_read_only(cast: Cast, api: Any) -> None:
    allowance = cast.employee_allowance
    response = api("admin").patch(
        f"/api/v1/allowances/{allowance.pk}/",
        {"used": "0", "reserved": "0", "adjustments_total": "99", "amount": "1000001"},
        format="json",
    )
    assert response.status_code == 200
    allowance.refresh_from_db()
    assert (allowance.amount, allowance.used, allowance.adjustments_total) == (1_000_001, 0, 0)


def test_manager_top_up_is_recorded_with_actor(cast: Cast, api: Any) -> None:
    response = api("manager").post(
        "/api/v1/adjustments/",
        {
            "allowance": cast.employee_allowance.pk,
            "kind": "top_up",
            "amount": "2500",
            "reason": "x",
        },
        format="json",
    )
    assert response.status_code == 201
    body = response.json()
    assert (body["employee"], body["amount"], body["actor"], body["fiscal_year"]) == (
        "E-100",
        "2500",
        "manager",
        FY,
    )
    cast.employee_allowance.refresh_from_db()
    assert cast.employee_allowance.adjustments_total == 2500
    listed = api("employee").get("/api/v1/adjustments/").json()["results"]
    assert [a["amount"] for a in listed] == ["2500"]


def test_audit_lists_changes_with_before_and_after(cast: Cast, api: Any) -> None:
    api("admin").patch("/api/v1/cost-centers/sales/", {"name": "Field sales"}, format="json")
    events = api("admin").get("/api/v1/audit/?object_type=budgets.costcenter").json()["results"]
    assert len(events) == 1
    assert events[0]["action"] == "update"
    assert (events[0]["before"]["name"], events[0]["after"]["name"]) == ("Sales", "Field sales")


def test_move_via_api(cast: Cast, api: Any) -> None:
    response = api("admin").post(
        "/api/v1/employees/E-100/move/", {"cost_center": "sales"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["cost_center"] == "sales"
    moves = api("employee").get("/api/v1/employees/E-100/moves/").json()
    assert [(m["from_cost_center"], m["to_cost_center"]) for m in moves] == [("eng-ml", "sales")]


def test_effective_policy_is_inherited(cast: Cast, api: Any) -> None:
    body = api("manager").get("/api/v1/cost-centers/eng/policy/").json()
    assert (body["cost_center"], body["default_allowance"], body["alert_thresholds"]) == (
        "acme",
        "500000",
        [50, 80, 100],
    )


# --- bad input: a clear 400 and nothing changed ------------------------------------------------


def _bad(client: Any, method: str, url: str, data: Any, **kwargs: Any) -> dict[str, Any]:
    before = row_counts()
    response = getattr(client, method)(url, data, **kwargs)
    assert response.status_code == 400, response.content
    assert row_counts() == before
    return response.json()


def test_malformed_json(api: Any) -> None:
    body = _bad(
        api("admin"),
        "post",
        "/api/v1/employees/",
        '{"employee_id": "N-1", ',
        content_type="application/json",
    )
    assert body["detail"].startswith("JSON parse error")


def test_unknown_cost_center(api: Any) -> None:
    body = _bad(
        api("admin"),
        "post",
        "/api/v1/employees/",
        {"employee_id": "N-1", "email": "n1@example.com", "cost_center": "nowhere"},
        format="json",
    )
    assert body == {"cost_center": ["Object with code=nowhere does not exist."]}


@pytest.mark.parametrize(
    ("url", "data", "field"),
    [
        (
            "/api/v1/allowances/",
            {"employee": "E-100", "fiscal_year": 2099, "amount": "-5"},
            "amount",
        ),
        (
            "/api/v1/allowances/",
            {"employee": "E-100", "fiscal_year": 2099, "amount": "5.5"},
            "amount",
        ),
        ("/api/v1/allowances/", {"employee": "E-100", "amount": "5"}, "fiscal_year"),
        ("/api/v1/cost-centers/", {"code": "x", "name": "X", "annual_cap": "-1"}, "annual_cap"),
        ("/api/v1/cost-centers/", {"code": "has space", "name": "X"}, "code"),
        (
            "/api/v1/policies/",
            {"cost_center": "sales", "alert_thresholds": [0]},
            "alert_thresholds",
        ),
        ("/api/v1/policies/", {"cost_center": "acme"}, "cost_center"),
    ],
)
def test_field_errors(api: Any, url: str, data: dict[str, Any], field: str) -> None:
    body = _bad(api("admin"), "post", url, data, format="json")
    assert list(body) == [field]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"kind": "top_up", "amount": "-5", "reason": "x"}, "amount"),
        ({"kind": "correction", "amount": "-1000001", "reason": "x"}, "amount"),
        ({"kind": "rollover", "amount": "5", "reason": "x"}, "kind"),
        ({"kind": "top_up", "amount": "5"}, "reason"),
        ({"kind": "top_up", "amount": "five", "reason": "x"}, "amount"),
    ],
)
def test_adjustment_errors(cast: Cast, api: Any, data: dict[str, Any], field: str) -> None:
    body = _bad(
        api("admin"),
        "post",
        "/api/v1/adjustments/",
        {"allowance": cast.employee_allowance.pk, **data},
        format="json",
    )
    assert list(body) == [field]
    assert not Adjustment.objects.exists()


def test_roster_with_a_bad_row(api: Any) -> None:
    content = (
        "employee_id,email,name,cost_center,allowance\n"
        "N-1,n1@example.com,N1,sales,10\n"
        "N-2,n2@example.com,N2,nowhere,10\n"
    )
    body = _bad(
        api("admin"),
        "post",
        "/api/v1/roster-imports/",
        {"file": SimpleUploadedFile("r.csv", content.encode(), "text/csv")},
        format="multipart",
    )
    assert body == {
        "errors": [
            {"row": 3, "column": "cost_center", "message": "Unknown cost center 'nowhere'."}
        ],
        "error_count": 1,
    }


def test_roster_without_file(api: Any) -> None:
    body = _bad(api("admin"), "post", "/api/v1/roster-imports/", {}, format="multipart")
    # The documented 400 shape (RosterErrors), like a refused row.
    assert body == {
        "errors": [{"row": None, "column": "file", "message": "No file was submitted."}],
        "error_count": 1,
    }


def test_roster_import_over_the_api(api: Any) -> None:
    content = "employee_id,email,name,cost_center,allowance\nN-1,n1@example.com,N1,sales,10\n"

    def post(query: str) -> dict[str, Any]:
        upload = SimpleUploadedFile("r.csv", content.encode(), "text/csv")
        response = api("admin").post(
            f"/api/v1/roster-imports/{query}", {"file": upload}, format="multipart"
        )
        assert response.status_code == 200
        return response.json()

    dry = post("?dry_run=1")
    assert (dry["dry_run"], dry["counts"]) == (
        True,
        {"created": 1, "updated": 0, "deactivated": 3, "unchanged": 0},
    )
    assert not Employee.objects.filter(employee_id="N-1").exists()
    applied = post("")
    assert applied["counts"] == dry["counts"]
    assert Employee.objects.filter(active=True).count() == 1
    assert post("")["counts"] == {"created": 0, "updated": 0, "deactivated": 0, "unchanged": 1}


def test_time_filters_take_any_iso_offset_and_refuse_instants_out_of_range(
    cast: Cast, api: Any
) -> None:
    client = api("admin")
    for path in ("/api/v1/audit/", "/api/v1/usage/"):
        # ISO 8601 allows offsets to ±23:59; PostgreSQL only to ±15:59 (this was a 500 there).
        wide = client.get(path, {"since": "0690-12-10T22:42:24-18:03"})
        assert wide.status_code == 200, (path, wide.content)
        narrow = client.get(path, {"until": "0690-12-10T22:42:24-18:03"})
        assert narrow.status_code == 200 and narrow.json()["results"] == []
        # Year 1 at +05:00 has no UTC instant in range.
        assert client.get(path, {"since": "0001-01-01T00:00:00+05:00"}).status_code == 400
