"""Reconciliation of the Redis counters: `used` against the database, `reserved` against the
open holds (after giving back the holds of processes that are gone)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from metering.quota import keys, scripts
from metering.quota.clients import sync_client
from metering.quota.seed import counter_database_value
from metering.quota.sweep import holds_release_dead, reserved_recompute
from metering.usage_stream.consumer import _decode, stream_drain
from metering.usage_stream.dead_letters import dead_letters_waiting_units

log = logging.getLogger("tokenbudget.ingest")


@dataclass(frozen=True)
class Drift:
    counter: str
    redis_used: int
    database_used: int
    repaired: bool


def quotas_reconcile(*, repair: bool = True, client: redis.Redis | None = None) -> list[Drift]:
    """Compare every Redis counter with the database and (with `repair`) set drifted ones to
    the database's value, counting the charges of dead letters not yet applied (which the
    counters have and the database gets on replay).

    The counters and the stream's newest id are read in one MULTI, then the stream is drained
    up to at least that id, so the database has applied every charge the counters had seen; a
    counter that moved meanwhile is left for the next run (the write is compare-and-set)."""
    client = client or sync_client()
    names = sorted(_decode(n) for n in client.scan_iter(match=keys.COUNTER_PATTERN, count=1000))
    if not names:
        return []
    pipe = client.pipeline(transaction=True)
    for name in names:
        pipe.hget(name, "used")
    pipe.xrevrange(keys.STREAM, count=1)
    answers = pipe.execute()
    stream_drain(client=client, claim_idle_ms=0)
    # Charges of dead letters not yet applied: in the counters, not yet in the database.
    waiting = dead_letters_waiting_units()
    drifts: list[Drift] = []
    for name, used in zip(names, answers[:-1], strict=True):
        if used is None:
            continue
        expected = counter_database_value(name)
        if expected is not None:
            expected += waiting.get(name, 0)
        if expected is None or int(used) == expected:
            continue
        repaired = repair and counter_set_if_unchanged(name, _decode(used), expected)
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
    client = client or sync_client()
    released = holds_release_dead()
    names = sorted(_decode(n) for n in client.scan_iter(match=keys.COUNTER_PATTERN, count=1000))
    fixes = reserved_recompute(names)
    for name, was, now in fixes:
        log.warning("quota reserved drift", extra={"counter": name, "redis": was, "holds": now})
    return HoldsRepair(released, fixes)


def counter_set_if_unchanged(name: str, read: str, value: int) -> bool:
    """Set the counter's `used` to `value` if it still reads `read` (compare-and-set)."""
    script = sync_client().register_script(scripts.RECONCILE)
    return bool(script(keys=[name], args=[read, value]))
