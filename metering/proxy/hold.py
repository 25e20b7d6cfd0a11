"""A call's hold, taken and closed cancel-safely: the one reserve and the one `HoldOwner`.

Whatever a call goes through once its hold is taken (an answer, a provider error, a client that
leaves, a cancellation, an exception anywhere), exactly one close of the hold is started, and it
runs to its end as its own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from django.conf import settings

from budgets import ledger
from metering import metrics, validation
from metering.models import UsageRecord
from metering.proxy import errors
from metering.proxy.call import Call
from metering.quota import interface as quotas
from metering.quota import redis_backend as quota_redis
from metering.services import CallHold

log = logging.getLogger("tokenbudget.proxy")

Reserved = quotas.AnyHold | ledger.Refusal | quota_redis.RateLimited
_HOLD_TYPES = (CallHold, quota_redis.RedisHold, quotas.UnheldCall)
_background: set[asyncio.Task] = set()  # strong references for tasks that outlive a request
POLL_SECONDS = 0.05


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


class _HoldSignal:
    """Wakes calls waiting for budget when a call in this process settles or releases its hold
    (calls held by other processes are noticed by polling)."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self, timeout: float) -> None:
        if self._event is None:
            self._event = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)


holds_closed = _HoldSignal()


async def reserve_or_wait(
    info: Any, estimate: ledger.CallEstimate, *, min_output_tokens: int, wait: bool = True
) -> Reserved:
    """Reserve; when only other calls' open holds stand in the way, wait for them to settle
    rather than refuse. Holds are worst cases and usually settle for less, so refusing at once
    would turn away calls the allowance can pay for. QuotaUnavailable is a 503."""
    deadline = time.monotonic() + (settings.TB_HOLD_WAIT_SECONDS if wait else 0)
    while True:
        try:
            result = await quotas.reserve(
                info=info, estimate=estimate, min_output_tokens=min_output_tokens
            )
        except quotas.QuotaUnavailable:
            raise errors.quota_unavailable() from None
        if not isinstance(result, ledger.Refusal) or not result.waitable:
            return result
        left = deadline - time.monotonic()
        if left <= 0:
            return result
        await holds_closed.wait(min(POLL_SECONDS, left))


async def write(*, held: quotas.AnyHold, record: UsageRecord, charged: bool) -> bool:
    """Close the hold (settle when `charged`, else release) and write the call's record.

    A record that cannot be written (a driver refusing its text, a value too long) is written
    again with its text made safe: the call is charged and recorded, never dropped. Only a
    second failure (the database itself down) is left to the hold's expiry, and logged."""
    if charged:
        metrics.call_recorded(
            input_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
            cached=record.cached_input_tokens,
            cache_write=record.cache_write_tokens,
            reasoning=record.reasoning_tokens,
            cost=record.cost,
        )
    close = quotas.settle if charged else quotas.release
    try:
        try:
            return await close(held=held, record=record)
        except Exception:
            log.exception(
                "usage record not written; writing it with safe text",
                extra={"request_id": record.request_id},
            )
            return await close(held=held, record=validation.record_sanitised(record))
    except Exception:
        log.exception("call not recorded", extra={"request_id": record.request_id})
        return False
    finally:
        holds_closed.notify()


class HoldOwner:
    """The one owner of a call's hold.

    - The first `close` wins; later ones are no-ops, so every path may ask without checking.
    - A close runs as its own task: the request's cancellation cannot stop it half way.
    - When the request's task ends with the hold still open (say, the client left before the
      server began to send a stream), `fallback` closes it: a release, or for a stream handed
      to the relay, the relay's own settle.
    """

    def __init__(self, call: Call) -> None:
        self.call = call
        self.closing: asyncio.Task | None = None
        self.fallback: Callable[[], Coroutine[Any, Any, object]] | None = None
        # Run once the close has finished (the serving deployment's call is no longer in flight).
        self.on_closed: Callable[[], None] | None = None

    async def reserve(self, *, min_output_tokens: int, wait: bool = True) -> Reserved:
        """Reserve the call's estimate and adopt the hold with no await in between, so no hold
        exists without an owner."""
        result = await reserve_or_wait(
            self.call.info, self.call.estimate, min_output_tokens=min_output_tokens, wait=wait
        )
        self.adopt(result)
        return result

    def adopt(self, result: object) -> None:
        """Take charge of `result` when it is a hold (refusals hold nothing)."""
        if not isinstance(result, _HOLD_TYPES) or result is self.call.held:
            return
        assert self.call.held is None, "a call holds once"
        self.call.held = result
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(self._request_done)

    @property
    def held(self) -> bool:
        return self.call.held is not None

    def close(self, closer: Callable[[], Coroutine[Any, Any, object]]) -> asyncio.Task:
        if self.closing is None:
            self.closing = spawn(closer())
            self.closing.add_done_callback(self._closed)
        return self.closing

    def _closed(self, task: asyncio.Future) -> None:
        done, self.on_closed = self.on_closed, None
        if done is not None:
            done()

    def settle(self, record: UsageRecord) -> asyncio.Task:
        return self.close(lambda: write(held=self.call.held, record=record, charged=True))

    def release(self, *, status: int, error: str) -> asyncio.Task:
        record = self.call.release_record(status=status, error=error)
        return self.close(lambda: write(held=self.call.held, record=record, charged=False))

    def _request_done(self, task: asyncio.Future) -> None:
        if self.closing is not None:
            return
        log.warning(
            "hold closed after its request ended", extra={"request_id": self.call.request_id}
        )
        if self.fallback is not None:
            self.close(self.fallback)
        else:
            self.release(status=499, error="client_closed")
