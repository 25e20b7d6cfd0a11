"""A lean ASGI entry for the proxy's /v1/ paths.

The proxy views are plain async Django views, but Django's full handler would run every
middleware (sessions, CSRF, auth, messages: each a hop to a worker thread and back under ASGI)
and the request signals (another two hops) on every metered call. None of that serves an API
keyed by bearer tokens, so /v1/ requests are built into Django request objects and handed to
the views directly; everything else goes through Django's ordinary handler.

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
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponse

from metering import metrics, tokens, views
from metering.body import BadContentLength, BodyTooLarge, body_read, declared_length
from metering.providers import ENDPOINT_PATHS, protocol_for
from metering.selectors import KeyInfo

log = logging.getLogger("tokenbudget.proxy")

View = Callable[[HttpRequest], Awaitable[HttpResponse]]
PREFIX = "/v1/"


class _Processed(Exception):
    pass


class _Refused(Exception):
    def __init__(self, response: HttpResponse) -> None:
        self.response = response


class ProxyApplication:
    """Routes /v1/ to the proxy views without middleware; the rest to `django_app`."""

    def __init__(self, django_app: ASGIHandler) -> None:
        from metering.proxy_urls import views_by_path

        self.django_app = django_app
        self.views: dict[str, View] = views_by_path()
        self.handler = ASGIHandler()  # its request parsing and response sending, not its chain
        # The vocabulary takes half a second to load, the interpreter held for much of it: load
        # it before serving rather than under the first call (and every call waiting behind it).
        tokens.encoding()

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        view = self.views.get(scope.get("path", "")) if scope["type"] == "http" else None
        if view is None:
            await self.django_app(scope, receive, send)
            return
        head, error = self.handler.create_request(scope, io.BytesIO())
        if head is None:
            await self.handler.send_response(error, send)
            return
        endpoint = ENDPOINT_PATHS.get(head.path)
        try:
            key_info = await self._admit(head, endpoint)
            body = await body_read(receive, limit=settings.TB_MAX_BODY_BYTES)
        except _Refused as refused:
            await self._refuse(refused.response, endpoint, send)
            return
        except BodyTooLarge:
            await self._refuse(self._too_large(endpoint), endpoint, send)
            return
        except RequestAborted:
            return
        # A BytesIO over the whole body hands the same bytes to request.body: no copy.
        request = self.handler.create_request(scope, io.BytesIO(body))[0]
        request.key_info = key_info  # the view does not look the key up again
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._disconnect(receive))
                response = await self._run(view, request, endpoint)
                await self.handler.send_response(response, send)
                raise _Processed
        except* (_Processed, RequestAborted):
            pass

    async def _admit(self, request: HttpRequest, endpoint: str | None) -> KeyInfo | None:
        """The checks the headers alone decide, made before any of the body is read; the
        metered endpoints' key (None for the other paths, whose views check their own)."""
        try:
            declared = declared_length(request.scope.get("headers", []))
        except BadContentLength:
            raise _Refused(
                views.error_response(
                    endpoint or "models",
                    views.ProxyError(
                        400, "invalid", "Invalid Content-Length header.", "invalid_request"
                    ),
                    _request_id(),
                )
            ) from None
        if declared is not None and declared > settings.TB_MAX_BODY_BYTES:
            raise _Refused(self._too_large(endpoint))
        if endpoint is None or request.method != "POST":
            return None
        try:
            return await views.authenticate(request)
        except views.ProxyError as error:
            raise _Refused(views.error_response(endpoint, error, _request_id())) from None

    def _too_large(self, endpoint: str | None) -> HttpResponse:
        limit = settings.TB_MAX_BODY_BYTES
        return views.error_response(
            endpoint or "models",
            views.ProxyError(
                413, "too_large", f"Request body exceeds {limit} bytes.", "request_too_large"
            ),
            _request_id(),
        )

    async def _refuse(self, response: HttpResponse, endpoint: str | None, send: Callable) -> None:
        # The body is left unread: the connection cannot carry another request.
        response["Connection"] = "close"
        if endpoint is not None:
            metrics.REQUESTS.labels(endpoint, str(response.status_code)).inc()
        await self.handler.send_response(response, send)

    async def _run(self, view: View, request: HttpRequest, endpoint: str | None) -> HttpResponse:
        try:
            return await view(request)
        except BaseException as exc:
            # A Rust extension's panic is a BaseException; any other one (cancellation,
            # exit) is not this handler's to swallow.
            if not isinstance(exc, Exception) and not tokens.is_tokenizer_panic(exc):
                raise
            log.exception("proxy view failed", extra={"path": request.path})
            body = protocol_for(endpoint or "chat").error_body(
                500, "Internal error in the proxy.", "api_error", code="internal_error"
            )
            return HttpResponse(body, status=500, content_type="application/json")

    async def _disconnect(self, receive: Callable) -> None:
        """A client that goes away cancels the response (and so the upstream call)."""
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted


def _request_id() -> str:
    return "req_" + uuid.uuid4().hex
