"""The Gemini surface's refusals through the ASGI entry, before any route or key lookup: all
in Google's error shape."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from metering.asgi import ProxyApplication


def _call(method: str, path: str, query: str = "", headers: dict | None = None) -> tuple:
    sent: list[dict] = []

    async def django_app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a Gemini path reached Django's handler")

    messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query.encode(),
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    asyncio.run(ProxyApplication(django_app)(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], json.loads(body)


@pytest.mark.parametrize(
    ("method", "path", "query", "status", "wire"),
    [
        ("POST", "/v1beta/models/gemini-2.5-flash:generateContent", "", 401, "UNAUTHENTICATED"),
        ("POST", "/v1/models/gemini-2.5-flash:generateContent", "", 401, "UNAUTHENTICATED"),
        (
            "POST",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            "",
            400,
            "INVALID_ARGUMENT",
        ),
        (
            "POST",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            "alt=sse",
            401,
            "UNAUTHENTICATED",
        ),
        ("POST", "/v1beta/models/gemini-2.5-flash:countTokens", "", 401, "UNAUTHENTICATED"),
        ("POST", "/v1/models/gemini-2.5-flash:countTokens", "", 401, "UNAUTHENTICATED"),
        ("GET", "/v1beta/models/gemini-2.5-flash:countTokens", "", 405, "INVALID_ARGUMENT"),
        ("GET", "/v1beta/models", "", 401, "UNAUTHENTICATED"),
        ("GET", "/v1beta/models/gemini-2.5-flash", "pageSize=2", 401, "UNAUTHENTICATED"),
        ("POST", "/v1beta/models/gemini-2.5-flash:embedContent", "", 404, "NOT_FOUND"),
        ("GET", "/v1beta/files", "", 404, "NOT_FOUND"),
        ("GET", "/v1beta/models/gemini-2.5-flash:generateContent", "", 405, "INVALID_ARGUMENT"),
    ],
)
def test_refusals_in_googles_shape(
    method: str, path: str, query: str, status: int, wire: str
) -> None:
    got, body = _call(method, path, query)
    assert got == status
    assert set(body) == {"error"}
    assert body["error"]["code"] == status and body["error"]["status"] == wire
    assert isinstance(body["error"]["message"], str)


@pytest.mark.parametrize(
    ("path", "status", "wire"),
    [
        ("/v1beta/models/gem:generateContent", 401, "UNAUTHENTICATED"),
        ("/v1/models/gem:generateContent", 401, "UNAUTHENTICATED"),
        ("/v1beta/models/gem:streamGenerateContent?alt=sse", 401, "UNAUTHENTICATED"),
        ("/v1beta/models/gem:streamGenerateContent", 400, "INVALID_ARGUMENT"),
        ("/v1beta/models/gem:countTokens", 401, "UNAUTHENTICATED"),
        ("/v1/models/gem:countTokens", 401, "UNAUTHENTICATED"),
        ("/v1beta/models/gem:embedContent", 404, "NOT_FOUND"),
    ],
)
def test_the_urlconf_serves_the_gemini_surface_too(
    client: Any, path: str, status: int, wire: str
) -> None:
    """Django's test client (and WSGI) reach the same shell through `proxy_urls`."""
    body = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
    response = client.post(path, json.dumps(body), content_type="application/json")
    assert response.status_code == status
    assert json.loads(response.content)["error"]["status"] == wire


def test_the_models_list_on_v1_is_googles_for_googles_clients() -> None:
    """google-genai's default API version reads /v1/models: a request carrying Google's
    client header (or `?key=`) is answered in Google's shape, any other in OpenAI's."""
    status, body = _call("GET", "/v1/models", headers={"x-goog-api-client": "google-genai-sdk"})
    assert status == 401 and body["error"]["status"] == "UNAUTHENTICATED"
    status, body = _call("GET", "/v1/models/gemini-2.5-flash", query="key=")
    assert status == 401 and body["error"]["status"] == "UNAUTHENTICATED"
    status, body = _call("GET", "/v1/models")
    assert status == 401 and body["error"]["type"] == "invalid_request_error"


def test_the_urlconf_lists_models_in_googles_shape_too(client: Any) -> None:
    response = client.get("/v1beta/models")
    assert response.status_code == 401
    assert json.loads(response.content)["error"]["status"] == "UNAUTHENTICATED"
