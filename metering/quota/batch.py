"""Automatic pipelining of the proxy's Lua scripts.

Under load many calls reach their reserve or settle step in the same turn of the event loop.
Sent one by one, each script run costs a write and a read on its own connection; most of the
proxy's time in Redis is those system calls, not the scripts. `ScriptBatcher` collects the
script runs requested during one loop turn and sends them as one pipeline (one write, one read,
no MULTI: each script is atomic on its own and they touch unrelated calls), then hands each
caller its own answer or its own error. A lone call goes straight to Redis, so an idle proxy
pays no extra cost.

The scripts are called by hash (EVALSHA). A Redis that lost its script cache (a restart, a
`SCRIPT FLUSH`) answers NOSCRIPT; those runs are retried one by one through redis-py's `Script`,
which loads the script and runs it again.

A pipeline that fails on a connection error is sent again, whole, on a fresh connection by the
client's retry (`clients`): safe because every script in it is (a reserve keyed by its
hold answers its first answer again, a close of a closed hold changes nothing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

MAX_BATCH = 512  # script runs per pipeline; a bigger backlog goes out in several


class BatchedScript:
    """Stands in for a registered `AsyncScript`: `await script(keys=..., args=...)`."""

    def __init__(self, script: AsyncScript, batcher: ScriptBatcher) -> None:
        self.script = script
        self.sha = script.sha
        self._batcher = batcher

    async def __call__(
        self, keys: Sequence[Any] = (), args: Sequence[Any] = (), client: Any = None
    ) -> Any:
        return await self._batcher.run(self.script, keys, args)


class ScriptBatcher:
    """Gathers script runs made during one event-loop turn into one pipeline."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._queue: list[tuple[AsyncScript, Sequence[Any], Sequence[Any], asyncio.Future]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task] = set()
        self.pipelines = 0  # statistics, for tests and benchmarks
        self.runs = 0

    def wrap(self, script: AsyncScript) -> BatchedScript:
        return BatchedScript(script, self)

    async def run(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._queue.append((script, keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            # Runs after every callback already ready in this turn, so the calls woken by the
            # same burst of I/O join one pipeline.
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        for start in range(0, len(queue), MAX_BATCH):
            batch = queue[start : start + MAX_BATCH]
            task = asyncio.ensure_future(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(
        self, batch: list[tuple[AsyncScript, Sequence[Any], Sequence[Any], asyncio.Future]]
    ) -> None:
        self.pipelines += 1
        self.runs += len(batch)
        if len(batch) == 1:
            script, keys, args, future = batch[0]
            try:
                result = await script(keys=keys, args=args, client=self._client)
            except Exception as exc:  # handed to the caller
                _fail(future, exc)
            else:
                _answer(future, result)
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for script, keys, args, _ in batch:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection failed: every caller sees it
            for *_, future in batch:
                _fail(future, exc)
            return
        for (script, keys, args, future), result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError):
                try:
                    result = await script(keys=keys, args=args, client=self._client)
                except Exception as exc:
                    _fail(future, exc)
                    continue
            if isinstance(result, Exception):
                _fail(future, result)
            else:
                _answer(future, result)


def _answer(future: asyncio.Future, result: Any) -> None:
    if not future.done():  # a caller that left (cancelled) has nobody to answer
        future.set_result(result)


def _fail(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
