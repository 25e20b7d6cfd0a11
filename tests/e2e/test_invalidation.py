"""Invalidation across processes: with Redis, a revoked key, a changed policy or a price set
through the API is seen by every worker of a running proxy well within a second, though its
caches keep entries 4 s."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from budgets.invalidation import channel, invalidation_publish
from budgets.models import Policy
from budgets.services import policy_set
from metering.models import VirtualKey
from metering.services import key_revoke
from tests import servers
from tests.e2e.conftest import World, make_world
from tests.e2e.test_production import RedisServer, redis_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.e2e
BOUND_SECONDS = 1.0
WORKERS = 2
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def proxy(
    transactional_db: None,
    redis_server: RedisServer,  # noqa: F811
    settings: Any,
) -> Iterator[str]:
    redis_server.client().flushdb()
    settings.REDIS_URL = redis_server.url  # the test publishes like any other process
    port = servers.free_port()
    process = servers.start_proxy(
        port,
        {
            "DATABASE_URL": servers.database_url_of(connection.settings_dict),
            "REDIS_URL": redis_server.url,
            "TB_KEY_CACHE_SECONDS": "4",  # the longest cache lifetime the settings allow
            "TB_SERVE_STATIC": "0",
        },
        workers=WORKERS,
    )
    yield f"http://127.0.0.1:{port}"
    servers.stop(process)


def _client(world: World) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{world.proxy}/v1", api_key=world.key, max_retries=0, timeout=10)


def _call(world: World) -> None:
    """One call on a new connection (the kernel picks a worker per connection)."""
    _client(world).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)


def _warm(world: World, redis_server: RedisServer) -> None:  # noqa: F811
    """Calls until every worker listens, then fresh cache entries in every worker: the next
    4 s no entry expires, so only a message can make a change visible."""
    deadline = time.monotonic() + 30
    while (
        listening := redis_server.client().pubsub_numsub(channel(redis_server.url))[0][1]
    ) < WORKERS:
        _call(world)
        assert time.monotonic() < deadline, f"{listening} of {WORKERS} workers listen"
    invalidation_publish()  # every process drops everything
    time.sleep(0.2)
    for _ in range(12):  # both workers (a worker is picked per connection by the kernel)
        _call(world)


def _refused_within(world: World, changed_at: float, error: type[Exception]) -> float:
    while True:
        try:
            _call(world)
        except error:
            return time.monotonic() - changed_at
        assert time.monotonic() - changed_at < BOUND_SECONDS, "the change was not seen"
        time.sleep(0.02)


def _served_by_every_worker_for(world: World, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        _call(world)


def test_a_revoked_key_is_refused_by_every_worker_within_a_second(
    proxy: str,
    mock_upstream_url: str,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    world = make_world(proxy, mock_upstream_url)
    _warm(world, redis_server)
    key_revoke(key=VirtualKey.objects.get(), actor=None)
    revoked_at = time.monotonic()
    _refused_within(world, revoked_at, openai.AuthenticationError)
    # Refused from then on by every worker (each call a new connection).
    for _ in range(12):
        with pytest.raises(openai.AuthenticationError):
            _call(world)


def test_a_policy_change_reaches_every_worker_within_a_second(
    proxy: str,
    mock_upstream_url: str,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    world = make_world(proxy, mock_upstream_url)
    _warm(world, redis_server)
    # A change that bypasses the services publishes nothing: the caches keep serving it.
    Policy.objects.update_or_create(
        cost_center=world.employee.cost_center, defaults={"allowed_models": ["o4-mini"]}
    )
    _served_by_every_worker_for(world, 0.5)
    policy_set(
        cost_center=world.employee.cost_center,
        data={"allowed_models": ["o4-mini"]},
        actor=None,
    )
    changed_at = time.monotonic()
    _refused_within(world, changed_at, openai.PermissionDeniedError)


def test_a_price_set_through_the_api_reaches_every_worker_within_a_second(
    proxy: str,
    mock_upstream_url: str,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    world = make_world(proxy, mock_upstream_url, amount="1", unit="usd")
    _warm(world, redis_server)
    admin = get_user_model().objects.create_user("admin", is_staff=True)
    api = APIClient()
    api.force_authenticate(admin)
    # A negotiated price already in force that no $1 allowance can pay for a call at.
    start = timezone.now() - dt.timedelta(minutes=1)
    response = api.post(
        "/api/v1/prices/",
        {"model": "gpt-4o-mini", "input_per_mtok": "1000000", "output_per_mtok": "1000000",
         "effective_from": start.isoformat()},
        format="json",
    )  # fmt: skip
    assert response.status_code == 201, response.content
    changed_at = time.monotonic()
    _refused_within(world, changed_at, openai.RateLimitError)
    for _ in range(12):
        with pytest.raises(openai.RateLimitError):
            _call(world)
