"""Per-process caches for the hot path: keys, routes (with their prices).

Entries live at most `TB_KEY_CACHE_SECONDS` (4 s at most), which bounds how long a revoked key
or a changed policy keeps working in any process when nothing else tells it. A change made
through this process's services also drops the entry at once, and with Redis configured every
proxy process listens for invalidation messages (`metering.invalidation`), published by the
services when a change commits (`budgets.invalidation.invalidation_publish`), so the change
reaches every process within a round trip; after a reconnect a process drops everything.

Each cache is a bounded LRU: at most `TB_CACHE_MAX_ENTRIES` entries and `TB_CACHE_MAX_BYTES`
(the names' sizes plus a fixed allowance per value), the least recently used going first. A
name that cannot be valid (longer than its column, or with characters no name has: controls,
lone surrogates) is answered as a miss without a query and never stored, so a client sending
megabyte model names costs neither memory nor database work.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings

from metering import invalidation, selectors
from metering.dbpool import in_db_thread

log = logging.getLogger("tokenbudget.invalidation")

V = TypeVar("V")

_caches: dict[str, TTLCache] = {}

# The longest names the columns hold (ModelRoute.public_name, Intent.name); a key's hash is 64.
MODEL_NAME_MAX_LENGTH = 200
INTENT_NAME_MAX_LENGTH = 100
KEY_HASH_LENGTH = 64
# What an entry's value is taken to cost beside its name: a loaded key or route with its
# prices is a few hundred bytes of objects; a miss is the tuple alone.
VALUE_BYTES = 1024
MISS_BYTES = 64


def name_valid(name: str, *, max_length: int) -> bool:
    """Whether `name` could be a stored name: 1 to `max_length` printable characters (no
    controls, no lone surrogates, no line or format characters) without surrounding spaces,
    which the services strip before saving."""
    return 0 < len(name) <= max_length and name.isprintable() and name == name.strip()


class TTLCache[V]:
    """A bounded LRU with per-entry expiry; misses (None) are cached too, so a flood of bad keys
    does not become a flood of database queries. `valid` says which names can exist at all:
    the others are misses that are neither loaded nor stored."""

    def __init__(
        self,
        loader: Callable[[str], V | None],
        max_entries: int | None = None,
        name: str = "",
        *,
        max_bytes: int | None = None,
        valid: Callable[[str], bool] | None = None,
    ) -> None:
        self._loader = loader
        self._entries: OrderedDict[str, tuple[float, V | None, int]] = OrderedDict()
        self._bytes = 0
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._valid = valid
        self._aload = in_db_thread(loader)
        self._loading: dict[str, asyncio.Future] = {}
        # Bumped by every invalidation: a load that began before one does not store its
        # (possibly stale) answer, and later callers do not join it.
        self._generation = 0
        self.name = name or getattr(loader, "__name__", "cache")
        _caches[self.name] = self

    def ttl(self) -> float:
        return float(settings.TB_KEY_CACHE_SECONDS)

    def max_entries(self) -> int:
        return self._max_entries or settings.TB_CACHE_MAX_ENTRIES

    def max_bytes(self) -> int:
        return self._max_bytes or settings.TB_CACHE_MAX_BYTES

    def stats(self) -> tuple[int, int]:
        """(entries, bytes) held now, expired entries included until they are pushed out."""
        return len(self._entries), self._bytes

    def peek(self, name: str) -> tuple[bool, V | None]:
        entry = self._entries.get(name)
        if entry is not None and entry[0] > time.monotonic():
            self._entries.move_to_end(name)
            return True, entry[1]
        return False, None

    def _invalid(self, name: str) -> bool:
        return self._valid is not None and not self._valid(name)

    async def aget(self, name: str) -> V | None:
        listener_ensure()
        if self._invalid(name):
            return None
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
        if self._invalid(name):
            return None
        hit, value = self.peek(name)
        if hit:
            return value
        generation = self._generation
        value = self._loader(name)
        if generation == self._generation:
            self._store(name, value)
        return value

    def _store(self, name: str, value: V | None) -> None:
        self._drop(name)
        size = sys.getsizeof(name) + (MISS_BYTES if value is None else VALUE_BYTES)
        if size > self.max_bytes():
            return
        self._entries[name] = (time.monotonic() + self.ttl(), value, size)
        self._bytes += size
        max_entries, max_bytes = self.max_entries(), self.max_bytes()
        while len(self._entries) > max_entries or self._bytes > max_bytes:
            _, (_, _, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped

    def _drop(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._bytes -= entry[2]

    def invalidate(self, name: str | None = None) -> None:
        self._generation += 1
        if name is None:
            self._entries.clear()
            self._bytes = 0
            self._loading.clear()
        else:
            self._drop(name)
            self._loading.pop(name, None)


def _key_hash_valid(hashed: str) -> bool:
    return len(hashed) == KEY_HASH_LENGTH


def _model_name_valid(name: str) -> bool:
    return name_valid(name, max_length=MODEL_NAME_MAX_LENGTH)


keys: TTLCache[selectors.KeyInfo] = TTLCache(
    selectors.key_info_load, name="keys", valid=_key_hash_valid
)
routes: TTLCache[selectors.RouteInfo] = TTLCache(
    selectors.route_info_load, name="routes", valid=_model_name_valid
)


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
