"""The Value page: figures as the API computes them, each role's slice, bad parameters."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.value.test_value_reports import recorded  # noqa: F401  (fixture)


def page(user, **params) -> str:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    response = client.get("/value/", {"period": "2026-03", **params})
    assert response.status_code == 200
    return response.content.decode()


def test_value_page_shows_the_report_and_definitions(cast, recorded) -> None:  # noqa: F811
    html = page(cast.users["admin"], dimension="model")
    assert "big" in html and "small" in html
    assert "$15.50" in html  # big's value: 12.5 + 3
    assert "19.84" in html  # tokens per dollar per watt of big (19.84127), two places
    assert "What the figures mean" in html
    assert 'role="img"' in html  # the value chart


@pytest.mark.parametrize(("persona", "sees_other"), [("finance", True), ("employee", False)])
def test_value_page_is_scoped(cast, recorded, persona, sees_other) -> None:  # noqa: F811
    html = page(cast.users[persona], dimension="employee")
    assert "E-100" in html
    assert ("S-200" in html) is sees_other


def test_unknown_dimension_falls_back_and_anonymous_is_sent_to_sign_in(cast) -> None:
    assert "Cost center" in page(cast.users["employee"], dimension="planet", period="bad")
    assert Client().get("/value/").status_code == 302
