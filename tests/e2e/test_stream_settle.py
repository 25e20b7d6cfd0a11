"""A streamed call is settled before its end-of-stream marker is relayed: a client that has
read the end of its answer finds the call recorded and charged, whatever happens next."""

from __future__ import annotations

import httpx
import pytest

from budgets.models import Allowance
from metering.models import UsageRecord
from tests.e2e.conftest import World

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("path", "body", "marker"),
    [
        (
            "/v1/chat/completions",
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            b"data: [DONE]",
        ),
        (
            "/v1/messages",
            {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]},
            b"message_stop",
        ),
    ],
)
def test_the_call_is_recorded_before_the_client_sees_the_end(
    world: World, path: str, body: dict, marker: bytes
) -> None:
    headers = {"authorization": f"Bearer {world.key}", "anthropic-version": "2023-06-01"}
    payload = {**body, "stream": True, "max_tokens": 30}
    seen = b""
    with httpx.stream(
        "POST", world.proxy + path, json=payload, headers=headers, timeout=20
    ) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            seen += chunk
            if marker in seen:
                # Checked at once, with the rest of the response still unread.
                record = UsageRecord.objects.filter(request_id=response.headers["x-request-id"])
                assert record.exists(), "the end was relayed before the call was recorded"
                allowance = Allowance.objects.get(pk=world.allowance.pk)
                assert allowance.used == record.get().input_tokens + record.get().output_tokens
                assert allowance.reserved == 0
                break
        else:
            pytest.fail("the stream ended without its end-of-stream marker")
