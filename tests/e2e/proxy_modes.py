"""The proxy under test in either quota mode: the embedded default (database ledger) or the
production path (Redis quotas, the usage stream and its consumer, a private redis-server)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis
from django.db import connection

from budgets.models import Allowance, Reservation
from metering.models import UsageRecord
from tests import servers
from tests.e2e.conftest import PROVIDER_KEY, World, make_world
from tests.e2e.test_production import RedisServer


@dataclass
class Mode:
    name: str
    url: str
    redis: redis.Redis | None = None


class RedisProxy:
    """One proxy worker on Redis quotas and one usage consumer, for a test module."""

    def __init__(self, mock: str) -> None:
        self.server = RedisServer()
        self.server.start()
        self.port = servers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "DATABASE_URL": servers.database_url_of(connection.settings_dict),
            "REDIS_URL": self.server.url,
            "TB_KEY_CACHE_SECONDS": "0",
            "TB_MOCK_UPSTREAM_URL": mock,
            "TB_SERVE_STATIC": "0",
            "TB_UPSTREAM_KEY_TEST": PROVIDER_KEY,
            "TB_DB_THREADS": "2",
            "TB_USAGE_CLAIM_IDLE_MS": "1000",
        }
        self.proxy = servers.start_proxy(self.port, self.env)
        self.consumer = subprocess.Popen(
            [sys.executable, "manage.py", "consume_usage", "--batch", "50"],
            cwd=servers.ROOT,
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        servers.stop(self.proxy)
        servers.stop(self.consumer)
        self.server.stop()
        shutil.rmtree(self.server.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_proxy(django_db_setup, django_db_blocker, mock_upstream_url: str) -> Iterator[RedisProxy]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    system = RedisProxy(mock_upstream_url)
    yield system
    system.stop()


@pytest.fixture(params=["database", "redis"])
def mode(
    request: pytest.FixtureRequest, transactional_db: None, mock_upstream_url: str
) -> Iterator[Mode]:
    """Each test runs on the embedded default and on Redis quotas."""
    httpx.delete(f"{mock_upstream_url}/_mock/ledger", timeout=5)
    httpx.delete(f"{mock_upstream_url}/_mock/requests", timeout=5)
    if request.param == "database":
        yield Mode("database", request.getfixturevalue("proxy_url"))
        return
    system: RedisProxy = request.getfixturevalue("redis_proxy")
    client = system.server.client()
    _reset(client)
    yield Mode("redis", system.url, client)
    # The test database is emptied next: let the consumer finish writing first (its
    # transaction and the emptying would otherwise wait on each other).
    _wait_until_consumed(client)


def _wait_until_consumed(client: redis.Redis, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not client.exists("tb:usage"):
            return
        last = client.xinfo_stream("tb:usage")["last-generated-id"]
        groups = client.xinfo_groups("tb:usage")
        if all(g["last-delivered-id"] == last and g["pending"] == 0 for g in groups):
            time.sleep(0.2)  # the last batch's commit comes just before its acknowledgement
            return
        time.sleep(0.05)


def _reset(client: redis.Redis) -> None:
    """Forget the last test's counters and holds (ids repeat across tests), keeping what the
    running proxy and consumer set up: the stream's consumer group, formats, liveness keys."""
    kept = (b"tb:usage", b"tb:usage:formats")
    for name in client.keys("*"):
        if name not in kept and not name.startswith(b"tb:live:"):
            client.delete(name)
    if client.exists("tb:usage"):
        client.xtrim("tb:usage", maxlen=0)


def mode_world(mode: Mode, mock: str, **kwargs: object) -> World:
    return make_world(mode.url, mock, **kwargs)


def mock_requests(mock: str) -> list[dict]:
    return httpx.get(f"{mock}/_mock/requests", timeout=5).json()


def wait_for_records(count: int, timeout: float = 20) -> list[UsageRecord]:
    deadline = time.monotonic() + timeout
    while UsageRecord.objects.count() < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return list(UsageRecord.objects.order_by("created_at"))


def assert_no_hold_left(world: World, mode: Mode) -> None:
    """No reservation in the database ledger, and none in Redis."""
    allowance = Allowance.objects.get(pk=world.allowance.pk)
    assert allowance.reserved == 0
    assert not Reservation.objects.exists()
    if mode.redis is not None:
        # A closed hold stays as a tombstone ("s" = "c") so a repeated close is a no-op.
        open_holds = [k for k in mode.redis.keys("tb:h:*") if mode.redis.hget(k, "s") == b"o"]
        assert open_holds == []
        assert mode.redis.zcard("tb:holds") == 0
        for name in mode.redis.keys("tb:q:*"):
            assert int(mode.redis.hget(name, "reserved") or 0) == 0, name


def assert_nothing_recorded_or_charged(world: World, mode: Mode) -> None:
    time.sleep(0.3)  # a record on its way through the stream would arrive by now
    assert not UsageRecord.objects.exists()
    allowance = Allowance.objects.get(pk=world.allowance.pk)
    assert allowance.used == 0
    assert_no_hold_left(world, mode)
    if mode.redis is not None:
        assert mode.redis.keys("tb:h:*") == [], "no hold was ever taken"
        assert mode.redis.xlen("tb:usage") == 0, "no usage event for the consumer either"
        for name in mode.redis.keys("tb:q:*"):
            assert int(mode.redis.hget(name, "used") or 0) == 0, name
