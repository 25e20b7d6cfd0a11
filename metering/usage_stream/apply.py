"""Applying usage events to the database, idempotently: the insert decides which charges apply.

PostgreSQL: a batch of lines goes to COPY as it came out of Redis, one statement inserts the new
records and sums their charges, and each ledger row changes once. SQLite: decoded and inserted
in Python, with the same rules."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import connection, transaction

from budgets import sql
from budgets.models import Allowance, CostCenterSpend
from metering.models import UsageRecord, VirtualKey
from metering.usage_stream.events import _CHARGE_COLUMNS, _FIELDS, Charge, UsageEvent, event_encode

_INSERT_CHUNK = 500  # rows per INSERT: far below PostgreSQL's and SQLite's parameter limits


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
        # One round trip for the set-up (no parameters: one simple query of four statements).
        # The stage is emptied at commit; emptied here too, since several applications may
        # share one transaction (the database fallback's batching runner). The batch is sorted
        # and kept in memory once (a few MB for thousands of events); the default work_mem
        # would spill both to temporary files. The records' deferred foreign-key checks run as
        # the insert ends rather than at commit, so the ledger rows locked below are held for
        # as short a time as possible.
        raw.execute(
            f"{_stage_create_sql()}; DELETE FROM {_STAGE}; SET LOCAL work_mem = '64MB';"
            " SET CONSTRAINTS ALL IMMEDIATE"
        )
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
        _apply_totals_postgresql(raw, totals)
    return totals.new


def _apply_totals_postgresql(raw: Any, totals: Totals) -> None:
    """Set-based: each table's rows are locked in id order (key, then allowance, then cost
    centers, as the database backend locks them, so the paths never deadlock), then changed by
    one UPDATE. Numeric arithmetic is exact.

    The lock is FOR NO KEY UPDATE (what an UPDATE of these columns takes anyway), not FOR
    UPDATE: the records' foreign-key checks have already taken FOR KEY SHARE on the key rows,
    in this consumer and in any other, and FOR UPDATE would wait on the other consumer's share
    while it waits on ours.

    The statements go in one round trip: bound on the client (the way Django's cursor binds
    every query) and sent as one simple query, run in order like separate ones."""
    statements = _totals_statements(totals)
    if not hasattr(raw, "mogrify"):  # server-side binding configured: one at a time
        for query, params in statements:
            raw.execute(query, params)
    elif statements:
        raw.execute("; ".join(raw.mogrify(query, params) for query, params in statements))


def _totals_statements(totals: Totals) -> list[tuple[str, list[Any]]]:
    statements: list[tuple[str, list[Any]]] = []
    add = statements.append
    if totals.keys:
        ids = sorted(totals.keys)
        key_table = VirtualKey._meta.db_table
        add((f"SELECT id FROM {key_table} WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE", [ids]))
        add(
            (
                f"UPDATE {key_table} k SET used_tokens = k.used_tokens + t.n"
                " FROM unnest(%s::bigint[], %s::bigint[]) AS t(id, n) WHERE k.id = t.id",
                [ids, [totals.keys[i] for i in ids]],
            )
        )
    if totals.allowances:
        ids = sorted(totals.allowances)
        table = Allowance._meta.db_table
        # A deleted allowance matches nothing: its records stay, there is nothing to charge.
        add((f"SELECT id FROM {table} WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE", [ids]))
        add(
            (
                f"UPDATE {table} a SET used = a.used + t.amount"
                " FROM unnest(%s::bigint[], %s::numeric[]) AS t(id, amount) WHERE a.id = t.id",
                [ids, [totals.allowances[i] for i in ids]],
            )
        )
    if totals.spends:
        pairs = sorted(totals.spends, key=lambda k: (k[1], k[0]))
        years = [year for year, _ in pairs]
        centers = [center for _, center in pairs]
        amounts = [totals.spends[pair] for pair in pairs]
        spend_table = CostCenterSpend._meta.db_table
        add(
            (
                f"INSERT INTO {spend_table} (cost_center_id, fiscal_year, spent, reserved)"
                " SELECT c, y, 0, 0 FROM unnest(%s::bigint[], %s::int[]) AS t(c, y)"
                " ON CONFLICT (cost_center_id, fiscal_year) DO NOTHING",
                [centers, years],
            )
        )
        add(
            (
                f"SELECT s.id FROM {spend_table} s"
                " JOIN unnest(%s::bigint[], %s::int[]) AS t(c, y)"
                " ON s.cost_center_id = t.c AND s.fiscal_year = t.y"
                " ORDER BY s.id FOR NO KEY UPDATE OF s",
                [centers, years],
            )
        )
        add(
            (
                f"UPDATE {spend_table} s SET spent = s.spent + t.amount"
                " FROM unnest(%s::bigint[], %s::int[], %s::numeric[]) AS t(c, y, amount)"
                " WHERE s.cost_center_id = t.c AND s.fiscal_year = t.y",
                [centers, years, amounts],
            )
        )
    return statements
