"""The relay of one upstream stream to the client; it closes the call's hold however it ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from metering import upstream
from metering.providers.base import StreamMeter
from metering.proxy import call as core
from metering.proxy.hold import HoldOwner, spawn, write

log = logging.getLogger("tokenbudget.proxy")


class Relay:
    """Relays `response` to the client through `meter`; `chunks` is the response body."""

    def __init__(
        self, owner: HoldOwner, response: upstream.UpstreamResponse, meter: StreamMeter
    ) -> None:
        self.owner = owner
        self.response = response
        self.meter = meter
        self.first: float | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        """Relay the upstream stream chunk by chunk.

        When the provider's end-of-stream marker arrives, the call is settled before the bytes
        that carry it are relayed: a client that has seen its stream complete is never left with
        an unrecorded call, even if this process dies the next moment."""
        outcome = "complete"
        meter = self.meter
        try:
            async for chunk in self.response.aiter_raw():
                out = meter.feed(chunk)
                if self.first is None and meter.state.saw_output:
                    self.first = time.perf_counter()
                if meter.state.finished and self.owner.closing is None:
                    await asyncio.shield(self.owner.close(lambda: self._settle("complete")))
                if out:
                    yield out
            tail = meter.close()
            if tail:
                yield tail
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "client_closed"
            raise
        except upstream.UpstreamError:
            outcome = "upstream_broken"
        finally:
            # Settling must survive the cancellation that a client disconnect delivers here.
            task = spawn(self.finish(outcome))
            with contextlib.suppress(asyncio.CancelledError, GeneratorExit, RuntimeError):
                await asyncio.shield(task)

    async def finish(self, outcome: str) -> None:
        """Close the upstream (which cancels its generation), then the hold if still open."""
        await self._close_upstream()
        await self.owner.close(lambda: self._settle(outcome))

    async def abandon(self) -> bool:
        """The owner's fallback when the relay never ran: the same close, from the outside."""
        await self._close_upstream()
        return await self._settle("client_closed")

    async def _close_upstream(self) -> None:
        try:
            await self.response.aclose()
        except Exception:
            log.exception("upstream not closed", extra={"request_id": self.owner.call.request_id})

    async def _settle(self, outcome: str) -> bool:
        call = self.owner.call
        record, charged = core.stream_settlement(
            call, self.meter.state, outcome, self.response.status_code, self.first
        )
        return await write(held=call.held, record=record, charged=charged)
