"""The metering proxy: plain async Django views (no DRF on the hot path).

One call: authenticate (cached) -> parse -> route and policy -> estimate -> reserve -> forward
-> meter -> settle and record -> respond. With warm caches the only database work is the
reserve and the settle transactions (see metering/services.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from types import ModuleType

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from budgets import ledger
from budgets.formatting import amount_text, plain, tokens_text
from metering import (
    cache,
    metrics,
    pricing,
    routing,
    tokens,
    upstream,
    validation,
)
from metering.body import prompt_estimate, request_parse, sized_work
from metering.dbpool import in_db_thread
from metering.logs import REQUEST_ID
from metering.models import UsageRecord
from metering.providers import anthropic as anthropic_protocol
from metering.providers import openai as openai_protocol
from metering.providers.base import (
    BodyEncodingError,
    EncodedBody,
    ParsedRequest,
    RequestError,
    Usage,
)
from metering.quota import interface as quotas
from metering.quota import redis_backend as quota_redis
from metering.selectors import KeyInfo, RouteInfo, aliases_for_key, key_hash, routes_for_key
from metering.services import CallHold

log = logging.getLogger("tokenbudget.proxy")


_routes_for_key = in_db_thread(routes_for_key)
_aliases_for_key = in_db_thread(aliases_for_key)
_background: set[asyncio.Task] = set()  # strong references for tasks that outlive a request


# --- errors --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxyError(Exception):
    status: int
    kind: str  # our error kind, mapped to each provider's type below
    message: str
    code: str | None = None
    param: str | None = None
    retry_after: int | None = None


_OPENAI_TYPES = {
    "auth": "invalid_request_error",
    "permission": "invalid_request_error",
    "not_found": "invalid_request_error",
    "invalid": "invalid_request_error",
    "too_large": "invalid_request_error",
    "quota": "insufficient_quota",
    "rate": "rate_limit_error",
    "unavailable": "api_error",
    "upstream": "api_error",
    "timeout": "api_error",
}
_ANTHROPIC_TYPES = {
    "auth": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "invalid": "invalid_request_error",
    "too_large": "request_too_large",
    "quota": "insufficient_quota",
    "rate": "rate_limit_error",
    "unavailable": "overloaded_error",
    "upstream": "api_error",
    "timeout": "api_error",
}


def _protocol(endpoint: str) -> ModuleType:
    return anthropic_protocol if endpoint == "messages" else openai_protocol


def error_response(endpoint: str, error: ProxyError, request_id: str) -> HttpResponse:
    if error.kind in ("quota", "rate", "unavailable"):
        metrics.REFUSALS.labels(error.code or error.kind).inc()
    elif error.kind in ("upstream", "timeout"):
        metrics.UPSTREAM_ERRORS.labels(error.code or error.kind).inc()
    protocol = _protocol(endpoint)
    types = _ANTHROPIC_TYPES if protocol is anthropic_protocol else _OPENAI_TYPES
    body = protocol.error_body(
        error.status, error.message, types[error.kind], code=error.code, param=error.param
    )
    response = HttpResponse(body, status=error.status, content_type="application/json")
    response["Content-Length"] = str(len(body))
    response["x-request-id"] = request_id
    if error.kind == "quota":
        response["x-should-retry"] = "false"  # the official SDKs honour this: a budget won't refill
    if error.retry_after is not None:
        # A rate limit clears with the next minute: the SDKs retry after Retry-After.
        response["retry-after"] = str(error.retry_after)
        response["x-should-retry"] = "true"
    return response


# --- request handling ------------------------------------------------------------------------


def _raw_key(request: HttpRequest) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


async def _authenticate(request: HttpRequest) -> KeyInfo:
    checked = getattr(request, "key_info", None)  # metering.asgi checked it before the body
    if checked is not None:
        return checked
    raw = _raw_key(request)
    if not raw:
        raise ProxyError(
            401,
            "auth",
            "Missing API key: send Authorization: Bearer <key> or x-api-key.",
            "invalid_api_key",
        )
    info = await cache.keys.aget(key_hash(raw))
    if info is None:
        raise ProxyError(401, "auth", "Invalid API key.", "invalid_api_key")
    if not info.usable(timezone.now()):
        raise ProxyError(
            401,
            "auth",
            "This API key is revoked, expired or its owner is inactive.",
            "invalid_api_key",
        )
    return info


# metering.asgi authenticates from the headers before it reads the body.
authenticate = _authenticate


def _read_body(request: HttpRequest) -> bytes:
    declared = request.headers.get("content-length")
    limit = settings.TB_MAX_BODY_BYTES
    if declared and declared.isdigit() and int(declared) > limit:
        raise ProxyError(
            413, "too_large", f"Request body exceeds {limit} bytes.", "request_too_large"
        )
    try:
        body = request.body  # under ASGI already read, and bounded, by metering.asgi
    except RequestDataTooBig:  # Django's own limit (WSGI, the test client)
        body = None
    if body is None or len(body) > limit:
        raise ProxyError(
            413, "too_large", f"Request body exceeds {limit} bytes.", "request_too_large"
        )
    return body


async def _route(info: KeyInfo, parsed: ParsedRequest) -> RouteInfo:
    route = await cache.routes.aget(parsed.model)
    if route is None:
        raise ProxyError(
            404,
            "not_found",
            f"The model '{parsed.model}' does not exist.",
            "model_not_found",
            "model",
        )
    if not info.may_use(parsed.model):
        raise ProxyError(
            403,
            "permission",
            f"Your key may not use the model '{parsed.model}'.",
            "model_not_allowed",
            "model",
        )
    if parsed.endpoint == "messages" and route.target.kind != "anthropic":
        raise ProxyError(
            400,
            "invalid",
            f"'{parsed.model}' is not served on /v1/messages.",
            "wrong_endpoint",
            "model",
        )
    if parsed.endpoint != "messages" and route.target.kind == "anthropic":
        raise ProxyError(
            400,
            "invalid",
            f"'{parsed.model}' is served on /v1/messages only.",
            "wrong_endpoint",
            "model",
        )
    return route


def _quote(route: RouteInfo, info: KeyInfo, at) -> pricing.PriceQuote:
    if route.unmetered_cost:
        if info.allowance_unit != ledger.TOKENS:
            raise ProxyError(
                403,
                "permission",
                f"'{route.public_name}' is self-hosted and unpriced; it needs a token allowance.",
                "model_not_priced",
                "model",
            )
        return pricing.FREE
    price = route.price_at(at)
    if price is None:
        raise ProxyError(
            403,
            "permission",
            f"No price is in force for '{route.public_name}'; ask an admin to set one.",
            "model_not_priced",
            "model",
        )
    return pricing.quote_from(price)


def _estimate(
    parsed: ParsedRequest,
    route: RouteInfo,
    info: KeyInfo,
    quote: pricing.PriceQuote,
    prompt: int | None = None,
) -> ledger.CallEstimate:
    """The call's worst case. Its `max_output_tokens` is the output of all the call's choices
    together (chat `n`): the hold covers prompt + choices x limit, and the limit sent upstream is
    the held output divided by the choices."""
    if prompt is None:
        prompt = tokens.estimate_request_tokens(parsed)
    if parsed.endpoint == "embeddings":
        return ledger.CallEstimate(
            prompt_tokens=prompt,
            max_output_tokens=0,
            input_price_per_token=pricing.worst_input_rate(quote),
            output_price_per_token=quote.output,
        )
    choices = parsed.choices
    per_choice = parsed.max_output_tokens or route.default_max_output_tokens
    if info.per_request_token_cap is not None:
        room = info.per_request_token_cap - prompt
        if room < choices:
            raise ProxyError(
                400,
                "invalid",
                f"The prompt (about {tokens_text(prompt)} tokens) leaves no room for "
                f"{_choices_text(choices)} within your per-request cap of "
                f"{tokens_text(info.per_request_token_cap)} tokens.",
                "request_too_large",
            )
        per_choice = min(per_choice, room // choices)
    return ledger.CallEstimate(
        prompt_tokens=prompt,
        max_output_tokens=per_choice * choices,
        input_price_per_token=pricing.worst_input_rate(quote),
        output_price_per_token=quote.output,
    )


def _choices_text(choices: int) -> str:
    return "an answer" if choices == 1 else f"{choices} answers"


def _check_choices(parsed: ParsedRequest) -> None:
    """Parallel answers multiply the output; past TB_MAX_CHOICES a call is refused."""
    limit = settings.TB_MAX_CHOICES
    if parsed.choices > limit:
        param = "n" if parsed.body.get("n") == parsed.choices else "best_of"
        raise ProxyError(
            400,
            "invalid",
            f"Invalid '{param}': at most {limit} answers per call are allowed here "
            f"(asked for {parsed.choices}).",
            "invalid_value",
            param,
        )


def _per_choice(call: Call) -> int:
    """The output limit sent upstream: the held output shared among the choices."""
    assert call.held is not None
    return call.held.hold.output_tokens // call.parsed.choices


def _refusal(refusal: ledger.Refusal) -> ProxyError:
    what = {
        "employee_allowance": "your token allowance",
        "key_cap": "this key's cap",
        "no_allowance": "your allowance (none is assigned for this fiscal year)",
    }.get(refusal.code, refusal.code.replace("cost_center_cap:", "the cost center cap of "))
    return ProxyError(
        429,
        "quota",
        f"Budget exhausted: this call would exceed {what} "
        f"({amount_text(refusal.available, refusal.unit)} left).",
        refusal.code.split(":")[0],
    )


class _HoldSignal:
    """Wakes calls waiting for budget when a call in this process settles or releases its hold
    (calls held by other processes are noticed by polling)."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self, timeout: float) -> None:
        if self._event is None:
            self._event = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)


_holds_closed = _HoldSignal()
POLL_SECONDS = 0.05


def _rate_limited(limited: quota_redis.RateLimited) -> ProxyError:
    whose = "this key" if limited.scope == "key" else "your account"
    return ProxyError(
        429,
        "rate",
        f"Rate limit reached: {whose} may send no more {limited.kind} this minute; "
        f"retry in {limited.retry_after} s.",
        f"rate_limit_{limited.kind}",
        retry_after=limited.retry_after,
    )


async def _reserve_or_wait(
    info: KeyInfo,
    estimate: ledger.CallEstimate,
    endpoint: str,
    *,
    wait: bool = True,
    choices: int = 1,
) -> quotas.AnyHold | ledger.Refusal | quota_redis.RateLimited:
    """Reserve; when only other calls' open holds stand in the way, wait for them to settle
    rather than refuse. Holds are worst cases and usually settle for less, so refusing at once
    would turn away calls the allowance can pay for."""
    # A clamp must leave every choice its minimum.
    minimum = _protocol(endpoint).MIN_OUTPUT_TOKENS.get(endpoint, 1) * choices
    deadline = time.monotonic() + (settings.TB_HOLD_WAIT_SECONDS if wait else 0)
    while True:
        result = await quotas.reserve(info=info, estimate=estimate, min_output_tokens=minimum)
        if not isinstance(result, ledger.Refusal) or not result.waitable:
            return result
        left = deadline - time.monotonic()
        if left <= 0:
            return result
        await _holds_closed.wait(min(POLL_SECONDS, left))


@dataclass
class Call:
    """Everything known about one call while it is in flight."""

    request_id: str
    started: float
    at: object
    endpoint: str
    info: KeyInfo
    parsed: ParsedRequest
    route: RouteInfo
    quote: pricing.PriceQuote
    estimate: ledger.CallEstimate
    intent: str
    held: quotas.AnyHold | None = None
    # The model the client asked for, when routing served another (alias or downgrade).
    requested_model: str = ""
    downgraded: bool = False

    def record(
        self, *, usage: Usage, status: int, source: str, ttft: float | None, error: str = ""
    ) -> UsageRecord:
        cost = (
            pricing.cost_of(usage, self.quote) if source != UsageRecord.Source.NONE else Decimal(0)
        )
        return UsageRecord(
            request_id=self.request_id,
            created_at=self.at,
            employee_id=self.info.employee_id,
            key_id=self.info.key_id,
            cost_center_id=self.info.cost_center_id,
            upstream_id=self.route.upstream_id,
            provider=self.route.target.kind,
            model=self.route.public_name,
            upstream_model=self.route.upstream_model,
            endpoint=self.endpoint,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost=cost,
            latency_ms=int((time.perf_counter() - self.started) * 1000),
            ttft_ms=None if ttft is None else int((ttft - self.started) * 1000),
            status_code=status,
            streamed=self.parsed.stream,
            estimated=source == UsageRecord.Source.ESTIMATED,
            usage_source=source,
            clamped=bool(self.held and self.held.hold.clamped),
            intent=self.intent,
            # Upstream error texts are free-form: keep a storable, bounded label.
            error_type=validation.safe_text(error, ERROR_TYPE_LENGTH),
        )


ERROR_TYPE_LENGTH = UsageRecord._meta.get_field("error_type").max_length


async def _write(*, held: quotas.AnyHold, record: UsageRecord, charged: bool) -> bool:
    """Close the hold (settle when `charged`, else release) and write the call's record.

    A record that cannot be written (a driver refusing its text, a value too long) is written
    again with its text made safe: the call is charged and recorded, never dropped. Only a
    second failure (the database itself down) is left to the hold's expiry, and logged."""
    if charged:
        metrics.call_recorded(
            input_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
            cached=record.cached_input_tokens,
            cache_write=record.cache_write_tokens,
            reasoning=record.reasoning_tokens,
            cost=record.cost,
        )
    close = quotas.settle if charged else quotas.release
    try:
        try:
            return await close(held=held, record=record)
        except Exception:
            log.exception(
                "usage record not written; writing it with safe text",
                extra={"request_id": record.request_id},
            )
            return await close(held=held, record=validation.record_sanitised(record))
    except Exception:
        log.exception("call not recorded", extra={"request_id": record.request_id})
        return False
    finally:
        _holds_closed.notify()


_HOLD_TYPES = (CallHold, quota_redis.RedisHold, quotas.UnheldCall)


class HoldOwner:
    """The one owner of a call's hold: whatever the call goes through after its hold is taken
    (an answer, a provider error, a client that leaves, a cancellation, an exception anywhere),
    exactly one close of the hold is started, and it runs to its end.

    - The first `close` wins; later ones are no-ops, so every path may ask without checking.
    - A close runs as its own task: the request's cancellation cannot stop it half way.
    - When the request's task ends with the hold still open (say, the client left before the
      server began to send a stream), `fallback` closes it: a release, or for a stream handed
      to the relay, the relay's own settle.
    """

    def __init__(self, call: Call) -> None:
        self.call = call
        self.closing: asyncio.Task | None = None
        self.fallback: Callable[[], Awaitable[object]] | None = None

    def adopt(self, result: object) -> None:
        """Take charge of `result` when it is a hold (refusals hold nothing). Called right after
        the reserve returns, with no await in between, so no hold exists without an owner."""
        if not isinstance(result, _HOLD_TYPES) or result is self.call.held:
            return
        assert self.call.held is None, "a call holds once"
        self.call.held = result
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(self._request_done)

    @property
    def held(self) -> bool:
        return self.call.held is not None

    def close(self, closer: Callable[[], Awaitable[object]]) -> asyncio.Task:
        if self.closing is None:
            self.closing = _spawn(closer())
        return self.closing

    def settle(self, record: UsageRecord) -> asyncio.Task:
        assert self.call.held is not None
        return self.close(lambda: _write(held=self.call.held, record=record, charged=True))

    def release(self, *, status: int, error: str) -> asyncio.Task:
        assert self.call.held is not None
        record = self.call.record(
            usage=Usage(), status=status, source=UsageRecord.Source.NONE, ttft=None, error=error
        )
        return self.close(lambda: _write(held=self.call.held, record=record, charged=False))

    def _request_done(self, task: asyncio.Future) -> None:
        if self.closing is not None:
            return
        log.warning(
            "hold closed after its request ended", extra={"request_id": self.call.request_id}
        )
        if self.fallback is not None:
            self.close(self.fallback)
        else:
            self.release(status=499, error="client_closed")


def _budget_headers(response: HttpResponse, call: Call, remaining: Decimal) -> None:
    assert call.held is not None
    hold = call.held.hold
    period = ledger.active_period(
        hold.fiscal_year,
        settings.TB_FISCAL_YEAR_START_MONTH,
        call.info.employee_start,
        call.info.employee_end,
    )
    response["x-request-id"] = call.request_id
    # Plain digits: a client reads these with int() / Decimal(), never an exponent.
    response["x-tokenbudget-remaining"] = plain(
        remaining.to_integral_value(ROUND_FLOOR) if hold.unit == ledger.TOKENS else remaining
    )
    response["x-tokenbudget-unit"] = hold.unit
    response["x-tokenbudget-period-end"] = (period.end - dt.timedelta(days=1)).isoformat()
    if hold.clamped:
        response["x-tokenbudget-max-tokens-clamped"] = str(_per_choice(call))
    if call.requested_model:
        response["x-tokenbudget-model"] = call.route.public_name
        if call.downgraded:
            response["x-tokenbudget-downgraded-from"] = call.requested_model
        else:
            response["x-tokenbudget-routed-from"] = call.requested_model


async def proxy(request: HttpRequest, endpoint: str) -> HttpResponse:
    request_id = "req_" + uuid.uuid4().hex
    REQUEST_ID.set(request_id)
    started = time.perf_counter()
    response = await _proxy(request, endpoint, request_id)
    metrics.LATENCY.labels(endpoint).observe(time.perf_counter() - started)
    metrics.REQUESTS.labels(endpoint, str(response.status_code)).inc()
    return response


async def _proxy(request: HttpRequest, endpoint: str, request_id: str) -> HttpResponse:
    """Everything that can refuse the call runs before the hold (parsing, validation, the body's
    encoding); from the hold on, the call's HoldOwner sees it closed on every path."""
    try:
        call, encoded = await _prepare(request, endpoint, request_id)
    except ProxyError as error:
        return error_response(endpoint, error, request_id)
    except Exception:
        log.exception("proxy call failed before its hold", extra={"request_id": request_id})
        return _internal_error(endpoint, request_id)
    owner = HoldOwner(call)
    try:
        kind = call.route.target.kind
        await _take_hold(call, owner)
        if call.route.target.kind != kind:
            encoded = _encode(call)  # a downgrade to another kind of upstream: its limit field
        return await _forward(owner, request, encoded)
    except ProxyError as error:
        if owner.held:
            await asyncio.shield(owner.release(status=error.status, error=error.code or error.kind))
        return error_response(endpoint, error, request_id)
    except Exception:
        log.exception("proxy call failed", extra={"request_id": request_id})
        if owner.held:
            await asyncio.shield(owner.release(status=500, error="internal_error"))
        return _internal_error(endpoint, request_id)
    except asyncio.CancelledError:
        if owner.held:
            owner.release(status=499, error="client_closed")
        raise


def _internal_error(endpoint: str, request_id: str) -> HttpResponse:
    error = ProxyError(500, "upstream", "Internal error in the proxy.", "internal_error")
    return error_response(endpoint, error, request_id)


async def _prepare(
    request: HttpRequest, endpoint: str, request_id: str
) -> tuple[Call, EncodedBody]:
    """Authenticate, parse and check the request, route it, estimate it and encode the upstream
    body: all that may refuse the call, before anything is held."""
    if request.method != "POST":
        raise ProxyError(405, "invalid", "Use POST.", "method_not_allowed")
    body = _read_body(request)
    info = await _authenticate(request)
    protocol = _protocol(endpoint)
    try:
        parsed = await request_parse(protocol, endpoint, body)
        header = request.headers.get("x-intent")
        tagged = validation.header_text(header, name="x-intent") if header else parsed.intent
    except RequestError as exc:
        raise ProxyError(400, "invalid", exc.message, "invalid_request", exc.param) from exc
    _check_choices(parsed)
    requested = parsed.model
    alias = routing.alias_intent(requested)
    if alias is not None:
        parsed.model = await _alias_model(info, alias, requested)
    route = await _route(info, parsed)
    at = timezone.now()
    quote = _quote(route, info, at)
    estimate = _estimate(parsed, route, info, quote, await prompt_estimate(parsed))
    intent = (tagged or alias or info.default_intent)[:100]
    call = Call(
        request_id,
        time.perf_counter(),
        at,
        endpoint,
        info,
        parsed,
        route,
        quote,
        estimate,
        intent,
        requested_model=requested if alias is not None else "",
    )
    # Encoding a large body runs off the event loop, like its parse.
    return call, await sized_work(len(body), _encode, call)


def _encode(call: Call) -> EncodedBody:
    force_usage = call.endpoint == "chat" and call.parsed.stream
    limit_field = "max_tokens" if call.route.target.kind == "openai_compatible" else None
    try:
        return _protocol(call.endpoint).encode_upstream_body(
            call.parsed,
            force_include_usage=force_usage,
            **({"default_limit_field": limit_field} if limit_field else {}),
        )
    except BodyEncodingError as exc:
        raise ProxyError(
            400,
            "invalid",
            "The request body cannot be sent on: it holds text that is not valid Unicode "
            "(a lone surrogate) or is nested too deeply.",
            "invalid_request",
        ) from exc


async def _take_hold(call: Call, owner: HoldOwner) -> None:
    """Reserve (and maybe downgrade); raises ProxyError for a refusal or a rate limit."""
    stand_in = call.info.downgrade_for(call.route.public_name)
    result = await _reserve(call, owner, wait=stand_in is None)
    if stand_in is not None:
        result = await _maybe_downgrade(call, owner, result, stand_in)
    if isinstance(result, ledger.Refusal):
        raise _refusal(result)
    if isinstance(result, quota_redis.RateLimited):
        raise _rate_limited(result)


async def _reserve(
    call: Call, owner: HoldOwner, *, wait: bool = True
) -> quotas.AnyHold | ledger.Refusal | quota_redis.RateLimited:
    try:
        result = await _reserve_or_wait(
            call.info, call.estimate, call.endpoint, wait=wait, choices=call.parsed.choices
        )
    except quotas.QuotaUnavailable:
        raise ProxyError(
            503,
            "unavailable",
            "Budget enforcement is unavailable; try again shortly.",
            "quota_unavailable",
            retry_after=1,
        ) from None
    owner.adopt(result)
    return result


async def _alias_model(info: KeyInfo, intent: str, requested: str) -> str:
    """The model `auto:<intent>` stands for: the first candidate the caller may use."""
    target = await routing.intents.aget(intent) if intent else None
    if target is None or not target.candidates:
        raise ProxyError(
            404,
            "not_found",
            f"The model '{requested}' does not exist: no intent '{intent}' with a recommended "
            "or default model.",
            "model_not_found",
            "model",
        )
    for candidate in target.candidates:
        if info.may_use(candidate):
            return candidate
    raise ProxyError(
        403,
        "permission",
        f"Your key may not use the models '{requested}' stands for "
        f"({', '.join(target.candidates)}).",
        "model_not_allowed",
        "model",
    )


async def _maybe_downgrade(
    call: Call,
    owner: HoldOwner,
    result: quotas.AnyHold | ledger.Refusal | quota_redis.RateLimited,
    stand_in: str,
) -> quotas.AnyHold | ledger.Refusal | quota_redis.RateLimited:
    """Serve the call with the policy's cheaper stand-in once the allowance's consumption has
    reached the policy's share, or when the requested model was refused for budget."""
    if isinstance(result, quota_redis.RateLimited):
        return result
    refused = isinstance(result, ledger.Refusal)
    if not refused and (
        isinstance(result, quotas.UnheldCall)
        or not routing.consumed_share_reached(call.info, result.hold)
    ):
        return result
    try:
        route = await _route(call.info, dataclasses.replace(call.parsed, model=stand_in))
        quote = _quote(route, call.info, call.at)
    except ProxyError as error:
        log.warning(
            "downgrade model unusable",
            extra={"request_id": call.request_id, "model": stand_in, "error": error.code},
        )
        return await _reserve(call, owner) if refused else result
    estimate = _estimate(call.parsed, route, call.info, quote, prompt=call.estimate.prompt_tokens)
    if not refused and not routing.fits_in_hold(result.hold, estimate):
        return result  # the stand-in is not cheaper: keep the requested model
    call.route, call.quote, call.estimate = route, quote, estimate
    if refused:
        result = await _reserve(call, owner)
        if isinstance(result, ledger.Refusal):
            return result
    call.requested_model = call.requested_model or call.parsed.model
    call.parsed.model = stand_in
    call.downgraded = True
    return result


async def _forward(owner: HoldOwner, request: HttpRequest, encoded: EncodedBody) -> HttpResponse:
    call = owner.call
    assert call.held is not None
    body = encoded.finish(
        upstream_model=call.route.upstream_model,
        max_output_tokens=_per_choice(call) if call.endpoint != "embeddings" else None,
    )
    headers = upstream.upstream_headers(call.route.target, request.headers, call.request_id)
    try:
        response = await upstream.send(
            call.route.target,
            endpoint=call.endpoint,
            upstream_model=call.route.upstream_model,
            body=body,
            headers=headers,
        )
    except upstream.UpstreamTimeout:
        raise ProxyError(
            504, "timeout", "The upstream provider timed out.", "upstream_timeout"
        ) from None
    except upstream.UpstreamError as exc:
        log.warning(
            "upstream unreachable",
            extra={"request_id": call.request_id, "error": type(exc).__name__},
        )
        raise ProxyError(
            502, "upstream", "The upstream provider could not be reached.", "upstream_unreachable"
        ) from None

    if response.status_code >= 400 or not call.parsed.stream:
        return await _respond_whole(owner, response)
    return _stream_response(owner, response)


def _stream_response(owner: HoldOwner, response: upstream.UpstreamResponse) -> HttpResponse:
    """Hand the hold to the relay. If the relay never runs (the client left before the first
    byte was sent), the owner's fallback closes the upstream and the hold as the relay would."""
    call = owner.call
    assert call.held is not None
    force_usage = call.endpoint == "chat" and call.parsed.stream
    meter = _protocol(call.endpoint).stream_meter(
        call.endpoint, strip_usage_chunk=force_usage and not call.parsed.include_usage_requested
    )
    relay = _Relay(owner, response, meter)
    owner.fallback = relay.abandon
    streaming = StreamingHttpResponse(
        relay.chunks(),
        status=response.status_code,
        content_type=response.headers.get("content-type", "text/event-stream"),
    )
    streaming["cache-control"] = "no-cache"
    streaming["x-accel-buffering"] = "no"
    _budget_headers(streaming, call, call.held.hold.remaining)
    return streaming


async def _respond_whole(owner: HoldOwner, response: upstream.UpstreamResponse) -> HttpResponse:
    call = owner.call
    assert call.held is not None
    try:
        content = await response.aread()
    except upstream.UpstreamTimeout:
        raise ProxyError(
            504, "timeout", "The upstream provider timed out.", "upstream_timeout"
        ) from None
    except upstream.UpstreamError:
        raise ProxyError(
            502, "upstream", "The upstream connection failed.", "upstream_unreachable"
        ) from None
    finally:
        await response.aclose()
    status = response.status_code
    usage = None
    if status < 400:
        try:
            usage = _protocol(call.endpoint).usage_from_body(call.endpoint, json.loads(content))
        except (ValueError, TypeError, AttributeError, RecursionError):
            usage = None  # not a JSON object with a usage in it
    if status >= 400:
        metrics.UPSTREAM_ERRORS.labels(f"http_{status}").inc()
    if usage is None:
        # An upstream error (or an answer without usage) before any output: pass it through and
        # charge nothing, but keep the record of the failed call.
        await asyncio.shield(
            owner.release(status=status, error="upstream_error" if status >= 400 else "no_usage")
        )
        remaining = call.held.hold.remaining + call.held.hold.amount
    else:
        record = call.record(usage=usage, status=status, source="provider", ttft=None)
        await asyncio.shield(owner.settle(record))
        charged = (
            Decimal(usage.total_tokens) if call.held.hold.unit == ledger.TOKENS else record.cost
        )
        remaining = call.held.hold.remaining + call.held.hold.amount - charged
    out = HttpResponse(
        content,
        status=status,
        content_type=response.headers.get("content-type", "application/json"),
    )
    out["Content-Length"] = str(len(content))
    _budget_headers(out, call, remaining)
    return out


class _Relay:
    """Relays one upstream stream to the client and closes its hold once it ends, however it
    ends (see `chunks`)."""

    def __init__(self, owner: HoldOwner, response: upstream.UpstreamResponse, meter) -> None:
        self.owner = owner
        self.response = response
        self.meter = meter
        self.first: float | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        """Relay the upstream stream chunk by chunk.

        When the provider's end-of-stream marker arrives, the call is settled before the bytes
        that carry it are relayed: a client that has seen its stream complete is never left with
        an unrecorded call, even if this process dies the next moment."""
        outcome = "complete"
        meter = self.meter
        try:
            async for chunk in self.response.aiter_raw():
                out = meter.feed(chunk)
                if self.first is None and meter.state.saw_output:
                    self.first = time.perf_counter()
                if meter.state.finished and self.owner.closing is None:
                    await asyncio.shield(self.owner.close(lambda: self._settle("complete")))
                if out:
                    yield out
            tail = meter.close()
            if tail:
                yield tail
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "client_closed"
            raise
        except upstream.UpstreamError:
            outcome = "upstream_broken"
        finally:
            # Settling must survive the cancellation that a client disconnect delivers here.
            task = _spawn(self.finish(outcome))
            with contextlib.suppress(asyncio.CancelledError, GeneratorExit, RuntimeError):
                await asyncio.shield(task)

    async def finish(self, outcome: str) -> None:
        """Close the upstream (which cancels its generation), then the hold if still open."""
        await self._close_upstream()
        await self.owner.close(lambda: self._settle(outcome))

    async def abandon(self) -> bool:
        """The owner's fallback when the relay never ran: the same close, from the outside."""
        await self._close_upstream()
        return await self._settle("client_closed")

    async def _close_upstream(self) -> None:
        try:
            await self.response.aclose()
        except Exception:
            log.exception("upstream not closed", extra={"request_id": self.owner.call.request_id})

    async def _settle(self, outcome: str) -> bool:
        call = self.owner.call
        assert call.held is not None
        state = self.meter.state
        error = "" if outcome == "complete" and not state.error else (state.error or outcome)
        if state.usage is not None:
            usage, source = state.usage, UsageRecord.Source.PROVIDER
        elif state.saw_output:
            usage, source = self._produced(), UsageRecord.Source.ESTIMATED
        else:
            record = call.record(
                usage=Usage(),
                status=self.response.status_code,
                source=UsageRecord.Source.NONE,
                ttft=None,
                error=error or "no_output",
            )
            return await _write(held=call.held, record=record, charged=False)
        status = 499 if outcome == "client_closed" else self.response.status_code
        record = call.record(
            usage=usage, status=status, source=source, ttft=self.first, error=error
        )
        return await _write(held=call.held, record=record, charged=True)

    def _produced(self) -> Usage:
        """A stream cut before the provider's final usage: the provider's own input counts when
        it sent them (Anthropic's message_start), else the prompt estimate; plus the output
        counted from the text relayed."""
        call = self.owner.call
        assert call.held is not None
        state = self.meter.state
        try:
            output = tokens.count_text_tokens("".join(state.output_text))
        except Exception:
            # The output cannot exceed what was held for it: charge that rather than nothing.
            log.exception("output not countable", extra={"request_id": call.request_id})
            output = call.held.hold.output_tokens
        partial = state.partial_usage
        if partial is None:
            return Usage(input_tokens=call.estimate.prompt_tokens, output_tokens=output)
        return dataclasses.replace(partial, output_tokens=output, reasoning_tokens=0)


def _spawn(coro) -> asyncio.Task:
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


# --- endpoints -------------------------------------------------------------------------------


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse:
    return await proxy(request, "chat")


@csrf_exempt
async def responses(request: HttpRequest) -> HttpResponse:
    return await proxy(request, "responses")


@csrf_exempt
async def embeddings(request: HttpRequest) -> HttpResponse:
    return await proxy(request, "embeddings")


@csrf_exempt
async def messages(request: HttpRequest) -> HttpResponse:
    return await proxy(request, "messages")


async def models(request: HttpRequest) -> HttpResponse:
    request_id = "req_" + uuid.uuid4().hex
    try:
        info = await _authenticate(request)
    except ProxyError as error:
        return error_response("models", error, request_id)
    routes = await _routes_for_key(info)
    aliases = await _aliases_for_key(info, [route.public_name for route in routes])
    data = {
        "object": "list",
        "data": [
            {
                "id": route.public_name,
                "object": "model",
                "created": 0,
                "owned_by": route.upstream.kind,
            }
            for route in routes
        ]
        + [
            {"id": alias, "object": "model", "created": 0, "owned_by": "tokenbudget"}
            for alias in aliases
        ],
    }
    body = json.dumps(data).encode()
    response = HttpResponse(body, content_type="application/json")
    response["Content-Length"] = str(len(body))
    response["x-request-id"] = request_id
    return response
