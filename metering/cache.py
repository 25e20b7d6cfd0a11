"""Per-process caches for the hot path: keys, routes (with their prices).

Entries live at most `TB_KEY_CACHE_SECONDS` (4 s at most), which bounds how long a revoked key
or a changed policy keeps working in any process. A change made through this process's services
also drops the entry at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings

from metering import selectors
from metering.dbpool import in_db_thread

V = TypeVar("V")


class TTLCache[V]:
    """A dict with per-entry expiry; misses (None) are cached too, so a flood of bad keys does
    not become a flood of database queries."""

    def __init__(self, loader: Callable[[str], V | None], max_entries: int = 100_000) -> None:
        self._loader = loader
        self._entries: dict[str, tuple[float, V | None]] = {}
        self._max_entries = max_entries
        self._aload = in_db_thread(loader)
        self._loading: dict[str, asyncio.Future] = {}

    def ttl(self) -> float:
        return float(settings.TB_KEY_CACHE_SECONDS)

    def peek(self, name: str) -> tuple[bool, V | None]:
        entry = self._entries.get(name)
        if entry is not None and entry[0] > time.monotonic():
            return True, entry[1]
        return False, None

    async def aget(self, name: str) -> V | None:
        hit, value = self.peek(name)
        if hit:
            return value
        # Single flight: when an entry expires under load, one load serves every caller that
        # missed meanwhile, instead of each of them querying the database.
        loading = self._loading.get(name)
        if loading is None:
            loading = asyncio.ensure_future(self._load(name))
            self._loading[name] = loading
        return await asyncio.shield(loading)

    async def _load(self, name: str) -> V | None:
        try:
            value = await self._aload(name)
            self._store(name, value)
            return value
        finally:
            self._loading.pop(name, None)

    def get(self, name: str) -> V | None:
        hit, value = self.peek(name)
        if hit:
            return value
        value = self._loader(name)
        self._store(name, value)
        return value

    def _store(self, name: str, value: V | None) -> None:
        if len(self._entries) >= self._max_entries:
            self._entries.clear()  # rare; a bounded cache beats an unbounded one
        self._entries[name] = (time.monotonic() + self.ttl(), value)

    def invalidate(self, name: str | None = None) -> None:
        if name is None:
            self._entries.clear()
        else:
            self._entries.pop(name, None)


keys: TTLCache[selectors.KeyInfo] = TTLCache(selectors.key_info_load)
routes: TTLCache[selectors.RouteInfo] = TTLCache(selectors.route_info_load)


def invalidate_all() -> None:
    keys.invalidate()
    routes.invalidate()
