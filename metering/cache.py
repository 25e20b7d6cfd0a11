"""Per-process caches for the hot path: keys, routes (with their prices).

Entries live at most `TB_KEY_CACHE_SECONDS` (4 s at most), which bounds how long a revoked key
or a changed policy keeps working in any process when nothing else tells it. A change made
through this process's services also drops the entry at once, and with Redis configured every
proxy process listens for invalidation messages (`metering.invalidation`), published by the
services when a change commits (`budgets.invalidation.invalidation_publish`), so the change
reaches every process within a round trip; after a reconnect a process drops everything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings

from metering import invalidation, selectors
from metering.dbpool import in_db_thread

log = logging.getLogger("tokenbudget.invalidation")

V = TypeVar("V")

_caches: dict[str, TTLCache] = {}


class TTLCache[V]:
    """A dict with per-entry expiry; misses (None) are cached too, so a flood of bad keys does
    not become a flood of database queries."""

    def __init__(
        self, loader: Callable[[str], V | None], max_entries: int = 100_000, name: str = ""
    ) -> None:
        self._loader = loader
        self._entries: dict[str, tuple[float, V | None]] = {}
        self._max_entries = max_entries
        self._aload = in_db_thread(loader)
        self._loading: dict[str, asyncio.Future] = {}
        # Bumped by every invalidation: a load that began before one does not store its
        # (possibly stale) answer, and later callers do not join it.
        self._generation = 0
        self.name = name or getattr(loader, "__name__", "cache")
        _caches[self.name] = self

    def ttl(self) -> float:
        return float(settings.TB_KEY_CACHE_SECONDS)

    def peek(self, name: str) -> tuple[bool, V | None]:
        entry = self._entries.get(name)
        if entry is not None and entry[0] > time.monotonic():
            return True, entry[1]
        return False, None

    async def aget(self, name: str) -> V | None:
        listener_ensure()
        hit, value = self.peek(name)
        if hit:
            return value
        # Single flight: when an entry expires under load, one load serves every caller that
        # missed meanwhile, instead of each of them querying the database.
        loading = self._loading.get(name)
        if loading is None:
            loading = asyncio.ensure_future(self._load(name, self._generation))
            self._loading[name] = loading
        return await asyncio.shield(loading)

    async def _load(self, name: str, generation: int) -> V | None:
        try:
            value = await self._aload(name)
            if generation == self._generation:
                self._store(name, value)
            return value
        finally:
            if self._loading.get(name) is asyncio.current_task():
                self._loading.pop(name, None)

    def get(self, name: str) -> V | None:
        hit, value = self.peek(name)
        if hit:
            return value
        generation = self._generation
        value = self._loader(name)
        if generation == self._generation:
            self._store(name, value)
        return value

    def _store(self, name: str, value: V | None) -> None:
        if len(self._entries) >= self._max_entries:
            self._entries.clear()  # rare; a bounded cache beats an unbounded one
        self._entries[name] = (time.monotonic() + self.ttl(), value)

    def invalidate(self, name: str | None = None) -> None:
        self._generation += 1
        if name is None:
            self._entries.clear()
            self._loading.clear()
        else:
            self._entries.pop(name, None)
            self._loading.pop(name, None)


keys: TTLCache[selectors.KeyInfo] = TTLCache(selectors.key_info_load, name="keys")
routes: TTLCache[selectors.RouteInfo] = TTLCache(selectors.route_info_load, name="routes")


def invalidate_all() -> None:
    for cache in list(_caches.values()):
        cache.invalidate()


def invalidate(cache: str | None, entry: str | None) -> None:
    """Drop what an invalidation message names; a cache this process does not know, or no
    cache at all, drops everything (the safe reading of a message from another version)."""
    target = _caches.get(cache) if cache else None
    if target is None:
        invalidate_all()
    else:
        target.invalidate(entry)


# --- the listener ---------------------------------------------------------------------------

_listener: tuple[asyncio.AbstractEventLoop, asyncio.Task] | None = None


def listener_ensure() -> None:
    """Start this event loop's invalidation listener if Redis is configured and it is not
    running (called on the hot path: one comparison when it is)."""
    global _listener
    if not settings.REDIS_URL:
        return
    loop = asyncio.get_running_loop()
    if _listener is not None and _listener[0] is loop and not _listener[1].done():
        return
    task = loop.create_task(
        invalidation.listen(on_message=invalidate, on_subscribed=invalidate_all),
        name="cache-invalidation",
    )
    task.add_done_callback(_listener_done)
    _listener = (loop, task)


def _listener_done(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("cache invalidation listener failed", exc_info=task.exception())
