"""Intents, outcomes and feedback through the API: scoping, idempotency, bad input."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from billing.rollup import daily_usage_rollup
from metering.models import Intent, Outcome
from tests.clock import local
from tests.value.conftest import client_for, value_rows

OUTCOMES = "/api/v1/outcomes/"


def outcome(request_id: str, client_id: str = "c-1", **extra: Any) -> dict[str, Any]:
    return {"client_id": client_id, "kind": "accepted", "request_id": request_id, **extra}


def test_employee_records_an_outcome_on_own_call(api, calls) -> None:
    response = api("employee").post(
        OUTCOMES, outcome(calls["e1"].request_id, value="12.5", quantity=2), format="json"
    )
    assert response.status_code == 201, response.data
    row = Outcome.objects.get()
    assert (row.employee_id, row.model, row.intent, str(row.day)) == (
        calls["e1"].employee_id, "big", "code", "2026-03-10",
    )  # fmt: skip
    assert row.value == Decimal("12.5") and row.quantity == 2


def test_same_client_id_is_recorded_once(api, calls) -> None:
    client = api("employee")
    body = outcome(calls["e1"].request_id, value="1")
    first = client.post(OUTCOMES, body, format="json")
    again = client.post(OUTCOMES, body, format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.data["id"] == first.data["id"]
    changed = client.post(OUTCOMES, {**body, "value": "2"}, format="json")
    assert changed.status_code == 409
    assert Outcome.objects.count() == 1 and Outcome.objects.get().value == Decimal(1)


@pytest.mark.parametrize("persona", ["employee", "manager", "finance", "outsider"])
def test_nobody_but_writers_records_on_another_employees_call(api, calls, persona) -> None:
    before = value_rows()
    response = api(persona).post(OUTCOMES, outcome(calls["o1"].request_id), format="json")
    assert response.status_code in (400, 401, 403)
    assert "request_id" in response.data or response.status_code != 400
    assert value_rows() == before


@pytest.mark.parametrize("persona", ["admin", "writer"])
def test_admins_and_writers_record_on_any_call(api, cast, calls, writer, persona) -> None:
    client = client_for(writer) if persona == "writer" else api(persona)
    response = client.post(OUTCOMES, outcome(calls["o1"].request_id), format="json")
    assert response.status_code == 201
    assert Outcome.objects.get().employee_id == cast.other.pk


def test_anonymous_is_refused(calls) -> None:
    response = client_for(None).post(OUTCOMES, outcome(calls["e1"].request_id), format="json")
    assert response.status_code in (401, 403)
    assert Outcome.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "accepted", "request_id": "x"}, "client_id"),
        ({"client_id": "a", "request_id": "E1"}, "kind"),
        ({"client_id": "a", "kind": "accepted", "request_id": "nope"}, "request_id"),
        ({"client_id": "a", "kind": "accepted"}, "request_id"),
        ({"client_id": "a", "kind": "accepted", "intent": "code"}, "window_start"),
        ({"client_id": "a", "kind": "accepted", "request_id": "E1", "quantity": 0}, "quantity"),
        ({"client_id": "a", "kind": "accepted", "request_id": "E1", "value": "-1"}, "value"),
        ({"client_id": "a", "kind": "accepted", "request_id": "E1", "value": "abc"}, "value"),
        (
            {"client_id": "a", "kind": "accepted", "request_id": "E1", "value": "1.00000000001"},
            "value",
        ),
        (
            {"client_id": "a", "kind": "accepted", "intent": "code",
             "window_start": "2026-03-11T00:00:00Z", "window_end": "2026-03-10T00:00:00Z"},
            "window_end",
        ),
    ],
)  # fmt: skip
def test_bad_input_is_400_and_writes_nothing(api, calls, body, field) -> None:
    if body.get("request_id") == "E1":
        body = {**body, "request_id": calls["e1"].request_id}
    before = value_rows()
    response = api("employee").post(OUTCOMES, body, format="json")
    assert response.status_code == 400
    assert field in response.data
    assert value_rows() == before


def test_intent_window_outcome_needs_own_calls_in_the_window(api, cast, calls) -> None:
    body = {
        "client_id": "w-1", "kind": "ticket resolved", "intent": "code", "quantity": 3,
        "window_start": local(2026, 3, 10).isoformat(),
        "window_end": local(2026, 3, 11).isoformat(),
    }  # fmt: skip
    assert api("employee").post(OUTCOMES, body, format="json").status_code == 201
    row = Outcome.objects.get()
    assert (row.employee_id, row.cost_center_id, row.model, row.kind, row.quantity) == (
        cast.employee.pk, cast.eng_ml.pk, "", "ticket resolved", 3,
    )  # fmt: skip
    empty = {**body, "client_id": "w-2", "window_start": local(2026, 4, 1).isoformat(),
             "window_end": local(2026, 4, 2).isoformat()}  # fmt: skip
    assert api("employee").post(OUTCOMES, empty, format="json").status_code == 400
    assert Outcome.objects.count() == 1


def test_feedback_replaces_the_earlier_answer(api, calls) -> None:
    url = f"/api/v1/usage/{calls['e2'].request_id}/feedback/"
    client = api("employee")
    assert client.post(url, {"kind": "accepted"}, format="json").status_code == 200
    assert client.post(url, {"kind": "rejected"}, format="json").status_code == 200
    assert list(Outcome.objects.values_list("kind", "source")) == [("rejected", "feedback")]
    assert client.post(url, {"kind": "maybe"}, format="json").status_code == 400
    other = f"/api/v1/usage/{calls['o1'].request_id}/feedback/"
    assert client.post(other, {"kind": "accepted"}, format="json").status_code == 404
    assert Outcome.objects.count() == 1


def test_intent_catalogue_admin_writes_and_unknown_intents(api, cast, calls) -> None:
    body = {"name": "code", "description": "Code review", "owner_cost_center": "eng",
            "expected_value": "4.5"}  # fmt: skip
    assert api("employee").post("/api/v1/intents/", body, format="json").status_code == 403
    assert api("employee").get("/api/v1/intents-unknown/").status_code == 403
    daily_usage_rollup()
    unknown = api("admin").get("/api/v1/intents-unknown/").data
    assert [(r["name"], r["requests"]) for r in unknown] == [("code", 4)]
    response = api("admin").post("/api/v1/intents/", body, format="json")
    assert response.status_code == 201, response.data
    intent = Intent.objects.get()
    assert (intent.owner_cost_center, intent.expected_value) == (cast.eng, Decimal("4.5"))
    assert api("admin").get("/api/v1/intents-unknown/").data == []
    assert api("employee").get("/api/v1/intents/").data["results"][0]["name"] == "code"
    bad = api("admin").post("/api/v1/intents/", {**body, "name": "x", "expected_value": "-1"},
                            format="json")  # fmt: skip
    assert bad.status_code == 400 and Intent.objects.count() == 1


def test_an_integration_token_records_outcomes_and_reads_nothing_else(calls, writer) -> None:
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=writer).key}")
    body = outcome(calls["o1"].request_id, client_id="crm-42", kind="ticket resolved", value="80")
    assert client.post(OUTCOMES, body, format="json").status_code == 201
    assert client.post(OUTCOMES, body, format="json").status_code == 200
    assert client.get("/api/v1/usage/").data["count"] == 0
    assert client.get("/api/v1/employees/").data["count"] == 0
    assert client.post("/api/v1/intents/", {"name": "x"}, format="json").status_code == 403
    assert Outcome.objects.get().value == Decimal(80)


def test_editing_an_intent_keeps_the_recommendation_written_meanwhile(db: None) -> None:
    from metering.models import Intent
    from metering.outcomes import intent_save

    intent = intent_save(name="support", description="Tickets")
    stale = Intent.objects.get(pk=intent.pk)  # an edit form opened before the job ran
    Intent.objects.filter(pk=intent.pk).update(recommended_model="gpt-4o-mini")
    intent_save(name="support", description="Customer tickets", instance=stale)
    intent.refresh_from_db()
    assert (intent.description, intent.recommended_model) == ("Customer tickets", "gpt-4o-mini")
