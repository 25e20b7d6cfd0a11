"""The proxy side of cache invalidation: a background task per proxy process that listens on
the Redis channel `budgets.invalidation.channel(REDIS_URL)` and hands each message to the caches.

Contract: `listen` calls `on_subscribed()` each time its subscription is confirmed (the first
time and after every reconnect), because messages published while it was not subscribed are
lost; the caller drops everything then. Each message becomes one `on_message(cache, entry)`
call. Redis being down is not an error here: the task retries every second and the caches'
lifetime bounds staleness meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import redis
import redis.asyncio as aioredis
from django.conf import settings

from budgets.invalidation import channel

log = logging.getLogger("tokenbudget.invalidation")

RETRY_SECONDS = 1.0
POLL_SECONDS = 5.0  # how long one read waits for a message (then it simply reads again)
HEALTH_CHECK_SECONDS = 10  # an idle subscription is pinged this often, so a dead peer shows

OnMessage = Callable[[str | None, str | None], None]


async def listen(*, on_message: OnMessage, on_subscribed: Callable[[], None]) -> None:
    """Run until cancelled."""
    while True:
        client = aioredis.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=settings.TB_REDIS_TIMEOUT_MS / 1000,
            health_check_interval=HEALTH_CHECK_SECONDS,
        )
        try:
            await _subscribed(client, on_message, on_subscribed)
        except (redis.RedisError, OSError) as exc:
            log.warning("cache invalidation listener disconnected", extra={"error": str(exc)})
        finally:
            await client.aclose()
        await asyncio.sleep(RETRY_SECONDS)


async def _subscribed(
    client: aioredis.Redis, on_message: OnMessage, on_subscribed: Callable[[], None]
) -> None:
    async with client.pubsub() as pubsub:
        await pubsub.subscribe(channel(settings.REDIS_URL))
        while True:
            message = await pubsub.get_message(timeout=POLL_SECONDS)
            if message is None:
                continue
            if message["type"] == "subscribe":
                on_subscribed()
            elif message["type"] == "message":
                cache, entry = _parse(message["data"])
                on_message(cache, entry)


def _parse(data: bytes | str) -> tuple[str | None, str | None]:
    """A message names a cache and an entry; anything unreadable drops everything."""
    try:
        body = json.loads(data)
        cache, entry = body.get("cache"), body.get("entry")
    except (ValueError, AttributeError):
        return None, None
    if not isinstance(cache, str | None) or not isinstance(entry, str | None):
        return None, None
    return cache, entry
