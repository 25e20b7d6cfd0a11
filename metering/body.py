"""The proxy's request-reading edge: the body, read in memory and never past the limit; its JSON
decoded and checked; and the large requests' parsing, prompt counting and re-encoding kept off
the event loop.

Why off the loop: one process serves every call with one event loop, so a parse or a token
count that holds it for a quarter of a second holds every other call (and `/healthz`) as long.
Bodies over `INLINE_BYTES` are parsed and re-encoded for the upstream, and prompts over
`tokens.INLINE_CHARS` counted, on a small pool of threads (`TB_PARSE_THREADS`); the tokenizer counts long text in pieces and releases the
interpreter between them, so the loop keeps running meanwhile. Small calls, nearly all of them,
stay on the loop, where a thread hop would cost more than the work.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestAborted

from metering import cache, tokens
from metering.providers.base import ParsedRequest, RequestError, RequestParser

log = logging.getLogger("tokenbudget.proxy")


# Below this a body is parsed on the event loop: well under a millisecond of work.
INLINE_BYTES = 64 * 1024


class BodyTooLarge(Exception):
    """The body is (or has been declared) larger than `TB_MAX_BODY_BYTES`."""


class BadContentLength(Exception):
    """The Content-Length header is not a single non-negative integer."""


def declared_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length of ASGI `headers`, None without one; BadContentLength when it is not
    a number (or two headers disagree: a request smuggling attempt)."""
    values = {value.strip() for name, value in headers if name.lower() == b"content-length"}
    if not values:
        return None
    if len(values) > 1 or not all(value.isdigit() for value in values):
        raise BadContentLength
    return int(values.pop())


async def body_read(receive: Callable, *, limit: int) -> bytes:
    """The request body from ASGI `receive`, in memory; BodyTooLarge as soon as more than
    `limit` bytes have arrived (the rest is never read), RequestAborted if the client leaves."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


# --- off the loop -------------------------------------------------------------------------

_executor: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    """The bounded pool for large parses and counts (created on first use)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(
            max_workers=settings.TB_PARSE_THREADS, thread_name_prefix="tb-parse"
        )
    return _executor


async def _off_loop[R](fn: Callable[..., R], *args: Any) -> R:
    return await asyncio.get_running_loop().run_in_executor(executor(), fn, *args)


async def sized_work[R](size: int, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
    """`fn(*args, **kwargs)` for a request body of `size` bytes: on the pool when the body is
    over INLINE_BYTES (encoding megabytes of JSON holds the interpreter for tens of ms), here
    otherwise."""
    if size <= INLINE_BYTES:
        return fn(*args, **kwargs)
    return await _off_loop(functools.partial(fn, *args, **kwargs))


# --- parsing -------------------------------------------------------------------------------


def json_too_deep(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` deep in a decoded JSON value (walked
    with an explicit stack: a deep value must not exhaust the interpreter's)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _shallow_enough(raw: bytes, value: Any, limit: int) -> bool:
    # A body with fewer brackets than the limit cannot nest deeper: no walk needed.
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return True
    return not isinstance(value, (dict, list)) or not json_too_deep(value, limit)


def model_name_valid(name: str) -> bool:
    """Whether `name` could name a route or an `auto:<intent>` alias at all."""
    return cache.name_valid(name, max_length=cache.MODEL_NAME_MAX_LENGTH)


def _parse(protocol: RequestParser, endpoint: str, raw: bytes) -> ParsedRequest:
    limit = settings.TB_MAX_JSON_DEPTH
    try:
        parsed = protocol.parse_request(endpoint, raw)
    except RequestError:
        raise
    except RecursionError:
        raise RequestError(
            f"The request body nests arrays and objects more than {limit} deep."
        ) from None
    except Exception:
        # The parser sees nothing but the client's bytes: whatever it trips on is the client's
        # malformed request, to be answered as such (and looked at: it is logged).
        log.warning("request parse failed", exc_info=True)
        raise RequestError("The request body is malformed.") from None
    if not _shallow_enough(raw, parsed.body, limit):
        raise RequestError(f"The request body nests arrays and objects more than {limit} deep.")
    if not model_name_valid(parsed.model):
        raise RequestError(
            "Invalid 'model': a model name has at most "
            f"{cache.MODEL_NAME_MAX_LENGTH} printable characters.",
            param="model",
        )
    return parsed


async def request_parse(protocol: RequestParser, endpoint: str, raw: bytes) -> ParsedRequest:
    """`protocol.parse_request(endpoint, raw)`, made safe for any bytes: too deep a nesting,
    a name no model can have, or anything the parser trips on is a RequestError, never a
    crash; a body over INLINE_BYTES is parsed on the pool, not on the event loop."""
    return await sized_work(len(raw), _parse, protocol, endpoint, raw)


async def prompt_estimate(parsed: ParsedRequest) -> int:
    """`tokens.estimate_request_tokens(parsed)`, on the pool for a long prompt (and for the
    process's first count, which loads the vocabulary: half a second)."""
    if len(parsed.prompt_text) <= tokens.INLINE_CHARS and tokens.loaded():
        return tokens.estimate_request_tokens(parsed)
    return await _off_loop(tokens.estimate_request_tokens, parsed)
