"""Tell every proxy process that facts it caches have changed: one small message on a Redis
pub/sub channel, sent once the change has committed.

The proxy caches keys (with their employee, policy, allowance and cost-center caps) and routes
(with their prices) per process for at most `TB_KEY_CACHE_SECONDS`. With Redis configured each
proxy process listens on `channel(settings.REDIS_URL)` (`metering.invalidation`) and drops what a
message names, so a revoked key or a changed policy takes effect within a round trip instead of
a cache lifetime. Redis pub/sub is not scoped by database, so the channel is named by the
database of `REDIS_URL`: two installations sharing one Redis server on different databases never
drop each other's caches. Without Redis, or while it is unreachable, nothing is sent and the
lifetime still bounds staleness; a listener that reconnects drops everything, since it may have
missed messages.

This module lives in `budgets` (the lowest app) so that budgets' own services can publish
without importing the proxy.
"""

from __future__ import annotations

import json
import logging

import redis
from django.conf import settings
from django.db import transaction
from redis.connection import parse_url

log = logging.getLogger("tokenbudget.invalidation")

CHANNEL = "tb:invalidate"  # followed by ":<database number>" (`channel`)
PUBLISH_TIMEOUT = 0.5  # seconds; an admin change must not hang on an unreachable Redis

_client: redis.Redis | None = None
_client_url = ""


def channel(url: str) -> str:
    """The invalidation channel of the installation whose Redis is `url`: `tb:invalidate:<db>`."""
    return f"{CHANNEL}:{int(parse_url(url).get('db') or 0)}"


def invalidation_publish(*, cache: str | None = None, entry: str | None = None) -> None:
    """After the current transaction commits (at once outside one), tell every proxy process
    to drop `entry` from its cache named `cache` (`keys`: by key hash), or the whole cache, or
    with no `cache` every cache. Never raises: a lost message costs one cache lifetime."""
    if not settings.REDIS_URL:
        return
    message = json.dumps({"cache": cache, "entry": entry}, separators=(",", ":"))
    transaction.on_commit(lambda: _send(message))


def _send(message: str) -> None:
    try:
        _redis().publish(channel(settings.REDIS_URL), message)
    except (redis.RedisError, OSError) as exc:
        log.warning("cache invalidation not published", extra={"error": type(exc).__name__})


def _redis() -> redis.Redis:
    global _client, _client_url
    if _client is None or _client_url != settings.REDIS_URL:
        timeout = min(PUBLISH_TIMEOUT, settings.TB_REDIS_TIMEOUT_MS / 1000)
        _client = redis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        _client_url = settings.REDIS_URL
    return _client
