"""An employee reading a statement of their cost center (it carries a line of theirs) sees their
own lines and their own totals, never the department's; its managers and finance see it whole."""

from __future__ import annotations

import datetime as dt

from billing.models import ChargebackStatement
from billing.statements import statements_close_as_needed
from tests.billing.conftest import client_for
from tests.billing.factories import usage


def _eng_with_a_colleague(january):  # type: ignore[no-untyped-def]
    """Bob joins eng and spends 0.01 there: eng's statement has Alice's lines and his."""
    january["bob"].cost_center = january["eng"]
    january["bob"].save()
    usage(january["bob"], at=dt.datetime(2026, 1, 11, tzinfo=dt.UTC))
    statements_close_as_needed(now=dt.datetime(2026, 2, 2, tzinfo=dt.UTC))
    return ChargebackStatement.objects.get(cost_center=january["eng"])


def test_employee_reads_own_totals_on_detail_and_list(january) -> None:
    eng = _eng_with_a_colleague(january)
    assert (eng.requests, str(eng.total)) == (3, "1.7445678901")
    client = client_for(january["employee"])

    detail = client.get(f"/api/v1/statements/{eng.id}/").json()
    assert detail["scope"] == "own"
    assert (detail["requests"], detail["total_tokens"]) == (2, 300)
    assert detail["total"] == "1.7345678901"
    assert detail["subtree_total"] == "1.7345678901"
    assert [s["employee_id"] for s in detail["subtotals"]] == ["E1"]
    assert "1.7445678901" not in str(detail) and "3.7445678901" not in str(detail)

    (listed,) = client.get("/api/v1/statements/?period=2026-01").json()["results"]
    assert listed["scope"] == "own"
    assert (listed["requests"], listed["total_tokens"], listed["total"]) == (
        2,
        300,
        "1.7345678901",
    )


def test_managers_and_finance_read_the_whole_statement(january) -> None:
    eng = _eng_with_a_colleague(january)
    for persona in ("manager", "finance", "admin"):
        detail = client_for(january[persona]).get(f"/api/v1/statements/{eng.id}/").json()
        assert detail["scope"] == "statement"
        assert (detail["requests"], detail["total"]) == (3, "1.7445678901")
        assert detail["subtree_total"] == "3.7445678901"  # eng + eng-ml's 2
