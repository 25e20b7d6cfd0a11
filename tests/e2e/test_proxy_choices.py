"""`n` is part of the reservation (issue #12, item 6): a chat call's worst case is
prompt + n x max_tokens, on the allowance, the key's cap and a cost center's cap alike, and a
policy's hard limit refuses what it cannot cover; more answers than TB_MAX_CHOICES are refused."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from budgets.models import Allowance, CostCenter, CostCenterSpend, Policy
from metering import tokens
from metering.models import UsageRecord, VirtualKey
from metering.providers import openai as oa
from metering.services import key_create
from tests.e2e.conftest import World
from tests.e2e.proxy_modes import (
    Mode,
    assert_no_hold_left,
    assert_nothing_recorded_or_charged,
    mock_requests,
    mode,
    mode_world,
    redis_proxy,
    wait_for_records,
)

pytestmark = pytest.mark.e2e
__all__ = ["mode", "redis_proxy"]  # fixtures
PROMPT = [{"role": "user", "content": "Count the beans"}]


def _chat(world: World, key: str | None = None, **fields: object) -> httpx.Response:
    body = {
        "model": "gpt-4o-mini",
        "messages": PROMPT,
        # Each answer the mock writes is as long as allowed, up to 40 tokens.
        "metadata": {"mock_output_tokens": 40},
        **fields,
    }
    return httpx.post(
        f"{world.proxy}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key or world.key}"},
        timeout=20,
    )


def _prompt_estimate() -> int:
    parsed = oa.parse_request(
        "chat", httpx.Request("POST", "/", json={"model": "m", "messages": PROMPT}).content
    )
    return tokens.estimate_request_tokens(parsed)


def _served() -> dict:
    return httpx.get(f"{_MOCK[0]}/_mock/ledger", timeout=5).json()


_MOCK: list[str] = []


@pytest.fixture
def small(mode: Mode, mock_upstream_url: str) -> World:
    _MOCK[:] = [mock_upstream_url]
    return mode_world(mode, mock_upstream_url, amount=300)


def test_n_times_max_tokens_is_held_and_the_output_clamped_to_fit(small: World, mode: Mode) -> None:
    prompt = _prompt_estimate()
    per_choice = (300 - prompt) // 10
    response = _chat(small, n=10, max_tokens=40)
    assert response.status_code == 200, response.text
    assert response.headers["x-tokenbudget-max-tokens-clamped"] == str(per_choice)
    assert mock_requests(small.mock)[-1]["body"]["max_tokens"] == per_choice
    usage = response.json()["usage"]
    assert len(response.json()["choices"]) == 10
    assert usage["completion_tokens"] == 10 * per_choice
    [record] = wait_for_records(1)
    assert (record.input_tokens, record.output_tokens) == (usage["prompt_tokens"], 10 * per_choice)
    allowance = Allowance.objects.get(pk=small.allowance.pk)
    assert allowance.used == usage["total_tokens"] <= 300
    assert_no_hold_left(small, mode)


def test_repeated_n_calls_never_overrun_the_allowance(small: World, mode: Mode) -> None:
    statuses = [_chat(small, n=10, max_tokens=40).status_code for _ in range(4)]
    assert statuses[0] == 200 and statuses[-1] == 429, statuses
    served = _served()
    wait_for_records(served["count"])
    allowance = Allowance.objects.get(pk=small.allowance.pk)
    assert allowance.used == served["input_tokens"] + served["output_tokens"] <= 300
    assert UsageRecord.objects.count() == served["count"] == statuses.count(200)
    assert_no_hold_left(small, mode)


def test_a_hard_limit_refuses_what_n_answers_could_cost(mode: Mode, mock_upstream_url: str) -> None:
    world = mode_world(
        mode, mock_upstream_url, amount=300, policy={"over_budget": Policy.OverBudget.REFUSE}
    )
    response = _chat(world, n=10, max_tokens=40)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "employee_allowance"
    assert mock_requests(world.mock) == []
    assert_nothing_recorded_or_charged(world, mode)
    # One answer of the same length fits, and is served.
    assert _chat(world, max_tokens=40).status_code == 200


def test_the_keys_cap_counts_every_answer(mode: Mode, mock_upstream_url: str) -> None:
    world = mode_world(mode, mock_upstream_url)
    _, capped = key_create(employee=world.employee, name="capped", actor=None, cap_tokens=300)
    response = _chat(world, key=capped, n=10, max_tokens=40)
    assert response.status_code == 200, response.text
    [record] = wait_for_records(1)
    key = VirtualKey.objects.get(name="capped")
    assert key.used_tokens == record.input_tokens + record.output_tokens <= 300
    assert key.reserved_tokens == 0
    assert record.output_tokens == 10 * ((300 - _prompt_estimate()) // 10)


def test_a_cost_center_cap_counts_every_answer(mode: Mode, mock_upstream_url: str) -> None:
    world = mode_world(mode, mock_upstream_url)
    # gpt-4o-mini: $0.15 in, $0.60 out per million: the cap pays for about 16,600 output
    # tokens, less than 10 answers of 2,000.
    cap = Decimal("0.01")
    CostCenter.objects.filter(code="acme").update(annual_cap=cap)
    response = _chat(world, n=10, max_tokens=2000, metadata={"mock_output_tokens": 2000})
    assert response.status_code == 200, response.text
    [record] = wait_for_records(1)
    spend = CostCenterSpend.objects.get()
    assert spend.spent == record.cost <= cap
    assert spend.reserved == 0
    assert 0 < record.output_tokens < 10 * 2000, "clamped to what the cap could pay for"
    assert record.output_tokens % 10 == 0, "every answer got the same share"


def test_more_answers_than_allowed_are_refused(small: World, mode: Mode) -> None:
    response = _chat(small, n=17, max_tokens=5)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "n")
    assert "at most 16 answers" in error["message"]
    assert mock_requests(small.mock) == []
    assert_nothing_recorded_or_charged(small, mode)
