"""The key form on My tokens: cap, expiry and model scope through `key_create`, the secret shown
once, every refusal minting nothing; and a revoke that happens only when confirmed."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from budgets.models import AuditEvent, Employee, Policy
from metering.models import VirtualKey
from metering.services import key_create
from tests.clock import local
from tests.pages.test_editors import catalogue, client_for

__all__ = ["catalogue"]  # the fixture, shared with the editor tests


def _erin() -> Employee:
    return Employee.objects.get(employee_id="E-1")


def test_a_key_with_cap_expiry_and_models_is_minted_and_shown_once(
    catalogue: dict[str, Any],
) -> None:
    client = client_for(catalogue["employee"])
    form = client.get("/me/").content.decode()
    assert 'name="cap_tokens"' in form and 'name="expires_on"' in form
    assert 'value="gpt-4o-mini"' in form  # the routed models, the policy allowing all
    tomorrow = timezone.localdate() + dt.timedelta(days=1)
    page = client.post(
        "/me/keys/",
        {
            "name": "ci runner",
            "cap_tokens": "250,000",
            "expires_on": tomorrow.isoformat(),
            "allowed_models": ["gpt-4o-mini"],
        },
        follow=True,
    ).content.decode()
    key = VirtualKey.objects.get(employee=_erin())
    assert (key.name, key.cap_tokens, key.allowed_models) == ("ci runner", 250_000, ["gpt-4o-mini"])
    day_after = tomorrow + dt.timedelta(days=1)
    assert key.expires_at == local(day_after.year, day_after.month, day_after.day)
    assert 'data-testid="new-key"' in page and key.prefix in page
    assert "0 of 250,000 tokens" in page and "gpt-4o-mini" in page
    assert 'data-testid="new-key"' not in client.get("/me/").content.decode()
    event = AuditEvent.objects.get(action="key.create")
    assert event.after["cap_tokens"] == 250_000 and "key_hash" not in event.after


def test_the_models_offered_are_those_the_policy_allows(catalogue: dict[str, Any]) -> None:
    Policy.objects.filter(cost_center=catalogue["acme"]).update(allowed_models=["gpt-4o-mini"])
    client = client_for(catalogue["employee"])
    assert 'value="gpt-4o"' not in client.get("/me/").content.decode()
    page = client.post(
        "/me/keys/", {"name": "k", "allowed_models": ["gpt-4o"]}, follow=True
    ).content.decode()
    assert "Not a model you may use: gpt-4o." in page
    assert not VirtualKey.objects.exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": " "}, "Name: Give the key a name"),
        ({"name": "bad\x07name"}, "Name: The name contains a control character (U+0007)"),
        ({"cap_tokens": "lots"}, "The cap is a whole number of tokens"),
        ({"cap_tokens": "0"}, "Cap: A whole number of tokens from 1 to"),
        ({"cap_tokens": "-5"}, "The cap is a whole number of tokens"),
        ({"expires_on": "next week"}, "The expiry is a date (YYYY-MM-DD)"),
        ({"expires_on": "2001-01-01"}, "Expiry: Must be in the future."),
    ],
)
def test_bad_key_terms_mint_nothing_and_say_why(
    catalogue: dict[str, Any], fields: dict[str, str], message: str
) -> None:
    events = AuditEvent.objects.count()
    page = client_for(catalogue["employee"]).post(
        "/me/keys/", {"name": "laptop", **fields}, follow=True
    )
    text = page.content.decode()
    assert "No key was created." in text and message in text
    assert 'data-testid="new-key"' not in text
    assert not VirtualKey.objects.exists()
    assert AuditEvent.objects.count() == events


def test_the_api_refuses_a_zero_cap_like_the_page(catalogue: dict[str, Any]) -> None:
    client = client_for(catalogue["employee"])
    response = client.post(
        "/api/v1/employees/E-1/keys/",
        {"name": "k", "cap_tokens": 0},
        content_type="application/json",
    )
    assert response.status_code == 400 and "cap_tokens" in response.json()
    assert not VirtualKey.objects.exists()


def test_revoke_happens_only_with_the_confirmation_naming_the_key(
    catalogue: dict[str, Any],
) -> None:
    key, _ = key_create(employee=_erin(), name="laptop", actor=None)
    client = client_for(catalogue["employee"])
    page = client.get("/me/").content.decode()
    assert f"Revoke key “laptop” (<code>{key.prefix}…</code>)?" in page
    refused = client.post(f"/keys/{key.pk}/revoke/", follow=True).content.decode()
    assert "Confirm the revoke of key “laptop”" in refused
    key.refresh_from_db()
    assert key.revoked_at is None
    client.post(f"/keys/{key.pk}/revoke/", {"confirm": "tb-not-this"})
    key.refresh_from_db()
    assert key.revoked_at is None
    done = client.post(f"/keys/{key.pk}/revoke/", {"confirm": key.prefix}, follow=True)
    assert "Key “laptop” revoked" in done.content.decode()
    key.refresh_from_db()
    assert key.revoked_at is not None
