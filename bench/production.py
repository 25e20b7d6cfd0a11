"""The production path: Redis quotas, the usage stream and its consumer, PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test .venv/bin/python bench/production.py

Starts on 127.0.0.1: a private redis-server, two mock upstreams (instant and 50 ms), the proxy
with one and then two uvicorn workers, and one usage-stream consumer, on a throwaway PostgreSQL
database created next to the one DATABASE_URL names (dropped at the end). Prints:

- requests/s, p50/p99 and the proxy's added latency against the mock directly, at each
  concurrency level, streaming and not, with 1 and 2 workers (`--workers 1,2`);
- database transactions and Redis commands per proxied call with warm caches (the consumer
  stopped, so only the proxy's own work counts);
- ingestion: usage events per second from the stream into PostgreSQL (`--events`), drained
  by `consume_usage --once` with 1 and 2 consumer processes (`--consumers 1,2`).

`--parts ingestion` measures only the ingestion. `--litellm` adds the same load against the
LiteLLM proxy with as many workers (no database: its lightest set-up), for the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import proxy as base  # noqa: E402  (bench/proxy.py: the load generator and the seeding)

from tests import servers  # noqa: E402


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = servers.free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)),
            *("--save", "", "--appendonly", "yes", "--appendfsync", "everysec"),
        ],
        stdout=subprocess.DEVNULL,
    )
    servers.wait_for_port(port, process)
    return process, f"redis://127.0.0.1:{port}/0"


def throwaway_database(url: str) -> tuple[str, str]:
    """A fresh database on the server of `url`; returns (its URL, its name)."""
    name = f"tb_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name, name


def drop_database(url: str, name: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def commits(url: str, name: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", [name]
        ).fetchone()
    return int(row[0])


class RedisCalls:
    """Counts the commands clients send (MONITOR), leaving out those scripts run inside Redis:
    a Lua script is one round trip however many commands it runs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.count = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = redis.Redis.from_url(self.url)
        with client.monitor() as monitor:
            while not self.stopping.is_set():
                command = monitor.next_command()
                if command.get("client_type") != "lua" and "MONITOR" not in command["command"]:
                    self.count += 1

    def __enter__(self) -> RedisCalls:
        self.thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        redis.Redis.from_url(self.url).ping()  # wakes the monitor so the thread can end
        self.thread.join(timeout=5)


def round_trips(
    proxy_url: str, key: str, db_url: str, db_name: str, redis_url: str, calls: int = 300
) -> tuple[float, float]:
    body = {**base.BODY, "model": "bench-instant"}
    headers = {"authorization": f"Bearer {key}"}
    url = f"{proxy_url}/v1/chat/completions"
    asyncio.run(base.drive(url, body, headers, 4, 0.5, False))  # warm the caches
    before_db = commits(db_url, db_name)
    count = 0
    with RedisCalls(redis_url) as redis_calls:
        started = time.perf_counter()
        while count < calls:
            done, _, _, _ = asyncio.run(base.drive(url, body, headers, 1, 0.05, False))
            count += done + 1  # drive() warms up with one call of its own
        elapsed = time.perf_counter() - started
    # The statistics view lags a little; the session that reads it adds its own transaction.
    time.sleep(0.7)
    db = commits(db_url, db_name) - before_db - 1
    print(f"  ({count} calls in {elapsed:.1f} s)")
    return db / count, (redis_calls.count - 1) / count


def ingestion(env: dict[str, str], events: int, consumers: int, batch: int) -> float:
    """Fill the stream with `events` events (no consumer running), then drain it with the
    `consume_usage` command as deployed (`--once`, `consumers` processes) and time that."""
    script = f"""
import django, io, time, uuid, datetime as dt
from decimal import Decimal
django.setup()
from django.core.management import call_command
from budgets.models import Allowance
from metering.models import UsageRecord, VirtualKey
from metering.quota import clients, keys
from metering.usage_stream import Charge, UsageEvent, event_encode, group_ensure
key = VirtualKey.objects.select_related("employee").first()
allowance = Allowance.objects.get(employee=key.employee)
client = clients.sync_client()
group_ensure(client)
now = dt.datetime.now(dt.UTC)
pipe = client.pipeline(transaction=False)
for i in range({events}):
    record = UsageRecord(request_id="req_" + uuid.uuid4().hex, created_at=now,
        employee_id=key.employee_id, key_id=key.pk, cost_center_id=key.employee.cost_center_id,
        model="bench", endpoint="chat", input_tokens=12, output_tokens=16,
        cost=Decimal("0.0000114"), status_code=200)
    charge = Charge(allowance.pk, allowance.unit, Decimal(28), Decimal("0.0000114"), (), 2026, None, 0)
    pipe.xadd(keys.STREAM, {{"e": event_encode(UsageEvent.of(record, charge))}})
    if i % 5000 == 4999:
        pipe.execute()
pipe.execute()
before = UsageRecord.objects.count()
used_before = Allowance.objects.get(pk=allowance.pk).used
out = io.StringIO()
started = time.perf_counter()
call_command("consume_usage", once=True, processes={consumers}, batch={batch}, stdout=out)
elapsed = time.perf_counter() - started
written = int(out.getvalue().split()[0])
assert written == {events} and UsageRecord.objects.count() - before == {events}
assert Allowance.objects.get(pk=allowance.pk).used - used_before == 28 * {events}
print(written / elapsed)
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--concurrency", default="1,16,64,256")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--upstreams", default="slow", help="instant, slow (50 ms) or both")
    parser.add_argument("--events", type=int, default=50_000, help="events for the ingestion run")
    parser.add_argument("--consumers", default="1,2", help="consumer processes for ingestion")
    parser.add_argument("--batch", type=int, default=5000, help="events per ingestion batch")
    parser.add_argument(
        "--parts", default="proxy,ingestion", help="proxy, ingestion or both (comma-separated)"
    )
    parser.add_argument(
        "--litellm",
        action="store_true",
        help="also run the LiteLLM proxy with as many workers (installed into bench/.litellm-venv)",
    )
    args = parser.parse_args()
    admin_url = os.environ.get("DATABASE_URL", "")
    if not admin_url.startswith("postgres"):
        sys.exit("Set DATABASE_URL to a PostgreSQL server (a throwaway database is created).")
    levels = [int(c) for c in args.concurrency.split(",")]
    upstreams = ["instant", "slow"] if args.upstreams == "both" else args.upstreams.split(",")

    workdir = Path(tempfile.mkdtemp(prefix="tb-bench-prod-"))
    processes: list[subprocess.Popen] = []
    db_url, db_name = throwaway_database(admin_url)
    try:
        redis_process, redis_url = start_redis(workdir)
        processes.append(redis_process)
        env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "REDIS_URL": redis_url,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "TB_SERVE_STATIC": "0",
            "TB_DB_THREADS": "2",
        }
        ports = {name: servers.free_port() for name in ("instant", "slow")}
        processes.append(servers.start_mock_upstream(ports["instant"], "--latency-ms", "0"))
        processes.append(servers.start_mock_upstream(ports["slow"], "--latency-ms", "50"))
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        key = base.setup_database(env, urls["instant"], urls["slow"])
        server_env = {k: v for k, v in env.items() if k != "DJANGO_SETTINGS_MODULE"}
        parts = set(args.parts.split(","))
        consumer = subprocess.Popen(
            [sys.executable, "manage.py", "consume_usage"], cwd=ROOT, env=env
        )
        processes.append(consumer)

        results: list[base.Result] = []
        for workers in [int(w) for w in args.workers.split(",")] if "proxy" in parts else []:
            port = servers.free_port()
            proxy = servers.start_proxy(port, server_env, workers=workers)
            targets = ["direct", "tokenbudget"]
            litellm = None
            if args.litellm:
                litellm_port = servers.free_port()
                litellm = base.start_litellm(
                    litellm_port, urls["instant"], urls["slow"], workers=workers
                )
                targets.append("litellm")
            print(f"\n=== {workers} worker(s) ===")
            try:
                for upstream in upstreams:
                    for stream in (False, True):
                        for concurrency in levels:
                            for target in targets:
                                if target == "direct":
                                    url, headers = f"{urls[upstream]}/v1/chat/completions", {}
                                    model = "gpt-4o-mini"
                                elif target == "litellm":
                                    url = f"http://127.0.0.1:{litellm_port}/v1/chat/completions"
                                    headers = {"authorization": "Bearer sk-bench-master"}
                                    model = f"bench-{upstream}"
                                else:
                                    url = f"http://127.0.0.1:{port}/v1/chat/completions"
                                    headers = {"authorization": f"Bearer {key}"}
                                    model = f"bench-{upstream}"
                                count, errors, elapsed, lat = asyncio.run(
                                    base.drive(
                                        url,
                                        {**base.BODY, "model": model},
                                        headers,
                                        concurrency,
                                        args.seconds,
                                        stream,
                                    )
                                )
                                results.append(
                                    base.Result(
                                        f"{target}/{workers}w" if target != "direct" else target,
                                        upstream,
                                        stream,
                                        concurrency,
                                        count,
                                        errors,
                                        elapsed,
                                        lat,
                                    )
                                )
                                _report(results[-1], results)
                if workers == 1:
                    consumer.terminate()
                    consumer.wait(timeout=30)
                    db, red = round_trips(
                        f"http://127.0.0.1:{port}", key, admin_url, db_name, redis_url
                    )
                    print(f"round trips per call (warm caches): database {db:.3f}, redis {red:.2f}")
                    consumer = subprocess.Popen(
                        [sys.executable, "manage.py", "consume_usage"], cwd=ROOT, env=env
                    )
                    processes.append(consumer)
            finally:
                servers.stop(proxy)
                if litellm is not None:
                    servers.stop(litellm)
        consumer.terminate()
        consumer.wait(timeout=60)
        for consumers in (
            [int(c) for c in args.consumers.split(",")] if "ingestion" in parts else []
        ):
            rate = ingestion(env, args.events, consumers, args.batch)
            print(
                f"ingestion: {rate:,.0f} usage records/s from the stream into PostgreSQL "
                f"({consumers} consumer process{'es' if consumers > 1 else ''}, "
                f"batches of {args.batch})"
            )
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                servers.stop(process)
        drop_database(admin_url, db_name)
        shutil.rmtree(workdir, ignore_errors=True)


def _report(result: base.Result, results: list[base.Result]) -> None:
    direct = next(
        (
            r
            for r in reversed(results)
            if r.target == "direct"
            and (r.upstream, r.stream, r.concurrency)
            == (result.upstream, result.stream, result.concurrency)
        ),
        None,
    )
    added = ""
    if direct is not None and result is not direct:
        ratio = result.rps / direct.rps if direct.rps else 0
        added = f"  added p50 {result.pct(0.5) - direct.pct(0.5):6.1f} ms  {ratio * 100:5.1f}% of direct"
    print(
        f"{result.target:16} {result.upstream:7} {'stream' if result.stream else 'whole ':6} "
        f"c={result.concurrency:<4} {result.rps:8.0f} rps  p50 {result.pct(0.5):7.1f} ms  "
        f"p99 {result.pct(0.99):7.1f} ms  errors {result.errors}{added}"
    )


if __name__ == "__main__":
    main()
