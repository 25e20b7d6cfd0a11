"""A key made on My tokens is shown once and never sits readable in django_session: the session
row holds it sealed with a one-time pad that only the browser's short-lived cookie carries."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.test import Client

from budgets.models import CostCenter, Employee
from metering.models import VirtualKey
from metering.pages import NEW_KEY_COOKIE
from metering.services import key_hash

KEY = re.compile(r'id="new-key-value">(tb-[^<]+)<')


@pytest.fixture
def erin(db: None) -> Client:
    user = get_user_model().objects.create_user("erin", "erin@example.com", "pw")
    center = CostCenter.objects.create(code="eng", name="Engineering")
    Employee.objects.create(employee_id="E-1", email="erin@example.com", cost_center=center,
                            user=user)  # fmt: skip
    client = Client()
    client.force_login(user)
    return client


def _session_rows() -> list[str]:
    """Every session as stored, and decoded."""
    rows = []
    for session in Session.objects.all():
        rows += [session.session_data, repr(session.get_decoded())]
    return rows


def test_new_key_is_shown_once_and_never_stored_readable(erin: Client) -> None:
    made = erin.post("/me/keys/", {"name": "laptop"})
    assert made.status_code == 302 and made["Location"] == "/me/"
    cookie = made.cookies[NEW_KEY_COOKIE]
    assert (cookie["path"], cookie["httponly"], cookie["samesite"]) == ("/me/", True, "Strict")
    key = VirtualKey.objects.get()
    stored = _session_rows()

    shown = erin.get("/me/")
    assert shown.status_code == 200
    assert shown["Cache-Control"] == "no-store"
    raw = KEY.search(shown.content.decode()).group(1)
    assert key_hash(raw) == key.key_hash
    # Between the two requests the session row held nothing that reads as the key.
    assert not [row for row in stored if raw in row or raw[3:] in row]
    assert shown.cookies[NEW_KEY_COOKIE].value == ""  # the browser's half is dropped
    assert not [row for row in _session_rows() if "tb_new_key" in row]

    again = erin.get("/me/")
    assert raw not in again.content.decode()
    assert 'id="new-key-value"' not in again.content.decode()


def test_the_session_half_alone_shows_nothing(erin: Client) -> None:
    erin.post("/me/keys/", {"name": "laptop"})
    erin.cookies.pop(NEW_KEY_COOKIE)
    page = erin.get("/me/")
    assert page.status_code == 200
    assert 'id="new-key-value"' not in page.content.decode()
    assert VirtualKey.objects.count() == 1
