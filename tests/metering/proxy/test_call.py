"""The proxy's pure core, table by table: no server, no database, no event loop."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from budgets import ledger
from metering import pricing
from metering.models import UsageRecord
from metering.providers.anthropic import PROVIDER as ANTHROPIC
from metering.providers.base import ParsedRequest, StreamState, Usage
from metering.providers.openai import PROVIDER as OPENAI
from metering.proxy import call as core
from metering.proxy.errors import ProxyError
from metering.quota.db import Hold

PRICE = pricing.PriceQuote.per_million(
    "m", input=Decimal("2"), output=Decimal("8"), cached_input=Decimal("1")
)


def info(**kw: Any) -> Any:
    allowed = kw.pop("allowed", None)
    values = {
        "employee_id": 1,
        "key_id": 2,
        "cost_center_id": 3,
        "per_request_token_cap": None,
        "allowance_unit": ledger.TOKENS,
        "employee_start": None,
        "employee_end": None,
        "may_use": lambda model: allowed is None or model in allowed,
    } | kw
    return SimpleNamespace(**values)


def route(kind: str = "openai", **kw: Any) -> Any:
    values = {
        "public_name": "m",
        "upstream_id": 9,
        "upstream_model": "m-upstream",
        "target": SimpleNamespace(kind=kind),
        "default_max_output_tokens": 1000,
        "unmetered_cost": False,
        "deployment": None,
        "price_at": lambda at: SimpleNamespace(
            model="m",
            input_per_mtok=Decimal("2"),
            output_per_mtok=Decimal("8"),
            cached_input_per_mtok=None,
            cache_write_per_mtok=None,
            pk=5,
        ),
    } | kw
    return SimpleNamespace(**values)


def parsed(endpoint: str = "chat", **kw: Any) -> ParsedRequest:
    return ParsedRequest(
        endpoint=endpoint, model=kw.pop("model", "m"), body=kw.pop("body", {}), **kw
    )


def hold(**kw: Any) -> Hold:
    values = {
        "reservation_id": uuid.uuid4(),
        "allowance_id": 1,
        "unit": ledger.TOKENS,
        "amount": Decimal(120),
        "tokens": 120,
        "cost": Decimal(0),
        "output_tokens": 100,
        "clamped": False,
        "cost_center_ids": (),
        "fiscal_year": 2026,
        "remaining": Decimal(880),
    } | kw
    return Hold(**values)


def a_call(
    *, held: Hold | None = None, endpoint: str = "chat", choices: int = 1, **kw: Any
) -> core.Call:
    estimate = ledger.CallEstimate(20, 100, Decimal(0), Decimal(0))
    result = core.Call(
        "req_1",
        time.perf_counter(),
        dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
        endpoint,
        info(),
        parsed(endpoint, choices=choices, stream=kw.pop("stream", False)),
        route(),
        pricing.FREE,
        estimate,
        "review",
        **kw,
    )
    result.held = SimpleNamespace(hold=held or hold())
    return result


@pytest.mark.parametrize(
    ("declared", "body", "ok"),
    [
        (None, b"{}", True),
        ("2", b"{}", True),
        ("11", b"{}", False),  # declared over the limit
        (None, b"x" * 11, False),
        (None, b"x" * 10, True),
        (None, None, False),  # the server's own limit refused it
        ("abc", b"{}", True),  # not a number: the server refuses it before, not here
    ],
)
def test_body_size(declared: str | None, body: bytes | None, ok: bool) -> None:
    if ok:
        assert core.check_body_size(declared, body, 10) == body
    else:
        with pytest.raises(ProxyError) as caught:
            core.check_body_size(declared, body, 10)
        assert (caught.value.status, caught.value.code) == (413, "request_too_large")


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"authorization": "Bearer tb-1"}, "tb-1"),
        ({"authorization": "bearer  tb-2 "}, "tb-2"),
        ({"authorization": "Bearer "}, None),
        ({"authorization": "Basic abc", "x-api-key": "tb-3"}, "tb-3"),
        ({"x-api-key": "tb-4"}, "tb-4"),
        ({"x-api-key": ""}, None),
        ({}, None),
    ],
)
def test_raw_key(headers: dict[str, str], key: str | None) -> None:
    assert core.raw_key(headers) == key


@pytest.mark.parametrize(
    ("choices", "body", "param"),
    [(4, {}, None), (5, {"n": 5}, "n"), (6, {"n": 2, "best_of": 6}, "best_of")],
)
def test_choices_limit(choices: int, body: dict, param: str | None) -> None:
    request = parsed(choices=choices, body=body)
    if param is None:
        core.check_choices(request, 4)
        return
    with pytest.raises(ProxyError) as caught:
        core.check_choices(request, 4)
    assert (caught.value.status, caught.value.param) == (400, param)


@pytest.mark.parametrize(
    ("endpoint", "kind", "allowed", "found", "status", "code"),
    [
        ("chat", "openai", None, True, None, None),
        ("messages", "anthropic", None, True, None, None),
        ("chat", "openai", None, False, 404, "model_not_found"),
        ("chat", "openai", {"other"}, True, 403, "model_not_allowed"),
        ("messages", "openai", None, True, None, None),  # translated to chat
        ("chat", "anthropic", None, True, None, None),  # translated to messages
        ("responses", "anthropic", None, True, 400, "wrong_endpoint"),
        ("embeddings", "anthropic", None, True, 400, "wrong_endpoint"),
    ],
)
def test_route_checks(
    endpoint: str, kind: str, allowed: set | None, found: bool, status: int | None, code: str | None
) -> None:
    the_route = route(kind) if found else None
    if status is None:
        assert core.check_route(info(allowed=allowed), parsed(endpoint), the_route) is the_route
        return
    with pytest.raises(ProxyError) as caught:
        core.check_route(info(allowed=allowed), parsed(endpoint), the_route)
    assert (caught.value.status, caught.value.code) == (status, code)


@pytest.mark.parametrize(
    ("allowed", "status"),
    [({"m"}, None), ({"m-alias"}, 403), ({"other"}, 403)],
)
def test_an_alias_is_allowed_by_its_routes_public_name(allowed: set, status: int | None) -> None:
    """The route found for the alias "m-alias" is "m": the key's list is checked against "m"."""
    the_route = route("openai")
    request = parsed("chat", model="m-alias")
    if status is None:
        assert core.check_route(info(allowed=allowed), request, the_route) is the_route
        return
    with pytest.raises(ProxyError) as caught:
        core.check_route(info(allowed=allowed), request, the_route)
    assert caught.value.status == status


@pytest.mark.parametrize(
    ("candidates", "allowed", "chosen", "code"),
    [
        (("a", "b"), None, "a", None),
        (("a", "b"), {"b"}, "b", None),
        (("a",), {"z"}, None, "model_not_allowed"),
        ((), None, None, "model_not_found"),
    ],
)
def test_alias_choice(
    candidates: tuple, allowed: set | None, chosen: str | None, code: str | None
) -> None:
    if code is None:
        assert (
            core.alias_choice(info(allowed=allowed), "review", "auto:review", candidates) == chosen
        )
        return
    with pytest.raises(ProxyError) as caught:
        core.alias_choice(info(allowed=allowed), "review", "auto:review", candidates)
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("unmetered", "unit", "has_price", "result"),
    [
        (False, ledger.TOKENS, True, "priced"),
        (False, "EUR", False, "model_not_priced"),
        (True, ledger.TOKENS, False, "free"),
        (True, "EUR", True, "model_not_priced"),
    ],
)
def test_quote(unmetered: bool, unit: str, has_price: bool, result: str) -> None:
    the_route = route(unmetered_cost=unmetered)
    if not has_price:
        the_route.price_at = lambda at: None
    key = info(allowance_unit=unit)
    if result.startswith("model_"):
        with pytest.raises(ProxyError) as caught:
            core.quote(the_route, key, None)
        assert caught.value.code == result
        return
    got = core.quote(the_route, key, None)
    assert got is pricing.FREE if result == "free" else got.output == Decimal("8").scaleb(-6)


@pytest.mark.parametrize(
    ("endpoint", "asked", "choices", "cap", "prompt", "output", "refused"),
    [
        ("chat", None, 1, None, 50, 1000, False),  # the route's default limit
        ("chat", 10, 1, None, 50, 10, False),
        ("chat", 10, 3, None, 50, 30, False),  # every choice its limit
        ("chat", 100, 1, 80, 50, 30, False),  # the cap leaves 30
        ("chat", 100, 3, 80, 50, 30, False),  # 30 shared by three choices
        ("chat", 100, 1, 50, 50, 0, True),  # no room at all
        ("chat", 100, 4, 53, 50, 0, True),  # room for three answers, not four
        ("embeddings", None, 1, 10, 50, 0, False),  # no output, no cap check
    ],
)
def test_estimate(
    endpoint: str,
    asked: int | None,
    choices: int,
    cap: int | None,
    prompt: int,
    output: int,
    refused: bool,
) -> None:
    request = parsed(endpoint, max_output_tokens=asked, choices=choices)
    key = info(per_request_token_cap=cap)
    if refused:
        with pytest.raises(ProxyError) as caught:
            core.estimate(request, route(), key, PRICE, prompt)
        assert (caught.value.status, caught.value.code) == (400, "request_too_large")
        return
    got = core.estimate(request, route(), key, PRICE, prompt)
    assert (got.prompt_tokens, got.max_output_tokens) == (prompt, output)
    assert got.output_price_per_token == PRICE.output


@pytest.mark.parametrize(
    ("provider", "endpoint", "choices", "least"),
    [
        (OPENAI, "chat", 1, 1),
        (OPENAI, "responses", 2, 32),
        (OPENAI, "embeddings", 1, 0),
        (ANTHROPIC, "messages", 1, 1),
    ],
)
def test_least_output_of_a_clamp(provider: Any, endpoint: str, choices: int, least: int) -> None:
    assert core.min_output(provider, endpoint, choices) == least


@pytest.mark.parametrize(
    ("provider", "endpoint", "status", "content", "usage"),
    [
        (
            OPENAI,
            "chat",
            200,
            b'{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}',
            Usage(3, 4),
        ),
        (OPENAI, "chat", 500, b'{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}', None),
        (OPENAI, "chat", 200, b"not json", None),
        (OPENAI, "chat", 200, b"[1, 2]", None),
        (OPENAI, "chat", 200, b'{"id": "x"}', None),
        (
            ANTHROPIC,
            "messages",
            200,
            b'{"usage": {"input_tokens": 5, "output_tokens": 6}}',
            Usage(5, 6),
        ),
    ],
)
def test_usage_of_a_whole_answer(
    provider: Any, endpoint: str, status: int, content: bytes, usage: Usage | None
) -> None:
    assert core.whole_usage(provider, endpoint, status, content) == usage


def _state(**kw: Any) -> StreamState:
    state = StreamState()
    for name, value in kw.items():
        setattr(state, name, value)
    return state


@pytest.mark.parametrize(
    ("state", "outcome", "charged", "status", "source", "tokens", "error"),
    [
        # the provider said its usage: that is charged, whatever the ending
        (
            _state(usage=Usage(10, 20), finished=True),
            "complete",
            True,
            200,
            "provider",
            (10, 20),
            "",
        ),
        (
            _state(usage=Usage(10, 20)),
            "client_closed",
            True,
            499,
            "provider",
            (10, 20),
            "client_closed",
        ),
        # output relayed, no usage: the prompt estimate plus the output counted ("hello world" = 2)
        (
            _state(saw_output=True, output_text=["hello", " world"]),
            "client_closed",
            True,
            499,
            "estimated",
            (20, 2),
            "client_closed",
        ),
        (
            _state(saw_output=True, output_text=["hello world"]),
            "upstream_broken",
            True,
            200,
            "estimated",
            (20, 2),
            "upstream_broken",
        ),
        # Anthropic's message_start said the input: that, not the estimate
        (
            _state(
                saw_output=True, output_text=["hello world"], partial_usage=Usage(7, 1, 3, 0, 0)
            ),
            "client_closed",
            True,
            499,
            "estimated",
            (7, 2),
            "client_closed",
        ),
        # an error event mid-stream names the error
        (
            _state(usage=Usage(1, 1), error="overloaded"),
            "complete",
            True,
            200,
            "provider",
            (1, 1),
            "overloaded",
        ),
        # nothing came: released, charged nothing
        (_state(), "complete", False, 200, "none", (0, 0), "no_output"),
        (_state(), "client_closed", False, 200, "none", (0, 0), "client_closed"),
    ],
)
def test_stream_settlement(
    state: StreamState,
    outcome: str,
    charged: bool,
    status: int,
    source: str,
    tokens: tuple[int, int],
    error: str,
) -> None:
    record, was_charged = core.stream_settlement(a_call(stream=True), state, outcome, 200, None)
    assert was_charged is charged
    assert (record.status_code, record.usage_source) == (status, source)
    assert (record.input_tokens, record.output_tokens) == tokens
    assert record.error_type == error
    assert record.estimated is (source == UsageRecord.Source.ESTIMATED)


@pytest.mark.parametrize(
    ("the_hold", "charged", "remaining"),
    [
        (hold(), Decimal(0), Decimal(1000)),  # released: the hold is given back
        (hold(), Decimal(30), Decimal(970)),
        (hold(remaining=Decimal(0), amount=Decimal(50)), Decimal(50), Decimal(0)),
    ],
)
def test_remaining_after(the_hold: Hold, charged: Decimal, remaining: Decimal) -> None:
    assert core.remaining_after(a_call(held=the_hold), charged) == remaining


@pytest.mark.parametrize(
    ("unit", "cost", "charge"),
    [(ledger.TOKENS, Decimal("0.5"), Decimal(30)), ("EUR", Decimal("0.5"), Decimal("0.5"))],
)
def test_charge_is_tokens_or_money(unit: str, cost: Decimal, charge: Decimal) -> None:
    record = UsageRecord(cost=cost)
    assert core.charge_of(a_call(held=hold(unit=unit)), Usage(10, 20), record) == charge


@pytest.mark.parametrize(
    ("call_kw", "hold_kw", "remaining", "expected"),
    [
        (
            {},
            {},
            Decimal("970.9"),
            {"x-tokenbudget-remaining": "970", "x-tokenbudget-unit": "tokens"},
        ),
        ({}, {"unit": "EUR"}, Decimal("1.2500"), {"x-tokenbudget-remaining": "1.25"}),
        ({}, {"unit": "EUR"}, Decimal("1E+3"), {"x-tokenbudget-remaining": "1000"}),
        (
            {"choices": 2},
            {"clamped": True, "output_tokens": 60},
            Decimal(1),
            {"x-tokenbudget-max-tokens-clamped": "30"},
        ),
        (
            {"requested_model": "auto:review"},
            {},
            Decimal(1),
            {"x-tokenbudget-model": "m", "x-tokenbudget-routed-from": "auto:review"},
        ),
        (
            {"requested_model": "big", "downgraded": True},
            {},
            Decimal(1),
            {"x-tokenbudget-model": "m", "x-tokenbudget-downgraded-from": "big"},
        ),
    ],
)
def test_budget_headers(
    settings: Any, call_kw: dict, hold_kw: dict, remaining: Decimal, expected: dict
) -> None:
    settings.TB_FISCAL_YEAR_START_MONTH = 1
    headers = dict(core.budget_headers(a_call(held=hold(**hold_kw), **call_kw), remaining))
    assert headers["x-request-id"] == "req_1"
    assert headers["x-tokenbudget-period-end"] == "2026-12-31"
    for name, value in expected.items():
        assert headers[name] == value
    absent = {"x-tokenbudget-max-tokens-clamped", "x-tokenbudget-model"} - set(expected)
    assert not absent & set(headers)


@pytest.mark.parametrize(
    ("kind", "endpoint", "stream", "body", "sent"),
    [
        ("openai", "chat", False, {"model": "m", "messages": []}, {"max_completion_tokens": 100}),
        ("openai_compatible", "chat", False, {"model": "m", "messages": []}, {"max_tokens": 100}),
        (
            "openai",
            "chat",
            True,
            {"model": "m", "messages": [], "stream": True},
            {"stream_options": {"include_usage": True}},
        ),
        ("openai", "embeddings", False, {"model": "m", "input": "x"}, {}),
    ],
)
def test_upstream_body(kind: str, endpoint: str, stream: bool, body: dict, sent: dict) -> None:
    import json

    the_call = a_call(endpoint=endpoint, stream=stream)
    the_call.parsed.body = body
    the_call.route = route(kind)
    data = json.loads(core.upstream_body(the_call, core.encode(the_call, OPENAI)))
    assert data["model"] == "m-upstream"
    for name, value in sent.items():
        assert data[name] == value
    if endpoint == "embeddings":
        assert "max_tokens" not in data and "max_completion_tokens" not in data


def test_an_unencodable_body_is_a_400_before_the_hold() -> None:
    the_call = a_call()
    the_call.parsed.body = {"model": "m", "messages": [{"role": "user", "content": "a\ud800"}]}
    with pytest.raises(ProxyError) as caught:
        core.encode(the_call, OPENAI)
    assert (caught.value.status, caught.value.code) == (400, "invalid_request")


@pytest.mark.parametrize(
    ("refused", "has_hold", "reached", "due"),
    [
        (True, False, False, True),
        (False, False, False, False),
        (False, True, False, False),
        (False, True, True, True),
    ],
)
def test_when_a_downgrade_is_due(refused: bool, has_hold: bool, reached: bool, due: bool) -> None:
    limits = SimpleNamespace(granted=Decimal(1000), allowance_id=1)
    key = info(downgrade_at_percent=50 if reached else 99, limits=limits)
    the_hold = hold(remaining=Decimal(300), amount=Decimal(100)) if has_hold else None  # 60 % used
    assert core.downgrade_due(key, the_hold, refused) is due


@pytest.mark.parametrize(
    ("rates", "fallback_output", "expected"),
    [
        # (input, output) per million of each candidate, the fallback route's default output
        # limit (None: no fallback route), and the hold's (input, output) rates and output.
        ([("2", "8")], None, ("2", "8", 1000)),
        ([("2", "8"), ("3", "6")], None, ("3", "8", 1000)),
        ([("1", "1"), ("2", "8"), ("1", "9")], None, ("2", "9", 1000)),
        ([("2", "8")], 4000, ("2", "8", 4000)),
    ],
)
def test_the_hold_covers_every_candidate(rates, fallback_output, expected) -> None:
    base = route()
    candidates = [
        core.Candidate(
            base, pricing.PriceQuote.per_million("m", input=Decimal(i), output=Decimal(o))
        )
        for i, o in rates
    ]
    if fallback_output is not None:
        other = route(public_name="other", default_max_output_tokens=fallback_output)
        candidates.append(core.Candidate(other, candidates[0].quote))
    worst = core.hold_estimate(parsed(), candidates, info(), 100)
    per_token = Decimal(1_000_000)
    assert (
        worst.input_price_per_token * per_token,
        worst.output_price_per_token * per_token,
        worst.max_output_tokens,
    ) == (Decimal(expected[0]), Decimal(expected[1]), expected[2])
    assert worst.prompt_tokens == 100
