"""What routing among deployments costs a call: CPU, and the latency of a fallback.

    .venv/bin/python bench/routing.py [--calls 20000] [--fallbacks 200]

1. CPU per call of the routing steps the proxy runs for every call (`shell._plan`'s order of
   the deployments and their candidates with prices, the hold's worst case over them, and the
   per-attempt health bookkeeping: started, succeeded, finished), for a route with three
   deployments of equal priority against a route with one; process CPU time, best of five
   runs of `--calls` each. The difference is what routing adds.
2. The latency a refused connection adds: a deployment whose port refuses, then the mock
   upstream (in-process, on a thread), against the mock alone; median and p90 of
   `--fallbacks` calls through `metering.upstream.send`, as `shell._attempt` sends them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DATABASE_URL", "sqlite:///:memory:")

import django  # noqa: E402

django.setup()

from django.utils import timezone  # noqa: E402

from metering import upstream  # noqa: E402
from metering.deployments import DeploymentInfo  # noqa: E402
from metering.mock import start_in_thread  # noqa: E402
from metering.models import ModelPrice  # noqa: E402
from metering.providers.base import ParsedRequest  # noqa: E402
from metering.proxy import call as core  # noqa: E402
from metering.proxy import health  # noqa: E402
from metering.selectors import KeyInfo, RouteInfo  # noqa: E402
from tests import servers  # noqa: E402

NOW = timezone.now()


def _target(base_url: str) -> upstream.UpstreamTarget:
    return upstream.UpstreamTarget(
        kind="openai",
        base_url=base_url,
        credential_env="",
        api_version="",
        connect_timeout=10.0,
        read_timeout=10.0,
    )


def _price(model: str) -> ModelPrice:
    return ModelPrice(
        pk=1,
        model=model,
        input_per_mtok=Decimal("0.15"),
        output_per_mtok=Decimal("0.60"),
        effective_from=NOW - dt.timedelta(days=1),
        source="catalog",
    )


def _route(count: int) -> RouteInfo:
    deployments = tuple(
        DeploymentInfo(
            key=f"m@up{i}/model-{i}",
            id=i + 1,
            upstream_id=i + 1,
            upstream_name=f"up{i}",
            upstream_model=f"model-{i}",
            target=_target(f"http://127.0.0.1:{9000 + i}"),
            prices=(_price(f"model-{i}"),),
        )
        for i in range(count)
    )
    first = deployments[0]
    return RouteInfo(
        public_name="m",
        upstream_id=first.upstream_id,
        upstream_name=first.upstream_name,
        upstream_model=first.upstream_model,
        target=first.target,
        default_max_output_tokens=256,
        unmetered_cost=False,
        prices=first.prices,
        deployments=deployments,
    )


def _info() -> KeyInfo:
    from budgets.balance import LimitRule

    return KeyInfo(
        key_id=1,
        employee_id=1,
        employee_active=True,
        employee_start=None,
        employee_end=None,
        cost_center_id=1,
        revoked=False,
        expires_at=None,
        key_models=frozenset(),
        policy_models=frozenset(),
        per_request_token_cap=None,
        clamp=True,
        rule=LimitRule.from_policy(None),
        capped_cost_center_ids=(),
        cap_tokens=None,
        default_intent="",
        allowance_unit="usd",
    )


def _routing_cpu(count: int, calls: int) -> float:
    """CPU seconds per call of the routing steps for a route of `count` deployments."""
    route, info = _route(count), _info()
    parsed = ParsedRequest(endpoint="chat", model="m", body={}, max_output_tokens=10)
    best = float("inf")
    for _ in range(5):
        health.reset()
        started = time.process_time()
        for _ in range(calls):
            ordered = health.plan(route.deployments, 20)
            plan, _ = core.candidates_of(info, route, ordered, "chat", NOW)
            core.hold_estimate(parsed, plan, info, 10)
            served = plan[0].route.deployment
            health.started(served, 20)
            health.succeeded(served, 0.01)
            health.finished(served)
        best = min(best, (time.process_time() - started) / calls)
    return best


async def _fallback_latency(mock_url: str, count: int) -> tuple[list[float], list[float]]:
    refused = _target(f"http://127.0.0.1:{servers.free_port()}")
    good = _target(mock_url)
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":5}'
    headers = {"content-type": "application/json"}

    async def once(target: upstream.UpstreamTarget) -> None:
        response = await upstream.send(
            target, endpoint="chat", upstream_model="gpt-4o-mini", body=body, headers=headers
        )
        await response.aread()
        await response.aclose()

    direct, fallen = [], []
    for _ in range(count):
        started = time.perf_counter()
        await once(good)
        direct.append(time.perf_counter() - started)
        started = time.perf_counter()
        with contextlib.suppress(upstream.UpstreamError):
            await once(refused)
        await once(good)
        fallen.append(time.perf_counter() - started)
    await upstream.session().close()
    return direct, fallen


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[int(len(ordered) * 0.9)]
    return f"median {statistics.median(ordered) * 1000:.2f} ms, p90 {p90 * 1000:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--fallbacks", type=int, default=200)
    args = parser.parse_args()
    one = _routing_cpu(1, args.calls)
    three = _routing_cpu(3, args.calls)
    print(f"routing CPU per call, 1 deployment:  {one * 1e6:.1f} µs")
    print(f"routing CPU per call, 3 deployments: {three * 1e6:.1f} µs")
    print(f"added by 3 deployments against 1:    {(three - one) * 1e6:.1f} µs (target < 30 µs)")
    mock = start_in_thread()
    try:
        direct, fallen = asyncio.run(_fallback_latency(mock.url, args.fallbacks))
    finally:
        mock.stop()
    print(f"mock alone:                          {_ms(direct)}")
    print(f"refused deployment, then the mock:   {_ms(fallen)}")
    added = statistics.median(fallen) - statistics.median(direct)
    print(f"latency a refused connection adds:   {added * 1000:.2f} ms (median)")


if __name__ == "__main__":
    main()
