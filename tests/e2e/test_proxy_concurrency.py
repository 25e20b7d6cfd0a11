"""Budgets hold under concurrency, and a client that leaves mid-stream pays for what it got."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import httpx
import openai
import pytest

from metering.models import UsageRecord
from tests.e2e.conftest import World
from tests.e2e.test_proxy_sdk import oai

pytestmark = pytest.mark.e2e
PROMPT = [{"role": "user", "content": "Count the beans in the ledger please"}]
MAX_TOKENS = 50


def test_hundred_simultaneous_calls_against_ten_calls_of_allowance(world: World) -> None:
    # One call's worst case: the prompt estimate plus MAX_TOKENS of output.
    probe = oai(world).chat.completions.create(
        model="gpt-4o-mini", messages=PROMPT, max_tokens=MAX_TOKENS
    )
    per_call = probe.usage.total_tokens
    UsageRecord.objects.all().delete()
    allowance = world.allowance
    allowance.refresh_from_db()
    allowance.amount = Decimal(allowance.used + per_call * 10)
    allowance.save()
    budget = allowance.amount - allowance.used

    async def run() -> list[int | str]:
        client = openai.AsyncOpenAI(
            base_url=f"{world.proxy}/v1", api_key=world.key, max_retries=0, timeout=60
        )

        async def one() -> int | str:
            try:
                await client.chat.completions.create(
                    model="gpt-4o-mini", messages=PROMPT, max_tokens=MAX_TOKENS
                )
                return 200
            except openai.RateLimitError as exc:
                return exc.body["code"]

        try:
            return await asyncio.gather(*(one() for _ in range(100)))
        finally:
            await client.close()

    results = asyncio.run(run())
    allowance.refresh_from_db()
    spent = allowance.used - (allowance.amount - budget)
    assert allowance.reserved == 0
    assert spent <= budget, "never more than the allowance"
    assert budget - spent < per_call, "the allowance is usable: less than one call's worth is left"
    assert results.count(200) == UsageRecord.objects.count()
    assert set(results) <= {200, "employee_allowance"}
    assert results.count("employee_allowance") >= 100 - 11


def test_client_disconnect_mid_stream_is_charged_for_what_was_produced(world: World) -> None:
    with (
        httpx.Client(timeout=20) as client,
        client.stream(
            "POST",
            f"{world.proxy}/v1/chat/completions",
            json={
                "model": "mock-slow-stream",
                "messages": PROMPT,
                "max_tokens": 200,
                "stream": True,
            },
            headers={"authorization": f"Bearer {world.key}"},
        ) as response,
    ):
        assert response.status_code == 200
        received = 0
        for line in response.iter_lines():
            if line.startswith("data:"):
                received += 1
            if received >= 5:
                break
    deadline = time.monotonic() + 10
    while not UsageRecord.objects.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    record = UsageRecord.objects.get()
    assert record.status_code == 499 and record.error_type == "client_closed"
    assert 0 < record.output_tokens < 200, (
        "charged for what was produced, not the whole reservation"
    )
    assert record.estimated, "no provider usage arrived: a local count, flagged"
    world.allowance.refresh_from_db()
    assert world.allowance.reserved == 0
    assert world.allowance.used == record.input_tokens + record.output_tokens
    # The upstream noticed the client went away and stopped generating (it notices on its
    # next write, one chunk interval later).
    deadline = time.monotonic() + 5
    state = httpx.get(f"{world.mock}/_mock/last", timeout=5).json()
    while not state["disconnected"] and time.monotonic() < deadline:
        time.sleep(0.1)
        state = httpx.get(f"{world.mock}/_mock/last", timeout=5).json()
    assert state["disconnected"] is True and state["completed"] is False, state
