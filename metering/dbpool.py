"""A small fixed pool of threads for the proxy's database work.

Django's ASGI handler gives every request its own thread for thread-sensitive calls, so plain
`sync_to_async` would open one database connection per concurrent call (a hundred calls, a
hundred PostgreSQL connections, each opened and closed). The proxy instead runs its database
work on this pool: a bounded number of threads, each keeping its connection open.
SQLite gets one thread, since it has one writer at a time anyway.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

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
