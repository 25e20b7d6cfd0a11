"""A lean ASGI entry for the proxy's /v1/ paths.

/v1/ requests go straight from the ASGI scope into `metering.proxy.shell`: no Django request or
response objects, no middleware (sessions, CSRF, auth, messages: each a hop to a worker thread
and back under ASGI), no request signals. None of that serves an API keyed by bearer tokens.
The few other paths of the proxy's URLconf (/healthz, /readyz, /metrics) are built into Django
requests and handed to their views directly; everything else goes through Django's ordinary
handler.

The body is read here, and only after the headers pass: a metered call's key is checked first
(401 without reading a byte of the body), a Content-Length over `TB_MAX_BODY_BYTES` is refused
at once, and a body without one (chunked) is read into memory only up to the limit (413 as it
passes it; nothing is ever spooled to disk). Those refusals close the connection, since the
rest of the body is never read. Refusals and failures answer in the endpoint's provider shape.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponse

from metering import metrics, tokens
from metering.body import BadContentLength, BodyTooLarge, body_read, declared_length
from metering.providers import gemini
from metering.proxy import budget, counting, errors, listing, shell, surface
from metering.proxy.errors import ProxyError

log = logging.getLogger("tokenbudget.proxy")

View = Callable[[HttpRequest], Awaitable[HttpResponse]]
PREFIX = "/v1/"


class _Processed(Exception):
    pass


class _Refused(Exception):
    def __init__(self, error: ProxyError) -> None:
        self.error = error


def scope_headers(scope: dict[str, Any]) -> dict[str, str]:
    """The request's headers by lower-case name (repeated ones joined with commas, as Django
    does)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


def _query(scope: dict[str, Any]) -> dict[str, str]:
    """The query string's parameters (blank ones kept: `?key=` is a key, if an empty one)."""
    return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))


async def send_reply(reply: shell.Reply, send: Callable) -> None:
    """Send `reply` on ASGI `send`; a stream chunk by chunk, closed however the send ends."""
    await send(
        {
            "type": "http.response.start",
            "status": reply.status,
            "headers": [(n.encode("latin-1"), v.encode("latin-1")) for n, v in reply.headers],
        }
    )
    stream = reply.stream
    if stream is None:
        await send({"type": "http.response.body", "body": reply.body})
        return
    try:
        async for chunk in stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    await send({"type": "http.response.body", "body": b""})


class ProxyApplication:
    """Routes /v1/ to the proxy shell and the ops paths to their views, without middleware;
    the rest to `django_app`."""

    def __init__(self, django_app: ASGIHandler) -> None:
        from metering.proxy_urls import views_by_path

        self.django_app = django_app
        self.views: dict[str, View] = {
            p: v
            for p, v in views_by_path().items()
            if not p.startswith((PREFIX, surface.GEMINI_PREFIX))
        }
        self.handler = ASGIHandler()  # its request parsing and response sending, not its chain
        # The vocabulary takes half a second to load, the interpreter held for much of it: load
        # it before serving rather than under the first call (and every call waiting behind it).
        tokens.encoding()

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            path = scope.get("path", "")
            if path.startswith(PREFIX) and not self._gemini_on_v1(scope, path):
                # The whole /v1/ surface answers in the providers' shapes, unknown paths too.
                await self._proxy(scope, receive, send, shell.ENDPOINT_PATHS.get(path))
                return
            if path.startswith(surface.GEMINI_PREFIX) or path.startswith(PREFIX):
                await self._gemini(scope, receive, send, path)
                return
            view = self.views.get(path)
            if view is not None:
                await self._view(view, scope, receive, send)
                return
        await self.django_app(scope, receive, send)

    @staticmethod
    def _gemini_on_v1(scope: dict[str, Any], path: str) -> bool:
        """A /v1/ path of the Gemini surface (google-genai's default API version): a model's
        method, or the models list read by one of Google's clients."""
        if surface.gemini_call_of(path) or surface.gemini_count_of(path):
            return True
        if surface.model_id_of(path) is None:
            return False
        query = _query(scope)
        return surface.looks_gemini(scope_headers(scope), query)

    async def _gemini(
        self, scope: dict[str, Any], receive: Callable, send: Callable, path: str
    ) -> None:
        """The Gemini API surface: generateContent and streamGenerateContent (alt=sse),
        countTokens, and the models list and model reads; the key in `x-goog-api-key` or
        `?key=`; every answer and refusal in Google's shape."""
        method = scope.get("method", "GET")
        query = _query(scope)
        headers = scope_headers(scope)
        if "key" in query and "x-goog-api-key" not in headers:
            headers["x-goog-api-key"] = query["key"]
        target = surface.gemini_call_of(path)
        if target is not None:
            model, stream = target
            refusal = surface.gemini_stream_format(query) if stream else None
            if refusal is not None:
                await self._refuse(refusal, gemini.ENDPOINT, send)
                return
            await self._proxy(
                scope, receive, send, gemini.ENDPOINT, headers=headers, model=model, stream=stream
            )
            return
        counted = surface.gemini_count_of(path)
        if counted is not None:
            await self._proxy(
                scope, receive, send, counting.GEMINI_ENDPOINT, headers=headers, model=counted
            )
            return
        prefix = surface.GEMINI_MODELS_PATH if path.startswith(surface.GEMINI_PREFIX) else None
        name = surface.gemini_model_of(path, prefix or surface.MODELS_PATH)
        if name is None:
            await self._refuse(surface.not_found(method, path), gemini.ENDPOINT, send)
            return

        async def read(inbound: shell.Inbound) -> shell.Reply:
            return await listing.gemini_models(inbound, name, query)

        # Refusals before the read (size, an internal error) in Google's shape too.
        await self._proxy(scope, receive, send, gemini.ENDPOINT, headers=headers, view=read)

    async def _proxy(
        self,
        scope: dict[str, Any],
        receive: Callable,
        send: Callable,
        endpoint: str | None,
        *,
        headers: dict[str, str] | None = None,
        model: str = "",
        stream: bool = False,
        view: Callable[[shell.Inbound], Awaitable[shell.Reply]] | None = None,
    ) -> None:
        headers = scope_headers(scope) if headers is None else headers
        method = scope.get("method", "GET")
        try:
            key_info = await self._admit(scope, headers, method, endpoint)
            body = await body_read(receive, limit=settings.TB_MAX_BODY_BYTES)
        except _Refused as refused:
            await self._refuse(refused.error, endpoint, send)
            return
        except BodyTooLarge:
            await self._refuse(errors.too_large(settings.TB_MAX_BODY_BYTES), endpoint, send)
            return
        except RequestAborted:
            return
        inbound = shell.Inbound(method, headers, body, key_info, model=model, stream=stream)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._disconnect(receive))
                reply = await self._run(inbound, endpoint, scope.get("path", ""), view)
                await send_reply(reply, send)
                raise _Processed
        except* (_Processed, RequestAborted):
            pass

    async def _admit(
        self, scope: dict[str, Any], headers: dict[str, str], method: str, endpoint: str | None
    ) -> Any:
        """The checks the headers alone decide, made before any of the body is read; the
        metered endpoints' key (None for the other /v1/ paths: /v1/models checks its own)."""
        try:
            declared = declared_length(scope.get("headers", []))
        except BadContentLength:
            raise _Refused(errors.bad_content_length()) from None
        if declared is not None and declared > settings.TB_MAX_BODY_BYTES:
            raise _Refused(errors.too_large(settings.TB_MAX_BODY_BYTES))
        if endpoint is None or method != "POST":
            return None
        try:
            return await shell.authenticate(headers)
        except ProxyError as error:
            raise _Refused(error) from None

    async def _refuse(self, error: ProxyError, endpoint: str | None, send: Callable) -> None:
        reply = shell.error_reply(endpoint, error, shell.request_id_new())
        # The body is left unread: the connection cannot carry another request.
        reply.headers.append(("connection", "close"))
        if endpoint is not None:
            metrics.REQUESTS.labels(endpoint, str(reply.status)).inc()
        await send_reply(reply, send)

    async def _run(
        self,
        inbound: shell.Inbound,
        endpoint: str | None,
        path: str,
        view: Callable[[shell.Inbound], Awaitable[shell.Reply]] | None = None,
    ) -> shell.Reply:
        try:
            if view is not None:
                return await view(inbound)
            if endpoint is not None:
                return await shell.handle(inbound, endpoint)
            if path == budget.PATH:
                return await listing.budget_view(inbound)
            model_id = surface.model_id_of(path)
            if model_id is not None:
                return await listing.models(inbound, model_id)
            return listing.unknown_path(inbound, path)
        except BaseException as exc:
            # A Rust extension's panic is a BaseException; any other one (cancellation,
            # exit) is not this handler's to swallow.
            if not isinstance(exc, Exception) and not tokens.is_tokenizer_panic(exc):
                raise
            log.exception("proxy call failed", extra={"endpoint": endpoint})
            return shell.error_reply(endpoint, errors.internal(), shell.request_id_new())

    async def _view(
        self, view: View, scope: dict[str, Any], receive: Callable, send: Callable
    ) -> None:
        """An ops view (health, metrics) on a Django request, without the middleware chain."""
        try:
            body = await body_read(receive, limit=settings.TB_MAX_BODY_BYTES)
        except (BodyTooLarge, RequestAborted):
            return
        request, error = self.handler.create_request(scope, io.BytesIO(body))
        if request is None:
            response = error
        else:
            try:
                response = await view(request)
            except Exception:
                log.exception("proxy view failed", extra={"path": request.path})
                response = HttpResponse(status=500)
        await self.handler.send_response(response, send)

    async def _disconnect(self, receive: Callable) -> None:
        """A client that goes away cancels the response (and so the upstream call)."""
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted
