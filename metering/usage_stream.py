"""Usage events: their wire form, their idempotent application to the database, the stream
consumer, and the reconciliation of the Redis counters against the database.

An event is one closed call: its usage record plus the charges the Redis backend made for it.
`usage_events_apply` inserts the records with ON CONFLICT (request_id) DO NOTHING and applies
the charges of exactly the records it inserted, in the same transaction: the insert decides, so
an event delivered twice (a consumer died before XACK) is charged once. The database stays the
source of truth: `Allowance.used`, `CostCenterSpend.spent` and `VirtualKey.used_tokens` move
only here (or on the database backend's own path).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import time
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db import connection as db_connection

from budgets import sql
from budgets.models import Allowance, CostCenterSpend
from metering import quota_redis
from metering.models import UsageRecord, VirtualKey

log = logging.getLogger("tokenbudget.ingest")

_FIELDS = [f for f in UsageRecord._meta.concrete_fields if not f.primary_key]
_INSERT_CHUNK = 500  # rows per INSERT: far below PostgreSQL's and SQLite's parameter limits


@dataclass(frozen=True)
class Charge:
    """What one call costs each budget (empty amounts for a released call)."""

    allowance_id: int | None
    unit: str
    amount: Decimal  # in the allowance's unit
    cost: Decimal  # USD, charged to every capped cost center held
    cost_center_ids: tuple[int, ...]
    fiscal_year: int
    key_id: int | None  # only for keys with their own cap
    key_tokens: int


@dataclass(frozen=True)
class UsageEvent:
    """One closed call: its usage record's field values (by attribute name) and its charge.
    Plain values, not a model instance: the consumer handles tens of thousands a second."""

    values: dict[str, Any]
    charge: Charge

    @classmethod
    def of(cls, record: UsageRecord, charge: Charge) -> UsageEvent:
        return cls({f.attname: getattr(record, f.attname) for f in _FIELDS}, charge)

    @property
    def request_id(self) -> str:
        return self.values["request_id"]


def event_encode(event: UsageEvent) -> str:
    record = {}
    for name, value in event.values.items():
        if isinstance(value, dt.datetime):
            value = value.isoformat()
        elif isinstance(value, Decimal):
            value = str(value)
        record[name] = value
    c = event.charge
    return json.dumps(
        {
            "r": record,
            "c": [
                c.allowance_id,
                c.unit,
                str(c.amount),
                str(c.cost),
                list(c.cost_center_ids),
                c.fiscal_year,
                c.key_id,
                c.key_tokens,
            ],
        },
        separators=(",", ":"),
    )


def event_decode(raw: str | bytes) -> UsageEvent:
    data = json.loads(raw)
    values = data["r"]
    values["created_at"] = dt.datetime.fromisoformat(values["created_at"])
    values["cost"] = Decimal(values["cost"])
    a, unit, amount, cost, ccs, fy, key_id, key_tokens = data["c"]
    return UsageEvent(
        values,
        Charge(a, unit, Decimal(amount), Decimal(cost), tuple(ccs), fy, key_id, key_tokens),
    )


# --- applying events to the database -------------------------------------------------------


def usage_events_apply(*, events: list[UsageEvent]) -> int:
    """Insert the events' records and apply the charges of those not already recorded, in one
    transaction. Returns how many records were new. Safe to run twice on the same events."""
    if not events:
        return 0
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        new = _insert_records(cursor, [e.values for e in events])
        fresh = [e.charge for e in events if e.request_id in new]
        _apply_charges(cursor, fresh)
    return len(new)


def _insert_records(cursor: Any, rows: list[dict[str, Any]]) -> set[str]:
    """INSERT ... ON CONFLICT (request_id) DO NOTHING RETURNING request_id: the ids returned
    are the records that were new."""
    table = UsageRecord._meta.db_table
    columns = ", ".join(connection.ops.quote_name(f.column) for f in _FIELDS)
    tail = " ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
    if connection.vendor == "postgresql":
        # One array per column: a statement with a couple of dozen parameters whatever the
        # batch size, instead of thousands of placeholders for the driver to parse.
        # The driver's own cursor binds them server-side (Django's quotes them into the text).
        arrays = ", ".join(f"%s::{f.db_type(connection)}[]" for f in _FIELDS)
        with connection.connection.cursor() as raw:
            raw.execute(
                f"INSERT INTO {table} ({columns}) SELECT * FROM unnest({arrays})" + tail,
                [[row.get(f.attname) for row in rows] for f in _FIELDS],
            )
            return {row[0] for row in raw.fetchall()}
    row_marks = "(" + ", ".join(["%s"] * len(_FIELDS)) + ")"
    new: set[str] = set()
    for start in range(0, len(rows), _INSERT_CHUNK):
        chunk = rows[start : start + _INSERT_CHUNK]
        params: list[Any] = []
        for row in chunk:
            params += [f.get_db_prep_save(row.get(f.attname), connection) for f in _FIELDS]
        cursor.execute(
            f"INSERT INTO {table} ({columns}) VALUES " + ", ".join([row_marks] * len(chunk)) + tail,
            params,
        )
        new.update(row[0] for row in cursor.fetchall())
    return new


def _apply_charges(cursor: Any, charges: list[Charge]) -> None:
    """Add the charges to the counters, locking rows in the database backend's order (key,
    allowance, cost centers by id), so the two paths never deadlock."""
    keys: dict[int, int] = defaultdict(int)
    allowances: dict[int, Decimal] = defaultdict(Decimal)
    spends: dict[tuple[int, int], Decimal] = defaultdict(Decimal)
    for c in charges:
        if c.key_id is not None and c.key_tokens:
            keys[c.key_id] += c.key_tokens
        if c.allowance_id is not None and c.amount:
            allowances[c.allowance_id] += c.amount
        if c.cost:
            for cost_center_id in c.cost_center_ids:
                spends[(c.fiscal_year, cost_center_id)] += c.cost
    key_table = VirtualKey._meta.db_table
    for key_id in sorted(keys):
        cursor.execute(
            f"UPDATE {key_table} SET used_tokens = used_tokens + %s WHERE id = %s",
            [keys[key_id], key_id],
        )
    table = Allowance._meta.db_table
    for allowance_id in sorted(allowances):
        row = sql.locked_row(cursor, f"SELECT used FROM {table} WHERE id = %s", [allowance_id])
        if row is None:
            continue  # deleted meanwhile: the record stays, there is nothing to charge
        cursor.execute(
            f"UPDATE {table} SET used = %s WHERE id = %s",
            [sql.db_text(sql.dec(row[0]) + allowances[allowance_id]), allowance_id],
        )
    spend_table = CostCenterSpend._meta.db_table
    for fiscal_year, cost_center_id in sorted(spends, key=lambda k: (k[1], k[0])):
        sql.insert_one(
            cursor,
            CostCenterSpend(cost_center_id=cost_center_id, fiscal_year=fiscal_year),
            conflict=("cost_center_id", "fiscal_year"),
        )
        row = sql.locked_row(
            cursor,
            f"SELECT id, spent FROM {spend_table} WHERE cost_center_id = %s AND fiscal_year = %s",
            [cost_center_id, fiscal_year],
        )
        cursor.execute(
            f"UPDATE {spend_table} SET spent = %s WHERE id = %s",
            [sql.db_text(sql.dec(row[1]) + spends[(fiscal_year, cost_center_id)]), row[0]],
        )


# --- the stream consumer -----------------------------------------------------------------------


def consumer_name() -> str:
    return f"{socket.gethostname()}-{time.time_ns()}"


def group_ensure(client: redis.Redis) -> None:
    """Create the consumer group reading from the stream's start (id 0): nothing appended
    before the first consumer ran is skipped."""
    try:
        client.xgroup_create(quota_redis.STREAM, quota_redis.GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _apply_entries(client: redis.Redis, entries: list[tuple[bytes, dict]]) -> int:
    if not entries:
        return 0
    events = [event_decode(fields[b"e"]) for _, fields in entries]
    new = usage_events_apply(events=events)
    # Acknowledged only once the transaction above has committed: a crash before this line
    # leaves the entries pending, and whoever claims them applies them again harmlessly.
    client.xack(quota_redis.STREAM, quota_redis.GROUP, *[entry_id for entry_id, _ in entries])
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
) -> int:
    """Drain the usage stream into the database; returns how many records were new.

    Each round first claims entries another consumer left pending longer than `claim_idle_ms`
    (it died mid-batch), then reads new entries. With `until_empty` it returns once a read
    finds nothing; otherwise it runs until `stop()` is true."""
    client = client or quota_redis.consumer_client(block_ms)
    consumer = consumer or consumer_name()
    batch = batch or settings.TB_USAGE_BATCH
    claim_idle_ms = settings.TB_USAGE_CLAIM_IDLE_MS if claim_idle_ms is None else claim_idle_ms
    total = 0
    rounds = 0
    grouped = False
    while not (stop and stop()):
        try:
            if not grouped:  # inside the retry: a consumer may start while Redis is down
                group_ensure(client)
                grouped = True
            new, read_any = _drain_round(
                client, consumer, batch, block_ms, claim_idle_ms, until_empty
            )
        except quota_redis.UNAVAILABLE as exc:
            if until_empty:
                raise
            # Redis restarting: the entries are still there (and pending ones stay pending).
            log.warning("usage stream unavailable", extra={"error": type(exc).__name__})
            time.sleep(1.0)
            continue
        except (OperationalError, InterfaceError) as exc:
            if until_empty:
                raise
            # The database went away mid-batch: nothing was acknowledged, so nothing is lost.
            log.warning("database unavailable", extra={"error": type(exc).__name__})
            db_connection.close()
            time.sleep(1.0)
            continue
        total += new
        rounds += 1
        if rounds % 20 == 0 or not read_any:
            stream_trim(client)
        if until_empty and not read_any:
            break
    return total


def _drain_round(
    client: redis.Redis,
    consumer: str,
    batch: int,
    block_ms: int,
    claim_idle_ms: int,
    until_empty: bool,
) -> tuple[int, bool]:
    """One round: claim entries left pending by dead consumers, then read new ones."""
    _, claimed, _ = client.xautoclaim(
        quota_redis.STREAM,
        quota_redis.GROUP,
        consumer,
        min_idle_time=claim_idle_ms,
        start_id="0-0",
        count=batch,
    )
    new = _apply_entries(client, [e for e in claimed if e[1]])
    answer = client.xreadgroup(
        quota_redis.GROUP,
        consumer,
        {quota_redis.STREAM: ">"},
        count=batch,
        block=None if until_empty else block_ms,
    )
    entries = answer[0][1] if answer else []
    new += _apply_entries(client, entries)
    return new, bool(entries or claimed)


def stream_trim(client: redis.Redis) -> None:
    """Trim what every group has acknowledged: everything older than the oldest pending entry
    and not newer than what was delivered. Unacknowledged entries are never trimmed."""
    safe: str | None = None
    for group in client.xinfo_groups(quota_redis.STREAM):
        last = group["last-delivered-id"]
        candidate = last.decode() if isinstance(last, bytes) else str(last)
        if group["pending"]:
            summary = client.xpending(quota_redis.STREAM, group["name"])
            oldest = summary["min"]
            candidate = oldest.decode() if isinstance(oldest, bytes) else str(oldest)
        if safe is None or _id_key(candidate) < _id_key(safe):
            safe = candidate
    if safe and safe != "0-0":
        client.xtrim(quota_redis.STREAM, minid=safe, approximate=False)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class StreamLag:
    pending: int  # delivered, not yet acknowledged
    undelivered: int  # not yet read by the group
    oldest_seconds: float  # age of the oldest entry not yet applied (0 when none)


def stream_lag(client: redis.Redis | None = None) -> StreamLag:
    client = client or quota_redis.sync_client()
    try:
        groups = client.xinfo_groups(quota_redis.STREAM)
    except redis.ResponseError:
        return StreamLag(0, 0, 0.0)  # no stream yet
    if not groups:
        length = client.xlen(quota_redis.STREAM)
        return StreamLag(0, length, 0.0)
    group = groups[0]
    lag = group.get("lag") or 0
    oldest = 0.0
    if group["pending"]:
        first = client.xpending(quota_redis.STREAM, group["name"])["min"]
        oldest = _age(first)
    elif lag:
        first = client.xrange(
            quota_redis.STREAM, min=f"({_decode(group['last-delivered-id'])}", count=1
        )
        if first:
            oldest = _age(first[0][0])
    return StreamLag(int(group["pending"]), int(lag), oldest)


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _age(entry_id: Any) -> float:
    ms = _id_key(_decode(entry_id))[0]
    return max(0.0, time.time() - ms / 1000)


# --- reconciliation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drift:
    counter: str
    redis_used: int
    database_used: int
    repaired: bool


def counter_database_value(name: str) -> int | None:
    """What the counter should hold per the database (used plus the database's own open
    holds, as the seed counts them), in Redis units; None when its row is gone."""
    parts = name.split(":")
    kind = parts[2]
    if kind == "a":
        row = Allowance.objects.filter(pk=int(parts[3])).values("unit", "used", "reserved").first()
        if row is None:
            return None
        return quota_redis.to_units(row["used"] + row["reserved"], row["unit"], up=True)
    if kind == "k":
        key = VirtualKey.objects.filter(pk=int(parts[3])).values("used_tokens", "reserved_tokens")
        row = key.first()
        return None if row is None else row["used_tokens"] + row["reserved_tokens"]
    if kind == "c":
        spend = CostCenterSpend.objects.filter(
            cost_center_id=int(parts[3]), fiscal_year=int(parts[4])
        ).first()
        if spend is None:
            return 0
        return quota_redis.to_units(spend.spent + spend.reserved, "usd", up=True)
    return None


def quotas_reconcile(*, repair: bool = True, client: redis.Redis | None = None) -> list[Drift]:
    """Compare every Redis counter with the database and (with `repair`) set drifted ones to
    the database's value.

    The counters and the stream's newest id are read in one MULTI, then the stream is drained
    up to at least that id, so the database has applied every charge the counters had seen; a
    counter that moved meanwhile is left for the next run (the write is compare-and-set)."""
    client = client or quota_redis.sync_client()
    names = sorted(_decode(n) for n in client.scan_iter(match="tb:q:*", count=1000))
    if not names:
        return []
    pipe = client.pipeline(transaction=True)
    for name in names:
        pipe.hget(name, "used")
    pipe.xrevrange(quota_redis.STREAM, count=1)
    answers = pipe.execute()
    stream_drain(client=client, claim_idle_ms=0)
    drifts: list[Drift] = []
    for name, used in zip(names, answers[:-1], strict=True):
        if used is None:
            continue
        expected = counter_database_value(name)
        if expected is None or int(used) == expected:
            continue
        repaired = repair and quota_redis.counter_set_if_unchanged(name, _decode(used), expected)
        drifts.append(Drift(name, int(used), expected, repaired))
        log.warning(
            "quota counter drift",
            extra={"counter": name, "redis": int(used), "database": expected, "repaired": repaired},
        )
    return drifts
