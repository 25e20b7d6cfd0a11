"""Automatic pipelining of Lua script runs, against a real Redis (database 11).
Under CI=true a missing Redis fails these tests instead of skipping them."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
import redis
import redis.asyncio as aioredis

from metering.quota.batch import ScriptBatcher
from tests.e2e.test_production import RedisServer, redis_server  # noqa: F401  (fixture)

REDIS_URL = os.environ.get("TB_TEST_REDIS_BATCH_URL", "redis://127.0.0.1:6379/11")
# Adds ARGV[1] to KEYS[1] and answers the new value; ARGV[1] == "boom" raises a script error.
ADD = """
if ARGV[1] == 'boom' then return redis.error_reply('ERR boom') end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


@pytest.fixture
def url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.ConnectionError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is not reachable at {REDIS_URL}")
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    return REDIS_URL


async def _setup(url: str):
    client = aioredis.Redis.from_url(url)
    batcher = ScriptBatcher(client)
    return client, batcher, batcher.wrap(client.register_script(ADD))


def test_concurrent_runs_share_pipelines_and_each_gets_its_own_answer(url: str) -> None:
    key = f"test:batch:{uuid.uuid4().hex}"

    async def run() -> tuple[list[int], ScriptBatcher]:
        client, batcher, add = await _setup(url)
        try:
            answers = await asyncio.gather(*(add(keys=[key], args=[i]) for i in range(1, 201)))
            return [int(a) for a in answers], batcher
        finally:
            await client.delete(key)
            await client.aclose()

    answers, batcher = asyncio.run(run())
    assert sorted(answers)[-1] == sum(range(1, 201))  # every run happened exactly once
    assert len(set(answers)) == 200  # each caller got the value after its own increment
    assert batcher.runs == 200
    assert batcher.pipelines < 10  # 200 runs from one burst: a handful of round trips


def test_a_lone_call_and_a_flushed_script_cache_still_work(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """On a Redis server of the test's own: SCRIPT FLUSH empties the whole server's cache, and
    would send every other user of a shared one to NOSCRIPT."""
    key = f"test:batch:{uuid.uuid4().hex}"

    async def run() -> list[int]:
        client, _, add = await _setup(redis_server.url)
        try:
            first = int(await add(keys=[key], args=[5]))
            await client.script_flush()  # as after a Redis restart: NOSCRIPT on the next run
            again = await asyncio.gather(add(keys=[key], args=[1]), add(keys=[key], args=[1]))
            return [first, *sorted(int(a) for a in again)]
        finally:
            await client.delete(key)
            await client.aclose()

    assert asyncio.run(run()) == [5, 6, 7]


def test_one_failing_run_does_not_fail_its_neighbours(url: str) -> None:
    key = f"test:batch:{uuid.uuid4().hex}"

    async def run() -> list[object]:
        client, _, add = await _setup(url)
        try:
            return await asyncio.gather(
                add(keys=[key], args=[1]),
                add(keys=[key], args=["boom"]),
                add(keys=[key], args=[1]),
                return_exceptions=True,
            )
        finally:
            await client.delete(key)
            await client.aclose()

    first, failed, third = asyncio.run(run())
    assert isinstance(failed, redis.ResponseError) and "boom" in str(failed)
    assert sorted([int(first), int(third)]) == [1, 2]


def test_an_unreachable_redis_fails_every_caller_with_a_connection_error() -> None:
    async def run() -> list[object]:
        client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
        batcher = ScriptBatcher(client)
        add = batcher.wrap(client.register_script(ADD))
        try:
            return await asyncio.gather(
                *(add(keys=["k"], args=[1]) for _ in range(3)), return_exceptions=True
            )
        finally:
            await client.aclose()

    answers = asyncio.run(run())
    assert all(isinstance(a, redis.ConnectionError) for a in answers), answers
