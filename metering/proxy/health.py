"""This process's view of its deployments' health: breakers, calls in flight, per-minute counts.

The rules are `metering.deployments`' (pure); this module keeps their state, feeds them the
clock and the random draw, counts the per-deployment metrics, and, with Redis configured,
shares the breakers with every other proxy process. Redis is never awaited on the hot path:

- a failure is counted in Redis by a background task (`INCR` of the deployment's failure
  counter, living one window); once the shared count reaches the threshold, that task marks
  the breaker open for everyone (`SET ... PX cool-down`, the value the instant it opened);
- a success that closes a breaker deletes both keys, in the background too;
- at most every `REFRESH_SECONDS` a call starts a background read (`MGET`) of the open marks
  of the deployments it is about to choose from, and the breakers adopt the openings found;
- a call sent to a deployment with its own rpm or tpm adds one request and its tokens to the
  deployment's counter of the minute (`HINCRBY` on `tb:deploy:minute:<key>:<minute>`, living
  two minutes), in the background, and the same refresh reads those counters back, so the
  limits hold for all processes together, to within what was sent during one refresh.

So a deployment another process found failing or spent rests here within a refresh, and Redis
being slow or down changes nothing but that sharing (each process then counts on its own).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Coroutine, Sequence
from typing import Any

import redis.asyncio as aioredis
from django.conf import settings

from metering import metrics
from metering.deployments import Breakers, DeploymentInfo, MinuteLimits, order

log = logging.getLogger("tokenbudget.proxy")

REFRESH_SECONDS = 0.5
FAIL_PREFIX = "tb:breaker:fail:"
OPEN_PREFIX = "tb:breaker:open:"
MINUTE_PREFIX = "tb:deploy:minute:"

_breakers: Breakers | None = None
_minutes = MinuteLimits()
in_flight: dict[str, int] = {}
_refreshed_at = 0.0
_refreshing: asyncio.Task | None = None
_background: set[asyncio.Task] = set()


def breakers() -> Breakers:
    global _breakers
    if _breakers is None:
        _breakers = Breakers(
            failures=settings.TB_BREAKER_FAILURES,
            window=settings.TB_BREAKER_WINDOW_SECONDS,
            cooldown=settings.TB_BREAKER_COOLDOWN_SECONDS,
        )
    return _breakers


def reset() -> None:
    """Forget every breaker and count (settings changed, or a test starts afresh)."""
    global _breakers, _minutes, _refreshed_at
    _breakers, _minutes, _refreshed_at = None, MinuteLimits(), 0.0
    in_flight.clear()


def plan(deployments: Sequence[DeploymentInfo], tokens: int) -> list[DeploymentInfo]:
    """The route's deployments in the order to try them (see `deployments.order`)."""
    if len(deployments) <= 1:
        return list(deployments)
    now = time.time()
    state = breakers()
    if settings.REDIS_URL:
        _refresh_soon(deployments, now)
    return order(
        deployments,
        healthy=lambda d: state.healthy(d.key, now) and _minutes.room(d, tokens, now),
        in_flight=in_flight,
        draw=random.random(),
    )


def started(d: DeploymentInfo, tokens: int) -> None:
    now = time.time()
    in_flight[d.key] = in_flight.get(d.key, 0) + 1
    breakers().started(d.key, now)
    if d.rpm is not None or d.tpm is not None:
        _minutes.count(d, tokens, now)
        if settings.REDIS_URL:
            _spawn(_shared_minute(d.key, int(now // 60), tokens))


def finished(d: DeploymentInfo) -> None:
    breakers().probe_over(d.key)
    left = in_flight.get(d.key, 0) - 1
    if left > 0:
        in_flight[d.key] = left
    else:
        in_flight.pop(d.key, None)


_metric_children: dict[str, tuple] = {}


def _children(key: str) -> tuple:
    """The deployment's "ok" counter and latency histogram (looked up once per deployment)."""
    found = _metric_children.get(key)
    if found is None:
        found = (
            metrics.DEPLOYMENT_REQUESTS.labels(key, "ok"),
            metrics.DEPLOYMENT_LATENCY.labels(key),
        )
        _metric_children[key] = found
    return found


def succeeded(d: DeploymentInfo, seconds: float) -> None:
    ok, latency = _children(d.key)
    ok.inc()
    latency.observe(seconds)
    if breakers().success(d.key):
        metrics.BREAKER_OPEN.labels(d.key).set(0)
        log.info("deployment breaker closed", extra={"deployment": d.key})
        if settings.REDIS_URL:
            _spawn(_shared_close(d.key))


def failed(d: DeploymentInfo, kind: str, seconds: float) -> None:
    metrics.DEPLOYMENT_REQUESTS.labels(d.key, kind).inc()
    _children(d.key)[1].observe(seconds)
    now = time.time()
    if breakers().failure(d.key, now):
        _opened(d.key)
    if settings.REDIS_URL:
        _spawn(_shared_failure(d.key, now))


def _opened(key: str) -> None:
    metrics.BREAKER_OPEN.labels(key).set(1)
    log.warning("deployment breaker open", extra={"deployment": key})


# --- sharing through Redis (background tasks only) -------------------------------------------


def _spawn(coro: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _client() -> aioredis.Redis:
    from metering.quota import clients

    return clients.async_client()[0]


async def _shared_failure(key: str, now: float) -> None:
    state = breakers()
    try:
        client = _client()
        async with client.pipeline(transaction=False) as pipe:
            pipe.incr(FAIL_PREFIX + key)
            pipe.pexpire(FAIL_PREFIX + key, int(state.window * 1000), nx=True)
            count, _ = await pipe.execute()
        if count >= state.threshold:
            await client.set(OPEN_PREFIX + key, repr(now), px=int(state.cooldown * 1000), nx=True)
            await client.delete(FAIL_PREFIX + key)
            if state.state(key, now) == "closed":
                state.opened_elsewhere(key, now)
                _opened(key)
    except Exception as exc:
        log.debug("breaker failure not shared", extra={"error": str(exc)})


async def _shared_close(key: str) -> None:
    try:
        await _client().delete(OPEN_PREFIX + key, FAIL_PREFIX + key)
    except Exception as exc:
        log.debug("breaker close not shared", extra={"error": str(exc)})


def _refresh_soon(deployments: Sequence[DeploymentInfo], now: float) -> None:
    global _refreshed_at, _refreshing
    if now - _refreshed_at < REFRESH_SECONDS or (_refreshing and not _refreshing.done()):
        return
    _refreshed_at = now
    limited = [d.key for d in deployments if d.rpm is not None or d.tpm is not None]
    _refreshing = asyncio.ensure_future(
        _refresh([d.key for d in deployments], limited, int(now // 60))
    )


def _minute_key(key: str, minute: int) -> str:
    return f"{MINUTE_PREFIX}{key}:{minute}"


async def _shared_minute(key: str, minute: int, tokens: int) -> None:
    try:
        async with _client().pipeline(transaction=False) as pipe:
            pipe.hincrby(_minute_key(key, minute), "requests", 1)
            pipe.hincrby(_minute_key(key, minute), "tokens", tokens)
            pipe.expire(_minute_key(key, minute), 120)
            await pipe.execute()
    except Exception as exc:
        log.debug("deployment minute count not shared", extra={"error": str(exc)})


async def _refresh(keys: list[str], limited: list[str], minute: int) -> None:
    try:
        async with _client().pipeline(transaction=False) as pipe:
            pipe.mget([OPEN_PREFIX + key for key in keys])
            for key in limited:
                pipe.hmget(_minute_key(key, minute), "requests", "tokens")
            values, *counts = await pipe.execute()
    except Exception as exc:
        log.debug("breakers not refreshed", extra={"error": str(exc)})
        return
    state = breakers()
    now = time.time()
    for key, (requests, tokens) in zip(limited, counts, strict=True):
        _minutes.seen_elsewhere(key, minute, int(requests or 0), int(tokens or 0), now)
    for key, value in zip(keys, values, strict=True):
        if value is None:
            continue
        try:
            opened_at = float(value)
        except ValueError:
            continue
        was = state.state(key, now)
        state.opened_elsewhere(key, opened_at)
        if was == "closed" and state.state(key, now) != "closed":
            _opened(key)
