"""Real third-party clients against the running proxy (tests/e2e's servers) and the mock.

Each test builds a world with the routes the clients ask for by default, runs one client to
the end of a prompt (with a tool round-trip where the client offers tools), and compares the
proxy's usage records with the mock's own ledger, request id by request id.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from django.utils import timezone

from metering.models import ModelPrice, ModelRoute, ModelRouteAlias, Upstream, UsageRecord
from tests.e2e.conftest import World, make_world, mock_upstream_url, proxy_url, vertex_accounts

__all__ = ["client_world", "mock_upstream_url", "proxy_url", "vertex_accounts"]

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".clients" / "node_modules" / ".bin"
# The models the CLIs ask for (see seed_demo), as routes on the mock, with prices.
CLIENT_ROUTES = {
    "claude-opus-5-5": ("mock-anthropic", ("4.00", "20.00", "0.20", "5.00")),
    "claude-haiku-5-5": ("mock-anthropic", ("0.10", "0.50", "0.01", "0.125")),
    "gpt-6.2-sol": ("mock-openai", ("2.00", "10.00", "0.10", None)),
}
CLIENT_ALIASES = {"gpt-6.2-sol": ["gpt-5-codex"]}


def cli(name: str) -> str:
    """The installed CLI's path; skip when scripts/install-clients.sh has not run (fail in CI)."""
    path = BIN / name
    if not path.exists():
        message = f"{name} is not installed: run scripts/install-clients.sh"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs them (scripts/test.sh): never a silent skip
        pytest.skip(message)
    return str(path)


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    """A CLI's environment: a throwaway HOME, telemetry and updates off, no proxy settings."""
    node = shutil.which("node")
    path = os.pathsep.join(
        p for p in (str(BIN), os.path.dirname(node or ""), "/usr/bin", "/bin") if p
    )
    return {
        "PATH": path,
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "NO_UPDATE_NOTIFIER": "1",
        **extra,
    }


@pytest.fixture
def client_world(transactional_db: None, proxy_url: str, mock_upstream_url: str) -> World:
    world = make_world(proxy_url, mock_upstream_url, amount=50_000_000)
    start = timezone.now() - dt.timedelta(days=30)
    for public, (upstream, (inp, out, cached, write)) in CLIENT_ROUTES.items():
        route = ModelRoute.objects.create(
            public_name=public,
            upstream=Upstream.objects.get(name=upstream),
            upstream_model=public,
            default_max_output_tokens=256,
        )
        for alias in CLIENT_ALIASES.get(public, []):
            ModelRouteAlias.objects.create(name=alias, route=route)
        ModelPrice.objects.create(
            model=public,
            input_per_mtok=Decimal(inp),
            output_per_mtok=Decimal(out),
            cached_input_per_mtok=Decimal(cached) if cached else None,
            cache_write_per_mtok=Decimal(write) if write else None,
            effective_from=start,
            source="catalog",
        )
    httpx.delete(f"{mock_upstream_url}/_mock/ledger", timeout=5)
    httpx.delete(f"{mock_upstream_url}/_mock/requests", timeout=5)
    return world


def ledger(world: World) -> dict:
    return httpx.get(f"{world.mock}/_mock/ledger", timeout=5).json()


def wait_for_cut(world: World, request_id: str) -> list:
    """The mock's ledger entry for a cut stream, [input, produced, why], once it has one."""
    deadline = time.monotonic() + 5
    while request_id not in (cut := ledger(world)["cut"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return cut[request_id]


def chat_answer(client: openai.OpenAI, stream: bool, **kwargs: Any) -> tuple[str, Any, Any]:
    """(text, finish reason, usage) of one chat completion through the openai SDK, whole or
    streamed with usage included."""
    if stream:
        chunks = list(
            client.chat.completions.create(
                **kwargs, stream=True, stream_options={"include_usage": True}
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        return text, finish, chunks[-1].usage
    answer = client.chat.completions.create(stream=False, **kwargs)
    choice = answer.choices[0]
    return choice.message.content or "", choice.finish_reason, answer.usage


def the_record(timeout: float = 10) -> UsageRecord:
    """The call's one record, once the proxy has written it (after the client saw the end)."""
    deadline = time.monotonic() + timeout
    while not UsageRecord.objects.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    (record,) = UsageRecord.objects.all()
    return record


def mock_requests(world: World) -> list[dict]:
    return httpx.get(f"{world.mock}/_mock/requests", timeout=5).json()


def assert_records_match_ledger(world: World, *, at_least: int = 1) -> list[UsageRecord]:
    """Every answer the mock served is one record with its exact tokens, and nothing else."""
    served = ledger(world)
    deadline = time.monotonic() + 10
    while UsageRecord.objects.count() < served["count"] and time.monotonic() < deadline:
        time.sleep(0.05)
    records = list(UsageRecord.objects.order_by("created_at"))
    assert served["count"] >= at_least, served
    assert served["cut"] == {}
    by_id = {r.request_id: [r.input_tokens, r.output_tokens] for r in records}
    assert by_id == served["requests"]
    for record in records:
        assert record.cost == expected_cost(record), record
    world.allowance.refresh_from_db()
    assert world.allowance.used == sum(r.input_tokens + r.output_tokens for r in records)
    assert world.allowance.reserved == 0
    return records


def expected_cost(record: UsageRecord) -> Decimal:
    """The price arithmetic for a record, from the upstream model's price row."""
    price = ModelPrice.objects.get(model=record.upstream_model)
    cached_rate = price.cached_input_per_mtok
    write_rate = price.cache_write_per_mtok
    cached_rate = price.input_per_mtok if cached_rate is None else cached_rate
    write_rate = price.input_per_mtok if write_rate is None else write_rate
    plain = record.input_tokens - record.cached_input_tokens - record.cache_write_tokens
    return (
        plain * price.input_per_mtok
        + record.cached_input_tokens * cached_rate
        + record.cache_write_tokens * write_rate
        + record.output_tokens * price.output_per_mtok
    ) / Decimal(1_000_000)
