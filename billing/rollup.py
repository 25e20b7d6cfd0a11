"""The DailyUsage rollup: fold usage records into day x employee x cost center x model x intent.

Every fold is one set-based statement, `INSERT INTO billing_dailyusage ... SELECT ... GROUP BY
... ON CONFLICT (...) DO UPDATE SET x = x + excluded.x`, on PostgreSQL and SQLite alike.

Watermark choice: usage records carry an autoincrement id, and the incremental fold takes the id
range (watermark, safe_id]. `created_at` is the time of the call, not of the commit, so a
created_at watermark would skip records written late (the usage stream drains after retries),
and a fixed safety window only makes that rarer. Ids are better but not enough on PostgreSQL on
their own: a sequence hands out ids at insert time and transactions commit in any order, so id
101 may be visible while id 100 is still uncommitted. The fold therefore only advances to an id
once every transaction that could still hold a smaller id has ended:

* at each run it reads max(id) and the ids of the transactions in flight
  (`pg_current_snapshot()`, less its own and those of other databases on the server);
* with none in flight it may fold up to that max at once; otherwise it remembers
  (max id, in-flight xids) as pending and folds up to the pending id on a later run once
  `pg_xact_status` reports all of those transactions ended.

So under steady load the rollup lags one run behind and never misses a row. (The one gap left
is a transaction caught between taking its id and getting its transaction id, a few
microseconds inside one INSERT, while a later id commits; a rebuild of the day repairs that.)
On SQLite writers are serialised by the database lock and ids are allocated under it, so the
visible max(id) is always safe.

Rows are counted exactly once: the fold and the watermark move in one transaction, under a row
lock on the watermark, so a re-run or two concurrent runs never add a record twice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import BigIntegerField, Count, DecimalField, F, Func, Q, Sum, Value
from django.db.models.functions import Cast, Round, TruncDate

from billing.models import COST_SCALE, TOKEN_KINDS, CostCenterDay, DailyUsage, Watermark
from billing.periods import local_tz
from metering.models import UsageRecord

WATERMARK_NAME = "daily_usage"
KEY_COLUMNS = ("day", "employee_id", "cost_center_id", "model", "intent")
INDEX_ORDER = ("employee_id", "day", "cost_center_id", "model", "intent")  # the unique key
SUM_COLUMNS = ("requests", *TOKEN_KINDS, "cost_units")
# The second fold, per day and cost center, for the dashboards (its unique key, in this order).
CENTER_KEY_COLUMNS = ("day", "cost_center_id")


@dataclass(frozen=True)
class RollupResult:
    from_id: int  # exclusive
    to_id: int  # inclusive
    groups: int  # rows inserted or updated in DailyUsage


def _aggregate_query(condition: Q, keys: tuple[str, ...] = KEY_COLUMNS):
    """The grouped SELECT over usage records matching `condition`, columns in KEY+SUM order."""
    scale = Value(COST_SCALE, output_field=DecimalField(max_digits=30, decimal_places=0))
    cost_units: Func
    if connection.vendor == "postgresql":
        # numeric sums are exact, so scale once per group instead of once per row.
        cost_units = Cast(Sum("cost") * scale, BigIntegerField())
    else:
        # SQLite keeps decimals as doubles: make each record an exact integer before summing.
        cost_units = Sum(Cast(Round(F("cost") * scale), BigIntegerField()))
    sums = {kind: Sum(kind) for kind in TOKEN_KINDS}
    return (
        UsageRecord.objects.filter(condition)
        .annotate(day=TruncDate("created_at", tzinfo=local_tz()))
        .order_by()
        .values(*keys)
        .annotate(requests=Count("id"), **sums, cost_units=cost_units)
        .values_list(*keys, *SUM_COLUMNS)
    )


def _upsert(
    condition: Q,
    model: type[DailyUsage] | type[CostCenterDay] = DailyUsage,
    keys: tuple[str, ...] = KEY_COLUMNS,
    index_order: tuple[str, ...] = INDEX_ORDER,
) -> int:
    """Fold the records matching `condition` into `model` (DailyUsage, or CostCenterDay with
    its own keys) with one INSERT ... SELECT."""
    select_sql, params = _aggregate_query(condition, keys).query.sql_with_params()
    table = model._meta.db_table
    qn = connection.ops.quote_name
    columns = ", ".join(qn(c) for c in (*keys, *SUM_COLUMNS))
    conflict = ", ".join(qn(c) for c in index_order)
    order = ", ".join(qn(c) for c in index_order)
    updates = ", ".join(f"{qn(c)} = {table}.{qn(c)} + excluded.{qn(c)}" for c in SUM_COLUMNS)
    # "WHERE true" keeps SQLite's parser from reading ON CONFLICT as a join constraint.
    sql = (
        f"INSERT INTO {table} ({columns}) SELECT * FROM ({select_sql}) AS agg WHERE true "
        f"ORDER BY {order} ON CONFLICT ({conflict}) DO UPDATE SET {updates}"
    )
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # A large catch-up groups millions of keys: with enough memory PostgreSQL hashes
            # them in one pass instead of sorting them on disk (10M records, 1.9M groups use
            # about 1.8 GB). A cap, local to this transaction; small runs use little of it.
            work_mem = settings.TB_ROLLUP_WORK_MEM
            cursor.execute("SELECT set_config('work_mem', %s, true)", [work_mem])
        cursor.execute(sql, params)
        return max(cursor.rowcount, 0)


def _upsert_centers(condition: Q) -> int:
    """The same records folded per day and cost center (CostCenterDay), in the same
    transaction, so the dashboards' month of spend is a few thousand rows."""
    return _upsert(condition, CostCenterDay, CENTER_KEY_COLUMNS, CENTER_KEY_COLUMNS)


def _lock_watermark() -> Watermark:
    Watermark.objects.get_or_create(name=WATERMARK_NAME)
    return Watermark.objects.select_for_update().get(name=WATERMARK_NAME)


def _postgres_horizon() -> tuple[int, list[int]]:
    """(max visible usage id, ids of other transactions in flight), from one snapshot."""
    table = UsageRecord._meta.db_table
    with connection.cursor() as cursor:
        # Transactions of other databases on the same server cannot write our table, so they
        # are left out when we can place them: by the lock every transaction and every
        # subtransaction (a savepoint, whose xid pg_stat_activity's backend_xid does not show)
        # holds on its own xid. An xid we cannot place is kept, which only delays the fold.
        # Activity statistics are a snapshot taken once per transaction: clear it, or a backend
        # that connected since this transaction first looked would be invisible.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            f"SELECT (SELECT COALESCE(MAX(id), 0) FROM {table}), "
            "ARRAY(SELECT x::text FROM pg_snapshot_xip(pg_current_snapshot()) AS x "
            "WHERE x IS DISTINCT FROM pg_current_xact_id_if_assigned() "
            "AND NOT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'transactionid' AND l.granted AND l.mode = 'ExclusiveLock' "
            "AND a.datname IS DISTINCT FROM current_database() "
            "AND l.transactionid::text::bigint = x::text::bigint % 4294967296))"
        )
        max_id, xids = cursor.fetchone()
    return int(max_id), [int(x) for x in xids]


def _all_ended(xids: list[int]) -> bool:
    if not xids:
        return True
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*) FROM unnest(%s::text[]) AS x "
            "WHERE pg_xact_status(x::xid8) = 'in progress'",
            [[str(x) for x in xids]],
        )
        return cursor.fetchone()[0] == 0


def _safe_upper_id(mark: Watermark) -> int:
    """The largest id up to which every usage record is committed (or never will be)."""
    if connection.vendor != "postgresql":
        latest = UsageRecord.objects.order_by("-id").values_list("id", flat=True).first()
        return latest or 0
    max_id, in_flight = _postgres_horizon()
    safe = mark.position
    if mark.pending_position > safe and _all_ended(mark.pending_xids):
        safe = mark.pending_position
    if not in_flight or _all_ended(in_flight):
        # Every transaction that could hold an id below max_id has ended (usually they are
        # sub-millisecond proxy writes), so the whole visible range is final.
        safe = max(safe, max_id)
    if max_id > safe:
        # Replacing an unmet pending mark is safe: its transactions, still running, are part
        # of `in_flight`, so the new condition is at least as strict.
        mark.pending_position, mark.pending_xids = max_id, in_flight
    else:
        mark.pending_position, mark.pending_xids = 0, []
    return safe


def daily_usage_rollup() -> RollupResult:
    """Fold every committed usage record past the watermark into DailyUsage.

    Idempotent: a second run with no new records changes nothing. Safe to run concurrently
    (runs serialise on the watermark row).
    """
    with transaction.atomic():
        mark = _lock_watermark()
        start = mark.position
        upper = _safe_upper_id(mark)
        groups = 0
        if upper > start:
            groups = _upsert(Q(id__gt=start, id__lte=upper))
            _upsert_centers(Q(id__gt=start, id__lte=upper))
            mark.position = upper
        mark.save(update_fields=["position", "pending_position", "pending_xids", "updated_at"])
    return RollupResult(from_id=start, to_id=max(start, upper), groups=groups)


def daily_usage_rebuild(*, start: dt.date, end: dt.date) -> int:
    """Recompute DailyUsage for local days in [start, end) from the usage records.

    Only records at or below the watermark are counted, so the next incremental run adds the
    rest exactly once. The result equals what the incremental runs produced.
    """
    tz = local_tz()
    lower = dt.datetime.combine(start, dt.time.min, tzinfo=tz)
    upper = dt.datetime.combine(end, dt.time.min, tzinfo=tz)
    with transaction.atomic():
        mark = _lock_watermark()
        DailyUsage.objects.filter(day__gte=start, day__lt=end).delete()
        CostCenterDay.objects.filter(day__gte=start, day__lt=end).delete()
        condition = Q(id__lte=mark.position, created_at__gte=lower, created_at__lt=upper)
        _upsert_centers(condition)
        return _upsert(condition)
