"""The down mode: this process's view of whether Redis is reachable.

Redis is unreachable only when a command failed twice, the second time on a fresh connection
(a pooled connection may be dead after a Redis restart: the async client sends the command
again), so a single connection error never sends a call to the database ledger. While Redis is
down, `TB_REDIS_DOWN_MODE` decides (`interface.reserve`): `database` reserves on the database
ledger, `closed` refuses (503), `open` lets calls through unheld. A background PING every 0.1 s
ends the down window, and the hand-over (`handover`) then gives Redis what it missed.
"""

from __future__ import annotations

import asyncio
import logging
import time

from django.conf import settings

from metering.quota import clients
from metering.quota.handover import handover

log = logging.getLogger("tokenbudget.proxy")

RETRY_AFTER_DOWN = 1.0  # seconds to go straight to the down mode after Redis failed
PROBE_SECONDS = 0.1  # while down, how often a background PING checks whether Redis is back


class QuotaUnavailable(Exception):
    """Redis is down and the down mode is `closed`."""


class _Health:
    """This process's view of Redis: `down_until` short-circuits calls for a moment after a
    failure, so an unreachable Redis costs one timeout per second, not one per call."""

    def __init__(self) -> None:
        self.down_until = 0.0
        self.last_error = ""
        self.failures = 0
        self._probe: asyncio.Task | None = None
        self._probe_loop: asyncio.AbstractEventLoop | None = None

    def usable(self) -> bool:
        return bool(settings.REDIS_URL) and time.monotonic() >= self.down_until

    def failed(self, exc: BaseException) -> None:
        self.down_until = time.monotonic() + RETRY_AFTER_DOWN
        self.last_error = type(exc).__name__
        self.failures += 1
        log.warning("redis unavailable", extra={"error": self.last_error})
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._probe is None or self._probe.done() or self._probe_loop is not loop:
            self._probe = loop.create_task(self._wait_for_redis())
            self._probe_loop = loop

    async def _wait_for_redis(self) -> None:
        """End the down window as soon as Redis answers, rather than a second later: a process
        left on the database ledger while the others are back on Redis would admit unawares."""
        while self.degraded:
            await asyncio.sleep(PROBE_SECONDS)
            try:
                client, _ = clients.async_client()
                await client.ping()
            except clients.UNAVAILABLE:
                continue
            self.down_until = 0.0
            try:
                await handover.sync()
            except clients.UNAVAILABLE as exc:
                self.failed(exc)
            return

    @property
    def degraded(self) -> bool:
        return bool(settings.REDIS_URL) and time.monotonic() < self.down_until


redis_health = _Health()


async def _after_beat() -> None:
    redis_health.down_until = 0.0  # the heartbeat reached Redis
    await handover.sync()


clients.after_beat.append(_after_beat)
