"""The stream consumer: consumer-group reads, application, acknowledgement after commit, claims
of entries a dead consumer left pending, safe trimming, and the stream's lag."""

from __future__ import annotations

import functools
import logging
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.db import connection as db_connection

from metering.quota import clients, keys
from metering.usage_stream.intake import FormatNames, batch_apply

try:
    import psycopg
except ImportError:  # pragma: no cover - SQLite-only installs
    psycopg = None

log = logging.getLogger("tokenbudget.ingest")

# The database is down or went away: the batch is retried whole. (The COPY path runs on the
# driver's own cursor, whose errors Django does not translate.)
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (OperationalError, InterfaceError)
if psycopg is not None:
    DATABASE_UNAVAILABLE += (psycopg.OperationalError, psycopg.InterfaceError)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{time.time_ns()}"


def group_ensure(client: redis.Redis) -> None:
    """Create the consumer group reading from the stream's start (id 0): nothing appended
    before the first consumer ran is skipped."""
    try:
        client.xgroup_create(keys.STREAM, keys.GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _group_gone(exc: redis.ResponseError) -> bool:
    message = str(exc)
    return message.startswith("NOGROUP") or "no longer exists" in message


def format_names_of(client: redis.Redis) -> FormatNames:
    """A lookup of the field names each producer registered for its format tag (cached for
    the batch: a deploy has a handful of formats in flight)."""

    @functools.cache
    def names(tag: bytes) -> str | None:
        found = client.hget(keys.FORMATS, tag)
        return found.decode() if found is not None else None

    return names


def stream_entries_apply(client: redis.Redis, raw: list[tuple[bytes | str, dict]]) -> int:
    """Apply a batch, then acknowledge all of it: entries that could not be written as they
    came have their dead letters in the database by then (see `intake`)."""
    if not raw:
        return 0
    new = batch_apply(raw, format_names=format_names_of(client))
    # Acknowledged only once the transactions above have committed: a crash before this line
    # leaves the entries pending, and whoever claims them applies them again harmlessly.
    client.xack(keys.STREAM, keys.GROUP, *[entry_id for entry_id, _ in raw])
    return new


def stream_drain(
    *,
    client: redis.Redis | None = None,
    consumer: str | None = None,
    batch: int | None = None,
    block_ms: int = 1000,
    claim_idle_ms: int | None = None,
    until_empty: bool = True,
    stop: Any = None,
    linger_ms: int | None = None,
) -> int:
    """Drain the usage stream into the database; returns how many records were new.

    Each read first claims entries another consumer left pending longer than `claim_idle_ms`
    (it died mid-batch), then reads new entries. With `until_empty` it returns once a read
    finds nothing; otherwise it runs until `stop()` is true.

    While a batch is written, the next one is read (and parsed) on a reader thread: the thread
    waits on Redis and this one on PostgreSQL, so the two overlap. A batch read ahead is
    pending in the group like any other until its own commit is acknowledged.

    Running (not `until_empty`), a read that finds fewer entries than a batch waits
    `linger_ms` (`TB_USAGE_LINGER_MS`) and reads once more without blocking: at low load the
    calls of that window share one transaction and one acknowledgement instead of each paying
    for its own, and a record reaches the database at most that much later. Claims of dead
    consumers' entries, which wait `claim_idle_ms` anyway, run at most every
    `claim_idle_ms / 10` (1 s at most) there; a drain `until_empty` claims on every read."""
    client = client or clients.consumer_client(block_ms)
    idle_ms = settings.TB_USAGE_CLAIM_IDLE_MS if claim_idle_ms is None else claim_idle_ms
    read = _Reader(
        client,
        consumer or consumer_name(),
        batch or settings.TB_USAGE_BATCH,
        block_ms,
        idle_ms,
        until_empty,
        0 if until_empty else (settings.TB_USAGE_LINGER_MS if linger_ms is None else linger_ms),
    ).read
    total = 0
    rounds = 0
    grouped = False
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-read") as reader:
        ahead: Future | None = None
        while ahead is not None or not (stop and stop()):
            try:
                if not grouped:  # inside the retry: a consumer may start while Redis is down
                    group_ensure(client)
                    grouped = True
                pending, ahead = ahead, None
                entries = pending.result() if pending is not None else read()
                if entries and not (stop and stop()):
                    ahead = reader.submit(read)
                total += stream_entries_apply(client, entries)
            except clients.UNAVAILABLE as exc:
                if until_empty:
                    raise
                # Redis restarting: the entries are still there (and pending ones stay pending).
                log.warning("usage stream unavailable", extra={"error": type(exc).__name__})
                time.sleep(1.0)
                continue
            except redis.ResponseError as exc:
                if not _group_gone(exc):
                    raise
                # The stream or its group was deleted (a flush, or a Redis restarted without
                # its data): whatever was in it is gone from Redis either way; recreate the
                # group and go on with what is appended from now on.
                log.error("usage stream group missing; recreating it", extra={"error": str(exc)})
                grouped = False
                continue
            except DATABASE_UNAVAILABLE as exc:
                if until_empty:
                    raise
                # The database went away mid-batch: nothing was acknowledged, so nothing is
                # lost (the batch is claimed again once idle).
                log.warning("database unavailable", extra={"error": type(exc).__name__})
                db_connection.close()
                time.sleep(1.0)
                continue
            rounds += 1
            if rounds % 20 == 0 or not entries:
                stream_trim(client)
            if until_empty and not entries and ahead is None:
                break
    return total


class _Reader:
    """Entries left pending by dead consumers, then new ones (delivered to `consumer`).

    Called on one thread at a time (the drain's or its read-ahead's, never both at once)."""

    def __init__(
        self,
        client: redis.Redis,
        consumer: str,
        batch: int,
        block_ms: int,
        claim_idle_ms: int,
        until_empty: bool,
        linger_ms: int,
    ) -> None:
        self.client, self.consumer, self.batch = client, consumer, batch
        self.block_ms, self.claim_idle_ms, self.until_empty = block_ms, claim_idle_ms, until_empty
        self.linger = max(0, linger_ms) / 1000
        self.claim_every = 0.0 if until_empty else min(1.0, claim_idle_ms / 10_000)
        self.claimed_at = float("-inf")

    def read(self) -> list[tuple[bytes, dict]]:
        entries: list[tuple[bytes, dict]] = []
        now = time.monotonic()
        if now - self.claimed_at >= self.claim_every:
            self.claimed_at = now
            _, claimed, _ = self.client.xautoclaim(
                keys.STREAM,
                keys.GROUP,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id="0-0",
                count=self.batch,
            )
            entries = [e for e in claimed if e[1]]
        entries += self._new(
            self.batch - len(entries),
            None if self.until_empty or entries else self.block_ms,
        )
        if entries and self.linger and len(entries) < self.batch:
            time.sleep(self.linger)
            entries += self._new(self.batch - len(entries), None)
        return entries

    def _new(self, count: int, block: int | None) -> list[tuple[bytes, dict]]:
        if count <= 0:
            return []
        answer = self.client.xreadgroup(
            keys.GROUP,
            self.consumer,
            {keys.STREAM: ">"},
            count=count,
            block=block,
        )
        return answer[0][1] if answer else []


def stream_trim(client: redis.Redis) -> None:
    """Trim what every group has acknowledged: everything older than the oldest pending entry
    and not newer than what was delivered. Unacknowledged entries are never trimmed."""
    safe: str | None = None
    for group in client.xinfo_groups(keys.STREAM):
        last = group["last-delivered-id"]
        candidate = last.decode() if isinstance(last, bytes) else str(last)
        if group["pending"]:
            summary = client.xpending(keys.STREAM, group["name"])
            oldest = summary["min"]
            # None when another consumer acknowledged the last pending entries since XINFO.
            if oldest is not None:
                candidate = oldest.decode() if isinstance(oldest, bytes) else str(oldest)
        if safe is None or _id_key(candidate) < _id_key(safe):
            safe = candidate
    if safe and safe != "0-0":
        client.xtrim(keys.STREAM, minid=safe, approximate=False)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class StreamLag:
    pending: int  # delivered, not yet acknowledged
    undelivered: int  # not yet read by the group
    oldest_seconds: float  # age of the oldest entry not yet applied (0 when none)


def stream_lag(client: redis.Redis | None = None) -> StreamLag:
    client = client or clients.sync_client()
    try:
        groups = client.xinfo_groups(keys.STREAM)
    except redis.ResponseError:
        return StreamLag(0, 0, 0.0)  # no stream yet
    if not groups:
        length = client.xlen(keys.STREAM)
        return StreamLag(0, length, 0.0)
    group = groups[0]
    lag = group.get("lag") or 0
    oldest = 0.0
    if group["pending"]:
        first = client.xpending(keys.STREAM, group["name"])["min"]
        oldest = _age(first)
    elif lag:
        first = client.xrange(keys.STREAM, min=f"({_decode(group['last-delivered-id'])}", count=1)
        if first:
            oldest = _age(first[0][0])
    return StreamLag(int(group["pending"]), int(lag), oldest)


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _age(entry_id: Any) -> float:
    ms = _id_key(_decode(entry_id))[0]
    return max(0.0, time.time() - ms / 1000)
