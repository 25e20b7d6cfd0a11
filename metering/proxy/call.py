"""The pure core of one proxied call: what to hold, what to send, what to charge, what to tell.

Nothing here awaits. The shell (`metering.proxy.shell`) does the I/O (the key and route caches,
the reserve, the upstream call, the settle) and asks this module every question in between:
the route's and the price's checks, the worst case to hold, the upstream body, the usage of a
whole answer or of a stream however it ended, and the budget headers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from django.conf import settings

from budgets import ledger
from budgets.formatting import plain, tokens_text
from metering import pricing, routing, tokens, validation
from metering.models import UsageRecord
from metering.providers import anthropic
from metering.providers.base import (
    BodyEncodingError,
    EncodedBody,
    ParsedRequest,
    Provider,
    StreamState,
    Usage,
)
from metering.proxy import crossing, errors
from metering.proxy.errors import Headers
from metering.selectors import KeyInfo, RouteInfo, pick_price
from metering.translate import limits

log = logging.getLogger("tokenbudget.proxy")

ERROR_TYPE_LENGTH = UsageRecord._meta.get_field("error_type").max_length


@dataclass
class Call:
    """Everything known about one call while it is in flight."""

    request_id: str
    started: float
    at: Any  # the call's instant (a datetime), for the price and the record
    endpoint: str
    info: KeyInfo
    parsed: ParsedRequest
    route: RouteInfo
    quote: pricing.PriceQuote
    estimate: ledger.CallEstimate
    intent: str
    held: Any = None  # the quota backend's hold (metering.quota.interface.AnyHold) once taken
    # The model the client asked for, when routing served another (alias or downgrade).
    requested_model: str = ""
    downgraded: bool = False
    # A cross-protocol call: the upstream's endpoint ("" for a native call) and the request
    # translated into its protocol (see `metering.proxy.crossing`).
    upstream_endpoint: str = ""
    sent: ParsedRequest | None = None
    # The candidates to try, best first (`candidates_of`), and how many were tried so far.
    plan: list[Candidate] = dataclasses.field(default_factory=list)
    attempts: int = 0
    last_failure: str = ""  # what the latest failed attempt ended with (deployments' kinds)

    @property
    def sent_endpoint(self) -> str:
        return self.upstream_endpoint or self.endpoint

    @property
    def sent_request(self) -> ParsedRequest:
        return self.sent or self.parsed

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
            deployment_id=self.route.deployment.id if self.route.deployment else None,
            attempts=max(self.attempts, 1),
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

    def release_record(self, *, status: int, error: str) -> UsageRecord:
        """The record of a call that ends charging nothing."""
        return self.record(
            usage=Usage(), status=status, source=UsageRecord.Source.NONE, ttft=None, error=error
        )


# --- before the hold -------------------------------------------------------------------------


def check_body_size(declared: str | None, body: bytes | None, limit: int) -> bytes:
    """The body, or a 413 when it is (or was declared) over `limit` (None: not readable)."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise errors.too_large(limit)
    if body is None or len(body) > limit:
        raise errors.too_large(limit)
    return body


def raw_key(headers: Any) -> str | None:
    """The client's key from `Authorization: Bearer`, `x-api-key` or `x-goog-api-key` (Google's
    clients; the Gemini surface's `?key=` arrives as this header) (lower-case names)."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("x-api-key") or headers.get("x-goog-api-key") or None


def check_choices(parsed: ParsedRequest, limit: int) -> None:
    """Parallel answers multiply the output; past `limit` a call is refused."""
    if parsed.choices > limit:
        param = "n" if parsed.body.get("n") == parsed.choices else "best_of"
        raise errors.ProxyError(
            400,
            "invalid",
            f"Invalid '{param}': at most {limit} answers per call are allowed here "
            f"(asked for {parsed.choices}).",
            "invalid_value",
            param,
        )


def alias_choice(info: KeyInfo, intent: str, requested: str, candidates: Sequence[str]) -> str:
    """The model `auto:<intent>` stands for: the first candidate the caller may use."""
    if not candidates:
        raise errors.model_not_found(
            f"The model '{requested}' does not exist: no intent '{intent}' with a recommended "
            "or default model."
        )
    for candidate in candidates:
        if info.may_use(candidate):
            return candidate
    raise errors.model_not_allowed(
        f"Your key may not use the models '{requested}' stands for ({', '.join(candidates)})."
    )


def check_route(info: KeyInfo, parsed: ParsedRequest, route: RouteInfo | None) -> RouteInfo:
    """The route for `parsed.model` (None: no such route), if this key may call it here.

    The key's and the policy's model lists name routes by their public name: a route's alias
    is as usable as the route, and no more."""
    model = parsed.model
    if route is None:
        raise errors.model_not_found(f"The model '{model}' does not exist.")
    if not info.may_use(route.public_name):
        raise errors.model_not_allowed(f"Your key may not use the model '{model}'.")
    try:
        crossing.upstream_endpoint(parsed.endpoint, route.target.kind)
    except errors.ProxyError as error:
        raise errors.wrong_endpoint(f"'{model}': {error.message}") from None
    return route


def quote(route: RouteInfo, info: KeyInfo, at: Any) -> pricing.PriceQuote:
    """The price in force at `at`, or a 403 for a route without one the key can pay with."""
    if route.unmetered_cost:
        if info.allowance_unit != ledger.TOKENS:
            raise errors.model_not_priced(
                f"'{route.public_name}' is self-hosted and unpriced; it needs a token allowance."
            )
        return pricing.FREE
    price = route.price_at(at)
    if price is None:
        raise errors.model_not_priced(
            f"No price is in force for '{route.public_name}'; ask an admin to set one."
        )
    return pricing.quote_from(price)


class Candidate:
    """One way to serve the call: a route as served by one of its deployments, and its price.
    The route specialised for the deployment is built on first use (most calls try one)."""

    __slots__ = ("_route", "base", "deployment", "quote")

    def __init__(self, base: RouteInfo, quote: pricing.PriceQuote, deployment: Any = None) -> None:
        self.base = base
        self.quote = quote
        self.deployment = deployment
        self._route: RouteInfo | None = None if deployment is not None else base

    @property
    def route(self) -> RouteInfo:
        if self._route is None:
            self._route = self.base.for_deployment(self.deployment)
        return self._route


def candidates_of(
    info: KeyInfo, route: RouteInfo, ordered: Sequence[Any], endpoint: str, at: Any
) -> tuple[list[Candidate], errors.ProxyError | None]:
    """The route's deployments `ordered` as candidates, with the error of the first one left
    out (no price in force, or a kind of upstream that cannot serve `endpoint`). Deployments
    of one upstream model share their price rows, so each distinct model is priced once."""
    if not ordered:
        return [Candidate(route, quote(route, info, at))], None
    found: list[Candidate] = []
    first_error: errors.ProxyError | None = None
    quotes: dict[int, pricing.PriceQuote | errors.ProxyError] = {}
    kinds: dict[str, bool] = {}
    for deployment in ordered:
        kind = deployment.target.kind
        serves = kinds.get(kind)
        if serves is None:
            try:
                crossing.upstream_endpoint(endpoint, kind)
                serves = True
            except errors.ProxyError as error:
                first_error = first_error or error
                serves = False
            kinds[kind] = serves
        if not serves:
            continue
        priced = quotes.get(id(deployment.prices))
        if priced is None:
            try:
                priced = _quote_of(route, deployment.prices, info, at)
            except errors.ProxyError as error:
                priced = error
            quotes[id(deployment.prices)] = priced
        if isinstance(priced, errors.ProxyError):
            first_error = first_error or priced
            continue
        found.append(Candidate(route, priced, deployment))
    return found, first_error


def _quote_of(route: RouteInfo, prices: Any, info: KeyInfo, at: Any) -> pricing.PriceQuote:
    """`quote` for the route served under price rows `prices`."""
    if route.unmetered_cost or prices is route.prices:
        return quote(route, info, at)
    price = pick_price(prices, at)
    if price is None:
        raise errors.model_not_priced(
            f"No price is in force for '{route.public_name}'; ask an admin to set one."
        )
    return pricing.quote_from(price)


def hold_estimate(
    parsed: ParsedRequest, candidates: Sequence[Candidate], info: KeyInfo, prompt: int
) -> ledger.CallEstimate:
    """The worst case over every candidate: the most output any may produce at the highest
    rates any charges, so whichever serves, the hold covers it."""
    first = candidates[0]
    worst = estimate(parsed, first.base, info, first.quote, prompt)
    for candidate in candidates[1:]:
        if candidate.base is first.base:
            if candidate.quote == first.quote:
                continue
            one = dataclasses.replace(
                worst,
                input_price_per_token=pricing.worst_input_rate(candidate.quote),
                output_price_per_token=candidate.quote.output,
            )
        else:
            one = estimate(parsed, candidate.base, info, candidate.quote, prompt)
        if one != worst:
            worst = ledger.CallEstimate(
                prompt_tokens=prompt,
                max_output_tokens=max(worst.max_output_tokens, one.max_output_tokens),
                input_price_per_token=max(worst.input_price_per_token, one.input_price_per_token),
                output_price_per_token=max(
                    worst.output_price_per_token, one.output_price_per_token
                ),
            )
    return worst


def estimate(
    parsed: ParsedRequest,
    route: RouteInfo,
    info: KeyInfo,
    price: pricing.PriceQuote,
    prompt: int,
) -> ledger.CallEstimate:
    """The call's worst case. Its `max_output_tokens` is the output of all the call's choices
    together (chat `n`): the hold covers prompt + choices x limit, and the limit sent upstream is
    the held output divided by the choices."""
    if parsed.endpoint == "embeddings":
        return ledger.CallEstimate(
            prompt_tokens=prompt,
            max_output_tokens=0,
            input_price_per_token=pricing.worst_input_rate(price),
            output_price_per_token=price.output,
        )
    choices = parsed.choices
    per_choice = parsed.max_output_tokens or route.default_max_output_tokens
    if info.per_request_token_cap is not None:
        room = info.per_request_token_cap - prompt
        if room < choices:
            answers = "an answer" if choices == 1 else f"{choices} answers"
            raise errors.ProxyError(
                400,
                "invalid",
                f"The prompt (about {tokens_text(prompt)} tokens) leaves no room for "
                f"{answers} within your per-request cap of "
                f"{tokens_text(info.per_request_token_cap)} tokens.",
                "request_too_large",
            )
        per_choice = min(per_choice, room // choices)
    return ledger.CallEstimate(
        prompt_tokens=prompt,
        max_output_tokens=per_choice * choices,
        input_price_per_token=pricing.worst_input_rate(price),
        output_price_per_token=price.output,
    )


def forces_usage(call: Call) -> bool:
    """A chat stream is sent upstream with `include_usage` set, whatever the client asked."""
    return call.sent_endpoint == "chat" and call.parsed.stream


def encode(call: Call, provider: Provider) -> EncodedBody:
    """The upstream body without the fields the hold decides; 400 when it cannot be sent.
    A call to an upstream of the other protocol is translated into it first."""
    call.upstream_endpoint = crossing.upstream_endpoint(call.endpoint, call.route.target.kind)
    call.sent = None
    if call.upstream_endpoint:
        call.sent = crossing.upstream_request(call.parsed, call.upstream_endpoint)
        provider = crossing.provider_of(call.upstream_endpoint)
    kind = call.route.target.kind
    limit_field = "max_tokens" if kind == "openai_compatible" else None
    try:
        if kind == "vertex_anthropic":
            return anthropic.encode_vertex_body(call.sent_request)
        if kind == "bedrock_anthropic":
            return anthropic.encode_bedrock_body(call.sent_request)
        return provider.encode_upstream_body(
            call.sent_request,
            force_include_usage=forces_usage(call),
            default_limit_field=limit_field,
        )
    except BodyEncodingError as exc:
        raise errors.unencodable_body() from exc


def min_output(provider: Provider, endpoint: str, choices: int) -> int:
    """The least output a clamp may leave: every choice its minimum."""
    return provider.min_output_tokens.get(endpoint, 1) * choices


# --- after the hold --------------------------------------------------------------------------


def per_choice(call: Call) -> int:
    """The output limit sent upstream: the held output shared among the choices."""
    return call.held.hold.output_tokens // call.parsed.choices


def upstream_body(call: Call, encoded: EncodedBody) -> bytes:
    """The body sent upstream; when the proxy sets a lower output limit than the client asked
    (a clamp, a cap, or no limit asked), the limits that must stay below it are lowered too, or
    the call is refused (429) when none fits."""
    if call.endpoint == "embeddings":
        return encoded.finish(upstream_model=call.route.upstream_model, max_output_tokens=None)
    limit = per_choice(call)
    asked = call.parsed.max_output_tokens
    if asked is None or limit < asked:
        dependent = limits.dependent_limits(call.sent_endpoint, call.sent_request.body, limit)
        if dependent.refusal is not None:
            raise errors.limits_unfit(dependent.refusal)
        encoded = encoded.with_fields(dependent.updates)
    return encoded.finish(upstream_model=call.route.upstream_model, max_output_tokens=limit)


def downgrade_due(info: KeyInfo, hold: Any, refused: bool) -> bool:
    """Whether to try the policy's stand-in: the requested model was refused for budget, or
    the allowance's consumption has reached the policy's share (`hold` the call's ledger
    hold; None for a call let through unheld, which is never downgraded)."""
    if refused:
        return True
    return hold is not None and routing.consumed_share_reached(info, hold)


def whole_usage(provider: Provider, endpoint: str, status: int, content: bytes) -> Usage | None:
    """The provider's usage in a whole (non-streamed) answer; None for an error or none said."""
    if status >= 400:
        return None
    try:
        return provider.usage_from_body(endpoint, json.loads(content))
    except (ValueError, TypeError, AttributeError, RecursionError):
        return None  # not a JSON object with a usage in it


def remaining_after(call: Call, charged: Decimal) -> Decimal:
    """The allowance left once this call's hold is replaced by `charged`."""
    hold = call.held.hold
    return hold.remaining + hold.amount - charged


def charge_of(call: Call, usage: Usage, record: UsageRecord) -> Decimal:
    unit_tokens = call.held.hold.unit == ledger.TOKENS
    return Decimal(usage.total_tokens) if unit_tokens else record.cost


def stream_settlement(
    call: Call, state: StreamState, outcome: str, status: int, first: float | None
) -> tuple[UsageRecord, bool]:
    """The record of a stream that ended with `outcome` ("complete", "client_closed",
    "upstream_broken") and whether it is charged: the provider's usage when it said it; else,
    when output was relayed, an estimate (`produced`); else nothing, released."""
    error = "" if outcome == "complete" and not state.error else (state.error or outcome)
    if state.usage is not None:
        usage, source = state.usage, UsageRecord.Source.PROVIDER
    elif state.saw_output:
        usage, source = produced(call, state), UsageRecord.Source.ESTIMATED
    else:
        record = call.record(
            usage=Usage(),
            status=status,
            source=UsageRecord.Source.NONE,
            ttft=None,
            error=error or "no_output",
        )
        return record, False
    if outcome == "client_closed":
        status = 499
    return call.record(usage=usage, status=status, source=source, ttft=first, error=error), True


def produced(call: Call, state: StreamState) -> Usage:
    """A stream cut before the provider's final usage: the provider's own input counts when
    it sent them (Anthropic's message_start), else the prompt estimate; plus the output
    counted from the text relayed."""
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


def budget_headers(call: Call, remaining: Decimal) -> Headers:
    """The x-request-id and x-tokenbudget-* headers of an answered call."""
    hold = call.held.hold
    period = ledger.active_period(
        hold.fiscal_year,
        settings.TB_FISCAL_YEAR_START_MONTH,
        call.info.employee_start,
        call.info.employee_end,
    )
    left = remaining.to_integral_value(ROUND_FLOOR) if hold.unit == ledger.TOKENS else remaining
    headers: Headers = [
        ("x-request-id", call.request_id),
        # Plain digits: a client reads these with int() / Decimal(), never an exponent.
        ("x-tokenbudget-remaining", plain(left)),
        ("x-tokenbudget-unit", hold.unit),
        ("x-tokenbudget-period-end", (period.end - dt.timedelta(days=1)).isoformat()),
    ]
    if hold.clamped:
        headers.append(("x-tokenbudget-max-tokens-clamped", str(per_choice(call))))
    if call.attempts:
        headers.append(("x-tokenbudget-attempts", str(call.attempts)))
    if call.requested_model:
        headers.append(("x-tokenbudget-model", call.route.public_name))
        if call.downgraded:
            headers.append(("x-tokenbudget-downgraded-from", call.requested_model))
        else:
            headers.append(("x-tokenbudget-routed-from", call.requested_model))
    return headers
