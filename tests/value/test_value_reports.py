"""Value reports: outcomes recorded through the API change the figures exactly as computed by
hand, each role sees its own slice, and the Wilson interval matches published values.

Fixture (tests/value/conftest.py), March 2026, intent `code` (expected value 4.5 per accepted
outcome), model `big` at 0.5 Wh per 1k input and 2 Wh per 1k output, `small` without energy:

    call  who    model  in    out  cost   latency  outcome
    e1    E-100  big    1000  500  0.03   2.0 s    accepted x2, value 12.5
    e2    E-100  big    300   200  0.01   1.0 s    feedback rejected
    e3    E-100  small  800   200  0.001  0.5 s    accepted, no value (-> 4.5)
    o1    S-200  big    600   400  0.02   1.5 s    "ticket resolved", value 3 (integration)
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.rollup import daily_usage_rollup
from billing.value import wilson_interval
from metering.models import Intent, ModelPrice, Outcome
from tests.billing.factories import usage
from tests.clock import local
from tests.value.conftest import AT, client_for

REPORT = "/api/v1/value-reports/"


@pytest.fixture
def recorded(api, cast, calls, writer) -> Any:
    Intent.objects.create(name="code", expected_value=Decimal("4.5"))
    ModelPrice.objects.create(
        model="big", input_per_mtok=1, output_per_mtok=2, effective_from=AT - dt.timedelta(days=30),
        energy_wh_per_1k_input=Decimal("0.5"), energy_wh_per_1k_output=Decimal(2),
    )  # fmt: skip
    employee = api("employee")
    posts = [
        (employee, {"client_id": "a", "kind": "accepted", "request_id": calls["e1"].request_id,
                    "value": "12.5", "quantity": 2}),
        (employee, {"client_id": "b", "kind": "accepted", "request_id": calls["e3"].request_id}),
        (client_for(writer), {"client_id": "t-1", "kind": "ticket resolved", "value": "3",
                              "request_id": calls["o1"].request_id, "source": "helpdesk"}),
    ]  # fmt: skip
    for client, body in posts:
        assert client.post("/api/v1/outcomes/", body, format="json").status_code == 201
    url = f"/api/v1/usage/{calls['e2'].request_id}/feedback/"
    assert employee.post(url, {"kind": "rejected"}, format="json").status_code == 200
    daily_usage_rollup()
    return calls


def rows(client: Any, dimension: str, period: str = "2026-03") -> dict[str, dict[str, Any]]:
    response = client.get(REPORT, {"dimension": dimension, "period": period})
    assert response.status_code == 200, response.data
    return {row["key"]: row for row in response.data["rows"]}


def test_report_by_model_is_exact(api, recorded) -> None:
    report = rows(api("admin"), "model")
    assert report["big"] == {
        "key": "big", "requests": 3, "tokens": 3000, "cost": "0.0600000000",
        "outcomes": 4, "accepted": 2, "rejected": 1, "acceptance_rate": "0.666667",
        "value": "15.5000000000", "value_per_1k_tokens": "5.1666666667",
        "cost_per_accepted_outcome": "0.0300000000", "return_on_spend": "258.333333",
        "tokens_per_dollar": "50000.000000",
        # Wh = 1.9 x 0.5 + 1.1 x 2 = 3.15; 4.5 s; 3.15 x 3600 / 4.5 = 2520 W
        "energy_kwh": "0.00315000000000000000", "energy_tokens": 3000,
        "generation_seconds": "4.500", "average_power_w": "2520.000000",
        "tokens_per_kwh": "952380.952381", "tokens_per_dollar_per_watt": "19.841270",
    }  # fmt: skip
    small = report["small"]
    assert (small["value"], small["acceptance_rate"], small["return_on_spend"]) == (
        "4.5000000000", "1.000000", "4500.000000",
    )  # fmt: skip
    assert (small["energy_kwh"], small["tokens_per_dollar_per_watt"]) == (None, None)


def test_report_by_employee_and_cost_center(api, recorded) -> None:
    by_employee = rows(api("finance"), "employee")
    assert {k: (r["cost"], r["accepted"], r["rejected"], r["value"]) for k, r in by_employee.items()} == {
        "E-100": ("0.0410000000", 3, 1, "17.0000000000"),
        "S-200": ("0.0200000000", 0, 0, "3.0000000000"),
    }  # fmt: skip
    by_cc = rows(api("admin"), "cost_center")
    assert set(by_cc) == {"eng-ml", "sales"}
    assert by_cc["eng-ml"]["cost_per_accepted_outcome"] == "0.0136666667"  # 0.041 / 3


@pytest.mark.parametrize(
    ("persona", "keys"),
    [
        ("admin", {"E-100", "S-200"}),
        ("finance", {"E-100", "S-200"}),
        ("manager", {"E-100"}),
        ("employee", {"E-100"}),
        ("outsider", set()),
    ],
)
def test_each_role_sees_its_slice(api, recorded, persona, keys) -> None:
    assert set(rows(api(persona), "employee")) == keys


def test_another_month_is_empty_and_bad_parameters_are_400(api, recorded) -> None:
    assert rows(api("admin"), "model", "2026-04") == {}
    for params in ({"dimension": "planet", "period": "2026-03"}, {"period": "March"},
                   {"since": "2026-03-10", "until": "2026-03-01"}, {}):  # fmt: skip
        assert api("admin").get(REPORT, params).status_code == 400


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        # Newcombe (1998), Statistics in Medicine 17:857-872, table I, method 3 (Wilson)
        (81, 263, "0.2553", "0.3662"),
        (15, 148, "0.0624", "0.1605"),
        (0, 20, "0.0000", "0.1611"),
        (1, 29, "0.0061", "0.1718"),
        (29, 29, "0.8830", "1.0000"),
    ],
)
def test_wilson_interval_matches_published_values(successes, n, low, high) -> None:
    got = wilson_interval(successes, n)
    assert got is not None
    assert tuple(x.quantize(Decimal("0.0001")) for x in got) == (Decimal(low), Decimal(high))


def test_wilson_closed_forms() -> None:
    # With no successes the upper bound is z^2 / (n + z^2): 3.8416 / 13.8416 at z = 1.96.
    assert wilson_interval(0, 10, Decimal("1.96")) == (Decimal(0), Decimal("0.277540"))
    assert wilson_interval(0, 0) is None


def _compare_fixture(
    cast: Any, big: tuple[int, int], small: tuple[int, int], intent: str = "summarize"
) -> None:
    """`intent` on `big` (cost 1.00) and `small` (cost 0.20) with rated outcomes."""
    for model, cost, (accepted, rejected) in (("big", "1", big), ("small", "0.2", small)):
        record = usage(cast.employee, at=AT, model=model, intent=intent, cost=cost)
        for kind, quantity in (("accepted", accepted), ("rejected", rejected)):
            if not quantity:
                continue
            Outcome.objects.create(
                client_id=f"{intent}-{model}-{kind}", request_id=record.request_id, intent=intent,
                employee=cast.employee, cost_center=cast.eng_ml, model=model, day=AT.date(),
                kind=kind, quantity=quantity,
            )  # fmt: skip
    daily_usage_rollup()


def compare(api: Any, **params: Any) -> dict[str, Any]:
    response = api("admin").get("/api/v1/model-comparison/", {"period": "2026-03", **params})
    assert response.status_code == 200, response.data
    (intent,) = response.data["intents"]
    return intent


def test_cheaper_model_not_worse_with_confidence_is_recommended(api, cast) -> None:
    _compare_fixture(cast, big=(80, 20), small=(95, 5))
    intent = compare(api)
    models = {m["model"]: m for m in intent["models"]}
    assert models["small"]["acceptance_interval"] == ["0.888250", "0.978456"]
    assert models["big"]["cost_per_accepted_outcome"] == "0.0125000000"  # 1 / 80
    assert models["small"]["cost_per_accepted_outcome"] == "0.0021052632"  # 0.2 / 95
    # 80 x (0.0125 - 0.0021052632) over March; monthly = x 30 / 31
    assert intent["recommendations"] == [
        {"from_model": "big", "to_model": "small", "saving": "0.8315789440",
         "monthly_saving": "0.8047538168"},
    ]  # fmt: skip


def test_no_recommendation_when_the_cheaper_model_may_be_worse(api, cast) -> None:
    _compare_fixture(cast, big=(80, 20), small=(85, 15))  # small's low end 0.767 < 0.80
    assert compare(api)["recommendations"] == []
    assert compare(api, margin="0.05")["recommendations"][0]["to_model"] == "small"


def test_no_recommendation_on_small_samples(api, cast) -> None:
    _compare_fixture(cast, big=(5, 5), small=(10, 0))
    assert compare(api)["recommendations"] == []
    assert compare(api, margin="0.5")["recommendations"] == []
    assert compare(api, min_rated=5)["recommendations"][0]["to_model"] == "small"


def test_monthly_value_mail_is_sent_once(cast, recorded, settings) -> None:
    from django.core import mail

    from billing.value import value_reports_send_as_needed

    now = local(2026, 4, 2, 6)
    assert value_reports_send_as_needed(now=now) == dt.date(2026, 3, 1)
    assert value_reports_send_as_needed(now=now) is None
    (message,) = mail.outbox
    assert sorted(message.to) == sorted([cast.users["admin"].email, cast.users["finance"].email])
    assert "eng-ml: 3 requests, 3,000 tokens, cost $0.04, value $17.00" in message.body
    assert message.body.endswith("Open the Value page: http://127.0.0.1:8000/value/?period=2026-03")


@given(n=st.integers(min_value=1, max_value=5000), data=st.data())
def test_wilson_interval_holds_the_observed_rate_inside_zero_one(n: int, data: Any) -> None:
    successes = data.draw(st.integers(min_value=0, max_value=n))
    low, high = wilson_interval(successes, n)  # type: ignore[misc]
    rate = Decimal(successes) / n
    assert Decimal(0) <= low <= rate.quantize(Decimal("0.000001")) <= high <= Decimal(1)


def test_intent_window_outcomes_count_for_the_intent_without_a_model(api, recorded) -> None:
    body = {
        "client_id": "w-1", "kind": "accepted", "intent": "code", "quantity": 2,
        "window_start": "2026-03-01T00:00:00Z", "window_end": "2026-03-31T00:00:00Z",
    }  # fmt: skip
    assert api("employee").post("/api/v1/outcomes/", body, format="json").status_code == 201
    by_intent = rows(api("admin"), "intent")
    # before: accepted 3 (2 + 1), value 12.5 + 4.5 + 3 = 20; now + 2 x 4.5 expected value
    assert (by_intent["code"]["accepted"], by_intent["code"]["value"]) == (5, "29.0000000000")
    assert rows(api("admin"), "model")[""]["accepted"] == 2  # no model: its own row
