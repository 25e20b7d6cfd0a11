"""How long one large prompt stalls the other requests of a proxy process.

    .venv/bin/python bench/proxy_stall.py [--megabytes 7] [--rounds 3]

Starts two mock upstreams (one takes the large call, one the small calls, so a mock busy with
the large prompt does not slow the small calls) and one proxy worker on a throwaway SQLite database, then, while a
chat call with a prompt of `--megabytes` MB is in flight, probes the same process every 5 ms
with `GET /healthz` and with a small chat call (one at a time, each on its own connection),
and prints the slowest probe answer of each kind, with the same figures for a quiet process
beside them. A process whose event loop is never blocked answers each probe in a few ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.proxy import setup_database  # noqa: E402
from tests import servers  # noqa: E402

WORDS = [
    "budget",
    "token",
    "ledger",
    "allowance",
    "quarter",
    "invoice",
    "model",
    "prompt",
    "answer",
    "cost",
]


def big_body(megabytes: float) -> bytes:
    rng = random.Random(7)
    size = int(megabytes * 1_000_000)
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    prompt = " ".join(words)[:size]
    return json.dumps(
        {
            "model": "bench-instant",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": prompt}],
        }
    ).encode()


SMALL = json.dumps(
    {"model": "bench-slow", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
).encode()


async def probe(
    session: aiohttp.ClientSession, url: str, key: str, running: asyncio.Event
) -> tuple[list[float], list[float]]:
    """Alternate /healthz and a small call until `running` is cleared; their latencies (s)."""
    health: list[float] = []
    small: list[float] = []
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    while running.is_set():
        started = time.perf_counter()
        async with session.get(f"{url}/healthz") as response:
            await response.read()
            assert response.status == 200, response.status
        health.append(time.perf_counter() - started)
        started = time.perf_counter()
        async with session.post(f"{url}/v1/chat/completions", data=SMALL, headers=headers) as r:
            await r.read()
            assert r.status == 200, (r.status, await r.text())
        small.append(time.perf_counter() - started)
        await asyncio.sleep(0.005)
    return health, small


async def measure(url: str, key: str, body: bytes | None, quiet_seconds: float) -> dict:
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        running = asyncio.Event()
        running.set()
        probes = asyncio.ensure_future(probe(session, url, key, running))
        await asyncio.sleep(0.2)  # the probes are warm before the large call starts
        started = time.perf_counter()
        status = None
        if body is None:
            await asyncio.sleep(quiet_seconds)
        else:
            async with session.post(
                f"{url}/v1/chat/completions",
                data=body,
                headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
            ) as response:
                await response.read()
                status = response.status
        elapsed = time.perf_counter() - started
        running.clear()
        health, small = await probes
    return {
        "status": status,
        "seconds": elapsed,
        "healthz_max_ms": max(health) * 1000,
        "small_max_ms": max(small) * 1000,
        "probes": len(health),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megabytes", type=float, default=7.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--debug-loop", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="tb-stall-"))
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "TB_SERVE_STATIC": "0"}
    env["DATABASE_URL"] = f"sqlite:///{workdir / 'bench.sqlite3'}"
    env.pop("REDIS_URL", None)
    processes = []
    try:
        ports = {name: servers.free_port() for name in ("instant", "slow", "proxy")}
        processes.append(servers.start_mock_upstream(ports["instant"], "--latency-ms", "0"))
        processes.append(servers.start_mock_upstream(ports["slow"], "--latency-ms", "0"))
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        # Routes bench-instant (the large call) and bench-slow (the probes), each on its mock.
        key = setup_database(env, urls["instant"], urls["slow"])
        proxy_env = {k: v for k, v in env.items() if k != "DJANGO_SETTINGS_MODULE"}
        if args.debug_loop:
            proxy_env["PYTHONASYNCIODEBUG"] = "1"
            processes.append(
                servers.start(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "config.asgi:application",
                        "--port",
                        str(ports["proxy"]),
                        "--loop",
                        "asyncio",
                        "--log-level",
                        "warning",
                        "--no-access-log",
                    ],
                    ports["proxy"],
                    proxy_env,
                )
            )
        else:
            processes.append(servers.start_proxy(ports["proxy"], proxy_env))
        body = big_body(args.megabytes)
        print(f"large body: {len(body)} bytes")
        asyncio.run(measure(urls["proxy"], key, None, 0.5))  # loads the tokenizer, warms caches
        print(
            f"{'run':<8} {'status':>6} {'seconds':>8} {'healthz max ms':>15} {'small max ms':>13}"
        )
        for round_ in range(args.rounds):
            quiet = asyncio.run(measure(urls["proxy"], key, None, 1.0))
            print(
                f"{'quiet':<8} {'-':>6} {quiet['seconds']:>8.2f} "
                f"{quiet['healthz_max_ms']:>15.1f} {quiet['small_max_ms']:>13.1f}"
            )
            loaded = asyncio.run(measure(urls["proxy"], key, body, 0))
            print(
                f"{'large ' + str(round_ + 1):<8} {loaded['status']:>6} {loaded['seconds']:>8.2f} "
                f"{loaded['healthz_max_ms']:>15.1f} {loaded['small_max_ms']:>13.1f}",
                flush=True,
            )
    finally:
        for process in reversed(processes):
            servers.stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
