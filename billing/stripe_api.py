"""The one adapter to Stripe: the only module that imports `stripe`.

Settings (read when called, never at import): TB_STRIPE_SECRET_KEY, TB_STRIPE_API_BASE
(default https://api.stripe.com; a localstripe URL in tests), TB_STRIPE_WEBHOOK_SECRET,
TB_STRIPE_TIMEOUT (seconds, default 20), TB_STRIPE_LOCALSTRIPE (send only the parameters
localstripe accepts).

Every create carries a caller-chosen deterministic idempotency key, so a retried sync replays
Stripe's first answer instead of creating a second object. Errors come out as
StripeRetryableError (network, timeout, rate limit, Stripe 5xx, a rejected or revoked key: retry
later) or StripeFinalError (Stripe refused this request, e.g. an unknown customer: retrying the
same request cannot help until someone fixes the data). Both carry Stripe's HTTP status and error
code when there is one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import stripe
from django.conf import settings


class StripeNotConfigured(Exception):
    """No TB_STRIPE_SECRET_KEY: Stripe sync is switched off."""


class StripeError(Exception):
    """A failed Stripe call; `http_status` and `code` are Stripe's when it answered."""

    def __init__(self, message: str, *, http_status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code


class StripeRetryableError(StripeError):
    """A transient failure (network, rate limit, Stripe-side error, bad key): retry later."""


class StripeFinalError(StripeError):
    """Stripe refused the request (bad parameters, missing object): retrying will not help."""


class WebhookSignatureInvalid(Exception):
    """The webhook body does not carry a valid Stripe signature."""


@dataclass(frozen=True)
class StripeObjectRef:
    id: str
    status: str
    metadata: dict[str, str]
    amount: int = 0
    description: str = ""


def is_configured() -> bool:
    return bool(settings.TB_STRIPE_SECRET_KEY)


def _localstripe() -> bool:
    return bool(settings.TB_STRIPE_LOCALSTRIPE)


def client(http_client: Any = None) -> stripe.StripeClient:
    """A StripeClient against the configured API base, with explicit timeouts."""
    key = settings.TB_STRIPE_SECRET_KEY
    if not key:
        raise StripeNotConfigured("TB_STRIPE_SECRET_KEY is not set")
    base = settings.TB_STRIPE_API_BASE or "https://api.stripe.com"
    timeout = settings.TB_STRIPE_TIMEOUT
    return stripe.StripeClient(
        key,
        base_addresses={"api": base},
        max_network_retries=2,
        http_client=http_client or stripe.new_default_http_client(timeout=timeout),
    )


# Worth retrying later. A rejected key (authentication, permission) is fixed once, in the
# settings, for every statement, so those statements retry on their own rather than block.
TRANSIENT = (
    stripe.APIConnectionError,
    stripe.RateLimitError,
    stripe.APIError,
    stripe.AuthenticationError,
    stripe.PermissionError,
)


def _message(exc: stripe.StripeError) -> str:
    text = getattr(exc, "user_message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, stripe.APIConnectionError):
        # The SDK wraps the network error in a paragraph of advice; keep what went wrong.
        network = re.search(r"\(Network error: (.*)\)\s*$", text, re.DOTALL)
        text = f"Could not reach Stripe: {network.group(1) if network else text}".strip()
    status = getattr(exc, "http_status", None)
    code = getattr(exc, "code", None)
    detail = ", ".join(str(part) for part in (status, code) if part)
    return f"{text} ({detail})" if detail else text


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except stripe.StripeError as exc:
        status = getattr(exc, "http_status", None)
        # 409: an idempotent request still in flight.
        retryable = isinstance(exc, TRANSIENT) or (status or 0) >= 500 or status == 409
        kind = StripeRetryableError if retryable else StripeFinalError
        code = str(getattr(exc, "code", None) or "")
        raise kind(_message(exc), http_status=status, code=code) from exc


def _plain(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def _ref(obj: Any) -> StripeObjectRef:
    obj = _plain(obj)
    metadata = obj.get("metadata") or {}
    return StripeObjectRef(
        id=obj["id"],
        status=str(obj.get("status") or ""),
        metadata={str(k): str(v) for k, v in dict(metadata).items()},
        amount=int(obj.get("amount") or obj.get("amount_due") or 0),
        description=str(obj.get("description") or ""),
    )


def customer_create(*, name: str, email: str = "", metadata: dict[str, str],
                    idempotency_key: str, http_client: Any = None) -> StripeObjectRef:  # fmt: skip
    """Create a customer (used to link a cost center that has none)."""
    params: dict[str, Any] = {"name": name, "metadata": metadata}
    if email:
        params["email"] = email
    c = client(http_client)
    obj = _call(c.v1.customers.create, params, {"idempotency_key": idempotency_key})
    return _ref(obj)


def pending_invoice_items(*, customer: str, http_client: Any = None) -> Iterator[StripeObjectRef]:
    """The customer's invoice items not yet on an invoice (to find ones a crashed run made)."""
    c = client(http_client)
    page = _call(c.v1.invoice_items.list, {"customer": customer, "limit": 100})
    for obj in page.auto_paging_iter():
        if not _plain(obj).get("invoice"):
            yield _ref(obj)


def invoice_item_create(
    *,
    customer: str,
    amount_cents: int,
    currency: str,
    description: str,
    period: tuple[int, int],
    metadata: dict[str, str],
    idempotency_key: str,
    http_client: Any = None,
) -> StripeObjectRef:
    """A pending invoice item of an integer amount in minor units (localstripe accepts only
    `amount`; real Stripe accepts it too)."""
    params: dict[str, Any] = {
        "customer": customer,
        "amount": amount_cents,
        "currency": currency.lower(),
        "description": description,
        "metadata": metadata,
    }
    if _localstripe():
        params["period_start"], params["period_end"] = period
    else:
        params["period"] = {"start": period[0], "end": period[1]}
    c = client(http_client)
    return _ref(_call(c.v1.invoice_items.create, params, {"idempotency_key": idempotency_key}))


def invoices_for_customer(*, customer: str, http_client: Any = None) -> Iterator[StripeObjectRef]:
    c = client(http_client)
    page = _call(c.v1.invoices.list, {"customer": customer, "limit": 100})
    for obj in page.auto_paging_iter():
        yield _ref(obj)


def invoice_create(
    *,
    customer: str,
    description: str,
    metadata: dict[str, str],
    idempotency_key: str,
    days_until_due: int = 30,
    http_client: Any = None,
) -> StripeObjectRef:
    """A draft invoice that takes in the customer's pending invoice items.

    Items are created first and pulled in with pending_invoice_items_behavior=include: it is
    the one flow both Stripe and localstripe support (localstripe refuses an empty invoice and
    does not attach items created with `invoice=`). Callers serialise syncs per customer so
    one invoice never sweeps up another statement's items.
    """
    params: dict[str, Any] = {
        "customer": customer,
        "description": description,
        "metadata": metadata,
        "pending_invoice_items_behavior": "include",
    }
    if not _localstripe():
        params.update(
            collection_method="send_invoice", days_until_due=days_until_due, auto_advance=False
        )
    c = client(http_client)
    return _ref(_call(c.v1.invoices.create, params, {"idempotency_key": idempotency_key}))


def invoice_finalize(
    *, invoice_id: str, idempotency_key: str, http_client: Any = None
) -> StripeObjectRef:
    """Finalize a draft invoice (`POST /v1/invoices/{id}/finalize`; not in localstripe)."""
    c = client(http_client)
    obj = _call(
        c.v1.invoices.finalize_invoice,
        invoice_id,
        {"auto_advance": False},
        {"idempotency_key": idempotency_key},
    )
    return _ref(obj)


@dataclass(frozen=True)
class WebhookEvent:
    id: str
    type: str
    object_id: str
    object_metadata: dict[str, str]


def webhook_event_construct(*, payload: bytes, signature: str | None) -> WebhookEvent:
    """Verify the Stripe-Signature header over the raw body and parse the event."""
    secret = settings.TB_STRIPE_WEBHOOK_SECRET
    if not secret:
        raise WebhookSignatureInvalid("TB_STRIPE_WEBHOOK_SECRET is not set")
    try:
        event = stripe.Webhook.construct_event(payload, signature, secret)
    except (stripe.SignatureVerificationError, ValueError) as exc:
        raise WebhookSignatureInvalid(str(exc)) from exc
    obj = _plain(event["data"]["object"])
    return WebhookEvent(
        id=event["id"],
        type=event["type"],
        object_id=str(obj.get("id", "")),
        object_metadata={str(k): str(v) for k, v in dict(obj.get("metadata") or {}).items()},
    )
