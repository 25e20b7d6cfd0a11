"""A clamped output limit lowers the limits that must stay below it, in the body sent upstream,
or refuses the call with a 429 when none fits."""

from __future__ import annotations

import json
from typing import Any

import pytest

from metering.providers.anthropic import PROVIDER as ANTHROPIC
from metering.providers.openai import PROVIDER as OPENAI
from metering.proxy import call as core
from metering.proxy.errors import ProxyError, render
from tests.metering.proxy.test_call import a_call, hold, route


def sent(endpoint: str, kind: str, body: dict[str, Any], output: int) -> dict[str, Any]:
    provider = ANTHROPIC if endpoint == "messages" else OPENAI
    the_call = a_call(endpoint=endpoint, held=hold(output_tokens=output, clamped=True))
    the_call.parsed = provider.parse_request(endpoint, json.dumps(body).encode())
    the_call.route = route(kind)
    return json.loads(core.upstream_body(the_call, core.encode(the_call, provider)))


THINKING = {
    "model": "m",
    "max_tokens": 32000,
    "thinking": {"type": "enabled", "budget_tokens": 31999},
    "messages": [{"role": "user", "content": "hi"}],
}


def test_a_clamp_lowers_the_thinking_budget_below_max_tokens() -> None:
    data = sent("messages", "anthropic", THINKING, 7766)
    assert data["max_tokens"] == 7766
    assert data["thinking"] == {"type": "enabled", "budget_tokens": 7765}
    assert data["messages"] == THINKING["messages"]
    assert data["model"] == "m-upstream"


def test_a_budget_already_below_the_clamp_is_kept() -> None:
    body = {**THINKING, "thinking": {"type": "enabled", "budget_tokens": 2048}}
    data = sent("messages", "anthropic", body, 7766)
    assert (data["max_tokens"], data["thinking"]["budget_tokens"]) == (7766, 2048)


def test_no_room_for_a_thinking_budget_is_a_provider_shaped_429() -> None:
    with pytest.raises(ProxyError) as caught:
        sent("messages", "anthropic", THINKING, 1024)
    error = caught.value
    assert (error.status, error.code) == (429, "dependent_limit_unfit")
    status, headers, body = render(ANTHROPIC, error, "req_1")
    wire = json.loads(body)
    assert status == 429 and wire["type"] == "error"
    assert "thinking budget" in wire["error"]["message"]
    assert ("x-should-retry", "false") in headers


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"max_tokens": 9000, "max_completion_tokens": 9000, "reasoning_effort": "high"},
            {"max_tokens": 300, "max_completion_tokens": 300, "reasoning_effort": "low"},
        ),
        (
            {"max_completion_tokens": 9000, "reasoning_effort": "low"},
            {"max_completion_tokens": 300, "reasoning_effort": "low"},
        ),
    ],
)
def test_chat_limits_agree_and_effort_is_lowered(body: dict, expected: dict) -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    data = sent("chat", "openai", request, 300)
    for name, value in expected.items():
        assert data[name] == value


def test_an_unclamped_call_is_sent_as_asked() -> None:
    body = {**THINKING, "max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 5000}}
    data = sent("messages", "anthropic", body, 4000)
    assert data["thinking"]["budget_tokens"] == 5000  # the client's own: the provider decides
