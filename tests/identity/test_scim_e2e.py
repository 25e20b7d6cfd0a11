"""SCIM end to end: provision, move and deprovision an employee through /scim/v2/ while a real
proxy (two workers, Redis invalidation, 4 s caches) serves their key; after the SCIM DELETE the
key is refused by every worker within the 5 s bound, and the move kept the history."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest
from django.db import connection

from budgets.invalidation import channel
from budgets.models import AuditEvent, CostCenter, Employee, EmployeeMove
from metering.services import key_create
from tests import servers
from tests.e2e.conftest import make_world
from tests.e2e.test_production import RedisServer, redis_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.e2e
BOUND_SECONDS = 5.0  # the brief's bound for a leaver's keys on every proxy process
WORKERS = 2
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


@pytest.fixture
def mock_url() -> Iterator[str]:
    port = servers.free_port()
    process = servers.start_mock_upstream(port)
    yield f"http://127.0.0.1:{port}"
    servers.stop(process)


@pytest.fixture
def proxy(
    transactional_db: None,
    redis_server: RedisServer,  # noqa: F811
    settings: Any,
    mock_url: str,
) -> Iterator[str]:
    redis_server.client().flushdb()
    settings.REDIS_URL = redis_server.url  # the SCIM requests below publish like a web process
    port = servers.free_port()
    process = servers.start_proxy(
        port,
        {
            "DATABASE_URL": servers.database_url_of(connection.settings_dict),
            "REDIS_URL": redis_server.url,
            "TB_KEY_CACHE_SECONDS": "4",
            "TB_SERVE_STATIC": "0",
            "TB_MOCK_UPSTREAM_URL": mock_url,
            "TB_UPSTREAM_KEY_TEST": "sk-provider-test-0123456789",
        },
        workers=WORKERS,
    )
    yield f"http://127.0.0.1:{port}"
    servers.stop(process)


def scim(client: Any, token: str, method: str, path: str, body: Any = None) -> Any:
    return getattr(client, method)(
        f"/scim/v2/{path}",
        data=json.dumps(body) if body is not None else None,
        content_type="application/scim+json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


def call(proxy: str, key: str) -> None:
    client = openai.OpenAI(base_url=f"{proxy}/v1", api_key=key, max_retries=0, timeout=10)
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )


def test_provision_move_deprovision(
    client: Any,
    scim_token: str,
    proxy: str,
    mock_url: str,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    world = make_world(proxy, mock_url, policy={"default_allowance": Decimal(1_000_000)})
    acme = CostCenter.objects.get(code="acme")
    CostCenter.objects.create(code="research", name="Research", parent=acme)

    created = scim(client, scim_token, "post", "Users", {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE],
        "userName": "grace@example.com",
        "emails": [{"value": "grace@example.com", "primary": True}],
        "displayName": "Grace Hopper",
        ENTERPRISE: {"employeeNumber": "G-1", "costCenter": "acme"},
    })  # fmt: skip
    assert created.status_code == 201, created.content
    grace = Employee.objects.get(employee_id="G-1")
    _, key = key_create(employee=grace, name="laptop", actor=None)
    call(proxy, key)  # provisioned: the key works
    call(proxy, world.key)

    moved = scim(client, scim_token, "patch", f"Users/{grace.pk}", {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "value": {f"{ENTERPRISE}:costCenter": "research"}}],
    })  # fmt: skip
    assert moved.status_code == 200, moved.content
    call(proxy, key)
    # The history stays: the move is dated, and the employee is the same row, allowance and all.
    assert list(
        EmployeeMove.objects.filter(employee=grace).values_list(
            "from_cost_center__code", "to_cost_center__code"
        )
    ) == [("acme", "research")]
    assert Employee.objects.get(pk=grace.pk).allowances.count() == 1

    # Fresh cache entries in every worker: only the invalidation message can stop the key now.
    deadline = time.monotonic() + 30
    while redis_server.client().pubsub_numsub(channel(redis_server.url))[0][1] < WORKERS:
        call(proxy, key)
        assert time.monotonic() < deadline, "the workers never listened"
    for _ in range(8):
        call(proxy, key)

    deleted_at = time.monotonic()
    assert scim(client, scim_token, "delete", f"Users/{grace.pk}").status_code == 204
    while True:
        try:
            call(proxy, key)
        except (openai.AuthenticationError, openai.PermissionDeniedError):
            break
        assert time.monotonic() - deleted_at < BOUND_SECONDS, "the leaver's key still works"
    took = time.monotonic() - deleted_at
    print(f"leaver's key refused {took:.3f} s after the SCIM DELETE")
    for _ in range(8):  # on every worker
        with pytest.raises((openai.AuthenticationError, openai.PermissionDeniedError)):
            call(proxy, key)
    call(proxy, world.key)  # everybody else goes on
    assert AuditEvent.objects.filter(
        source="scim", action="deactivate", object_id=str(grace.pk)
    ).exists()
