"""The production path with real processes: several uvicorn workers on Redis quotas, the usage
stream consumer, and a Redis server of the test's own (so it can be stopped and restarted).

What is checked is what finance relies on: every call the mock upstream served in full is
recorded exactly once (its own ledger is the reference), and no allowance is overrun.
Under CI=true a missing redis-server fails these tests instead of skipping them."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import openai
import pytest
import redis
from django.db import connection

from budgets.models import Allowance
from metering.models import UsageRecord
from metering.quota import keys
from tests import servers
from tests.e2e.conftest import PROVIDER_KEY, World, make_world

pytestmark = [pytest.mark.e2e, pytest.mark.production]
PROMPT = [{"role": "user", "content": "Count the beans in the ledger please"}]


class RedisServer:
    """A private redis-server with an append-only file, so a restart keeps the stream."""

    def __init__(self) -> None:
        self.port = servers.free_port()
        self.dir = tempfile.mkdtemp(prefix="tb-redis-")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir,
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        servers.wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)  # a clean shutdown flushes the AOF
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=2)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    server = RedisServer()
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


class Production:
    """The proxy (several workers) and one stream consumer, on the test database and Redis."""

    def __init__(self, redis_server: RedisServer, mock: str, workers: int = 2) -> None:
        self.redis = redis_server
        self.port = servers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "DATABASE_URL": servers.database_url_of(connection.settings_dict),
            "REDIS_URL": redis_server.url,
            "TB_KEY_CACHE_SECONDS": "0",
            "TB_MOCK_UPSTREAM_URL": mock,
            "TB_SERVE_STATIC": "0",
            "TB_UPSTREAM_KEY_TEST": PROVIDER_KEY,
            "TB_DB_THREADS": "2",
            "TB_USAGE_CLAIM_IDLE_MS": "1000",
            "TB_REDIS_TIMEOUT_MS": "2000",
        }
        self.proxy = servers.start_proxy(self.port, self.env, workers=workers)
        self.consumer: subprocess.Popen | None = None
        self.start_consumer()

    def start_consumer(self, batch: int = 200) -> None:
        self.consumer = subprocess.Popen(
            [sys.executable, "manage.py", "consume_usage", "--batch", str(batch)],
            cwd=servers.ROOT,
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        servers.stop(self.proxy)
        if self.consumer is not None:
            servers.stop(self.consumer)


@pytest.fixture
def production(
    transactional_db: None, redis_server: RedisServer, mock_upstream_url: str
) -> Iterator[Production]:
    redis_server.client().flushdb()
    httpx.delete(f"{mock_upstream_url}/_mock/ledger", timeout=5)
    system = Production(redis_server, mock_upstream_url)
    yield system
    system.stop()


def ledger(mock: str) -> dict:
    return httpx.get(f"{mock}/_mock/ledger", timeout=10).json()


def wait_for_records(count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while UsageRecord.objects.count() < count and time.monotonic() < deadline:
        time.sleep(0.2)


def assert_recorded_exactly_once(world: World) -> None:
    served = ledger(world.mock)
    wait_for_records(served["count"])
    time.sleep(0.5)  # anything beyond the ledger would show up now
    ok = UsageRecord.objects.filter(status_code=200)
    assert ok.count() == served["count"]
    assert set(ok.values_list("request_id", flat=True)) == set(served["requests"])
    by_id = {r.request_id: (r.input_tokens, r.output_tokens) for r in ok}
    assert by_id == {rid: tuple(used) for rid, used in served["requests"].items()}
    allowance = Allowance.objects.get(pk=world.allowance.pk)
    tokens = served["input_tokens"] + served["output_tokens"]
    assert allowance.used == tokens, "the database ledger has every charge once"


async def _load(world: World, calls: int, concurrency: int) -> list[int | str]:
    """`calls` SDK calls, `concurrency` at a time, every third one streamed."""
    client = openai.AsyncOpenAI(
        base_url=f"{world.proxy}/v1", api_key=world.key, max_retries=0, timeout=60
    )
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> int | str:
        async with gate:
            try:
                if i % 3 == 0:
                    stream = await client.chat.completions.create(
                        model="gpt-4o-mini",
                        messages=PROMPT,
                        max_tokens=20,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                    async for _ in stream:
                        pass
                else:
                    await client.chat.completions.create(
                        model="gpt-4o-mini", messages=PROMPT, max_tokens=20
                    )
                return 200
            except openai.APIStatusError as exc:
                return exc.status_code
            except openai.APIConnectionError:
                return "connection"

    try:
        return await asyncio.gather(*(one(i) for i in range(calls)))
    finally:
        await client.close()


def _world(production: Production, mock: str, amount: int = 10_000_000) -> World:
    return make_world(production.url, mock, amount=amount)


def test_many_workers_many_clients_record_exactly_what_the_upstream_served(
    production: Production, mock_upstream_url: str
) -> None:
    world = _world(production, mock_upstream_url)
    results = asyncio.run(_load(world, calls=2000, concurrency=64))
    assert results.count(200) == 2000, {r for r in results if r != 200}
    assert ledger(world.mock)["count"] == 2000
    assert_recorded_exactly_once(world)
    answer = subprocess.run(
        [sys.executable, "manage.py", "reconcile_quotas", "--dry-run"],
        cwd=servers.ROOT,
        env={**os.environ, **production.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "0 counters drifted" in answer.stdout, answer.stdout + answer.stderr


def test_operations_endpoints(production: Production, mock_upstream_url: str) -> None:
    world = _world(production, mock_upstream_url)
    assert asyncio.run(_load(world, calls=4, concurrency=2)) == [200] * 4
    assert httpx.get(f"{production.url}/healthz", timeout=5).json() == {"status": "ok"}
    ready = httpx.get(f"{production.url}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["database"] == "ok" and body["redis"] == "ok" and body["status"] == "ready"
    assert set(body["usage_stream"]) == {"pending", "undelivered", "oldest_seconds"}
    text = httpx.get(f"{production.url}/metrics", timeout=5).text
    for name in (
        "tokenbudget_proxy_requests_total",
        "tokenbudget_proxy_request_seconds",
        "tokenbudget_tokens_total",
        "tokenbudget_cost_usd_total",
        "tokenbudget_usage_stream_pending",
    ):
        assert name in text


def test_redis_restart_mid_load_in_database_mode(
    production: Production, redis_server: RedisServer, mock_upstream_url: str
) -> None:
    world = _world(production, mock_upstream_url, amount=10_000_000)

    async def run() -> list[int | str]:
        load = asyncio.ensure_future(_load(world, calls=600, concurrency=16))
        await asyncio.sleep(1.0)
        redis_server.stop()
        await asyncio.sleep(2.0)
        redis_server.start()
        return await load

    results = asyncio.run(run())
    assert results.count(200) == 600, {r for r in results if r != 200}
    assert_recorded_exactly_once(world)
    allowance = Allowance.objects.get(pk=world.allowance.pk)
    assert allowance.used <= allowance.amount and allowance.reserved == 0
    env = {**os.environ, **production.env}
    command = [sys.executable, "manage.py", "reconcile_quotas"]
    subprocess.run(command, cwd=servers.ROOT, env=env, timeout=60, check=True)
    again = subprocess.run(command, cwd=servers.ROOT, env=env, timeout=60, capture_output=True)
    assert b"0 counters drifted" in again.stdout, again.stdout
    used = redis_server.client().hget(keys.allowance_counter(world.allowance.pk), "used")
    assert Decimal(int(used)) == allowance.used, "the counter reconciles to the database exactly"


def _twenty_calls_allowance(world: World) -> Decimal:
    probe = asyncio.run(_load(world, calls=1, concurrency=1))
    assert probe == [200]
    per_call = ledger(world.mock)["input_tokens"] + ledger(world.mock)["output_tokens"]
    allowance = Allowance.objects.get(pk=world.allowance.pk)
    wait_for_records(1)
    allowance.refresh_from_db()
    allowance.amount = allowance.used + per_call * 20
    allowance.save()
    return allowance.amount


@pytest.mark.parametrize("redis_up", [True, False], ids=["redis", "database-fallback"])
def test_two_hundred_concurrent_calls_against_twenty_calls_of_allowance(
    production: Production, redis_server: RedisServer, mock_upstream_url: str, redis_up: bool
) -> None:
    world = _world(production, mock_upstream_url)
    amount = _twenty_calls_allowance(world)
    if not redis_up:
        redis_server.stop()
    try:
        results = asyncio.run(_load(world, calls=200, concurrency=200))
    finally:
        if not redis_up:
            redis_server.start()
    assert set(results) <= {200, 429}, set(results)
    # Calls near the end are clamped to the output that still fits, so more than twenty may
    # be served; what matters is the total below.
    assert results.count(200) >= 20
    assert_recorded_exactly_once(world)
    allowance = Allowance.objects.get(pk=world.allowance.pk)
    assert allowance.used <= amount, "never more than the allowance"
    assert allowance.reserved == 0


def _busiest_worker(port: int) -> int | None:
    """The process holding the most client connections on `port` (a uvicorn worker)."""
    answer = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
    )
    pids = re.findall(r"pid=(\d+)", answer.stdout)
    return int(max(set(pids), key=pids.count)) if pids else None


async def stream_calls(world: World, calls: int, delay_ms: int = 40) -> list[int | str]:
    """Streams of 50 tokens, `delay_ms` apart (40: about two seconds each), all in flight
    together; each call's status, or "connection" for a connection cut."""
    client = openai.AsyncOpenAI(
        base_url=f"{world.proxy}/v1", api_key=world.key, max_retries=0, timeout=60
    )

    async def one() -> int | str:
        try:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=PROMPT,
                max_tokens=50,
                stream=True,
                # The proxy passes the body's metadata through to the mock upstream.
                metadata={"mock_output_tokens": "50", "mock_chunk_delay_ms": str(delay_ms)},
            )
            async for _ in stream:
                pass
            return 200
        except openai.APIStatusError as exc:
            return exc.status_code
        except openai.APIConnectionError:
            return "connection"

    try:
        return await asyncio.gather(*(one() for _ in range(calls)))
    finally:
        await client.close()


def wait_for_upstream_calls(mock: str, count: int, timeout: float = 60) -> None:
    """Until the mock upstream has seen `count` API calls since its list was cleared."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(httpx.get(f"{mock}/_mock/requests", timeout=10).json()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the upstream saw fewer than {count} calls in {timeout} s")


def test_kill_9_of_a_proxy_worker_mid_stream(
    production: Production, redis_server: RedisServer, mock_upstream_url: str
) -> None:
    world = _world(production, mock_upstream_url)
    assert asyncio.run(_load(world, calls=8, concurrency=8)) == [200] * 8  # both workers warm
    httpx.delete(f"{world.mock}/_mock/requests", timeout=5)

    async def run() -> tuple[int, list[int | str]]:
        # Streams of about eight seconds each: on a loaded machine the 40 take seconds to start,
        # and every one must still be open when the worker dies.
        load = asyncio.ensure_future(stream_calls(world, 40, delay_ms=160))
        # Not a fixed sleep: on a loaded machine the streams take longer to start.
        await asyncio.to_thread(wait_for_upstream_calls, world.mock, 40)
        victim = await asyncio.to_thread(_busiest_worker, production.port)
        assert victim is not None and victim != production.proxy.pid
        os.kill(victim, signal.SIGKILL)
        return victim, await load

    victim, results = asyncio.run(run())
    assert results.count("connection") > 0, "some streams were on the killed worker"
    assert results.count(200) + results.count("connection") == 40
    assert_recorded_exactly_once(world)
    # The dead worker's liveness key lapses 30 s after its last beat (deleted here instead of
    # waiting): its open holds are then provably dead and given back at once, not after the
    # 30 minutes the sweep waits for holds whose owner is unknown.
    client = redis_server.client()
    beats = list(client.scan_iter(match=f"{keys.LIVE_PREFIX}*:{victim}:*"))
    assert len(beats) <= 1, beats  # none: it lapsed already (a slow machine took 30 s so far)
    if beats:
        client.delete(*beats)
    assert int(client.hget(keys.allowance_counter(world.allowance.pk), "reserved")) > 0
    env = {**os.environ, **production.env}
    answer = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from metering.quota import sweep; "
            "print(sweep.holds_release_dead(), sweep.holds_sweep(now=10**10))",
        ],
        cwd=servers.ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        check=True,
        timeout=30,
        capture_output=True,
        text=True,
    )
    released, swept = (int(n) for n in answer.stdout.split())
    assert released > 0 and swept == 0, "given back as dead holds, none left for the sweep"
    counter = client.hgetall(keys.allowance_counter(world.allowance.pk))
    assert int(counter[b"reserved"]) == 0
    assert Decimal(int(counter[b"used"])) == Allowance.objects.get(pk=world.allowance.pk).used


def test_kill_9_of_the_consumer_mid_batch(
    production: Production, redis_server: RedisServer, mock_upstream_url: str
) -> None:
    world = _world(production, mock_upstream_url)
    servers.stop(production.consumer)  # let events pile up in the stream
    results = asyncio.run(_load(world, calls=600, concurrency=32))
    assert results.count(200) == 600
    assert UsageRecord.objects.count() == 0
    production.start_consumer(batch=20)
    deadline = time.monotonic() + 30
    while not UsageRecord.objects.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    production.consumer.send_signal(signal.SIGKILL)  # it is now applying batches
    production.consumer.wait(timeout=10)
    assert 0 < UsageRecord.objects.count() < 600, "killed in the middle of the backlog"
    production.start_consumer()  # claims what the dead one left pending
    assert_recorded_exactly_once(world)
    # A batch the dead consumer committed but did not acknowledge is claimed once it has been
    # idle TB_USAGE_CLAIM_IDLE_MS, applied again (nothing new) and acknowledged.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        pending = redis_server.client().xpending(keys.STREAM, keys.GROUP)
        if pending["pending"] == 0:
            break
        time.sleep(0.2)
    assert pending["pending"] == 0
    assert_recorded_exactly_once(world)
