"""A small fixed pool of threads for the proxy's database work.

Django's ASGI handler gives every request its own thread for thread-sensitive calls, so plain
`sync_to_async` would open one database connection per concurrent call (a hundred calls, a
hundred PostgreSQL connections, each opened and closed). The proxy instead runs its database
work on this pool: a bounded number of threads, each keeping its connection open.
SQLite gets one thread, since it has one writer at a time anyway.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction

P = ParamSpec("P")
R = TypeVar("R")

_executor: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(
            max_workers=settings.TB_DB_THREADS, thread_name_prefix="tb-db"
        )
    return _executor


def _with_reconnect[**P, R](fn: Callable[P, R]) -> Callable[P, R]:
    """Run `fn`; if the kept-open connection turned out dead (server restart, idle timeout),
    drop it and run `fn` once more. Safe because every proxy database call is one transaction
    that either committed nothing or is idempotent."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (InterfaceError, OperationalError):
            if connection.in_atomic_block or connection.is_usable():
                raise
            connection.close()
            return fn(*args, **kwargs)

    return run


def in_db_thread[**P, R](fn: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """An async version of `fn` that runs on the database pool."""
    wrapped = _with_reconnect(fn)

    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        return await sync_to_async(wrapped, thread_sensitive=False, executor=executor())(
            *args, **kwargs
        )

    return functools.wraps(fn)(call)


class Batcher:
    """Runs the proxy's ledger writes (reserve, settle, release) in shared transactions.

    Calls that arrive while a transaction is running queue up and go together in the next one
    ("natural batching": no timer, so a lone call waits for nothing). Under load this turns
    hundreds of small commits per second into a few larger ones; on SQLite, where every write
    transaction takes the whole database, that is most of the proxy's throughput. Each caller
    still gets its answer only after the transaction holding its write has committed.

    If a batch fails (say, a PostgreSQL deadlock between two batches, or one record the driver
    cannot encode), it is rolled back whole and its calls are retried one by one, so one call's
    failure is never another's.
    """

    def __init__(self, max_batch: int = 256) -> None:
        self.max_batch = max_batch
        self.pending: list[tuple[Callable[..., Any], dict[str, Any], asyncio.Future]] = []
        self.running = 0

    async def submit(self, fn: Callable[..., R], **kwargs: Any) -> R:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((fn, kwargs, future))
        if self.running < settings.TB_DB_THREADS:
            self.running += 1
            task = asyncio.ensure_future(self._drain())
            _drains.add(task)
            task.add_done_callback(_drains.discard)
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
            while self.pending:
                batch = self.pending[: self.max_batch]
                del self.pending[: self.max_batch]
                outcomes = await sync_to_async(
                    _with_reconnect(_run_batch), thread_sensitive=False, executor=executor()
                )([(fn, kwargs) for fn, kwargs, _ in batch])
                for (_, _, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self.running -= 1


_drains: set[asyncio.Task] = set()


def _run_batch(batch: list[tuple[Callable[..., Any], dict[str, Any]]]) -> list[tuple[bool, Any]]:
    if len(batch) > 1:
        try:
            with transaction.atomic():
                return [(True, fn(**kwargs)) for fn, kwargs in batch]
        except Exception:  # a driver's own ValueError too (PostgreSQL refuses NUL in text)
            pass  # rolled back whole: retry each call on its own below
    outcomes: list[tuple[bool, Any]] = []
    for fn, kwargs in batch:
        try:
            outcomes.append((True, fn(**kwargs)))
        except Exception as exc:  # handed to that call's own awaiting request
            outcomes.append((False, exc))
    return outcomes


ledger_writes = Batcher()
