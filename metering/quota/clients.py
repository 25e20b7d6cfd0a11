"""The Redis clients of the quota and this process's liveness.

- `async_client`: the proxy's client (one per event loop), a blocking pool that retries a
  command once on a fresh connection, and the scripts it runs (reserve and close batched into
  pipelines: `batch`);
- `sync_client`, `consumer_client`: the jobs' and the stream consumer's, without the retry;
- liveness: each proxy process renews `tb:live:<process>` with the list of holds it has in
  hand (`open_holds`), so the sweep can tell a hold nobody can close from a live one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from metering.quota import keys, scripts
from metering.quota.batch import ScriptBatcher

# Errors that mean "Redis is unreachable or unwell", as opposed to a bug in a script.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, OSError)

# Holds whose reserve was sent but never answered (Redis went away meanwhile): Redis may have
# taken them. Not in `open_holds`, so the sweep finds them as orphans; the quota layer also
# gives them back itself as soon as Redis answers again.
uncertain_holds: set[str] = set()

# --- this process's liveness and the holds it has in hand -----------------------------------

LIVE_TTL = 30  # seconds a process counts as alive after its last heartbeat
LIVE_INTERVAL = 5  # seconds between heartbeats

# The Redis holds this process may still close: added before the reserve is sent (so a hold
# Redis took is listed even if its answer is still on the way), dropped once its close ran in
# Redis or the reserve answered without a hold. Each heartbeat writes the list with its time,
# which is how a hold the process never heard of (a lost answer) is told from a live one.
open_holds: set[str] = set()
# Callbacks run after each heartbeat that reached Redis (the quota layer's hand-over).
after_beat: list[Any] = []


def _new_process_id() -> None:
    global _PROCESS
    _PROCESS = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    open_holds.clear()


_PROCESS = ""
_new_process_id()
os.register_at_fork(after_in_child=_new_process_id)  # a forked worker is a new owner


def process_id() -> str:
    """This process, as the owner recorded in its holds (new after a fork)."""
    return _PROCESS


async def beat(client: aioredis.Redis, owner: str) -> None:
    """Renew the liveness key with the list of holds in hand (one script run)."""
    listed: list[int | str] = [int(time.time()), *open_holds]
    await client.eval(
        scripts.BEAT, 2, keys.live_key(owner), keys.open_key(owner), LIVE_TTL, *listed
    )


async def _heartbeat(client: aioredis.Redis, owner: str) -> None:
    """Keep `tb:live:<owner>` alive while this event loop runs. A process whose key lapsed
    (dead, or unable to reach Redis for LIVE_TTL seconds) has its open holds given back by
    `holds_release_dead`; should it come back, its settles still charge exactly once."""
    while True:
        await asyncio.sleep(LIVE_INTERVAL)
        try:
            await beat(client, owner)
        except (redis.RedisError, OSError):
            continue  # reserves fail meanwhile too (say, a failover); the next beat retries
        for callback in after_beat:
            # Redis going away again is no matter here: the next beat tries again.
            with contextlib.suppress(redis.RedisError, OSError):
                await callback()


async def alive() -> str:
    """This process's owner id, its liveness key written before its first hold (call after
    `async_client`, in the same event loop)."""
    state = async_state()
    owner = process_id()
    if state.owner != owner:
        await beat(state.client, owner)
        state.owner = owner
        state.heartbeat = asyncio.ensure_future(_heartbeat(state.client, owner))
    return owner


# --- clients ---------------------------------------------------------------------------------


def _client_options() -> dict[str, Any]:
    # Short timeouts: an unreachable Redis must turn into the down mode quickly, not a hang.
    return {
        "socket_connect_timeout": settings.TB_REDIS_TIMEOUT_MS / 1000,
        "socket_timeout": settings.TB_REDIS_TIMEOUT_MS / 1000,
    }


def _resilient_options() -> dict[str, Any]:
    """A pooled connection can be dead without the pool knowing (Redis restarted since it was
    last used): a command that fails on a connection error is sent once more on a fresh
    connection, and a connection idle for a few seconds is PINGed before use. Only for
    commands that are safe to run twice: every quota script is (a reserve is keyed by its hold,
    a close by the hold's state, the seed writes only missing counters)."""
    return {
        "retry": AsyncRetry(NoBackoff(), 1),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "health_check_interval": HEALTH_CHECK_SECONDS,
    }


HEALTH_CHECK_SECONDS = 2


@dataclass
class _AsyncState:
    loop: asyncio.AbstractEventLoop
    client: aioredis.Redis
    scripts: dict[str, Any]
    formats: set[str] = field(default_factory=set)
    owner: str = ""
    heartbeat: asyncio.Future | None = None


_async_state: _AsyncState | None = None


def async_client() -> tuple[aioredis.Redis, dict[str, Any]]:
    """This event loop's client and scripts (a connection pool belongs to one loop)."""
    global _async_state
    loop = asyncio.get_running_loop()
    if _async_state is None or _async_state.loop is not loop:
        # A blocking pool: a burst beyond its size waits for a free connection instead of
        # failing with "too many connections" (which would read as Redis being down).
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=256,
            timeout=settings.TB_REDIS_TIMEOUT_MS / 1000,
            **_client_options(),
            **_resilient_options(),
        )
        client = aioredis.Redis(connection_pool=pool)
        # Reserve and close run once per call: concurrent calls' runs share pipelines.
        batcher = ScriptBatcher(client)
        registered = {
            "reserve": batcher.wrap(client.register_script(scripts.RESERVE)),
            "close": batcher.wrap(client.register_script(scripts.CLOSE)),
            "seed": client.register_script(scripts.SEED),
            "adopt": client.register_script(scripts.ADOPT),
            "abandon": client.register_script(scripts.ABANDON),
        }
        _async_state = _AsyncState(loop, client, registered)
    return _async_state.client, _async_state.scripts


def async_state() -> _AsyncState:
    """This event loop's client state (`async_client` creates it)."""
    assert _async_state is not None
    return _async_state


_sync_client: redis.Redis | None = None


def sync_client() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        # No retry here: the stream consumer reads through this client, and an XREADGROUP
        # sent twice is not a no-op (the first read's entries would wait for a claim).
        _sync_client = redis.Redis.from_url(settings.REDIS_URL, **_client_options())
    return _sync_client


def consumer_client(block_ms: int) -> redis.Redis:
    """A client for the stream consumer: its reads block up to `block_ms`, so its socket
    timeout must be longer than that (else every idle read would look like Redis being down)."""
    options = _client_options()
    options["socket_timeout"] = block_ms / 1000 + options["socket_timeout"]
    return redis.Redis.from_url(settings.REDIS_URL, **options)
