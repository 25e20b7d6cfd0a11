"""The hold sweeps, run from jobs on the sync client: holds past their 30 minutes, holds nobody
can close (their process is gone, or a live process does not have them in hand), and each
counter's `reserved` set to the sum of its open holds."""

from __future__ import annotations

import time
from typing import Any

from metering.quota import scripts
from metering.quota.clients import sync_client
from metering.quota.keys import HOLDS, LIVE_PREFIX, OPEN_PREFIX, TOMBSTONE_TTL


def holds_sweep(*, now: float | None = None, limit: int = 1000) -> int:
    """Give back holds whose calls never closed (the process died). Safe to run any time."""
    client = sync_client()
    script = client.register_script(scripts.SWEEP)
    return int(script(keys=[HOLDS], args=[int(now or time.time()), limit, TOMBSTONE_TTL]))


def holds_release_dead(*, limit: int = 1000) -> int:
    """Give back the open holds nobody can close: those of processes that are gone (their
    liveness key lapsed: see `clients`), however young, and those a live process does not
    have in hand (taken before its last list of open holds and missing from it: a reserve
    whose answer was lost). Safe to run any time. Returns how many."""
    client = sync_client()
    script = client.register_script(scripts.RELEASE_DEAD)
    released = start = 0
    while True:
        seen, count, removed, _ = script(
            keys=[HOLDS], args=[LIVE_PREFIX, start, limit, TOMBSTONE_TTL, OPEN_PREFIX]
        )
        released += int(count)
        if int(seen) < limit:
            return released
        start += int(seen) - int(removed)  # removed holds left the index


def reserved_recompute(names: list[str], *, chunk: int = 1000) -> list[tuple[str, int, int]]:
    """Set the counters' `reserved` to the sum of the open holds on them; returns (counter,
    old, new) for each one that was off. Each chunk of counters is one script run, exact on its
    own (the sums are taken in the same step), so Redis is never blocked for long."""
    client = sync_client()
    script = client.register_script(scripts.RESERVED_RECOMPUTE)
    changed: list[tuple[str, int, int]] = []
    for start in range(0, len(names), chunk):
        answer = script(keys=[HOLDS, *names[start : start + chunk]])
        changed += [
            (_text(answer[i]), int(answer[i + 1]), int(answer[i + 2]))
            for i in range(0, len(answer), 3)
        ]
    return changed


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
