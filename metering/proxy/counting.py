"""How many input tokens a request would be charged for, never charged and never reserved:
POST /v1/messages/count_tokens (Anthropic's shape) and POST /v1beta/models/{model}:countTokens
(Gemini's: `{"totalTokens": N}`).

Authenticated with the employee's key and rate-limited like calls (it counts as a request in
the key's and the employee's per-minute windows); for a model routed to an upstream of the
same protocol (Anthropic's count for an Anthropic upstream, Gemini's for a Gemini one, and
Bedrock's CountTokens for a messages count on a Bedrock route) the upstream's own count
endpoint answers, for any other route the proxy counts locally with
`metering.tokens` and says so in the `x-tokenbudget-estimated: true` header.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings

from metering import cache, routing, tokens, upstream
from metering.body import request_parse, sized_work
from metering.jsonwire import dumps_bytes
from metering.providers import anthropic, gemini
from metering.providers.anthropic import PROVIDER as ANTHROPIC
from metering.providers.base import BodyEncodingError, EncodedBody, ParsedRequest, RequestError
from metering.proxy import call as core
from metering.proxy import crossing, errors
from metering.proxy.errors import Headers
from metering.quota import clients
from metering.quota.down import redis_health
from metering.quota.keys import rate_window
from metering.selectors import KeyInfo, RouteInfo
from metering.translate import TranslationError
from metering.translate.anthropic_to_openai import messages_request_to_chat
from metering.translate.bedrock import chat_request_to_converse

log = logging.getLogger("tokenbudget.proxy")

ENDPOINT = "count_tokens"
PATH = "/v1/messages/count_tokens"
GEMINI_ENDPOINT = gemini.COUNT_ENDPOINT
# Upstream kinds that speak the Gemini API, and so answer `models/{model}:countTokens`.
GEMINI_KINDS = frozenset({"gemini", "vertex"})
ESTIMATED_HEADER = "x-tokenbudget-estimated"
_PLACEHOLDER_LIMIT = 1  # the messages parser wants a max_tokens; a count has none


class _CountParser:
    """The messages parser for a body without `max_tokens` (the count endpoint takes none)."""

    @staticmethod
    def parse_request(endpoint: str, body: bytes) -> ParsedRequest:
        data = anthropic.decode_body(body)
        asked = "max_tokens" in data
        data.setdefault("max_tokens", _PLACEHOLDER_LIMIT)
        parsed = anthropic.parse_request(endpoint, dumps_bytes(data))
        if not asked:
            parsed.body.pop("max_tokens", None)
            parsed.max_output_tokens = None
        return parsed


class _GeminiCountParser:
    """The Gemini count parser with the path's model bound (checked as a body's model is)."""

    def __init__(self, model: str) -> None:
        self.model = model

    def parse_request(self, endpoint: str, body: bytes) -> ParsedRequest:
        parsed = gemini.parse_count_request(endpoint, body)
        parsed.model = self.model
        return parsed


def local_count(parsed: ParsedRequest) -> int:
    """The o200k count of the request's prompt with the per-message framing, no margin."""
    return tokens.estimate_prompt_tokens(
        parsed.prompt_text,
        messages=parsed.message_count,
        extra_tokens=parsed.extra_prompt_tokens,
        margin_percent=0,
    )


def count_route(info: KeyInfo, model: str, route: RouteInfo | None) -> RouteInfo:
    """The route counted for, if this key may call it (any endpoint kind: nothing is sent)."""
    if route is None:
        raise errors.model_not_found(f"The model '{model}' does not exist.")
    if not info.may_use(route.public_name):
        raise errors.model_not_allowed(f"Your key may not use the model '{model}'.")
    return route


def _window_over(values: list[Any], rpm: int, tpm: int) -> str | None:
    requests, used = (int(v or 0) for v in values)
    if rpm and requests + 1 > rpm:
        return "requests"
    if tpm and used >= tpm:
        return "tokens"
    return None


async def rate_check(info: KeyInfo) -> None:
    """Count the request in the key's and the employee's minute windows (Redis), as a call's
    reserve does; a 429 when either is full. Without Redis (or with it down) calls are not
    rate-limited either, and neither is counting."""
    rpm, tpm = info.requests_per_minute or 0, info.tokens_per_minute or 0
    if not (rpm or tpm) or not settings.REDIS_URL or info.limits is None:
        return
    if not redis_health.usable():
        return
    now = time.time()
    windows = [
        ("key", rate_window("k", info.key_id, now)),
        ("employee", rate_window("e", info.employee_id, now)),
    ]
    client, _ = clients.async_client()
    try:
        async with client.pipeline(transaction=False) as pipe:
            for _, window in windows:
                pipe.hmget(window, "n", "t")
            seen = await pipe.execute()
        for (scope, _), values in zip(windows, seen, strict=True):
            over = _window_over(values, rpm, tpm)
            if over is not None:
                raise errors.rate_limited(scope, over, max(1, 60 - int(now) % 60))
        async with client.pipeline(transaction=False) as pipe:
            for _, window in windows:
                pipe.hincrby(window, "n", 1)
                pipe.expire(window, 120)
            await pipe.execute()
    except clients.UNAVAILABLE as exc:
        redis_health.failed(exc)


def _reply_parts(
    status: int, body: bytes, request_id: str, estimated: bool
) -> tuple[int, Headers, bytes]:
    headers: Headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("x-request-id", request_id),
    ]
    if estimated:
        headers.append((ESTIMATED_HEADER, "true"))
    return status, headers, body


async def _route_of(info: KeyInfo, parsed: ParsedRequest) -> RouteInfo:
    """The route counted for (an `auto:<intent>` name resolved as a call's is)."""
    requested = parsed.model
    alias = routing.alias_intent(requested)
    if alias is not None:
        target = await routing.intents.aget(alias) if alias else None
        candidates = target.candidates if target is not None else ()
        parsed.model = core.alias_choice(info, alias, requested, candidates)
    return count_route(info, parsed.model, await cache.routes.aget(parsed.model))


async def count(
    inbound_headers: Mapping[str, str], body: bytes, info: KeyInfo, request_id: str
) -> tuple[int, Headers, bytes]:
    """The count's status, headers and body; raises ProxyError for a refusal."""
    try:
        parsed = await request_parse(_CountParser(), "messages", body)
    except RequestError as exc:
        raise errors.invalid_request(exc.message, exc.param) from exc
    route = await _route_of(info, parsed)
    await rate_check(info)
    kind = route.target.kind
    if kind in upstream.BEDROCK_KINDS:
        try:
            # Translating and encoding megabytes of prompt goes to the pool, as a call's does.
            payload = await sized_work(len(body), _bedrock_count_body, parsed, kind)
        except BodyEncodingError:
            raise errors.unencodable_body() from None
        except TranslationError as exc:
            raise errors.invalid_request(exc.message, exc.param) from exc
        answered = await _forward(route, inbound_headers, payload, request_id, _bedrock_answer)
        if answered[0] not in (400, 404):
            return answered
        # The request passed the proxy's own parse: Bedrock cannot count this model (CountTokens
        # serves some models only), so the count is the proxy's estimate, as on other routes.
        log.info("bedrock count refused; estimated", extra={"request_id": request_id})
    if kind not in ("anthropic", "vertex_anthropic"):
        counted = await sized_work(len(parsed.prompt_text), local_count, parsed)
        answer = json.dumps({"input_tokens": counted}).encode()
        return _reply_parts(200, answer, request_id, estimated=True)
    if kind == "vertex_anthropic":
        encoded: EncodedBody = anthropic.encode_vertex_body(parsed, with_model=True)
    else:
        encoded = anthropic.encode_upstream_body(parsed)
    upstream_body = encoded.finish(upstream_model=route.upstream_model, max_output_tokens=None)
    return await _forward(route, inbound_headers, upstream_body, request_id)


def _bedrock_count_body(parsed: ParsedRequest, kind: str) -> bytes:
    """Bedrock's CountTokens request for a messages count: the InvokeModel body Claude on
    Bedrock would get (base64, with a max_tokens it requires), or the Converse request's
    messages, system and tools for a Converse route."""
    if kind == "bedrock_anthropic":
        encoded = anthropic.encode_bedrock_body(parsed)
        limit = None if parsed.max_output_tokens else _PLACEHOLDER_LIMIT
        inner = encoded.finish(upstream_model="", max_output_tokens=limit)
        request: dict[str, Any] = {"invokeModel": {"body": base64.b64encode(inner).decode()}}
    else:
        converse = chat_request_to_converse(messages_request_to_chat(parsed.body))
        wanted = ("messages", "system", "toolConfig")
        request = {"converse": {k: converse[k] for k in wanted if k in converse}}
    try:
        return dumps_bytes({"input": request})
    except (UnicodeEncodeError, RecursionError, ValueError) as exc:
        raise BodyEncodingError(str(exc)) from None


def _bedrock_answer(status: int, content: bytes) -> tuple[int, bytes]:
    """Bedrock's count (`{"inputTokens": N}`) in Anthropic's shape, its errors in Anthropic's
    error shape; a count that cannot be read is a 502."""
    if status < 400:
        try:
            counted = json.loads(content).get("inputTokens")
        except (ValueError, AttributeError):
            counted = None
        if isinstance(counted, int) and not isinstance(counted, bool) and counted >= 0:
            return status, json.dumps({"input_tokens": counted}).encode()
        status, content = 502, b"{}"
    return status, crossing.error_answer(ANTHROPIC, status, content)


async def _forward(
    route: RouteInfo,
    inbound_headers: Mapping[str, str],
    body: bytes,
    request_id: str,
    answer: Callable[[int, bytes], tuple[int, bytes]] | None = None,
) -> tuple[int, Headers, bytes]:
    """The upstream's own count of `body` (its count endpoint), relayed as it answered or as
    `answer` writes it for the client; failures are the proxy's upstream errors (504, 502)."""
    headers = upstream.upstream_headers(route.target, inbound_headers, request_id)
    try:
        response = await upstream.send(
            route.target,
            endpoint=ENDPOINT,
            upstream_model=route.upstream_model,
            body=body,
            headers=headers,
        )
        try:
            content = await response.aread()
        finally:
            await response.aclose()
    except upstream.UpstreamTimeout:
        raise errors.upstream_timeout() from None
    except upstream.UpstreamError as exc:
        log.warning(
            "count upstream unreachable",
            extra={"request_id": request_id, "error": type(exc).__name__},
        )
        if isinstance(exc, upstream.UpstreamCredentialsError):
            raise errors.upstream_credentials() from None
        raise errors.upstream_unreachable() from None
    status = response.status_code
    if answer is not None:
        status, content = answer(status, content)
    return _reply_parts(status, content, request_id, estimated=False)


async def count_gemini(
    inbound_headers: Mapping[str, str], body: bytes, model: str, info: KeyInfo, request_id: str
) -> tuple[int, Headers, bytes]:
    """POST /v1beta/models/{model}:countTokens: the count's status, headers and body (Gemini's
    CountTokensResponse); raises ProxyError for a refusal."""
    try:
        parsed = await request_parse(_GeminiCountParser(model), GEMINI_ENDPOINT, body)
    except RequestError as exc:
        raise errors.invalid_request(exc.message, exc.param) from exc
    route = await _route_of(info, parsed)
    await rate_check(info)
    if route.target.kind not in GEMINI_KINDS:
        counted = await sized_work(len(parsed.prompt_text), local_count, parsed)
        return _reply_parts(200, gemini.count_body(counted), request_id, estimated=True)
    try:
        if route.target.kind == "vertex":
            payload = gemini.vertex_count_body(parsed.body)
        else:
            payload = gemini.count_upstream_body(parsed.body, route.upstream_model)
    except BodyEncodingError:
        raise errors.unencodable_body() from None
    return await _forward(route, inbound_headers, payload, request_id)
