"""The one mapping from every failure of a proxied call to a provider-shaped error (pure).

Every refusal and failure (validation, authentication, routing, budget and rate refusals, the
quota backend down, the upstream's connect error, timeout or broken connection, an internal
error) is a `ProxyError` made by one of the functions below; `render` turns it into the status,
headers and body the client's own SDK expects (OpenAI's shape, or Anthropic's on
/v1/messages). Nothing here awaits or touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass

from budgets import ledger
from budgets.formatting import amount_text
from metering.providers.base import Provider

Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class ProxyError(Exception):
    status: int
    kind: str  # our error kind, mapped to each provider's type below
    message: str
    code: str | None = None
    param: str | None = None
    retry_after: int | None = None

    @property
    def counted_as(self) -> tuple[str, str] | None:
        """Which metric counts it: ("refusal" | "upstream", label), or None."""
        if self.kind in ("quota", "rate", "unavailable"):
            return "refusal", self.code or self.kind
        if self.kind in ("upstream", "timeout"):
            return "upstream", self.code or self.kind
        return None


# Our kinds -> each provider's error type on the wire.
WIRE_TYPES: dict[str, dict[str, str]] = {
    "openai": {
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
    },
    "anthropic": {
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
    },
    # google.rpc.Code names, as the Gemini API puts them in `error.status`.
    "gemini": {
        "auth": "UNAUTHENTICATED",
        "permission": "PERMISSION_DENIED",
        "not_found": "NOT_FOUND",
        "invalid": "INVALID_ARGUMENT",
        "too_large": "INVALID_ARGUMENT",
        "quota": "RESOURCE_EXHAUSTED",
        "rate": "RESOURCE_EXHAUSTED",
        "unavailable": "UNAVAILABLE",
        "upstream": "UNAVAILABLE",
        "timeout": "DEADLINE_EXCEEDED",
    },
}


def render(provider: Provider, error: ProxyError, request_id: str) -> tuple[int, Headers, bytes]:
    """The status, headers and body of `error` in `provider`'s shape."""
    body = provider.error_body(
        error.status,
        error.message,
        WIRE_TYPES[provider.name][error.kind],
        code=error.code,
        param=error.param,
    )
    headers: Headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("x-request-id", request_id),
    ]
    if error.kind == "quota":
        headers.append(("x-should-retry", "false"))  # the official SDKs honour this
    if error.retry_after is not None:
        # A rate limit clears with the next minute: the SDKs retry after Retry-After.
        headers.append(("retry-after", str(error.retry_after)))
        headers.append(("x-should-retry", "true"))
    return error.status, headers, body


# --- every failure, named once -------------------------------------------------------------


def missing_key() -> ProxyError:
    return ProxyError(
        401,
        "auth",
        "Missing API key: send Authorization: Bearer <key> or x-api-key.",
        "invalid_api_key",
    )


def invalid_key() -> ProxyError:
    return ProxyError(401, "auth", "Invalid API key.", "invalid_api_key")


def unusable_key() -> ProxyError:
    return ProxyError(
        401, "auth", "This API key is revoked, expired or its owner is inactive.", "invalid_api_key"
    )


def method_not_allowed() -> ProxyError:
    return ProxyError(405, "invalid", "Use POST.", "method_not_allowed")


def too_large(limit: int) -> ProxyError:
    return ProxyError(413, "too_large", f"Request body exceeds {limit} bytes.", "request_too_large")


def bad_content_length() -> ProxyError:
    return ProxyError(400, "invalid", "Invalid Content-Length header.", "invalid_request")


def invalid_request(message: str, param: str | None = None) -> ProxyError:
    return ProxyError(400, "invalid", message, "invalid_request", param)


def unencodable_body() -> ProxyError:
    return invalid_request(
        "The request body cannot be sent on: it holds text that is not valid Unicode "
        "(a lone surrogate) or is nested too deeply."
    )


def model_not_found(message: str) -> ProxyError:
    return ProxyError(404, "not_found", message, "model_not_found", "model")


def model_not_allowed(message: str) -> ProxyError:
    return ProxyError(403, "permission", message, "model_not_allowed", "model")


def model_not_priced(message: str) -> ProxyError:
    return ProxyError(403, "permission", message, "model_not_priced", "model")


def wrong_endpoint(message: str) -> ProxyError:
    return ProxyError(400, "invalid", message, "wrong_endpoint", "model")


def refusal(refused: ledger.Refusal) -> ProxyError:
    what = {
        "employee_allowance": "your token allowance",
        "key_cap": "this key's cap",
        "no_allowance": "your allowance (none is assigned for this fiscal year)",
    }.get(refused.code, refused.code.replace("cost_center_cap:", "the cost center cap of "))
    return ProxyError(
        429,
        "quota",
        f"Budget exhausted: this call would exceed {what} "
        f"({amount_text(refused.available, refused.unit)} left).",
        refused.code.split(":")[0],
    )


def limits_unfit(reason: str) -> ProxyError:
    """The output limit left for the call is too small for a limit that must stay below it."""
    return ProxyError(
        429,
        "quota",
        f"Budget too low for this call's settings: {reason}",
        "dependent_limit_unfit",
        "max_tokens",
    )


def rate_limited(scope: str, kind: str, retry_after: int) -> ProxyError:
    whose = "this key" if scope == "key" else "your account"
    return ProxyError(
        429,
        "rate",
        f"Rate limit reached: {whose} may send no more {kind} this minute; "
        f"retry in {retry_after} s.",
        f"rate_limit_{kind}",
        retry_after=retry_after,
    )


def quota_unavailable() -> ProxyError:
    return ProxyError(
        503,
        "unavailable",
        "Budget enforcement is unavailable; try again shortly.",
        "quota_unavailable",
        retry_after=1,
    )


def upstream_timeout() -> ProxyError:
    return ProxyError(504, "timeout", "The upstream provider timed out.", "upstream_timeout")


def upstream_unreachable() -> ProxyError:
    return ProxyError(
        502, "upstream", "The upstream provider could not be reached.", "upstream_unreachable"
    )


def upstream_credentials() -> ProxyError:
    """The proxy could not get the upstream's credentials (a Vertex AI access token)."""
    return ProxyError(
        502,
        "upstream",
        "The proxy could not authenticate to the upstream provider; nothing was sent or charged.",
        "upstream_credentials",
    )


def upstream_broken() -> ProxyError:
    return ProxyError(502, "upstream", "The upstream connection failed.", "upstream_unreachable")


def internal() -> ProxyError:
    return ProxyError(500, "upstream", "Internal error in the proxy.", "internal_error")
