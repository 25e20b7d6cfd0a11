"""The one HTTP client the proxy uses to reach providers (a thin adapter over aiohttp).

One pooled `aiohttp.ClientSession` per process and event loop: a client per request would
defeat connection reuse. (httpx was measured here first: its pool checks every idle
connection's socket on each request, which cost half the proxy's CPU at 64 concurrent calls.)
Upstream URLs and credentials come only from the `Upstream` row and the environment; nothing
the client sends can change where a call goes or which key it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl

# Request headers a client may pass through to the provider. Everything else (the client's
# Authorization / x-api-key, cookies, hop-by-hop headers, organisation headers) is dropped.
FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta", "openai-beta", "accept")
ANTHROPIC_DEFAULT_VERSION = "2023-06-01"

# Google Vertex AI: Gemini (Google's publisher) and Claude (Anthropic's publisher).
VERTEX_KINDS = frozenset({"vertex", "vertex_anthropic"})
# AWS Bedrock: Converse (any model, translated) and InvokeModel for Claude (Anthropic's body).
BEDROCK_KINDS = frozenset({"bedrock", "bedrock_anthropic"})

_sessions: dict[int, aiohttp.ClientSession] = {}
log = logging.getLogger("tokenbudget.proxy")


class UpstreamError(Exception):
    """The upstream could not be reached or broke the connection."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer (or stopped sending) within its timeout."""


class UpstreamCredentialsError(UpstreamError):
    """The proxy could not get the credentials to call the upstream (nothing was sent)."""


@dataclass(frozen=True)
class UpstreamTarget:
    """Everything needed to call one upstream, resolved from configuration."""

    kind: str
    base_url: str
    credential_env: str
    api_version: str
    connect_timeout: float
    read_timeout: float


class UpstreamResponse:
    """An upstream answer whose head has arrived; the body is read or streamed by the caller,
    who must `aclose()` it (closing early drops the connection, which cancels the generation)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code = response.status
        self.headers: Mapping[str, str] = response.headers

    async def aread(self) -> bytes:
        try:
            return await self._response.read()
        except TimeoutError as exc:
            raise UpstreamTimeout(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(str(exc)) from exc

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TimeoutError as exc:
            raise UpstreamTimeout(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(str(exc)) from exc

    async def aclose(self) -> None:
        if not self._response.closed and not self._response.content.at_eof():
            self._response.close()  # unread body: drop the connection instead of reusing it
        else:
            self._response.release()


def session() -> aiohttp.ClientSession:
    """The process's shared session for the running event loop."""
    loop_id = id(asyncio.get_running_loop())
    existing = _sessions.get(loop_id)
    if existing is None or existing.closed:
        existing = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=30),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
        _sessions[loop_id] = existing
    return existing


def upstream_url(
    target: UpstreamTarget, endpoint: str, upstream_model: str, stream: bool = False
) -> str:
    base = target.base_url.rstrip("/")
    if target.kind in VERTEX_KINDS:
        # `base` is the admin's `.../v1/projects/{project}/locations/{region}`.
        model = urllib.parse.quote(upstream_model, safe="@")
        if target.kind == "vertex":
            if endpoint == "count_tokens":
                return f"{base}/publishers/google/models/{model}:countTokens"
            method = "streamGenerateContent?alt=sse" if stream else "generateContent"
            return f"{base}/publishers/google/models/{model}:{method}"
        if endpoint == "count_tokens":  # the model is in the body
            return f"{base}/publishers/anthropic/models/count-tokens:rawPredict"
        method = "streamRawPredict" if stream else "rawPredict"
        return f"{base}/publishers/anthropic/models/{model}:{method}"
    if target.kind == "gemini":
        # The Gemini API names the model and the streaming in the path.
        if not base.endswith("/v1beta"):
            base = f"{base}/v1beta"
        if endpoint == "count_tokens":
            return f"{base}/models/{upstream_model}:countTokens"
        if stream:
            return f"{base}/models/{upstream_model}:streamGenerateContent?alt=sse"
        return f"{base}/models/{upstream_model}:generateContent"
    if target.kind in BEDROCK_KINDS and endpoint == "count_tokens":
        # CountTokens takes either API's request in its body, the model in the path.
        return f"{base}/model/{urllib.parse.quote(upstream_model, safe='')}/count-tokens"
    if target.kind == "bedrock":
        # Converse names the model and the streaming in the path.
        model = urllib.parse.quote(upstream_model, safe="")
        return f"{base}/model/{model}/{'converse-stream' if stream else 'converse'}"
    if target.kind == "bedrock_anthropic":
        # InvokeModel: the model id quoted as botocore does (`:` as `%3A`).
        model = urllib.parse.quote(upstream_model, safe="")
        return f"{base}/model/{model}/{'invoke-with-response-stream' if stream else 'invoke'}"
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
        "count_tokens": "messages/count_tokens",
    }[endpoint]
    return f"{base}/{path}"


def credential_env_allowed(name: str) -> bool:
    """Whether an upstream may read its key from the environment variable `name`: only names
    under TB_UPSTREAM_CREDENTIAL_PREFIX or listed in TB_UPSTREAM_CREDENTIAL_NAMES, so no
    upstream can send the server's own secrets (TB_SECRET_KEY, DATABASE_URL, …) to its URL."""
    from django.conf import settings

    prefix = settings.TB_UPSTREAM_CREDENTIAL_PREFIX
    if prefix and name.startswith(prefix) and len(name) > len(prefix):
        return True
    return name in settings.TB_UPSTREAM_CREDENTIAL_NAMES


def upstream_headers(
    target: UpstreamTarget, client_headers: Mapping[str, str], request_id: str
) -> dict[str, str]:
    headers = {"content-type": "application/json", "x-request-id": request_id}
    for name in FORWARDED_HEADERS:
        value = client_headers.get(name)
        if value:
            headers[name] = value
    if target.kind in VERTEX_KINDS:
        # Anthropic's version goes in the body there; the access token is added by `send`.
        headers.pop("anthropic-version", None)
        return headers
    if target.kind == "bedrock_anthropic":
        # The version is in the body; InvokeModel answers JSON, or its event stream when the
        # URL asks for it (an SSE `accept` would be refused). Signed with SigV4 in `send`.
        for name in ("anthropic-version", "anthropic-beta", "accept"):
            headers.pop(name, None)
        headers["accept"] = "application/json"
        return headers
    # Checked here too, not only when the upstream is saved: a row written another way (or
    # before the allow-list) must not send any other variable.
    env = target.credential_env
    secret = os.environ.get(env, "") if env and credential_env_allowed(env) else ""
    if target.kind == "anthropic":
        headers.setdefault("anthropic-version", ANTHROPIC_DEFAULT_VERSION)
        if secret:
            headers["x-api-key"] = secret
    elif target.kind == "azure_openai":
        if secret:
            headers["api-key"] = secret
    elif target.kind == "gemini":
        if secret:
            headers["x-goog-api-key"] = secret
    elif target.kind == "bedrock":
        pass  # signed with SigV4 in `send`, once the URL and the body are final
    elif secret:
        headers["authorization"] = f"Bearer {secret}"
    return headers


async def send(
    target: UpstreamTarget,
    *,
    endpoint: str,
    upstream_model: str,
    body: bytes,
    headers: dict[str, str],
    stream: bool = False,
) -> UpstreamResponse:
    """Start the upstream call and return once its status and headers are in (`stream`: the
    call streams, which Gemini's URL says)."""
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=target.connect_timeout, sock_read=target.read_timeout
    )
    url: str | yarl.URL = upstream_url(target, endpoint, upstream_model, stream)
    if target.kind in VERTEX_KINDS:
        headers = {**headers, "authorization": f"Bearer {await google_token(target)}"}
    elif target.kind in BEDROCK_KINDS:
        await aws_credentials_ready()
        headers = sign_bedrock(target, str(url), body, headers)
        # Sent as signed: the model id's escapes (`%3A`) stay as they are.
        url = yarl.URL(str(url), encoded=True)
    try:
        response = await session().post(
            url,
            data=body,
            headers=headers,
            timeout=timeout,
            allow_redirects=False,  # a redirect could send the provider key elsewhere
        )
    except TimeoutError as exc:
        raise UpstreamTimeout(str(exc)) from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(str(exc)) from exc
    return UpstreamResponse(response)


# --- AWS Bedrock: SigV4 ----------------------------------------------------------------------

REGION_IN_HOST = re.compile(r"bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com")
_aws: dict[str, object] = {}


def aws_credentials() -> object | None:
    """The process's AWS credentials from botocore's chain (environment variables, shared
    files, container or instance roles), resolved once and kept: never from a client."""
    if "credentials" not in _aws:
        import botocore.session

        _aws["credentials"] = botocore.session.get_session().get_credentials()
    return _aws["credentials"]


async def aws_credentials_ready() -> None:
    """Resolve the credentials (which may read files or ask an instance role) and refresh
    expiring ones in a worker thread, so that signing on the event loop never waits on I/O."""
    if "credentials" not in _aws:
        await asyncio.to_thread(aws_credentials)
    credentials: Any = _aws.get("credentials")  # botocore's Credentials (untyped), or None
    refresh_needed = getattr(credentials, "refresh_needed", None)
    if refresh_needed is not None and refresh_needed():
        await asyncio.to_thread(credentials.get_frozen_credentials)


def reset_aws_credentials() -> None:
    """Forget the resolved credentials (tests; a rotated key in the environment)."""
    _aws.clear()


def bedrock_region(target: UpstreamTarget) -> str:
    """The upstream's region: its `api_version` field, else the one in a
    `bedrock-runtime.{region}.amazonaws.com` base URL, else AWS_REGION / AWS_DEFAULT_REGION."""
    if target.api_version:
        return target.api_version
    found = REGION_IN_HOST.search(urllib.parse.urlsplit(target.base_url).netloc)
    if found:
        return found.group(1)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise UpstreamError("The Bedrock upstream has no region (set its api_version field).")
    return region


def sign_bedrock(
    target: UpstreamTarget, url: str, body: bytes, headers: dict[str, str]
) -> dict[str, str]:
    """`headers` with the SigV4 signature of a POST of `body` to `url` (service "bedrock").

    Pure CPU (an HMAC chain and two SHA-256 digests, tens of microseconds), so it runs on the
    event loop; the credentials are resolved once (`aws_credentials`), not per call."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    credentials = aws_credentials()
    if credentials is None:
        raise UpstreamError("No AWS credentials for the Bedrock upstream.")
    frozen = credentials.get_frozen_credentials()  # type: ignore[attr-defined]
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    SigV4Auth(frozen, "bedrock", bedrock_region(target)).add_auth(request)
    return dict(request.headers.items())


# --- Google Vertex AI: OAuth2 access tokens --------------------------------------------------

GOOGLE_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
GOOGLE_REFRESH_MARGIN = 300.0  # seconds of validity left below which a token is refreshed
GOOGLE_TOKEN_TIMEOUT = 30.0  # seconds a call waits for a token (google-auth's own is 120 s)
GOOGLE_RETRY_AFTER = 10.0  # seconds after a failed fetch before a token is fetched again
_google: dict[str, Any] = {}  # credentials source ("" for ADC, else a key file's path)
# Per (event loop, source): the one fetch at a time, and the refresh running beside calls.
_google_locks: dict[tuple[int, str], asyncio.Lock] = {}
_google_refreshes: dict[tuple[int, str], asyncio.Task[None]] = {}
_google_failures: dict[str, tuple[float, str]] = {}  # source -> (clock() of it, error name)


def clock() -> float:
    """Now, in seconds since the epoch (tests replace it to move time on)."""
    return time.time()


def google_source(target: UpstreamTarget) -> str:
    """Where a Vertex upstream's credentials come from: the service-account key file whose
    path is in its `credential_env` variable, or "" (Application Default Credentials) when
    the upstream names no variable."""
    env = target.credential_env
    if not env:
        return ""
    if not credential_env_allowed(env):
        raise UpstreamCredentialsError(f"The credential variable {env} is not allowed.")
    path = os.environ.get(env, "")
    if not path:
        raise UpstreamCredentialsError(f"{env} is not set (a service-account key file's path).")
    return path


def _google_load(source: str) -> Any:
    import google.auth
    from google.oauth2 import service_account

    if source:
        return service_account.Credentials.from_service_account_file(
            source, scopes=list(GOOGLE_SCOPES)
        )
    credentials, _ = google.auth.default(scopes=list(GOOGLE_SCOPES))
    return credentials


def _google_refresh(source: str) -> Any:
    """Load (once) and refresh the credentials of `source`: file reads and an HTTP call to
    the token endpoint, so it runs in a worker thread."""
    from google.auth.transport.requests import Request

    credentials = _google.get(source)
    if credentials is None:
        credentials = _google_load(source)
    credentials.refresh(Request())
    _google[source] = credentials
    return credentials


def _token_left(credentials: Any) -> float:
    """Seconds the credentials' token is still valid for (0: none; inf: no stated expiry)."""
    if not getattr(credentials, "token", None):
        return 0.0
    expiry = credentials.expiry  # google-auth's naive UTC datetime
    if expiry is None:
        return float("inf")
    return expiry.replace(tzinfo=dt.UTC).timestamp() - clock()


async def google_token(target: UpstreamTarget) -> str:
    """The access token for a Vertex upstream, cached per credentials source and process.
    The event loop only reads the cached token: it is fetched in a worker thread, and once
    less than GOOGLE_REFRESH_MARGIN of it is left, refreshed beside the calls that go on with
    it. Only a call with no valid token waits (GOOGLE_TOKEN_TIMEOUT at most). A token that
    cannot be had raises UpstreamCredentialsError (the token itself is never logged), and for
    GOOGLE_RETRY_AFTER after a failed fetch calls are refused at once rather than each
    fetching again."""
    source = google_source(target)
    credentials: Any = _google.get(source)
    left = _token_left(credentials) if credentials is not None else 0.0
    if left > GOOGLE_REFRESH_MARGIN:
        return str(credentials.token)
    if left > 0:
        _refresh_beside(source)
        return str(credentials.token)
    return str((await _google_fetch(source)).token)


def _refresh_beside(source: str) -> None:
    """Start one refresh of `source`'s token on this loop unless one runs or just failed."""
    loop = asyncio.get_running_loop()
    key = (id(loop), source)
    running = _google_refreshes.get(key)
    if running is not None and not running.done():
        return
    failed = _google_failures.get(source)
    if failed is not None and clock() - failed[0] < GOOGLE_RETRY_AFTER:
        return
    _google_refreshes[key] = loop.create_task(_google_refresh_quietly(source))


async def _google_refresh_quietly(source: str) -> None:
    # A failure is logged; the calls go on with the token they have until it expires.
    with contextlib.suppress(UpstreamCredentialsError):
        await _google_fetch(source)


async def _google_fetch(source: str) -> Any:
    """Fresh credentials for `source`, one fetch at a time per source and loop; a fetch that
    another call finished meanwhile serves this one too."""
    seen = getattr(_google.get(source), "token", None)
    lock = _google_locks.setdefault((id(asyncio.get_running_loop()), source), asyncio.Lock())
    async with lock:
        credentials = _google.get(source)
        if credentials is not None and credentials.token != seen and _token_left(credentials) > 0:
            return credentials
        failed = _google_failures.get(source)
        if failed is not None and clock() - failed[0] < GOOGLE_RETRY_AFTER:
            raise UpstreamCredentialsError(
                f"No access token for the Vertex AI upstream ({failed[1]}; tried again "
                f"{GOOGLE_RETRY_AFTER:g} s after the last try)."
            )
        try:
            credentials = await asyncio.wait_for(
                asyncio.to_thread(_google_refresh, source), GOOGLE_TOKEN_TIMEOUT
            )
        except Exception as exc:
            name = type(exc).__name__
            _google_failures[source] = (clock(), name)
            log.warning(
                "vertex access token not obtained",
                extra={"error": name, "source": "adc" if not source else "file"},
            )
            credentials = _google.get(source)
            if credentials is None or _token_left(credentials) <= 0:
                raise UpstreamCredentialsError(
                    f"No access token for the Vertex AI upstream ({name})."
                ) from None
            return credentials
        _google_failures.pop(source, None)
        return credentials


def reset_google_credentials() -> None:
    """Forget the cached credentials and tokens (tests; a rotated key file)."""
    _google.clear()
    _google_locks.clear()
    _google_failures.clear()
    _google_refreshes.clear()
