"""The one error mapping: every failure in each provider's own shape, no server needed."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from budgets import ledger
from metering.providers.anthropic import PROVIDER as ANTHROPIC
from metering.providers.openai import PROVIDER as OPENAI
from metering.proxy import errors

CASES = [
    # (error, status, OpenAI type, Anthropic type, code)
    (errors.missing_key(), 401, "invalid_request_error", "authentication_error", "invalid_api_key"),
    (errors.invalid_key(), 401, "invalid_request_error", "authentication_error", "invalid_api_key"),
    (
        errors.unusable_key(),
        401,
        "invalid_request_error",
        "authentication_error",
        "invalid_api_key",
    ),
    (
        errors.method_not_allowed(),
        405,
        "invalid_request_error",
        "invalid_request_error",
        "method_not_allowed",
    ),
    (errors.too_large(10), 413, "invalid_request_error", "request_too_large", "request_too_large"),
    (
        errors.bad_content_length(),
        400,
        "invalid_request_error",
        "invalid_request_error",
        "invalid_request",
    ),
    (
        errors.unencodable_body(),
        400,
        "invalid_request_error",
        "invalid_request_error",
        "invalid_request",
    ),
    (
        errors.model_not_found("m"),
        404,
        "invalid_request_error",
        "not_found_error",
        "model_not_found",
    ),
    (
        errors.model_not_allowed("m"),
        403,
        "invalid_request_error",
        "permission_error",
        "model_not_allowed",
    ),
    (
        errors.model_not_priced("m"),
        403,
        "invalid_request_error",
        "permission_error",
        "model_not_priced",
    ),
    (
        errors.wrong_endpoint("m"),
        400,
        "invalid_request_error",
        "invalid_request_error",
        "wrong_endpoint",
    ),
    (
        errors.refusal(ledger.Refusal("employee_allowance", Decimal(12), ledger.TOKENS)),
        429,
        "insufficient_quota",
        "insufficient_quota",
        "employee_allowance",
    ),
    (
        errors.refusal(ledger.Refusal("cost_center_cap:7", Decimal("1.50"), "EUR")),
        429,
        "insufficient_quota",
        "insufficient_quota",
        "cost_center_cap",
    ),
    (
        errors.rate_limited("key", "requests", 7),
        429,
        "rate_limit_error",
        "rate_limit_error",
        "rate_limit_requests",
    ),
    (errors.quota_unavailable(), 503, "api_error", "overloaded_error", "quota_unavailable"),
    (errors.upstream_timeout(), 504, "api_error", "api_error", "upstream_timeout"),
    (errors.upstream_unreachable(), 502, "api_error", "api_error", "upstream_unreachable"),
    (errors.upstream_broken(), 502, "api_error", "api_error", "upstream_unreachable"),
    (errors.internal(), 500, "api_error", "api_error", "internal_error"),
]


@pytest.mark.parametrize(("error", "status", "openai_type", "anthropic_type", "code"), CASES)
def test_every_failure_renders_in_both_shapes(
    error: errors.ProxyError, status: int, openai_type: str, anthropic_type: str, code: str
) -> None:
    got_status, headers, body = errors.render(OPENAI, error, "req_1")
    assert got_status == status == error.status
    data = json.loads(body)
    assert data == {
        "error": {"message": error.message, "type": openai_type, "param": error.param, "code": code}
    }
    assert ("content-length", str(len(body))) in headers
    assert ("x-request-id", "req_1") in headers

    got_status, headers, body = errors.render(ANTHROPIC, error, "req_2")
    assert got_status == status
    data = json.loads(body)
    assert data == {
        "type": "error",
        "error": {"type": anthropic_type, "message": error.message, "code": code},
    }
    assert ("x-request-id", "req_2") in headers


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            errors.refusal(ledger.Refusal("key_cap", Decimal(0), ledger.TOKENS)),
            [("x-should-retry", "false")],
        ),
        (
            errors.rate_limited("employee", "tokens", 30),
            [("retry-after", "30"), ("x-should-retry", "true")],
        ),
        (errors.quota_unavailable(), [("retry-after", "1"), ("x-should-retry", "true")]),
        (errors.upstream_timeout(), []),
        (errors.invalid_key(), []),
    ],
)
def test_retry_headers_tell_the_sdks_what_to_do(
    error: errors.ProxyError, expected: list[tuple[str, str]]
) -> None:
    _, headers, _ = errors.render(OPENAI, error, "req_1")
    retry = [h for h in headers if h[0] in ("retry-after", "x-should-retry")]
    assert retry == expected


@pytest.mark.parametrize(
    ("error", "counted"),
    [
        (errors.quota_unavailable(), ("refusal", "quota_unavailable")),
        (errors.rate_limited("key", "tokens", 1), ("refusal", "rate_limit_tokens")),
        (errors.upstream_timeout(), ("upstream", "upstream_timeout")),
        (errors.internal(), ("upstream", "internal_error")),
        (errors.invalid_key(), None),
        (errors.too_large(1), None),
    ],
)
def test_which_metric_counts_a_failure(error: errors.ProxyError, counted: object) -> None:
    assert error.counted_as == counted


@pytest.mark.parametrize(
    ("refused", "message"),
    [
        (
            ledger.Refusal("employee_allowance", Decimal(12), ledger.TOKENS),
            "Budget exhausted: this call would exceed your token allowance (12 tokens left).",
        ),
        (
            ledger.Refusal("no_allowance", Decimal(0), ledger.TOKENS),
            "Budget exhausted: this call would exceed your allowance (none is assigned for this "
            "fiscal year) (0 tokens left).",
        ),
    ],
)
def test_refusal_messages_say_which_budget_ran_out(refused: ledger.Refusal, message: str) -> None:
    assert errors.refusal(refused).message == message
