"""Budget requests: ask, approve or decline, the ledger, who may do what, notifications."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core import mail

from budgets.models import Adjustment, BudgetRequest
from tests.budgets.conftest import row_counts

URL = "/api/v1/budget-requests/"


def remaining(client) -> Decimal:  # type: ignore[no-untyped-def]
    return Decimal(client.get("/api/v1/me/quota/").data["remaining"])


def ask(api, amount: str = "250000", persona: str = "employee"):  # type: ignore[no-untyped-def]
    response = api(persona).post(URL, {"amount": amount, "reason": "Migration sprint"})
    assert response.status_code == 201, response.data
    return response.data


def test_approval_raises_remaining_by_exactly_the_approved_amount(
    api, cast, django_capture_on_commit_callbacks
) -> None:
    before = remaining(api("employee"))
    with django_capture_on_commit_callbacks(execute=True):
        made = ask(api)
    # the manager of eng (above the employee's eng-ml) is told
    assert [m.to for m in mail.outbox] == [[cast.users["manager"].email]]
    with django_capture_on_commit_callbacks(execute=True):
        response = api("manager").post(f"{URL}{made['id']}/approve/", {"amount": "200000"})
    assert response.status_code == 200, response.data
    assert (response.data["status"], response.data["approved_amount"]) == (
        "approved", "200000",
    )  # fmt: skip
    assert remaining(api("employee")) - before == Decimal(200_000)
    adjustment = Adjustment.objects.get(kind="request")
    assert (adjustment.actor, adjustment.amount) == (cast.users["manager"], Decimal(200_000))
    assert mail.outbox[-1].to == [cast.employee.email]
    assert "approved" in mail.outbox[-1].subject


def test_decided_once(api) -> None:
    made = ask(api)
    assert api("manager").post(f"{URL}{made['id']}/approve/").status_code == 200
    again = api("admin").post(f"{URL}{made['id']}/approve/")
    assert again.status_code == 400 and "status" in again.data
    assert api("admin").post(f"{URL}{made['id']}/decline/").status_code == 400
    assert Adjustment.objects.filter(kind="request").count() == 1


def test_decline_writes_no_adjustment(api, django_capture_on_commit_callbacks) -> None:
    made = ask(api)
    before = remaining(api("employee"))
    with django_capture_on_commit_callbacks(execute=True):
        response = api("admin").post(f"{URL}{made['id']}/decline/", {"note": "Not this quarter"})
    assert response.data["status"] == "declined"
    assert remaining(api("employee")) == before
    assert not Adjustment.objects.filter(kind="request").exists()
    assert mail.outbox[-1].body == "Not this quarter\n\nOpen My tokens: http://127.0.0.1:8000/me/"


@pytest.mark.parametrize(("persona", "code"), [("employee", 403), ("finance", 403),
                                               ("outsider", 404)])  # fmt: skip
def test_who_may_not_decide(api, persona, code) -> None:
    made = ask(api)
    before = row_counts()
    assert api(persona).post(f"{URL}{made['id']}/approve/").status_code == code
    assert row_counts() == before
    assert BudgetRequest.objects.get().status == "pending"


def test_a_manager_does_not_approve_their_own_request(api, cast) -> None:
    made = ask(api, persona="manager")
    assert api("manager").post(f"{URL}{made['id']}/approve/").status_code == 403
    assert api("admin").post(f"{URL}{made['id']}/approve/").status_code == 200


@pytest.mark.parametrize(
    ("persona", "body", "code"),
    [
        ("employee", {"amount": "0", "reason": "x"}, 400),
        ("employee", {"amount": "-5", "reason": "x"}, 400),
        ("employee", {"amount": "1.5", "reason": "x"}, 400),  # a token allowance is whole
        ("employee", {"amount": "10", "reason": "  "}, 400),
        ("employee", {"amount": "abc", "reason": "x"}, 400),
        ("outsider", {"amount": "10", "reason": "x"}, 403),
        ("finance", {"amount": "10", "reason": "x"}, 403),
    ],
)
def test_bad_asks_write_nothing(api, persona, body, code) -> None:
    before = (row_counts(), BudgetRequest.objects.count())
    assert api(persona).post(URL, body).status_code == code
    assert (row_counts(), BudgetRequest.objects.count()) == before


@pytest.mark.parametrize(
    ("persona", "visible"),
    [("admin", 1), ("finance", 1), ("manager", 1), ("employee", 1), ("outsider", 0)],
)
def test_who_sees_a_request(api, persona, visible) -> None:
    ask(api)
    assert api(persona).get(URL).data["count"] == visible
