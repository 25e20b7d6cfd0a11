"""Cache invalidation: publishing after commit only, the listener dropping what a message names,
and a load racing an invalidation never caching its stale answer."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis
from django.db import transaction

from budgets import invalidation as publisher
from budgets.invalidation import invalidation_publish
from metering import cache, invalidation
from tests.metering.test_quota_redis import REDIS_URL, redis_client


@pytest.fixture
def channel(settings: Any) -> Any:
    client = redis_client()
    settings.REDIS_URL = REDIS_URL
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(publisher.channel(REDIS_URL))
    pubsub.get_message(timeout=1)  # the subscription's confirmation
    yield pubsub
    pubsub.close()


def received(pubsub: redis.client.PubSub, wait: float = 0.5) -> list[dict]:
    messages = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.05)
        if message:
            messages.append(json.loads(message["data"]))
    return messages


@pytest.mark.django_db(transaction=True)
def test_published_once_committed_and_never_on_rollback(channel: Any) -> None:
    with transaction.atomic():
        invalidation_publish(cache="keys", entry="abc")
        assert received(channel, 0.2) == [], "not before the commit"
    assert received(channel) == [{"cache": "keys", "entry": "abc"}]
    with pytest.raises(RuntimeError), transaction.atomic():
        invalidation_publish(cache="routes")
        raise RuntimeError
    assert received(channel, 0.3) == []


@pytest.mark.django_db(transaction=True)
def test_an_installation_on_another_database_of_the_same_server_hears_nothing(
    channel: Any, settings: Any
) -> None:
    """Pub/sub is not scoped by database: the channel is named by it, so two installations
    sharing one Redis server never drop each other's caches."""
    db = int(publisher.parse_url(REDIS_URL).get("db") or 0)
    settings.REDIS_URL = REDIS_URL.rsplit("/", 1)[0] + f"/{(db + 1) % 16}"
    invalidation_publish(cache="keys", entry="other")
    assert received(channel, 0.3) == []
    settings.REDIS_URL = REDIS_URL
    invalidation_publish(cache="keys", entry="ours")
    assert received(channel) == [{"cache": "keys", "entry": "ours"}]


def test_the_channel_is_named_by_the_database() -> None:
    assert publisher.channel("redis://127.0.0.1:6379/12") == "tb:invalidate:12"
    assert publisher.channel("redis://127.0.0.1:6379") == "tb:invalidate:0"
    assert publisher.channel("rediss://cache.internal:6380/?db=3") == "tb:invalidate:3"


@pytest.mark.django_db(transaction=True)
def test_publishing_without_redis_does_not_fail(settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    invalidation_publish(cache="keys", entry="abc")  # logged, not raised


def test_a_load_that_began_before_an_invalidation_is_not_cached() -> None:
    versions = iter(["stale", "fresh"])
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow_load(name: str) -> str:
        value = next(versions)
        if value == "stale":
            started.set()
            await release.wait()
        return value

    test_cache: cache.TTLCache[str] = cache.TTLCache(lambda n: n, name="test-race")
    test_cache._aload = slow_load

    async def run() -> tuple[str | None, str | None]:
        first = asyncio.ensure_future(test_cache.aget("k"))
        await started.wait()
        test_cache.invalidate("k")  # the row changed while it was being read
        second = await test_cache.aget("k")  # does not join the stale load
        release.set()
        return await first, second

    try:
        first, second = asyncio.run(run())
        assert (first, second) == ("stale", "fresh")
        assert test_cache.peek("k") == (True, "fresh")
    finally:
        cache._caches.pop("test-race", None)


def test_messages_drop_what_they_name() -> None:
    cache.keys._store("a", None)
    cache.keys._store("b", None)
    cache.routes._store("m", None)
    cache.invalidate("keys", "a")
    assert not cache.keys.peek("a")[0] and cache.keys.peek("b")[0] and cache.routes.peek("m")[0]
    cache.invalidate("routes", None)
    assert cache.keys.peek("b")[0] and not cache.routes.peek("m")[0]
    cache.invalidate("something-newer", None)
    assert not cache.keys.peek("b")[0], "an unknown cache drops everything"
    assert invalidation._parse(b"not json") == (None, None)
    assert invalidation._parse(b'{"cache": "keys", "entry": "x"}') == ("keys", "x")


def test_the_listener_drops_entries_and_everything_on_subscribing(settings: Any) -> None:
    client = redis_client()
    settings.REDIS_URL = REDIS_URL
    events: list[tuple[Any, ...]] = []

    async def run() -> None:
        task = asyncio.ensure_future(
            invalidation.listen(
                on_message=lambda c, e: events.append(("message", c, e)),
                on_subscribed=lambda: events.append(("subscribed",)),
            )
        )
        try:
            for _ in range(100):
                if events:
                    break
                await asyncio.sleep(0.02)
            await asyncio.to_thread(
                client.publish, publisher.channel(REDIS_URL), '{"cache":"keys","entry":"h"}'
            )
            for _ in range(100):
                if len(events) > 1:
                    break
                await asyncio.sleep(0.02)
        finally:
            task.cancel()

    asyncio.run(run())
    assert events == [("subscribed",), ("message", "keys", "h")]
