"""GET /v1/budget through the running server (the ASGI path), with both SDKs' key headers."""

from __future__ import annotations

import httpx
import pytest

from metering.models import UsageRecord
from tests.clients.conftest import ledger
from tests.e2e.conftest import World

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "headers",
    [
        lambda key: {"authorization": f"Bearer {key}"},
        lambda key: {"x-api-key": key, "anthropic-version": "2023-06-01"},
    ],
)
def test_the_budget_is_answered_and_never_billed(client_world: World, headers) -> None:
    response = httpx.get(f"{client_world.proxy}/v1/budget", headers=headers(client_world.key))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["unit"] == "tokens"
    assert body["remaining"] == "50000000" and body["used"] == "0"
    assert body["pace"]["projected_run_out"] is None
    assert response.headers["x-request-id"].startswith("req_")
    assert not UsageRecord.objects.exists()
    assert ledger(client_world)["count"] == 0


def test_an_unknown_key_is_refused_in_the_callers_shape(client_world: World) -> None:
    response = httpx.get(
        f"{client_world.proxy}/v1/budget",
        headers={"x-api-key": "tb-nope", "anthropic-version": "2023-06-01"},
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
