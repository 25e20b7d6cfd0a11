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
import hashlib
import json
import logging
import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field
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


# The wire form is one line of PostgreSQL's COPY text format: a format tag, the record's
# values in `_FIELDS` order, then the charge. The consumer hands a batch of lines to COPY as
# they came out of Redis, so PostgreSQL parses typed columns and nothing is decoded in Python.
# The tag names the field list (a hash of it); each producer registers its list under the tag
# in Redis, so a consumer can still read events written by a version with other fields (during
# a deploy) by name. Events written as JSON by earlier versions are read too.
_CHARGE_COLUMNS = (
    ("charge_allowance_id", "bigint"),
    ("charge_unit", "text"),
    ("charge_amount", "numeric"),
    ("charge_cost", "numeric"),
    ("charge_cost_center_ids", "bigint[]"),
    ("charge_fiscal_year", "integer"),
    ("charge_key_id", "bigint"),
    ("charge_key_tokens", "bigint"),
)
_NAMES = ",".join(f.attname for f in _FIELDS)
FORMAT = "u1." + hashlib.sha256(_NAMES.encode()).hexdigest()[:12]
_PREFIX = FORMAT.encode() + b"\t"
_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_UNESCAPES = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


def format_names() -> tuple[str, str]:
    """This version's format tag and the field names it stands for."""
    return FORMAT, _NAMES


def _text(value: Any) -> str:
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, str):
        return value.translate(_ESCAPES)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":")).translate(_ESCAPES)
    return str(value)


def event_encode(event: UsageEvent) -> str:
    values = event.values
    c = event.charge
    cells = [FORMAT, *(_text(values.get(f.attname)) for f in _FIELDS)]
    cells += [
        _text(c.allowance_id),
        _text(c.unit),
        _text(c.amount),
        _text(c.cost),
        "{" + ",".join(str(i) for i in c.cost_center_ids) + "}",
        str(c.fiscal_year),
        _text(c.key_id),
        str(c.key_tokens),
    ]
    return "\t".join(cells)


def _cell(text: str) -> str | None:
    if text == "\\N":
        return None
    if "\\" not in text:
        return text
    out, chars = [], iter(text)
    for char in chars:
        out.append(_UNESCAPES.get(next(chars, ""), "") if char == "\\" else char)
    return "".join(out)


def event_decode(raw: str | bytes, names: str | None = None) -> UsageEvent:
    """An event from its wire form. `names`: the field names of the event's format when it is
    not this version's (see `format_names`); fields it lacks take their model default."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    if text.startswith("{"):
        return _event_decode_json(text)
    tag, *cells = text.split("\t")
    if tag != FORMAT and names is None:
        raise ValueError(f"usage event of unknown format {tag!r}")
    fields = (names or _NAMES).split(",")
    record, charge = cells[: len(fields)], cells[len(fields) :]
    by_name = dict(zip(fields, record, strict=True))
    values = {}
    for f in _FIELDS:
        if f.attname in by_name:
            values[f.attname] = f.to_python(_cell(by_name[f.attname]))
        else:
            values[f.attname] = f.get_default()
    a, unit, amount, cost, centers, year, key_id, key_tokens = (_cell(c) for c in charge)
    return UsageEvent(
        values,
        Charge(
            None if a is None else int(a),
            unit or "",
            Decimal(amount or 0),
            Decimal(cost or 0),
            tuple(int(i) for i in (centers or "{}").strip("{}").split(",") if i),
            int(year or 0),
            None if key_id is None else int(key_id),
            int(key_tokens or 0),
        ),
    )


def _event_decode_json(text: str) -> UsageEvent:
    data = json.loads(text)
    values = data["r"]
    values["created_at"] = dt.datetime.fromisoformat(values["created_at"])
    values["cost"] = Decimal(values["cost"])
    a, unit, amount, cost, ccs, fy, key_id, key_tokens = data["c"]
    return UsageEvent(
        values,
        Charge(a, unit, Decimal(amount), Decimal(cost), tuple(ccs), fy, key_id, key_tokens),
    )


# --- applying events to the database -------------------------------------------------------


@dataclass
class Totals:
    """A batch's charges summed per counter row: the ledger changes once per row, not once per
    record (a batch of thousands of calls by a few hundred people is a few hundred updates)."""

    keys: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    allowances: dict[int, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    spends: dict[tuple[int, int], Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    new: int = 0  # records inserted


def usage_events_apply(*, events: list[UsageEvent]) -> int:
    """Insert the events' records and apply the charges of those not already recorded, in one
    transaction. Returns how many records were new. Safe to run twice on the same events."""
    if not events:
        return 0
    if connection.vendor == "postgresql":
        return usage_payloads_apply(payloads=[event_encode(e).encode() for e in events])
    # The same request twice in one batch is one record and one charge.
    unique = list({e.request_id: e for e in reversed(events)}.values())
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        new = _insert_records(cursor, [e.values for e in unique])
        totals = _totals([e.charge for e in unique if e.request_id in new])
        totals.new = len(new)
        _apply_totals(cursor, totals)
    return totals.new


def _insert_records(cursor: Any, rows: list[dict[str, Any]]) -> set[str]:
    """INSERT ... ON CONFLICT (request_id) DO NOTHING RETURNING request_id: the ids returned
    are the records that were new."""
    table = UsageRecord._meta.db_table
    columns = ", ".join(connection.ops.quote_name(f.column) for f in _FIELDS)
    tail = " ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
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


def _totals(charges: list[Charge]) -> Totals:
    totals = Totals()
    for c in charges:
        if c.key_id is not None and c.key_tokens:
            totals.keys[c.key_id] += c.key_tokens
        if c.allowance_id is not None and c.amount:
            totals.allowances[c.allowance_id] += c.amount
        if c.cost:
            for cost_center_id in c.cost_center_ids:
                totals.spends[(c.fiscal_year, cost_center_id)] += c.cost
    return totals


def _apply_totals(cursor: Any, totals: Totals) -> None:
    """Add the totals to the counters (SQLite: the IMMEDIATE transaction holds the database's
    write lock), in the database backend's order: key, allowance, cost centers by id."""
    key_table = VirtualKey._meta.db_table
    for key_id in sorted(totals.keys):
        cursor.execute(
            f"UPDATE {key_table} SET used_tokens = used_tokens + %s WHERE id = %s",
            [totals.keys[key_id], key_id],
        )
    table = Allowance._meta.db_table
    for allowance_id in sorted(totals.allowances):
        row = sql.locked_row(cursor, f"SELECT used FROM {table} WHERE id = %s", [allowance_id])
        if row is None:
            continue  # deleted meanwhile: the record stays, there is nothing to charge
        cursor.execute(
            f"UPDATE {table} SET used = %s WHERE id = %s",
            [sql.db_text(sql.dec(row[0]) + totals.allowances[allowance_id]), allowance_id],
        )
    spend_table = CostCenterSpend._meta.db_table
    for fiscal_year, cost_center_id in sorted(totals.spends, key=lambda k: (k[1], k[0])):
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
            [sql.db_text(sql.dec(row[1]) + totals.spends[(fiscal_year, cost_center_id)]), row[0]],
        )


# PostgreSQL: the events' lines go into the database as they came out of Redis. COPY fills a
# temporary table (typed columns; not WAL-logged), one statement inserts the new records and
# sums the charges of exactly those, and each ledger row changes once.
_STAGE = "tb_usage_stage"


def _stage_create_sql() -> str:
    columns = ", ".join(
        [
            "format text",
            *(f"{connection.ops.quote_name(f.column)} {f.db_type(connection)}" for f in _FIELDS),
            *(f"{name} {kind}" for name, kind in _CHARGE_COLUMNS),
        ]
    )
    return f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} ({columns}) ON COMMIT DELETE ROWS"


def _insert_and_sum_sql() -> str:
    table = UsageRecord._meta.db_table
    columns = ", ".join(connection.ops.quote_name(f.column) for f in _FIELDS)
    # DISTINCT ON: the same request twice in one batch is one record and one charge.
    return f"""
WITH batch AS (
    SELECT DISTINCT ON (request_id) * FROM {_STAGE}
), inserted AS (
    INSERT INTO {table} ({columns}) SELECT {columns} FROM batch
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id
), charged AS (
    SELECT b.* FROM batch b JOIN inserted i ON i.request_id = b.request_id
)
SELECT 'n', 0, 0, count(*)::numeric FROM inserted
UNION ALL
SELECT 'k', charge_key_id, 0, sum(charge_key_tokens) FROM charged
    WHERE charge_key_id IS NOT NULL AND charge_key_tokens <> 0 GROUP BY 2
UNION ALL
SELECT 'a', charge_allowance_id, 0, sum(charge_amount) FROM charged
    WHERE charge_allowance_id IS NOT NULL AND charge_amount <> 0 GROUP BY 2
UNION ALL
SELECT 's', center, charge_fiscal_year, sum(charge_cost)
    FROM charged, unnest(charge_cost_center_ids) AS center
    WHERE charge_cost <> 0 GROUP BY 2, 3
"""


def usage_payloads_apply(*, payloads: list[bytes]) -> int:
    """PostgreSQL: apply events in this version's wire form (`event_encode`) in one
    transaction; returns how many records were new. The insert decides which charges apply."""
    if not payloads:
        return 0
    totals = Totals()
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        raw = cursor.cursor  # the driver's own cursor: COPY, and server-side parameters
        raw.execute(_stage_create_sql())
        # Emptied at commit; emptied here too, since several applications may share one
        # transaction (the database fallback's batching runner).
        raw.execute(f"DELETE FROM {_STAGE}")
        # The batch is sorted and kept in memory once (a few MB for thousands of events);
        # the default work_mem would spill both to temporary files.
        raw.execute("SET LOCAL work_mem = '64MB'")
        with raw.copy(f"COPY {_STAGE} FROM STDIN") as copy:
            copy.write(b"\n".join(payloads))
        raw.execute(_insert_and_sum_sql())
        for kind, ident, year, amount in raw.fetchall():
            if kind == "n":
                totals.new = int(amount)
            elif kind == "k":
                totals.keys[ident] = int(amount)
            elif kind == "a":
                totals.allowances[ident] = amount
            else:
                totals.spends[(year, ident)] = amount
        # The records' deferred foreign-key checks run now rather than at commit, so the ledger
        # rows locked below are held for as short a time as possible.
        raw.execute("SET CONSTRAINTS ALL IMMEDIATE")
        _apply_totals_postgresql(raw, totals)
    return totals.new


def _apply_totals_postgresql(raw: Any, totals: Totals) -> None:
    """Set-based: each table's rows are locked in id order (key, then allowance, then cost
    centers, as the database backend locks them, so the paths never deadlock), then changed by
    one UPDATE. Numeric arithmetic is exact.

    The lock is FOR NO KEY UPDATE (what an UPDATE of these columns takes anyway), not FOR
    UPDATE: the records' foreign-key checks have already taken FOR KEY SHARE on the key rows,
    in this consumer and in any other, and FOR UPDATE would wait on the other consumer's share
    while it waits on ours."""
    if totals.keys:
        ids = sorted(totals.keys)
        key_table = VirtualKey._meta.db_table
        raw.execute(
            f"SELECT id FROM {key_table} WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE", [ids]
        )
        raw.execute(
            f"UPDATE {key_table} k SET used_tokens = k.used_tokens + t.n"
            " FROM unnest(%s::bigint[], %s::bigint[]) AS t(id, n) WHERE k.id = t.id",
            [ids, [totals.keys[i] for i in ids]],
        )
    if totals.allowances:
        ids = sorted(totals.allowances)
        table = Allowance._meta.db_table
        # A deleted allowance matches nothing: its records stay, there is nothing to charge.
        raw.execute(
            f"SELECT id FROM {table} WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE", [ids]
        )
        raw.execute(
            f"UPDATE {table} a SET used = a.used + t.amount"
            " FROM unnest(%s::bigint[], %s::numeric[]) AS t(id, amount) WHERE a.id = t.id",
            [ids, [totals.allowances[i] for i in ids]],
        )
    if totals.spends:
        pairs = sorted(totals.spends, key=lambda k: (k[1], k[0]))
        years = [year for year, _ in pairs]
        centers = [center for _, center in pairs]
        amounts = [totals.spends[pair] for pair in pairs]
        spend_table = CostCenterSpend._meta.db_table
        raw.execute(
            f"INSERT INTO {spend_table} (cost_center_id, fiscal_year, spent, reserved)"
            " SELECT c, y, 0, 0 FROM unnest(%s::bigint[], %s::int[]) AS t(c, y)"
            " ON CONFLICT (cost_center_id, fiscal_year) DO NOTHING",
            [centers, years],
        )
        raw.execute(
            f"SELECT s.id FROM {spend_table} s"
            " JOIN unnest(%s::bigint[], %s::int[]) AS t(c, y)"
            " ON s.cost_center_id = t.c AND s.fiscal_year = t.y"
            " ORDER BY s.id FOR NO KEY UPDATE OF s",
            [centers, years],
        )
        raw.execute(
            f"UPDATE {spend_table} s SET spent = s.spent + t.amount"
            " FROM unnest(%s::bigint[], %s::int[], %s::numeric[]) AS t(c, y, amount)"
            " WHERE s.cost_center_id = t.c AND s.fiscal_year = t.y",
            [centers, years, amounts],
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


def _in_this_format(client: redis.Redis, payloads: list[bytes]) -> list[bytes]:
    """Rewrite events of other versions (JSON, or another field list) into this one's form."""
    if all(p.startswith(_PREFIX) for p in payloads):
        return payloads
    names: dict[bytes, str | None] = {}
    out = []
    for payload in payloads:
        if payload.startswith(_PREFIX):
            out.append(payload)
            continue
        tag = payload.split(b"\t", 1)[0]
        if not payload.startswith(b"{") and tag not in names:
            found = client.hget(quota_redis.FORMATS, tag)
            names[tag] = found.decode() if found is not None else None
        event = event_decode(payload, names.get(tag))
        out.append(event_encode(event).encode())
    return out


def _apply_entries(client: redis.Redis, entries: list[tuple[bytes, dict]]) -> int:
    if not entries:
        return 0
    payloads = _in_this_format(client, [fields[b"e"] for _, fields in entries])
    if connection.vendor == "postgresql":
        new = usage_payloads_apply(payloads=payloads)
    else:
        new = usage_events_apply(events=[event_decode(p) for p in payloads])
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


@dataclass(frozen=True)
class HoldsRepair:
    released: int  # open holds of processes that are gone, given back
    reserved: list[tuple[str, int, int]]  # counters whose `reserved` was off: (name, was, now)


def holds_reconcile(*, client: redis.Redis | None = None) -> HoldsRepair:
    """Give back the holds no live call can close, then set every counter's `reserved` to
    the sum of the open holds on it.

    A hold is provably dead when the process that took it is gone: each proxy process keeps a
    liveness key (`tb:live:<process>`, renewed every 5 s, lapsing after 30 s) and records
    itself in its holds, so a hold whose owner's key lapsed cannot be closed by its owner.
    (Should a process that lost Redis for longer come back, its late settle still charges once
    and gives nothing back twice.) Holds of live processes are left alone however old, since
    a stream may run long; holds without an owner (older versions) wait for the sweep. A hold
    whose caller left during the reserve is given back by the proxy itself."""
    client = client or quota_redis.sync_client()
    released = quota_redis.holds_release_dead()
    names = sorted(_decode(n) for n in client.scan_iter(match="tb:q:*", count=1000))
    fixes = quota_redis.reserved_recompute(names)
    for name, was, now in fixes:
        log.warning("quota reserved drift", extra={"counter": name, "redis": was, "holds": now})
    return HoldsRepair(released, fixes)
