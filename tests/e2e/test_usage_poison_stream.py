"""Poison events on a live stream, with real processes: a `consume_usage` process on a Redis
server of the test's own, and a proxy process for /readyz and /metrics.

What is checked is what finance relies on: every good event is recorded within seconds of a
poison one, the poison ones are written with escaped text or kept unapplied as dead letters,
every charge is in the database ledger exactly once, and the consumer stays alive; after a
SIGKILL mid-backlog and a restart, every request has exactly one record and one charge.
Under CI=true a missing redis-server fails these tests instead of skipping them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from django.db import connection

from budgets.models import Allowance
from metering.models import UsageDeadLetter, UsageRecord
from metering.quota import keys
from metering.usage_stream import FORMAT, event_encode, group_ensure
from tests import servers
from tests.e2e.test_production import RedisServer, redis_server  # noqa: F401  (fixture)
from tests.metering.test_quota_redis import make_key
from tests.metering.test_usage_ingest import event_for

pytestmark = pytest.mark.e2e
PER_EVENT = 30  # tokens each test event charges (see event_for)


class Consumer:
    def __init__(self, redis_server: RedisServer) -> None:  # noqa: F811
        self.env = {
            **os.environ,
            "DATABASE_URL": servers.database_url_of(connection.settings_dict),
            "REDIS_URL": redis_server.url,
            "TB_USAGE_CLAIM_IDLE_MS": "1000",
            "TB_REDIS_TIMEOUT_MS": "2000",
            "PYTHONUNBUFFERED": "1",
        }
        self.process: subprocess.Popen | None = None

    def start(self, batch: int = 50) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "consume_usage", "--batch", str(batch)],
            cwd=servers.ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            assert self.process is not None
            servers.stop(self.process)


@pytest.fixture
def consumer(
    transactional_db: None,
    redis_server: RedisServer,  # noqa: F811
    settings: object,
) -> Iterator[Consumer]:
    redis_server.client().flushdb()
    settings.REDIS_URL = redis_server.url  # the keys' limits are loaded as on the Redis path
    running = Consumer(redis_server)
    yield running
    running.stop()


def poisons(info: object) -> tuple[list[bytes], list[str]]:
    """Five poison entries, and the request ids of the two that are written escaped."""
    nul, surrogate, orphan = event_for(info, intent="a\x00b"), event_for(info), event_for(info)
    surrogate.values["intent"] = "x\ud800y"
    orphan.values["employee_id"] = 987_654  # no such employee
    lines = [
        event_encode(nul).encode(),
        event_encode(surrogate).encode("utf-8", "surrogatepass"),
        b"not an event",
        event_encode(event_for(info)).replace(FORMAT, "u1.unregistered0", 1).encode(),
        event_encode(orphan).encode(),
    ]
    return lines, [nul.request_id, surrogate.request_id]


def push(client: object, lines: list[bytes]) -> None:
    pipe = client.pipeline(transaction=False)
    for line in lines:
        pipe.xadd(keys.STREAM, {"e": line})
    pipe.execute()


def wait_for(predicate: object, timeout: float) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not done within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


def test_poison_events_between_good_ones_stop_nothing(
    consumer: Consumer,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    info = make_key(amount=1_000_000)
    client = redis_server.client()
    group_ensure(client)
    consumer.start(batch=50)
    warm = event_for(info)  # the consumer is up and reading before the clock starts
    push(client, [event_encode(warm).encode()])
    wait_for(lambda: UsageRecord.objects.exists(), timeout=60)
    goods = [warm, *(event_for(info) for _ in range(200))]
    bad, escaped = poisons(info)
    lines = [event_encode(e).encode() for e in goods[1:]]
    for index, line in enumerate(bad):  # spread over the batches, between good events
        lines.insert(20 + index * 37, line)
    push(client, lines)

    expected = {e.request_id for e in goods} | set(escaped)
    took = wait_for(lambda: UsageRecord.objects.count() >= len(expected), timeout=10)
    print(f"{len(lines)} entries, {len(bad)} of them poison: all written in {took:.2f} s")
    assert set(UsageRecord.objects.values_list("request_id", flat=True)) == expected
    allowance = Allowance.objects.get(pk=info.limits.allowance_id)
    assert allowance.used == PER_EVENT * len(expected), "every written record charged once"
    states = sorted(UsageDeadLetter.objects.values_list("state", flat=True))
    assert states == ["unapplied"] * 3 + ["written"] * 2
    assert consumer.alive(), "the consumer carries on"
    wait_for(lambda: client.xpending(keys.STREAM, keys.GROUP)["pending"] == 0, 5)

    # And it goes on with what comes next.
    later = [event_for(info) for _ in range(10)]
    push(client, [event_encode(e).encode() for e in later])
    wait_for(lambda: UsageRecord.objects.count() == len(expected) + 10, timeout=10)
    assert consumer.alive()

    # Operations see them, and readiness does not fail for them.
    port = servers.free_port()
    proxy = servers.start_proxy(
        port, {k: consumer.env[k] for k in ("DATABASE_URL", "REDIS_URL")} | {"TB_SERVE_STATIC": "0"}
    )
    try:
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["dead_letters"] == {"written": 2, "unapplied": 3, "replayed": 0}
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'tokenbudget_usage_dead_letters{state="unapplied"} 3.0' in text
    finally:
        servers.stop(proxy)


def test_kill_9_of_the_consumer_mid_backlog_with_poison_in_it(
    consumer: Consumer,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    info = make_key(amount=10_000_000)
    client = redis_server.client()
    group_ensure(client)
    goods = [event_for(info) for _ in range(1500)]
    bad, escaped = poisons(info)
    lines = [event_encode(e).encode() for e in goods]
    for index, line in enumerate(bad):
        lines.insert(100 + index * 290, line)
    push(client, lines)

    consumer.start(batch=20)
    wait_for(lambda: UsageRecord.objects.exists(), timeout=30)
    consumer.kill()  # applying batches
    written = UsageRecord.objects.count()
    assert 0 < written < len(goods), "killed in the middle of the backlog"
    consumer.start(batch=200)  # claims what the dead one left pending, once idle

    expected = {e.request_id for e in goods} | set(escaped)
    wait_for(lambda: UsageRecord.objects.count() >= len(expected), timeout=30)
    wait_for(lambda: client.xpending(keys.STREAM, keys.GROUP)["pending"] == 0, 10)
    ids = list(UsageRecord.objects.values_list("request_id", flat=True))
    assert len(ids) == len(set(ids)) == len(expected) and set(ids) == expected
    allowance = Allowance.objects.get(pk=info.limits.allowance_id)
    assert allowance.used == PER_EVENT * len(expected), "no charge lost, none twice"
    letters = list(UsageDeadLetter.objects.values_list("entry_id", flat=True))
    assert len(letters) == len(set(letters)) == len(bad), "one dead letter per poison entry"
    assert consumer.alive()
    print(f"killed after {written} records; {len(ids)} records, {len(letters)} dead letters")
