"""The proxy's async shell: it only awaits (read the caches, reserve, forward, relay, settle)
and asks `metering.proxy.call` every question in between.

One call: authenticate (cached) -> parse -> route and price -> estimate -> encode -> reserve
(maybe downgrade) -> forward -> meter -> settle and record -> reply. With warm caches the only
database work is the reserve and the settle (see metering/services.py). The shell is free of
Django's request and response objects: `metering.asgi` hands it an `Inbound` straight from the
ASGI scope and sends the `Reply` itself; `metering.proxy.endpoints` adapts both for the URLconf.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils import timezone

from budgets import ledger
from metering import cache, deployments, metrics, routing, upstream, validation
from metering.body import prompt_estimate, request_parse, sized_work
from metering.logs import REQUEST_ID
from metering.providers import gemini
from metering.providers.anthropic import PROVIDER as ANTHROPIC
from metering.providers.base import (
    EncodedBody,
    ParsedRequest,
    Provider,
    RequestError,
    StreamMeter,
)
from metering.providers.gemini import PROVIDER as GEMINI
from metering.providers.openai import PROVIDER as OPENAI
from metering.proxy import call as core
from metering.proxy import counting, crossing, errors, health, surface
from metering.proxy.call import Call
from metering.proxy.errors import Headers, ProxyError
from metering.proxy.hold import HoldOwner, Reserved
from metering.proxy.relay import Relay
from metering.quota import interface as quotas
from metering.quota import redis_backend as quota_redis
from metering.selectors import KeyInfo, RouteInfo, key_hash
from metering.services import CallHold

log = logging.getLogger("tokenbudget.proxy")

# The client-facing endpoint decides the wire format of both request and response.
PROVIDERS: dict[str, Provider] = {
    "chat": OPENAI,
    "responses": OPENAI,
    "embeddings": OPENAI,
    "messages": ANTHROPIC,
    counting.ENDPOINT: ANTHROPIC,
    gemini.ENDPOINT: GEMINI,
    counting.GEMINI_ENDPOINT: GEMINI,
}
ENDPOINT_PATHS: dict[str, str] = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
    "/v1/messages": "messages",
    counting.PATH: counting.ENDPOINT,
}
MODELS_PATH = surface.MODELS_PATH


def provider_for(endpoint: str | None) -> Provider:
    """The wire protocol of `endpoint` (OpenAI's for any other path)."""
    return PROVIDERS.get(endpoint or "", OPENAI)


@dataclass
class Inbound:
    """A client request as the shell needs it."""

    method: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes | None  # None: over a limit the server enforced itself
    key_info: KeyInfo | None = None  # already checked from the headers, before the body
    # The Gemini surface names the model and whether to stream in the path.
    model: str = ""
    stream: bool = False


@dataclass
class Reply:
    """An answer: a whole body, or a `stream` of chunks to send as they come."""

    status: int
    headers: Headers
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


def request_id_new() -> str:
    return "req_" + uuid.uuid4().hex


def error_reply(endpoint: str | None, error: ProxyError, request_id: str) -> Reply:
    counted = error.counted_as
    if counted is not None:
        metric = metrics.REFUSALS if counted[0] == "refusal" else metrics.UPSTREAM_ERRORS
        metric.labels(counted[1]).inc()
    status, headers, body = errors.render(provider_for(endpoint), error, request_id)
    return Reply(status, headers, body)


async def authenticate(headers: Mapping[str, str]) -> KeyInfo:
    raw = core.raw_key(headers)
    if not raw:
        raise errors.missing_key()
    info = await cache.keys.aget(key_hash(raw))
    if info is None:
        raise errors.invalid_key()
    if not info.usable(timezone.now()):
        raise errors.unusable_key()
    return info


async def handle(inbound: Inbound, endpoint: str) -> Reply:
    """One metered call on `endpoint`, answered whatever happens."""
    request_id = request_id_new()
    REQUEST_ID.set(request_id)
    started = time.perf_counter()
    if endpoint in (counting.ENDPOINT, counting.GEMINI_ENDPOINT):
        reply = await _count(inbound, endpoint, request_id)
    else:
        reply = await _handle(inbound, endpoint, request_id)
    metrics.LATENCY.labels(endpoint).observe(time.perf_counter() - started)
    metrics.REQUESTS.labels(endpoint, str(reply.status)).inc()
    return reply


async def _count(inbound: Inbound, endpoint: str, request_id: str) -> Reply:
    """POST /v1/messages/count_tokens and /v1beta/models/{model}:countTokens: never held, never
    charged (see `counting`)."""
    try:
        if inbound.method != "POST":
            raise errors.method_not_allowed()
        limit = settings.TB_MAX_BODY_BYTES
        body = core.check_body_size(inbound.headers.get("content-length"), inbound.body, limit)
        info = inbound.key_info or await authenticate(inbound.headers)
        if endpoint == counting.GEMINI_ENDPOINT:
            status, headers, content = await counting.count_gemini(
                inbound.headers, body, inbound.model, info, request_id
            )
        else:
            status, headers, content = await counting.count(inbound.headers, body, info, request_id)
    except ProxyError as error:
        return error_reply(endpoint, error, request_id)
    except Exception:
        log.exception("token count failed", extra={"request_id": request_id})
        return error_reply(endpoint, errors.internal(), request_id)
    return Reply(status, headers, content)


async def _handle(inbound: Inbound, endpoint: str, request_id: str) -> Reply:
    """Everything that can refuse the call runs before the hold (parsing, validation, the body's
    encoding); from the hold on, the call's HoldOwner sees it closed on every path."""
    provider = PROVIDERS[endpoint]
    try:
        call, encoded = await _prepare(inbound, endpoint, request_id, provider)
    except ProxyError as error:
        return error_reply(endpoint, error, request_id)
    except Exception:
        log.exception("proxy call failed before its hold", extra={"request_id": request_id})
        return error_reply(endpoint, errors.internal(), request_id)
    owner = HoldOwner(call)
    try:
        kind = call.route.target.kind
        await _take_hold(owner, provider)
        if call.route.target.kind != kind:
            encoded = core.encode(call, provider)  # another kind of upstream: its limit field
        return await _forward(owner, inbound, encoded, provider)
    except ProxyError as error:
        if owner.held:
            await asyncio.shield(owner.release(status=error.status, error=error.code or error.kind))
        reply = error_reply(endpoint, error, request_id)
        if call.attempts:
            reply.headers.append(("x-tokenbudget-attempts", str(call.attempts)))
        return reply
    except Exception:
        log.exception("proxy call failed", extra={"request_id": request_id})
        if owner.held:
            await asyncio.shield(owner.release(status=500, error="internal_error"))
        return error_reply(endpoint, errors.internal(), request_id)
    except asyncio.CancelledError:
        if owner.held:
            owner.release(status=499, error="client_closed")
        raise


async def _prepare(
    inbound: Inbound, endpoint: str, request_id: str, provider: Provider
) -> tuple[Call, EncodedBody]:
    """Authenticate, parse and check the request, route it, estimate it and encode the upstream
    body: all that may refuse the call, before anything is held."""
    if inbound.method != "POST":
        raise errors.method_not_allowed()
    limit = settings.TB_MAX_BODY_BYTES
    body = core.check_body_size(inbound.headers.get("content-length"), inbound.body, limit)
    info = inbound.key_info or await authenticate(inbound.headers)
    if endpoint == gemini.ENDPOINT:
        # The Gemini surface names the model (checked as a body's would be) in the path.
        provider = GEMINI.for_call(inbound.model, inbound.stream)
    try:
        parsed = await request_parse(provider, endpoint, body)
        header = inbound.headers.get("x-intent")
        tagged = validation.header_text(header, name="x-intent") if header else parsed.intent
    except RequestError as exc:
        raise errors.invalid_request(exc.message, exc.param) from exc
    core.check_choices(parsed, settings.TB_MAX_CHOICES)
    requested = parsed.model
    alias = routing.alias_intent(requested)
    if alias is not None:
        target = await routing.intents.aget(alias) if alias else None
        candidates = target.candidates if target is not None else ()
        parsed.model = core.alias_choice(info, alias, requested, candidates)
    route = core.check_route(info, parsed, await cache.routes.aget(parsed.model))
    at = timezone.now()
    prompt = await prompt_estimate(parsed)
    plan = await _plan(info, parsed, route, at, prompt)
    estimate = core.hold_estimate(parsed, plan, info, prompt)
    intent = (tagged or alias or info.default_intent)[:100]
    call = Call(
        request_id,
        time.perf_counter(),
        at,
        endpoint,
        info,
        parsed,
        plan[0].route,
        plan[0].quote,
        estimate,
        intent,
        requested_model=requested if alias is not None else "",
        plan=plan,
    )
    # Encoding a large body runs off the event loop, like its parse.
    return call, await sized_work(len(body), core.encode, call, provider)


def _tokens(parsed: ParsedRequest, route: RouteInfo, prompt: int) -> int:
    """What a call counts against a deployment's tokens per minute: its prompt and output limit."""
    return prompt + (parsed.max_output_tokens or route.default_max_output_tokens) * parsed.choices


async def _plan(
    info: KeyInfo, parsed: ParsedRequest, route: RouteInfo, at: Any, prompt: int
) -> list[core.Candidate]:
    """The candidates to try, best first: the route's deployments (healthy ones of the best
    priority first), then each fallback model's, at most TB_ROUTE_MAX_ATTEMPTS. A route none
    of whose deployments can be priced is refused with the first one's error."""
    tokens = _tokens(parsed, route, prompt)
    ordered = health.plan(route.deployments, tokens)
    plan, error = core.candidates_of(info, route, ordered, parsed.endpoint, at)
    limit = settings.TB_ROUTE_MAX_ATTEMPTS
    for name in route.fallback_models:
        if len(plan) >= limit:
            break
        try:
            wanted = dataclasses.replace(parsed, model=name)
            other = core.check_route(info, wanted, await cache.routes.aget(name))
        except ProxyError as refused:
            log.info("fallback model unusable", extra={"model": name, "error": refused.code})
            continue
        ordered = health.plan(other.deployments, tokens)
        more, _ = core.candidates_of(info, other, ordered, parsed.endpoint, at)
        plan += more
    if not plan:
        assert error is not None
        raise error
    return plan[:limit]


async def _take_hold(owner: HoldOwner, provider: Provider) -> None:
    """Reserve (and maybe downgrade); raises ProxyError for a refusal or a rate limit."""
    call = owner.call
    sent = crossing.provider_of(call.sent_endpoint) if call.upstream_endpoint else provider
    minimum = core.min_output(sent, call.sent_endpoint, call.parsed.choices)
    stand_in = call.info.downgrade_for(call.route.public_name)
    result = await owner.reserve(min_output_tokens=minimum, wait=stand_in is None)
    if stand_in is not None:
        result = await _maybe_downgrade(owner, result, stand_in, minimum)
    if isinstance(result, ledger.Refusal):
        raise errors.refusal(result)
    if isinstance(result, quota_redis.RateLimited):
        raise errors.rate_limited(result.scope, result.kind, result.retry_after)


async def _maybe_downgrade(
    owner: HoldOwner, result: Reserved, stand_in: str, minimum: int
) -> Reserved:
    """Serve the call with the policy's cheaper stand-in once the allowance's consumption has
    reached the policy's share, or when the requested model was refused for budget."""
    call = owner.call
    if isinstance(result, quota_redis.RateLimited):
        return result
    refused = isinstance(result, ledger.Refusal)
    hold = None
    if not isinstance(result, ledger.Refusal | quotas.UnheldCall):
        hold = result.hold
    if not core.downgrade_due(call.info, hold, refused):
        return result
    try:
        wanted = dataclasses.replace(call.parsed, model=stand_in)
        route = core.check_route(call.info, wanted, await cache.routes.aget(stand_in))
        quote = core.quote(route, call.info, call.at)
    except ProxyError as error:
        log.warning(
            "downgrade model unusable",
            extra={"request_id": call.request_id, "model": stand_in, "error": error.code},
        )
        return await owner.reserve(min_output_tokens=minimum) if refused else result
    estimate = core.estimate(call.parsed, route, call.info, quote, call.estimate.prompt_tokens)
    if hold is not None and not routing.fits_in_hold(hold, estimate):
        return result  # the stand-in is not cheaper: keep the requested model
    call.route, call.quote, call.estimate = route, quote, estimate
    if refused:
        result = await owner.reserve(min_output_tokens=minimum)
        if isinstance(result, ledger.Refusal):
            return result
    held = result.hold if isinstance(result, CallHold | quota_redis.RedisHold) else None
    call.plan = await _stand_in_plan(call, route, held)
    call.requested_model = call.requested_model or call.parsed.model
    call.parsed.model = stand_in
    call.downgraded = True
    return result


async def _stand_in_plan(call: Call, route: RouteInfo, hold: Any) -> list[core.Candidate]:
    """The stand-in's deployments whose worst case fits the hold taken (else the stand-in as
    checked against the hold, served by its first deployment)."""
    prompt = call.estimate.prompt_tokens
    ordered = health.plan(route.deployments, _tokens(call.parsed, route, prompt))
    found, _ = core.candidates_of(call.info, route, ordered, call.endpoint, call.at)
    plan = [
        candidate
        for candidate in found
        if hold is None
        or routing.fits_in_hold(
            hold, core.estimate(call.parsed, route, call.info, candidate.quote, prompt)
        )
    ]
    return plan[: settings.TB_ROUTE_MAX_ATTEMPTS] or [core.Candidate(call.route, call.quote)]


async def _forward(
    owner: HoldOwner, inbound: Inbound, encoded: EncodedBody, provider: Provider
) -> Reply:
    """Send the call to its candidates in turn until one answers: a connect error, a timeout
    before the answer's head, a 429 or a 5xx moves on to the next while attempts and the
    deadline last (`deployments.may_try_next`); the last one's failure is the client's answer.
    Once an answer is taken nothing is retried, so no byte reaches the client twice."""
    call = owner.call
    plan = call.plan or [core.Candidate(call.route, call.quote)]
    deadline = call.started + settings.TB_ROUTE_DEADLINE_SECONDS
    kind = call.route.target.kind
    for index, candidate in enumerate(plan):
        if index and not deployments.may_try_next(
            attempts=index,
            max_attempts=settings.TB_ROUTE_MAX_ATTEMPTS,
            left=deadline - time.perf_counter(),
            candidates_left=len(plan) - index,
        ):
            break
        call.route, call.quote, call.attempts = candidate.route, candidate.quote, index + 1
        if candidate.route.target.kind != kind:
            kind = candidate.route.target.kind
            encoded = core.encode(call, provider)
        final = index + 1 >= min(len(plan), settings.TB_ROUTE_MAX_ATTEMPTS)
        response = await _attempt(owner, inbound, encoded, deadline, final)
        if response is not None:
            break
    else:
        response = None
    if response is None:
        raise call_failure(call)
    if response.status_code >= 400 or not call.parsed.stream:
        return await _whole(owner, response, provider)
    return _stream(owner, response, provider)


def call_failure(call: Call) -> ProxyError:
    """The error of a call none of whose attempts got an answer (the last one's)."""
    if call.last_failure == deployments.TIMEOUT:
        return errors.upstream_timeout()
    if call.last_failure == "credentials":
        return errors.upstream_credentials()
    return errors.upstream_unreachable()


async def _attempt(
    owner: HoldOwner, inbound: Inbound, encoded: EncodedBody, deadline: float, final: bool
) -> upstream.UpstreamResponse | None:
    """One attempt on the call's current candidate: its answer, or None to try the next (a
    failed attempt's answer is closed unread). A `final` attempt's failing answer is kept: it
    is the client's."""
    call = owner.call
    deployment = call.route.deployment
    target = call.route.target
    left = deadline - time.perf_counter()
    if left < target.connect_timeout or left < target.read_timeout:
        target = dataclasses.replace(
            target,
            connect_timeout=min(target.connect_timeout, left),
            read_timeout=min(target.read_timeout, left),
        )
    headers = upstream.upstream_headers(target, inbound.headers, call.request_id)
    started = time.perf_counter()
    if deployment is not None:
        health.started(deployment, call.estimate.prompt_tokens + call.estimate.max_output_tokens)
        owner.on_closed = lambda: health.finished(deployment)
    try:
        response = await upstream.send(
            target,
            endpoint=call.sent_endpoint,
            upstream_model=call.route.upstream_model,
            body=core.upstream_body(call, encoded),
            headers=headers,
            stream=call.parsed.stream,
        )
    except upstream.UpstreamError as exc:
        kind = deployments.TIMEOUT if isinstance(exc, upstream.UpstreamTimeout) else "connect"
        log.warning(
            "upstream unreachable",
            extra={"request_id": call.request_id, "error": type(exc).__name__, "kind": kind},
        )
        call.last_failure = (
            "credentials" if isinstance(exc, upstream.UpstreamCredentialsError) else kind
        )
        if deployment is not None:
            health.failed(deployment, kind, time.perf_counter() - started)
            health.finished(deployment)
            owner.on_closed = None
        return None
    failure = deployments.failure_of_status(response.status_code)
    if deployment is not None:
        if failure is None:
            health.succeeded(deployment, time.perf_counter() - started)
        else:
            health.failed(deployment, failure, time.perf_counter() - started)
    if failure is None or final or time.perf_counter() >= deadline:
        return response  # the answer, or the last failure's: the client's
    metrics.UPSTREAM_ERRORS.labels(failure).inc()
    await response.aclose()
    call.last_failure = failure
    if deployment is not None:
        health.finished(deployment)
        owner.on_closed = None
    return None


def _stream(owner: HoldOwner, response: upstream.UpstreamResponse, provider: Provider) -> Reply:
    """Hand the hold to the relay. If the relay never runs (the client left before the first
    byte was sent), the owner's fallback closes the upstream and the hold as the relay would."""
    call = owner.call
    meter: StreamMeter
    if call.upstream_endpoint:
        meter = crossing.stream_meter(
            call.endpoint,
            call.upstream_endpoint,
            call.route.upstream_model,
            call.parsed.include_usage_requested,
        )
        content_type = "text/event-stream"
    else:
        strip = core.forces_usage(call) and not call.parsed.include_usage_requested
        meter = provider.stream_meter(call.endpoint, strip_usage_chunk=strip)
        content_type = response.headers.get("content-type", "text/event-stream")
    if call.route.target.kind == "bedrock_anthropic":
        # Bedrock's event-stream frames carry Anthropic's events: relayed as Anthropic SSE.
        meter = crossing.InvokeStreamMeter(meter)
        content_type = "text/event-stream"
    relay = Relay(owner, response, meter)
    owner.fallback = relay.abandon
    headers: Headers = [
        ("content-type", content_type),
        ("cache-control", "no-cache"),
        ("x-accel-buffering", "no"),
    ]
    headers += core.budget_headers(call, call.held.hold.remaining)
    return Reply(response.status_code, headers, stream=relay.chunks())


async def _whole(
    owner: HoldOwner, response: upstream.UpstreamResponse, provider: Provider
) -> Reply:
    call = owner.call
    try:
        content = await response.aread()
    except upstream.UpstreamTimeout:
        raise errors.upstream_timeout() from None
    except upstream.UpstreamError:
        raise errors.upstream_broken() from None
    finally:
        await response.aclose()
    status = response.status_code
    sent = crossing.provider_of(call.sent_endpoint) if call.upstream_endpoint else provider
    usage = core.whole_usage(sent, call.sent_endpoint, status, content)
    if status >= 400:
        metrics.UPSTREAM_ERRORS.labels(f"http_{status}").inc()
    if usage is None:
        # An upstream error (or an answer without usage) before any output: pass it through and
        # charge nothing, but keep the record of the failed call.
        error = "upstream_error" if status >= 400 else "no_usage"
        await asyncio.shield(owner.release(status=status, error=error))
        remaining = core.remaining_after(call, Decimal(0))
    else:
        record = call.record(usage=usage, status=status, source="provider", ttft=None)
        await asyncio.shield(owner.settle(record))
        remaining = core.remaining_after(call, core.charge_of(call, usage, record))
    content_type = response.headers.get("content-type", "application/json")
    if call.upstream_endpoint:
        content, content_type = _translated(call, provider, status, content), "application/json"
    elif status >= 400 and call.route.target.kind == "bedrock_anthropic":
        # Bedrock's error shape ({"message": ...}) in Anthropic's.
        content = crossing.error_answer(provider, status, content)
        content_type = "application/json"
    headers: Headers = [
        ("content-type", content_type),
        ("content-length", str(len(content))),
    ]
    return Reply(status, headers + core.budget_headers(call, remaining), content)


def _translated(call: Call, client: Provider, status: int, content: bytes) -> bytes:
    """A cross-protocol call's whole answer (or error) in the client's protocol; the call is
    already settled or released from the upstream's own answer."""
    if status >= 400:
        return crossing.error_answer(client, status, content)
    try:
        return crossing.whole_answer(
            call.endpoint, call.upstream_endpoint, content, call.route.upstream_model
        )
    except (ValueError, TypeError, AttributeError, RecursionError):
        log.warning("answer not translatable", extra={"request_id": call.request_id})
        raise errors.upstream_broken() from None
