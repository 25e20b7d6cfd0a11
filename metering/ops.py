"""Operations endpoints: /healthz (liveness), /readyz (database, Redis, usage-stream lag, dead
letters) and /metrics (Prometheus). Served like the proxy, without Django middleware."""

from __future__ import annotations

import json

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse

from metering import metrics
from metering.dbpool import in_db_thread
from metering.quota import clients
from metering.quota.down import redis_health
from metering.usage_stream import dead_letter_counts, stream_lag


def _json(data: dict, status: int = 200) -> HttpResponse:
    body = json.dumps(data).encode()
    response = HttpResponse(body, status=status, content_type="application/json")
    response["Content-Length"] = str(len(body))
    response["cache-control"] = "no-store"
    return response


async def healthz(request: HttpRequest) -> HttpResponse:
    """The process is up and its event loop answers."""
    return _json({"status": "ok"})


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except DatabaseError:
        connection.close()
        return False


def _dead_letters() -> dict[str, int] | None:
    """Dead letters by state (None when the database cannot say); refreshes the gauge."""
    try:
        counts = dead_letter_counts()
    except DatabaseError:
        connection.close()
        return None
    for state, n in counts.items():
        metrics.DEAD_LETTERS.labels(state).set(n)
    return counts


def _redis_state() -> dict:
    """Ping and stream lag, with the sync client (on the database pool's threads, so a slow
    Redis never blocks the event loop)."""
    try:
        clients.sync_client().ping()
        lag = stream_lag()
    except clients.UNAVAILABLE:
        return {"redis": "down"}
    except redis.ResponseError as exc:
        return {"redis": f"error: {exc}"}
    metrics.STREAM_PENDING.set(lag.pending + lag.undelivered)
    metrics.STREAM_AGE.set(lag.oldest_seconds)
    return {
        "redis": "ok",
        "usage_stream": {
            "pending": lag.pending,
            "undelivered": lag.undelivered,
            "oldest_seconds": round(lag.oldest_seconds, 3),
        },
    }


_check_database = in_db_thread(_database_ok)
_check_redis = in_db_thread(_redis_state)
_check_dead_letters = in_db_thread(_dead_letters)


async def readyz(request: HttpRequest) -> HttpResponse:
    """Ready when the database answers, and Redis too unless the down mode lets calls through
    without it (then the answer says `degraded`). A stream lag past TB_READY_MAX_LAG_SECONDS
    makes the process not ready: usage is piling up faster than it is recorded.

    Dead letters are shown (by state) but never make the process not ready: the consumer has
    gone past them and usage flows; they are an operator's task (alert on the
    `tokenbudget_usage_dead_letters` gauge), and one bad event must not take every proxy out of
    the load balancer until someone replays it."""
    state: dict = {"database": "ok" if await _check_database() else "down"}
    ready = state["database"] == "ok"
    if ready:
        letters = await _check_dead_letters()
        if letters is not None:
            state["dead_letters"] = letters
    if settings.REDIS_URL:
        state.update(await _check_redis())
        redis_ok = state["redis"] == "ok"
        metrics.REDIS_DEGRADED.set(0 if redis_ok else 1)
        if not redis_ok:
            state["degraded"] = True
            ready = ready and settings.TB_REDIS_DOWN_MODE != "closed"
        lag = state.get("usage_stream", {}).get("oldest_seconds", 0)
        if lag > settings.TB_READY_MAX_LAG_SECONDS:
            state["usage_stream_lagging"] = True
            ready = False
    elif redis_health.degraded:
        state["degraded"] = True
    state["status"] = "ready" if ready else "not_ready"
    return _json(state, 200 if ready else 503)


async def metrics_view(request: HttpRequest) -> HttpResponse:
    if settings.REDIS_URL:
        await _check_redis()  # refreshes the stream gauges
    await _check_dead_letters()  # and the dead-letter gauge
    body, content_type = metrics.render()
    response = HttpResponse(body, content_type=content_type)
    response["Content-Length"] = str(len(body))
    return response
