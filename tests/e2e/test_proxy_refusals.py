"""Every refusal uses the provider's error shape, and none of them charges anything."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest
from django.utils import timezone

from budgets.models import Policy
from metering.models import UsageRecord, VirtualKey
from metering.services import key_create, key_revoke
from tests.e2e.conftest import World
from tests.e2e.test_proxy_sdk import assert_nothing_charged, claude, oai

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "hello"}]


def post(
    world: World, path: str, body: bytes | str, key: str | None = None, **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{world.proxy}{path}",
        content=body,
        headers={
            "authorization": f"Bearer {key or world.key}",
            "content-type": "application/json",
            **headers,
        },
        timeout=20,
    )


def test_revoked_key_is_refused_with_openai_shape(world: World) -> None:
    key_revoke(key=VirtualKey.objects.get(), actor=None)
    with pytest.raises(openai.AuthenticationError) as caught:
        oai(world).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"
    assert_nothing_charged(world)
    assert not UsageRecord.objects.exists()


def test_expired_key_is_refused(world: World) -> None:
    _, raw = key_create(
        employee=world.employee,
        name="old",
        actor=None,
        expires_at=timezone.now() + dt.timedelta(seconds=1),
    )
    VirtualKey.objects.filter(name="old").update(
        expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    with pytest.raises(openai.AuthenticationError):
        oai(world, raw).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert_nothing_charged(world)


def test_unknown_key_gets_anthropic_shape_on_messages(world: World) -> None:
    response = post(
        world,
        "/v1/messages",
        json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": HELLO}),
        key="tb-nope",
    )
    assert response.status_code == 401
    assert (
        response.json()
        == {
            "type": "error",
            "error": {"type": "authentication_error", "message": "Invalid API key."},
        }
        or response.json()["error"]["type"] == "authentication_error"
    )
    assert response.json()["type"] == "error"


def test_disallowed_and_unknown_models(world: World) -> None:
    Policy.objects.create(cost_center=world.employee.cost_center, allowed_models=["gpt-4o-mini"])
    with pytest.raises(openai.PermissionDeniedError) as denied:
        oai(world).chat.completions.create(model="o4-mini", messages=HELLO)
    assert denied.value.body["code"] == "model_not_allowed"
    with pytest.raises(openai.NotFoundError) as missing:
        oai(world).chat.completions.create(model="gpt-17", messages=HELLO)
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(anthropic.PermissionDeniedError):
        claude(world).messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=HELLO)
    assert_nothing_charged(world)
    assert not UsageRecord.objects.exists()


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", b"{not json", None),
        ("/v1/chat/completions", b'{"messages": []}', "model"),
        (
            "/v1/messages",
            b'{"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}]}',
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": -3}',
            "max_tokens",
        ),
    ],
)
def test_malformed_requests_get_400(
    world: World, path: str, body: bytes, param: str | None
) -> None:
    response = post(world, path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param and "param" in error:
        assert error["param"] == param
    assert_nothing_charged(world)
    assert not UsageRecord.objects.exists()


def test_oversize_body_gets_413(world: World) -> None:
    from django.conf import settings

    big = json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "x" * (settings.TB_MAX_BODY_BYTES + 10)}],
        }
    )
    response = post(world, "/v1/chat/completions", big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert_nothing_charged(world)


def test_upstream_500_is_passed_through_uncharged(world: World) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        oai(world).chat.completions.create(model="mock-error-500", messages=HELLO, max_tokens=10)
    assert caught.value.status_code == 500
    assert_nothing_charged(world)
    record = UsageRecord.objects.get()
    assert record.status_code == 500 and record.cost == 0 and record.output_tokens == 0


def test_upstream_timeout_gets_504_uncharged(world: World) -> None:
    response = post(
        world,
        "/v1/chat/completions",
        json.dumps({"model": "mock-timeout", "messages": HELLO, "max_tokens": 5}),
    )
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert_nothing_charged(world)


def test_budget_exhausted_is_429_insufficient_quota_not_retried(world: World) -> None:
    world.allowance.amount = Decimal(5)
    world.allowance.save()
    response = post(
        world,
        "/v1/chat/completions",
        json.dumps({"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 5}),
    )
    assert response.status_code == 429
    assert response.headers["x-should-retry"] == "false"
    error = response.json()["error"]
    assert error["type"] == "insufficient_quota" and error["code"] == "employee_allowance"
    with pytest.raises(openai.RateLimitError):
        oai(world).chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=5)
    assert_nothing_charged(world)
    assert not UsageRecord.objects.exists()


def test_output_is_clamped_to_what_remains(world: World) -> None:
    world.allowance.amount = Decimal(60)
    world.allowance.save()
    response = oai(world).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, max_tokens=1000
    )
    completion = response.parse()
    clamped = int(response.headers["x-tokenbudget-max-tokens-clamped"])
    assert 0 < clamped < 1000
    assert completion.usage.completion_tokens <= clamped
    world.allowance.refresh_from_db()
    assert world.allowance.used <= 60 and world.allowance.reserved == 0


def test_employee_who_left_cannot_spend_the_rest_of_the_year(world: World) -> None:
    world.employee.end_date = timezone.localdate() - dt.timedelta(days=1)
    world.employee.save()
    with pytest.raises(openai.AuthenticationError):
        oai(world).chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=5)
    assert_nothing_charged(world)
