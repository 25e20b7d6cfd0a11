"""A lean ASGI entry for the proxy's /v1/ paths.

The proxy views are plain async Django views, but Django's full handler would run every
middleware (sessions, CSRF, auth, messages: each a hop to a worker thread and back under ASGI)
and the request signals (another two hops) on every metered call. None of that serves an API
keyed by bearer tokens, so /v1/ requests are built into Django request objects and handed to
the views directly; everything else goes through Django's ordinary handler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponse

log = logging.getLogger("tokenbudget.proxy")

View = Callable[[HttpRequest], Awaitable[HttpResponse]]
PREFIX = "/v1/"


class _Processed(Exception):
    pass


class ProxyApplication:
    """Routes /v1/ to the proxy views without middleware; the rest to `django_app`."""

    def __init__(self, django_app: ASGIHandler) -> None:
        from metering.proxy_urls import views_by_path

        self.django_app = django_app
        self.views: dict[str, View] = views_by_path()
        self.handler = ASGIHandler()  # its request parsing and response sending, not its chain

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        view = self.views.get(scope.get("path", "")) if scope["type"] == "http" else None
        if view is None:
            await self.django_app(scope, receive, send)
            return
        try:
            body_file = await self.handler.read_body(receive)
        except RequestAborted:
            return
        with body_file:
            request, error = self.handler.create_request(scope, body_file)
            if request is None:
                await self.handler.send_response(error, send)
                return
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._disconnect(receive))
                    response = await self._run(view, request)
                    await self.handler.send_response(response, send)
                    raise _Processed
            except* (_Processed, RequestAborted):
                pass

    async def _run(self, view: View, request: HttpRequest) -> HttpResponse:
        try:
            return await view(request)
        except Exception:
            log.exception("proxy view failed", extra={"path": request.path})
            return HttpResponse(
                b'{"error": {"message": "Internal error in the proxy.", "type": "api_error", "code": "internal_error"}}',
                status=500,
                content_type="application/json",
            )

    async def _disconnect(self, receive: Callable) -> None:
        """A client that goes away cancels the response (and so the upstream call)."""
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted
