"""Cut Anthropic streams are charged what was produced (issue #12, item 7), compared call by call
with the mock upstream's own ledger of what it streamed. message_start's `output_tokens: 1` is a
placeholder, never the final count: a client that leaves after N tokens, or an upstream error
after N tokens, is charged the input plus those N (counted locally, flagged estimated); an
error before any output gives the hold back and charges nothing."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from budgets.models import Allowance
from metering.models import UsageRecord
from tests.clients.conftest import ledger, wait_for_cut
from tests.e2e.conftest import World
from tests.e2e.proxy_modes import (
    Mode,
    assert_no_hold_left,
    mode,
    mode_world,
    redis_proxy,
    wait_for_records,
)

pytestmark = pytest.mark.e2e
__all__ = ["mode", "redis_proxy"]  # fixtures
PROMPT = [{"role": "user", "content": "Tell the ledger a long story"}]


@pytest.fixture
def world(mode: Mode, mock_upstream_url: str) -> World:
    return mode_world(mode, mock_upstream_url)


def claude(world: World) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=world.proxy, api_key=world.key, max_retries=0, timeout=20)


def _assert_charged(world: World, mode: Mode, record: UsageRecord) -> None:
    allowance = Allowance.objects.get(pk=world.allowance.pk)
    assert allowance.used == record.input_tokens + record.output_tokens
    assert_no_hold_left(world, mode)


def test_a_client_that_leaves_after_five_tokens_pays_input_plus_five(
    world: World, mode: Mode
) -> None:
    received = 0
    with claude(world).messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=100,
        messages=PROMPT,
        metadata={"mock_output_tokens": 40, "mock_chunk_delay_ms": 300},
    ) as stream:
        request_id = stream.response.headers["x-request-id"]
        for _ in stream.text_stream:
            received += 1
            if received == 5:
                break
    served_input, produced, why = wait_for_cut(world, request_id)
    assert why == "client_gone" and produced == 5
    [record] = wait_for_records(1)
    assert record.request_id == request_id
    assert (record.input_tokens, record.output_tokens) == (served_input, produced)
    assert record.output_tokens != 1, "not message_start's placeholder"
    assert record.estimated and record.usage_source == UsageRecord.Source.ESTIMATED
    assert record.status_code == 499 and record.error_type == "client_closed"
    # The input split comes from the provider's message_start (exact), priced at its rates.
    assert record.cached_input_tokens == served_input // 2
    assert record.cache_write_tokens == served_input // 4
    _assert_charged(world, mode, record)


def test_an_upstream_error_after_six_tokens_is_charged_input_plus_six(
    world: World, mode: Mode
) -> None:
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        claude(world).messages.stream(
            model="claude-sonnet-4-5",
            max_tokens=100,
            messages=PROMPT,
            metadata={"mock_output_tokens": 40, "mock_stream_error_at": 6},
        ) as stream,
    ):
        request_id = stream.response.headers["x-request-id"]
        for _ in stream.text_stream:
            pass
    assert "overloaded" in str(caught.value).lower()
    served_input, produced, why = wait_for_cut(world, request_id)
    assert why == "stream_error" and produced == 6
    [record] = wait_for_records(1)
    assert (record.request_id, record.input_tokens, record.output_tokens) == (
        request_id,
        served_input,
        6,
    )
    assert record.estimated and record.error_type == "overloaded_error"
    assert record.cost > 0
    _assert_charged(world, mode, record)


def test_an_upstream_error_before_any_output_charges_nothing(world: World, mode: Mode) -> None:
    with (
        pytest.raises(anthropic.APIStatusError),
        claude(world).messages.stream(
            model="claude-sonnet-4-5",
            max_tokens=100,
            messages=PROMPT,
            metadata={"mock_output_tokens": 40, "mock_stream_error_at": 0},
        ) as stream,
    ):
        request_id = stream.response.headers["x-request-id"]
        for _ in stream.text_stream:
            pass
    [record] = wait_for_records(1)
    assert record.request_id == request_id
    assert (record.input_tokens, record.output_tokens, record.cost) == (0, 0, 0)
    assert (
        record.usage_source == UsageRecord.Source.NONE and record.error_type == "overloaded_error"
    )
    assert ledger(world)["cut"] == {} and ledger(world)["count"] == 0, "the mock produced nothing"
    allowance = Allowance.objects.get(pk=world.allowance.pk)
    assert allowance.used == 0
    assert_no_hold_left(world, mode)


def test_a_complete_stream_is_charged_the_final_usage(world: World, mode: Mode) -> None:
    with claude(world).messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=100,
        messages=PROMPT,
        metadata={"mock_output_tokens": 30},
    ) as stream:
        request_id = stream.response.headers["x-request-id"]
        final = stream.get_final_message()
    assert final.usage.output_tokens == 30
    [record] = wait_for_records(1)
    assert ledger(world)["requests"] == {request_id: [record.input_tokens, 30]}
    assert record.output_tokens == 30 and not record.estimated
    _assert_charged(world, mode, record)


def test_a_chat_stream_cut_after_five_tokens_matches_the_mock(world: World, mode: Mode) -> None:
    with (
        httpx.Client(timeout=20) as client,
        client.stream(
            "POST",
            f"{world.proxy}/v1/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "messages": PROMPT,
                "max_tokens": 100,
                "stream": True,
                "metadata": {"mock_output_tokens": 40, "mock_chunk_delay_ms": 300},
            },
            headers={"authorization": f"Bearer {world.key}"},
        ) as response,
    ):
        request_id = response.headers["x-request-id"]
        words = 0
        for line in response.iter_lines():
            if line.startswith("data:") and '"content":"' in line and '"content":""' not in line:
                words += 1
            if words == 5:
                break
    served_input, produced, why = wait_for_cut(world, request_id)
    assert (why, produced) == ("client_gone", 5)
    [record] = wait_for_records(1)
    assert record.output_tokens == produced
    # OpenAI streams carry no input count before their final usage: the input charged is the
    # reservation's high-side estimate of the prompt (tokenizer count plus margin).
    assert record.input_tokens >= served_input
    assert record.estimated and record.status_code == 499
    _assert_charged(world, mode, record)
