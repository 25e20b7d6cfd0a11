"""The whole /v1/ surface answers JSON in the provider's shape: the models list and one model
(OpenAI's, or Anthropic's for Anthropic's SDKs), and a 404 or 405 for anything else. The ASGI
cases drive `metering.asgi.ProxyApplication` directly, no server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from metering.asgi import ProxyApplication
from metering.proxy import surface


@pytest.mark.parametrize(
    ("path", "model_id"),
    [
        ("/v1/models", ""),
        ("/v1/models/gpt-4o-mini", "gpt-4o-mini"),
        ("/v1/models/meta/llama-3", "meta/llama-3"),
        ("/v1/models/", None),
        ("/v1/modelsx", None),
        ("/v1/files", None),
    ],
)
def test_model_id_of(path: str, model_id: str | None) -> None:
    assert surface.model_id_of(path) == model_id


@pytest.mark.parametrize(
    ("anthropic", "expected"),
    [
        (
            False,
            {
                "object": "list",
                "data": [
                    {"id": "a", "object": "model", "created": 0, "owned_by": "openai"},
                    {"id": "auto:x", "object": "model", "created": 0, "owned_by": "tokenbudget"},
                ],
            },
        ),
        (
            True,
            {
                "data": [
                    {"type": "model", "id": "a", "display_name": "a", "created_at": surface.EPOCH},
                    {
                        "type": "model",
                        "id": "auto:x",
                        "display_name": "auto:x",
                        "created_at": surface.EPOCH,
                    },
                ],
                "has_more": False,
                "first_id": "a",
                "last_id": "auto:x",
            },
        ),
    ],
)
def test_models_list_shapes(anthropic: bool, expected: dict) -> None:
    entries = [("a", "openai"), ("auto:x", "tokenbudget")]
    assert json.loads(surface.models_body(entries, anthropic)) == expected


def test_an_empty_anthropic_list_has_no_ids() -> None:
    body = json.loads(surface.models_body([], True))
    assert (body["data"], body["first_id"], body["last_id"]) == ([], None, None)


def _call(method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, Any]:
    sent: list[dict] = []

    async def django_app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a /v1/ path reached Django's handler")

    messages = [{"type": "http.request", "body": b"", "more_body": False}]

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
        "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    asyncio.run(ProxyApplication(django_app)(scope, receive, send))
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], response_headers, json.loads(body)


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "body"),
    [
        (
            "GET",
            "/v1/files",
            {},
            404,
            {
                "error": {
                    "message": "Invalid URL (GET /v1/files).",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "unknown_url",
                }
            },
        ),
        (
            "POST",
            "/v1/messages/batches",
            {"anthropic-version": "2023-06-01"},
            404,
            {
                "type": "error",
                "error": {
                    "type": "not_found_error",
                    "message": "Invalid URL (POST /v1/messages/batches).",
                    "code": "unknown_url",
                },
            },
        ),
        (
            "POST",
            "/v1/models",
            {},
            405,
            {
                "error": {
                    "message": "POST is not allowed on /v1/models: use GET.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "method_not_allowed",
                }
            },
        ),
        (
            "GET",
            "/v1/models",
            {"anthropic-version": "2023-06-01"},
            401,
            {
                "type": "error",
                "error": {
                    "type": "authentication_error",
                    "message": "Missing API key: send Authorization: Bearer <key> or x-api-key.",
                    "code": "invalid_api_key",
                },
            },
        ),
        (
            "GET",
            "/v1/chat/completions",
            {},
            405,
            {
                "error": {
                    "message": "Use POST.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "method_not_allowed",
                }
            },
        ),
    ],
)
def test_every_v1_path_answers_json_in_the_providers_shape(
    method: str, path: str, headers: dict, status: int, body: dict
) -> None:
    got_status, got_headers, got_body = _call(method, path, headers)
    assert (got_status, got_body) == (status, body)
    assert got_headers["content-type"] == "application/json"
    assert got_headers["x-request-id"].startswith("req_")
