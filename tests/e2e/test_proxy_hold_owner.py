"""Every hold is closed, whatever ends the call (issue #12, "one owner of a hold"), through the
real proxy on both quota backends: a provider error and a client that gives up while the
provider is still thinking each leave a record, no charge and no hold."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from budgets.models import Allowance
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
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def world(mode: Mode, mock_upstream_url: str) -> World:
    return mode_world(mode, mock_upstream_url)


def _assert_released(world: World, mode: Mode, status: int, error: str) -> None:
    [record] = wait_for_records(1)
    assert (record.status_code, record.error_type) == (status, error)
    assert (record.input_tokens, record.output_tokens, record.cost) == (0, 0, 0)
    assert Allowance.objects.get(pk=world.allowance.pk).used == 0
    assert_no_hold_left(world, mode)


def test_a_provider_error_releases_the_hold(world: World, mode: Mode) -> None:
    client = openai.OpenAI(base_url=f"{world.proxy}/v1", api_key=world.key, max_retries=0)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="mock-error-500", messages=HELLO, max_tokens=5)
    _assert_released(world, mode, 500, "upstream_error")


def test_a_provider_error_on_a_stream_releases_the_hold(world: World, mode: Mode) -> None:
    claude = anthropic.Anthropic(base_url=world.proxy, api_key=world.key, max_retries=0)
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=5,
            messages=HELLO,
            stream=True,
            metadata={"mock_error": 500},
        )
    _assert_released(world, mode, 500, "upstream_error")


def test_a_client_that_gives_up_before_the_answer_releases_the_hold(
    world: World, mode: Mode
) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{world.proxy}/v1/chat/completions",
            json={"model": "mock-timeout", "messages": HELLO, "max_tokens": 5},
            headers={"authorization": f"Bearer {world.key}"},
            timeout=httpx.Timeout(20, read=1),
        )
    _assert_released(world, mode, 499, "client_closed")
