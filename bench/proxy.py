"""Proxy throughput and added latency, against the mock upstream directly and through the proxy.

    .venv/bin/python bench/proxy.py                 # Tokenbudget on the embedded default
    .venv/bin/python bench/proxy.py --litellm       # the same load against the LiteLLM proxy too

Starts its own processes on 127.0.0.1 (two mock upstreams: instant and 50 ms; the proxy with
one worker on a throwaway SQLite database, or on DATABASE_URL when given), drives each with a
closed-loop async client at concurrency 1, 16 and 64, non-streaming and streaming, and prints
requests/s, p50/p99 latency and the proxy's added latency (proxy p50 minus direct p50).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import servers  # noqa: E402

BODY = {
    "model": "",
    "messages": [{"role": "user", "content": "Summarise the quarterly token budget in one line."}],
    "max_tokens": 16,
}


@dataclass
class Result:
    target: str
    upstream: str
    stream: bool
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def drive(
    url: str, body: dict, headers: dict, concurrency: int, seconds: float, stream: bool
) -> tuple[int, int, float, list[float]]:
    payload = json.dumps({**body, "stream": stream}).encode()
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(
        connector=connector, headers={**headers, "content-type": "application/json"}
    ) as session:

        async def one() -> None:
            nonlocal errors
            started = time.perf_counter()
            async with session.post(url, data=payload) as response:
                async for _ in response.content.iter_any():
                    pass
                if response.status != 200:
                    errors += 1
                    return
            latencies.append(time.perf_counter() - started)

        # Warm up connections and caches.
        await asyncio.gather(*(one() for _ in range(min(concurrency, 16))))
        latencies.clear()
        errors = 0
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()

        async def worker() -> None:
            while time.perf_counter() < deadline:
                await one()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return len(latencies), errors, elapsed, latencies


def setup_database(env: dict[str, str], instant: str, slow: str) -> str:
    """Migrate and seed the benchmark's own database; returns the API key."""
    script = f"""
import django, datetime as dt
from decimal import Decimal
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.utils import timezone
from budgets.models import Allowance, CostCenter, Employee
from budgets.balance import current_fiscal_year
from metering.models import ModelPrice, ModelRoute, Upstream
from metering.services import key_create
cc = CostCenter.objects.create(code="bench", name="Bench")
e = Employee.objects.create(employee_id="B1", email="b1@example.com", cost_center=cc)
Allowance.objects.create(employee=e, fiscal_year=current_fiscal_year(), amount=Decimal(10**12), prorate=False)
for name, url in (("instant", "{instant}"), ("slow", "{slow}")):
    up = Upstream.objects.create(name=name, kind="openai", base_url=url)
    ModelRoute.objects.create(public_name="bench-" + name, upstream=up, upstream_model="gpt-4o-mini")
ModelPrice.objects.create(model="gpt-4o-mini", input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.60"),
    effective_from=timezone.now() - dt.timedelta(days=1), source="override")
print(key_create(employee=e, name="bench", actor=None)[1])
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip().splitlines()[-1]


def start_litellm(port: int, instant: str, slow: str, workers: int = 1) -> subprocess.Popen:
    venv = ROOT / "bench" / ".litellm-venv"
    if not (venv / "bin" / "litellm").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True)
    config = Path(tempfile.mkstemp(suffix=".yaml")[1])
    config.write_text(
        "model_list:\n"
        + "".join(
            f"  - model_name: bench-{name}\n    litellm_params:\n      model: openai/gpt-4o-mini\n"
            f"      api_base: {url}/v1\n      api_key: sk-bench\n"
            for name, url in (("instant", instant), ("slow", slow))
        )
    )
    return servers.start(
        [
            str(venv / "bin" / "litellm"),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            str(workers),
        ],
        port,
        # No database: LiteLLM's lightest set-up. It refuses to start keyless.
        {
            "LITELLM_LOG": "ERROR",
            "LITELLM_MASTER_KEY": "sk-bench-master",
            # Its bundled price list: no network here, and no fetch on the measured path.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            # Not the benchmark's own database and Redis (LiteLLM reads these names too).
            "DATABASE_URL": None,
            "REDIS_URL": None,
        },
        timeout=240,  # its imports alone take half a minute on a busy box
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument(
        "--litellm",
        action="store_true",
        help="also run the LiteLLM proxy (installed into bench/.litellm-venv)",
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="tb-bench-"))
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "TB_SERVE_STATIC": "0"}
    env.setdefault("DATABASE_URL", f"sqlite:///{workdir / 'bench.sqlite3'}")
    processes: list[subprocess.Popen] = []
    try:
        ports = {name: servers.free_port() for name in ("instant", "slow", "proxy", "litellm")}
        processes.append(servers.start_mock_upstream(ports["instant"], "--latency-ms", "0"))
        processes.append(servers.start_mock_upstream(ports["slow"], "--latency-ms", "50"))
        urls = {name: f"http://127.0.0.1:{ports[name]}" for name in ports}
        key = setup_database(env, urls["instant"], urls["slow"])
        processes.append(
            servers.start_proxy(
                ports["proxy"], {k: v for k, v in env.items() if k != "DJANGO_SETTINGS_MODULE"}
            )
        )
        targets = {"direct": None, "tokenbudget": (urls["proxy"], key)}
        if args.litellm:
            processes.append(start_litellm(ports["litellm"], urls["instant"], urls["slow"]))
            targets["litellm"] = (urls["litellm"], "sk-bench-master")

        results: list[Result] = []
        for upstream in ("instant", "slow"):
            for stream in (False, True):
                for concurrency in levels:
                    for target, where in targets.items():
                        if where is None:
                            url, headers = f"{urls[upstream]}/v1/chat/completions", {}
                        else:
                            url, headers = (
                                f"{where[0]}/v1/chat/completions",
                                {"authorization": f"Bearer {where[1]}"},
                            )
                        body = {
                            **BODY,
                            "model": "gpt-4o-mini" if where is None else f"bench-{upstream}",
                        }
                        count, errors, elapsed, lat = asyncio.run(
                            drive(url, body, headers, concurrency, args.seconds, stream)
                        )
                        results.append(
                            Result(
                                target, upstream, stream, concurrency, count, errors, elapsed, lat
                            )
                        )
                        report(results[-1], results)
        if args.json:
            args.json.write_text(
                json.dumps(
                    [
                        {
                            **r.__dict__,
                            "latencies": None,
                            "rps": r.rps,
                            "p50_ms": r.pct(0.5),
                            "p99_ms": r.pct(0.99),
                        }
                        for r in results
                    ],
                    indent=2,
                )
            )
    finally:
        for process in reversed(processes):
            servers.stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


def report(result: Result, results: list[Result]) -> None:
    if len(results) == 1 or (
        (results[-2].upstream, results[-2].stream) != (result.upstream, result.stream)
        and result.target == "direct"
    ):
        mode = "streaming" if result.stream else "non-streaming"
        latency = "instant" if result.upstream == "instant" else "50 ms"
        print(f"\n{latency} upstream, {mode}")
        print(
            f"{'target':<12} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'vs direct':>9} {'errors':>6}"
        )
    direct = next(
        (
            r
            for r in results
            if r.target == "direct"
            and (r.upstream, r.stream, r.concurrency)
            == (result.upstream, result.stream, result.concurrency)
        ),
        None,
    )
    added = f"{result.pct(0.5) - direct.pct(0.5):.2f}" if direct and result is not direct else "-"
    ratio = (
        f"{100 * result.rps / direct.rps:.0f} %"
        if direct and direct.rps and result is not direct
        else "-"
    )
    print(
        f"{result.target:<12} {result.concurrency:>4} {result.rps:>9.0f} {result.pct(0.5):>8.2f} {result.pct(0.99):>8.2f} {added:>10} {ratio:>9} {result.errors:>6}",
        flush=True,
    )


if __name__ == "__main__":
    main()
