"""A Redis restart under the proxy's client, with a redis-server of the test's own (AOF on, so
the counters survive): pooled connections opened before the restart are dead, and a reserve
that meets one is sent again on a fresh connection, holding once, never falling back to the
database ledger. Under CI=true a missing redis-server fails instead of skipping."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from budgets.models import Reservation
from metering.quota import clients, down, keys, redis_backend
from tests.e2e.test_production import RedisServer, redis_server  # noqa: F401  (fixture)
from tests.metering.test_quota_redis import _reset_clients, counter, make_key, rds  # noqa: F401
from tests.metering.test_redis_handover import reserve_async


@pytest.fixture
def private_redis(
    rds: redis.Redis,  # noqa: F811
    redis_server: RedisServer,  # noqa: F811
    settings: Any,
) -> Iterator[RedisServer]:
    redis_server.client().flushdb()
    settings.REDIS_URL = redis_server.url
    _reset_clients()
    yield redis_server
    _reset_clients()


def test_a_redis_restart_is_not_an_outage(private_redis: RedisServer) -> None:
    info = make_key(amount=100_000)
    name = keys.allowance_counter(info.limits.allowance_id)

    async def run() -> list[Any]:
        assert isinstance(await reserve_async(info), redis_backend.RedisHold)
        client, _ = clients.async_client()
        await asyncio.gather(*(client.ping() for _ in range(8)))  # eight pooled connections
        await asyncio.to_thread(private_redis.stop)
        await asyncio.to_thread(private_redis.start)
        return await asyncio.gather(*(reserve_async(info) for _ in range(20)))

    failures = down.redis_health.failures
    held = asyncio.run(run())
    assert all(isinstance(h, redis_backend.RedisHold) for h in held), held
    assert down.redis_health.failures == failures, "no call saw Redis as down"
    assert not Reservation.objects.exists(), "nothing went to the database ledger"
    assert counter(private_redis.client(), name) == {"used": 0, "reserved": 21 * 50}
