"""The one HTTP client the proxy uses to reach providers (a thin adapter over httpx).

One pooled `httpx.AsyncClient` per process and event loop: a client per request would defeat
connection reuse. Upstream URLs and credentials come only from the `Upstream` row and the
environment; nothing the client sends can change where a call goes or which key it carries.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import httpx

# Request headers a client may pass through to the provider. Everything else (the client's
# Authorization / x-api-key, cookies, hop-by-hop headers, organisation headers) is dropped.
FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta", "openai-beta", "accept")
ANTHROPIC_DEFAULT_VERSION = "2023-06-01"

_clients: dict[int, httpx.AsyncClient] = {}


@dataclass(frozen=True)
class UpstreamTarget:
    """Everything needed to call one upstream, resolved from configuration."""

    kind: str
    base_url: str
    credential_env: str
    api_version: str
    connect_timeout: float
    read_timeout: float


def client() -> httpx.AsyncClient:
    """The process's shared client for the running event loop."""
    loop_id = id(asyncio.get_running_loop())
    existing = _clients.get(loop_id)
    if existing is None or existing.is_closed:
        existing = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30
            ),
            follow_redirects=False,  # a redirect could send the provider key elsewhere
            http2=False,
        )
        _clients[loop_id] = existing
    return existing


def upstream_url(target: UpstreamTarget, endpoint: str, upstream_model: str) -> str:
    base = target.base_url.rstrip("/")
    if target.kind == "azure_openai":
        path = {"chat": "chat/completions", "responses": "responses", "embeddings": "embeddings"}[
            endpoint
        ]
        return f"{base}/openai/deployments/{upstream_model}/{path}?api-version={target.api_version}"
    if not base.endswith("/v1"):
        base = f"{base}/v1"
    path = {
        "chat": "chat/completions",
        "responses": "responses",
        "embeddings": "embeddings",
        "messages": "messages",
    }[endpoint]
    return f"{base}/{path}"


def upstream_headers(
    target: UpstreamTarget, client_headers: dict[str, str], request_id: str
) -> dict[str, str]:
    headers = {"content-type": "application/json", "x-request-id": request_id}
    for name in FORWARDED_HEADERS:
        value = client_headers.get(name)
        if value:
            headers[name] = value
    secret = os.environ.get(target.credential_env, "") if target.credential_env else ""
    if target.kind == "anthropic":
        headers.setdefault("anthropic-version", ANTHROPIC_DEFAULT_VERSION)
        if secret:
            headers["x-api-key"] = secret
    elif target.kind == "azure_openai":
        if secret:
            headers["api-key"] = secret
    elif secret:
        headers["authorization"] = f"Bearer {secret}"
    return headers


def timeout_for(target: UpstreamTarget) -> httpx.Timeout:
    return httpx.Timeout(
        connect=target.connect_timeout,
        read=target.read_timeout,
        write=target.connect_timeout,
        pool=target.connect_timeout,
    )


async def send(
    target: UpstreamTarget,
    *,
    endpoint: str,
    upstream_model: str,
    body: bytes,
    headers: dict[str, str],
) -> httpx.Response:
    """Start the upstream call and return once its status and headers are in; the body is read
    (or streamed) by the caller, who must close the response."""
    http = client()
    request = http.build_request(
        "POST",
        upstream_url(target, endpoint, upstream_model),
        content=body,
        headers=headers,
        timeout=timeout_for(target),
    )
    return await http.send(request, stream=True)
