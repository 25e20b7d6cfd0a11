"""Stored value reports: the job stores exactly what is computed on demand, a re-run writes
nothing, the API says which it served, and the intents' recommended models follow the model
comparison only when its rule fires.

Fixture: `recorded` of test_value_reports (March 2026, hand-computed there).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from billing import tasks
from billing.models import ValueReport, ValueReportPeriod
from billing.value import DIMENSIONS
from billing.value_store import (
    intent_recommendations_apply,
    recommended_model,
    value_report_store,
    value_reports_store_as_needed,
)
from budgets.models import AuditEvent
from metering.models import Intent, Outcome
from tests.clock import local
from tests.value.conftest import AT
from tests.value.test_value_reports import _compare_fixture, recorded  # noqa: F401  (fixture)

REPORT = "/api/v1/value-reports/"
MARCH = dt.date(2026, 3, 1)
APRIL_2ND = local(2026, 4, 2, 6)


@pytest.fixture
def march(recorded: Any) -> Any:  # noqa: F811
    """The hand-computed March of test_value_reports, outcomes recorded and rolled up."""
    return recorded


def report(client: Any, dimension: str, **params: Any) -> dict[str, Any]:
    response = client.get(REPORT, {"dimension": dimension, "period": "2026-03", **params})
    assert response.status_code == 200, response.data
    return response.data


def stored_rows() -> list[tuple]:
    return list(
        ValueReport.objects.order_by("pk").values_list(
            "pk", "dimension", "key", "requests", "tokens", "cost_units", "outcomes", "accepted",
            "rejected", "value_units", "energy_nwh", "energy_tokens", "energy_cost_units",
            "generation_ms",
        )
    )  # fmt: skip


@pytest.mark.parametrize("dimension", list(DIMENSIONS))
def test_stored_report_equals_the_computed_one_exactly(api, march, dimension) -> None:
    computed = report(api("admin"), dimension)
    assert computed["stored"] is False
    value_report_store(period=MARCH, now=APRIL_2ND)
    stored = report(api("admin"), dimension)
    assert (stored["stored"], stored["complete"]) == (True, True)
    assert dt.datetime.fromisoformat(stored["computed_at"]) == APRIL_2ND
    assert stored["rows"] == computed["rows"]
    assert report(api("admin"), dimension, fresh="true")["stored"] is False


def test_stored_sums_are_the_hand_computed_ones(march) -> None:
    value_report_store(period=MARCH, now=APRIL_2ND)
    big = ValueReport.objects.get(dimension="model", key="big")
    # 3 calls, 1900 + 1100 tokens, cost 0.06, value 12.5 + 3 (+ none expected: not accepted
    # without value), Wh = 1.9 x 0.5 + 1.1 x 2 = 3.15, latency 2 + 1 + 1.5 s
    assert (big.requests, big.tokens, big.cost_units, big.outcomes, big.accepted, big.rejected,
            big.value_units, big.energy_nwh, big.energy_tokens, big.energy_cost_units,
            big.generation_ms) == (
        3, 3000, 600_000_000, 4, 2, 1, 155_000_000_000, 3_150_000_000, 3000, 600_000_000, 4500,
    )  # fmt: skip
    assert big.cost == Decimal("0.06") and big.value == Decimal("15.5")
    assert set(ValueReport.objects.values_list("dimension", "key")) == {
        ("cost_center", "eng-ml"), ("cost_center", "sales"),
        ("employee", "E-100"), ("employee", "S-200"),
        ("intent", "code"),
        ("model", "big"), ("model", "small"),
    }  # fmt: skip


def test_rerun_changes_no_row(march) -> None:
    value_report_store(period=MARCH, now=APRIL_2ND)
    before = stored_rows()
    later = APRIL_2ND + dt.timedelta(hours=1)
    value_report_store(period=MARCH, now=later)
    assert stored_rows() == before
    period = ValueReportPeriod.objects.get()
    assert (period.computed_at, period.changed_at) == (later, APRIL_2ND)


def test_rerun_rewrites_only_what_changed(cast, march) -> None:
    value_report_store(period=MARCH, now=APRIL_2ND)
    before = {(r[1], r[2]): r for r in stored_rows()}
    Outcome.objects.create(
        client_id="late", intent="code", employee=cast.other, cost_center=cast.sales,
        model="big", day=AT.date(), kind="accepted", value_units=10**10,
    )  # fmt: skip
    later = APRIL_2ND + dt.timedelta(hours=1)
    value_report_store(period=MARCH, now=later)
    after = {(r[1], r[2]): r for r in stored_rows()}
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {("cost_center", "sales"), ("employee", "S-200"), ("intent", "code"),
                       ("model", "big")}  # fmt: skip
    assert ValueReport.objects.get(dimension="employee", key="S-200").value == Decimal(4)
    assert ValueReportPeriod.objects.get().changed_at == later


def test_an_older_run_never_overwrites_a_newer_one(cast, march) -> None:
    value_report_store(period=MARCH, now=APRIL_2ND)
    before = stored_rows()
    Outcome.objects.create(
        client_id="late", intent="code", employee=cast.other, cost_center=cast.sales,
        model="big", day=AT.date(), kind="accepted", value_units=10**10,
    )  # fmt: skip
    value_report_store(period=MARCH, now=APRIL_2ND - dt.timedelta(minutes=5))
    assert stored_rows() == before
    assert ValueReportPeriod.objects.get().computed_at == APRIL_2ND


def test_the_job_stores_last_month_and_this_month_to_date(api, march) -> None:
    months = value_reports_store_as_needed(now=local(2026, 3, 20))
    assert months == [dt.date(2026, 2, 1), MARCH]
    stored = ValueReportPeriod.objects.get(since=MARCH)
    assert (stored.until, stored.complete) == (dt.date(2026, 4, 1), False)
    assert ValueReport.objects.filter(period__since=dt.date(2026, 2, 1)).count() == 0
    served = report(api("finance"), "model")
    assert (served["stored"], served["complete"]) == (True, False)


def test_narrower_roles_are_always_computed(api, march) -> None:
    value_report_store(period=MARCH, now=APRIL_2ND)
    for persona in ("manager", "employee"):
        served = report(api(persona), "employee")
        assert served["stored"] is False
        assert [r["key"] for r in served["rows"]] == ["E-100"]


def test_other_periods_are_computed(api, march) -> None:
    value_report_store(period=MARCH, now=APRIL_2ND)
    response = api("admin").get(REPORT, {"dimension": "model", "since": "2026-03-01",
                                         "until": "2026-03-31"})  # fmt: skip
    assert response.data["stored"] is False
    whole = api("admin").get(REPORT, {"dimension": "model", "since": "2026-03-01",
                                      "until": "2026-04-01"})  # fmt: skip
    assert whole.data["stored"] is True


def test_tasks_store_a_period_and_refuse_a_mid_month_date(march) -> None:
    assert tasks.value_report_store_task.delay("2026-03-01").get() == 7
    assert ValueReportPeriod.objects.get().since == MARCH
    with pytest.raises(ValueError):
        tasks.value_report_store_task.delay("2026-03-02").get()


def test_the_job_is_scheduled_with_an_expiry() -> None:
    from config.celery import app

    entry = app.conf.beat_schedule["billing-value-reports-store"]
    assert entry["task"] == "billing.tasks.value_reports_store_as_needed_task"
    assert 0 < entry["options"]["expires"] < entry["schedule"]


# --- recommended models ---------------------------------------------------------------------


def _intent(default_model: str = "big", recommended: str = "") -> Intent:
    return Intent.objects.create(
        name="summarize",
        default_model=default_model,
        recommended_model=recommended,
        recommended_at=APRIL_2ND - dt.timedelta(days=31) if recommended else None,
    )


def test_recommendation_that_fires_is_written_and_audited(cast) -> None:
    intent = _intent()
    _compare_fixture(cast, big=(80, 20), small=(95, 5))
    value_report_store(period=MARCH, now=APRIL_2ND)
    intent.refresh_from_db()
    assert (intent.recommended_model, intent.recommended_at) == ("small", APRIL_2ND)
    event = AuditEvent.objects.get(object_type="metering.intent")
    assert (event.action, event.actor_label, event.after["recommended_model"]) == (
        "recommend", "value_report_store", "small",
    )  # fmt: skip
    # confirmed next hour: unchanged, recommended_at stays the first time
    value_report_store(period=MARCH, now=APRIL_2ND + dt.timedelta(hours=1))
    intent.refresh_from_db()
    assert intent.recommended_at == APRIL_2ND
    assert AuditEvent.objects.filter(object_type="metering.intent").count() == 1


def test_a_recommendation_is_cleared_once_enough_ratings_say_it_stopped_paying(cast) -> None:
    intent = _intent(recommended="small")
    _compare_fixture(cast, big=(80, 20), small=(85, 15))  # small's interval reaches below big's
    value_report_store(period=MARCH, now=APRIL_2ND)
    intent.refresh_from_db()
    assert (intent.recommended_model, intent.recommended_at) == ("", None)
    assert AuditEvent.objects.get(object_type="metering.intent").action == "unrecommend"


def test_small_samples_neither_make_nor_clear_a_recommendation(cast) -> None:
    fresh = _intent()
    kept = Intent.objects.create(
        name="translate", default_model="big", recommended_model="small", recommended_at=APRIL_2ND
    )
    _compare_fixture(cast, big=(5, 5), small=(10, 0))  # under 30 rated outcomes each
    _compare_fixture(cast, big=(3, 1), small=(20, 0), intent="translate")
    value_report_store(period=MARCH, now=APRIL_2ND + dt.timedelta(days=30))
    fresh.refresh_from_db()
    kept.refresh_from_db()
    assert fresh.recommended_model == ""
    # Traffic moved to the recommended model, so the old one collects few ratings: no flip back.
    assert (kept.recommended_model, kept.recommended_at) == ("small", APRIL_2ND)
    assert not AuditEvent.objects.filter(object_type="metering.intent").exists()


def test_only_the_last_complete_month_moves_recommendations(cast) -> None:
    intent = _intent()
    _compare_fixture(cast, big=(80, 20), small=(95, 5))
    # March to date, stored on the 20th: the comparison of a running month does not count
    value_report_store(period=MARCH, now=local(2026, 3, 20))
    # March as an old month, stored in June
    value_report_store(period=MARCH, now=local(2026, 6, 2))
    intent.refresh_from_db()
    assert intent.recommended_model == ""


def test_recommendation_from_the_busiest_model_without_a_default(cast) -> None:
    intent = _intent(default_model="")
    _compare_fixture(cast, big=(80, 20), small=(95, 5))
    changed = intent_recommendations_apply(start=MARCH, end=dt.date(2026, 4, 1), now=APRIL_2ND)
    assert [i.name for i in changed] == ["summarize"]
    intent.refresh_from_db()
    assert intent.recommended_model == "small"


def test_recommended_model_rule() -> None:
    entry = {
        "models": [{"model": "a", "requests": 9, "cost": "1"},
                   {"model": "b", "requests": 9, "cost": "2"},
                   {"model": "c", "requests": 1, "cost": "3"}],
        "recommendations": [{"from_model": "a", "to_model": "c"},
                            {"from_model": "b", "to_model": "c"}],
    }  # fmt: skip
    assert recommended_model(entry, "a") == "c"
    assert recommended_model(entry, "c") == ""
    assert recommended_model(entry, "") == "c"  # from b: busiest with a, and dearer
    assert recommended_model(None, "a") == ""


@pytest.mark.parametrize("dimension", list(DIMENSIONS))
def test_pages_of_a_stored_report_read_like_the_computed_report(cast, march, dimension) -> None:
    from billing.value_store import value_report_page, value_report_served

    admin = cast.users["admin"]
    args = {"dimension": dimension, "start": MARCH, "end": dt.date(2026, 4, 1), "user": admin}
    computed = value_report_served(**args).rows

    def paged() -> tuple[list[dict], list[bool], list[dict]]:
        first = value_report_page(**args, number=1, per_page=1)
        pages = [
            value_report_page(**args, number=n, per_page=1) for n in first.page.paginator.page_range
        ]
        return [r for p in pages for r in p.rows], [p.stored for p in pages], first.chart_rows

    rows, stored, chart = paged()
    # The page's one order: most value first, the report order (dearest first) among equals.
    computed = sorted(computed, key=lambda r: -Decimal(r["value"]))
    assert rows == computed and not any(stored)
    value_report_store(period=MARCH, now=APRIL_2ND)
    stored_rows_, stored, stored_chart = paged()
    assert stored_rows_ == computed and all(stored)
    assert stored_chart == chart  # the most valuable rows, whichever page they are on
    assert [r["key"] for r in chart] == [
        r["key"]
        for r in sorted(computed, key=lambda r: -Decimal(r["value"]))
        if Decimal(r["value"]) > 0
    ][:12]


def test_the_stored_comparison_reads_like_the_computed_one(cast) -> None:
    import json

    from django.core.serializers.json import DjangoJSONEncoder

    from billing.value import model_comparison
    from billing.value_store import comparison_served

    _compare_fixture(cast, big=(80, 20), small=(95, 5))
    end = dt.date(2026, 4, 1)
    admin = cast.users["admin"]
    computed = model_comparison(start=MARCH, end=end, user=admin)
    assert computed[0]["recommendations"], "the fixture recommends a switch"
    value_report_store(period=MARCH, now=APRIL_2ND)
    assert comparison_served(start=MARCH, end=end, user=admin) == json.loads(
        json.dumps(computed, cls=DjangoJSONEncoder)
    )
    # A manager's view is always computed within their subtree.
    manager = cast.users["manager"]
    assert comparison_served(start=MARCH, end=end, user=manager) == model_comparison(
        start=MARCH, end=end, user=manager
    )


def test_the_value_page_shows_the_stored_month_and_its_recommendation(cast, client) -> None:
    _compare_fixture(cast, big=(80, 20), small=(95, 5))
    value_report_store(period=MARCH, now=APRIL_2ND)
    client.force_login(cast.users["admin"])
    page = client.get("/value/", {"period": "2026-03", "dimension": "model"}).content.decode()
    assert "Stored by the hourly value job at 2026-04-02" in page
    assert "Switch <strong>big</strong> to <strong>small</strong>" in page
