"""The SCIM server against scim2-tester, a third-party conformance suite (python-scim), over
HTTP to a live server on the test database. Every check must pass or be skipped."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx2
import pytest
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

from identity.services import scim_token_create

FAILED = {Status.ERROR, Status.CRITICAL}


@pytest.fixture
def conformance_results(live_server: Any, settings: Any, org: Any) -> list[Any]:
    settings.TB_SCIM_DEFAULT_COST_CENTER = "eng"  # the suite's random users carry none
    _, token = scim_token_create(name="conformance")
    http = httpx2.Client(
        base_url=f"{live_server.url}/scim/v2",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    client = SyncSCIMClient(http)
    with http:
        return check_server(client)


def test_scim2_tester_passes(conformance_results: list[Any]) -> None:
    counts = Counter(result.status.name for result in conformance_results)
    print("scim2-tester:", dict(sorted(counts.items())))
    for result in conformance_results:
        print(
            f"  {result.status.name:10} {result.resource_type or '-':6} {result.title}: {result.reason}"
        )
        if result.status in FAILED:
            print(f"      data: {result.data}")
    failures = [
        f"{r.resource_type}: {r.title}: {r.reason}"
        for r in conformance_results
        if r.status in FAILED
    ]
    assert not failures, "\n".join(failures)
    assert counts["SUCCESS"] >= 20
