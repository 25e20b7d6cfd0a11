"""CPU time per call of every process of the set, beside requests/s and latency.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/cpu.py
    .venv/bin/python bench/cpu.py --points embedded --no-litellm --server granian

One 50 ms mock upstream; for each point (the production path: Redis quotas, the usage stream
and one consumer on a throwaway PostgreSQL database; the embedded default: SQLite, no Redis),
each mode (whole answer, stream) and each concurrency (closed loop, `--concurrency 64,1`) it
drives the mock directly (the floor), the proxy, and the LiteLLM proxy (no database, its
lightest set-up; installed into bench/.litellm-venv on first use), and reads from /proc the
user + system CPU time that each process tree spent meanwhile: the proxy (one worker), the
consumer, the private redis-server, the PostgreSQL backends connected to the throwaway
database (the server's shared background processes are left out), and the mock. Each is
divided by the calls completed. Then, on the production path, the time from a call's answer
to its usage record being in the database (median and worst of `--lag-calls` calls at c=1).

The table gives each point's ratio to LiteLLM (its proxy CPU per call over ours) and to the
floor (our proxy CPU per call over the mock's own). The load generator runs on the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import production  # noqa: E402  (bench/production.py: redis-server, throwaway database)
import proxy as base  # noqa: E402  (bench/proxy.py: the load generator and the seeding)

from tests import servers  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system seconds) of a live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def tree_cpu(root: int) -> float:
    """CPU seconds of a process and all its live descendants."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _stat(int(entry))
            if found is not None:
                parents[int(entry)], cpu[int(entry)] = found
    total, frontier = 0.0, {root}
    while frontier:
        total += sum(cpu.get(pid, 0.0) for pid in frontier)
        frontier = {pid for pid, parent in parents.items() if parent in frontier}
    return total


def backends_cpu(database: str) -> float:
    """CPU seconds of the live PostgreSQL backends serving `database` (their process title
    names it). A backend that ends inside a window takes its share with it: the consumer keeps
    one connection, and the proxy's hot path on Redis makes no query with warm caches."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"postgres: ") and f" {database} ".encode() in title:
            found = _stat(int(entry))
            total += found[1] if found else 0.0
    return total


@dataclass
class Meters:
    """What to read before and after a run: name -> a function answering CPU seconds."""

    readers: dict[str, object] = field(default_factory=dict)

    def read(self) -> dict[str, float]:
        return {name: reader() for name, reader in self.readers.items()}  # type: ignore[operator]


@dataclass
class Row:
    point: str
    target: str
    stream: bool
    concurrency: int
    rps: float
    p50: float
    p99: float
    calls: int
    errors: int
    cpu_us: dict[str, float]
    load: float

    @property
    def proxy_us(self) -> float:
        return self.cpu_us.get("proxy", 0.0)

    @property
    def set_us(self) -> float:
        return sum(v for k, v in self.cpu_us.items() if k != "mock")


def profile_start(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    """py-spy sampling the proxy (all its threads, native frames left out) for `seconds`."""
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            *("--pid", str(pid), "--duration", str(max(1, int(seconds)))),
            *("--rate", "250", "--format", "raw", "--output", str(out), "--nonblocking"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def profile_summary(path: Path, top: int = 25) -> str:
    """Collapsed stacks -> the share of samples per innermost frame and per module (inclusive)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        total += n
        leaf = frames[-1]
        own[leaf] = own.get(leaf, 0) + n
        for module in {f.split("(", 1)[-1].split(":", 1)[0].rstrip(")") for f in frames}:
            inclusive[module] = inclusive.get(module, 0) + n
    lines = [f"{total} samples", "innermost frames:"]
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {frame}")
    lines.append("files on the stack (inclusive):")
    for module, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {module}")
    return "\n".join(lines)


def measure(
    meters: Meters,
    url: str,
    body: dict,
    headers: dict,
    concurrency: int,
    seconds: float,
    stream: bool,
    profile: tuple[int, Path] | None = None,
) -> tuple[int, int, float, list[float], dict[str, float]]:
    # Warm-up inside drive() is not counted: read the meters around a drive() of its own.
    asyncio.run(base.drive(url, body, headers, concurrency, 0.3, stream))
    time.sleep(0.3)  # let the consumer catch up with the warm-up
    profiler = None
    if profile is not None:
        profiler = profile_start(profile[0], seconds, profile[1])
    before = meters.read()
    count, errors, elapsed, lat = asyncio.run(
        base.drive(url, body, headers, concurrency, seconds, stream)
    )
    # The consumer's and the database's share of these calls lands after the last answer.
    time.sleep(1.5 if "consumer" in meters.readers else 0.1)
    after = meters.read()
    if profiler is not None:
        profiler.wait(timeout=60)
    # drive() makes min(concurrency, 16) warm-up calls of its own inside the window.
    done = count + min(concurrency, 16)
    per_call = {name: (after[name] - before[name]) * 1e6 / done for name in after}
    return count, errors, elapsed, lat, per_call


async def _record_lag(url: str, body: dict, headers: dict, db_url: str, calls: int) -> list[float]:
    lags = []
    async with aiohttp.ClientSession(headers={**headers, "content-type": "application/json"}) as s:
        with psycopg.connect(db_url, autocommit=True) as conn:
            for _ in range(calls):
                async with s.post(url, data=json.dumps(body).encode()) as response:
                    await response.read()
                    request_id = response.headers.get("x-request-id", "")
                answered = time.perf_counter()
                while not conn.execute(
                    "SELECT 1 FROM metering_usagerecord WHERE request_id = %s", [request_id]
                ).fetchone():
                    if time.perf_counter() - answered > 10:
                        raise RuntimeError(f"record {request_id} not in the database after 10 s")
                    time.sleep(0.002)
                lags.append((time.perf_counter() - answered) * 1000)
                await asyncio.sleep(0.05)
    return lags


def start_server(kind: str, port: int, env: dict[str, str]) -> object:
    if kind == "granian":
        return servers.start_proxy_granian(port, env)
    return servers.start_proxy(port, env)


def run_point(point: str, args: argparse.Namespace, rows: list[Row], lags: dict) -> None:
    workdir = Path(tempfile.mkdtemp(prefix=f"tb-cpu-{point}-"))
    processes: list[subprocess.Popen] = []
    db_name = ""
    admin_url = os.environ.get("DATABASE_URL", "")
    try:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "TB_SERVE_STATIC": "0",
        }
        meters = Meters()
        if point == "production":
            db_url, db_name = production.throwaway_database(admin_url)
            redis_process, redis_url = production.start_redis(workdir)
            processes.append(redis_process)
            env.update(DATABASE_URL=db_url, REDIS_URL=redis_url, TB_DB_THREADS="2")
            meters.readers["redis"] = lambda: tree_cpu(redis_process.pid)
            meters.readers["postgres"] = lambda: backends_cpu(db_name)
        else:
            env["DATABASE_URL"] = f"sqlite:///{workdir / 'bench.sqlite3'}"
            env.pop("REDIS_URL", None)
            db_url = ""
        mock_port = servers.free_port()
        mock = servers.start_mock_upstream(mock_port, "--latency-ms", "50")
        processes.append(mock)
        meters.readers["mock"] = lambda: tree_cpu(mock.pid)
        mock_url = f"http://127.0.0.1:{mock_port}"
        key = base.setup_database(env, mock_url, mock_url)
        server_env = {k: v for k, v in env.items() if k != "DJANGO_SETTINGS_MODULE"}
        if point == "production":
            consumer = subprocess.Popen(
                [sys.executable, "manage.py", "consume_usage"], cwd=ROOT, env=env
            )
            processes.append(consumer)
            meters.readers["consumer"] = lambda: tree_cpu(consumer.pid)
        port = servers.free_port()
        proxy = start_server(args.server, port, server_env)
        processes.append(proxy)
        litellm = None
        if args.litellm:
            litellm_port = servers.free_port()
            litellm = base.start_litellm(litellm_port, mock_url, mock_url)
            processes.append(litellm)

        targets = {
            "floor": (f"{mock_url}/v1/chat/completions", {}, "gpt-4o-mini", "mock", mock),
            "tokenbudget": (
                f"http://127.0.0.1:{port}/v1/chat/completions",
                {"authorization": f"Bearer {key}"},
                "bench-slow",
                "proxy",
                proxy,
            ),
        }
        if litellm is not None:
            targets["litellm"] = (
                f"http://127.0.0.1:{litellm_port}/v1/chat/completions",
                {"authorization": "Bearer sk-bench-master"},
                "bench-slow",
                "proxy",
                litellm,
            )
        for stream in (False, True):
            for concurrency in args.levels:
                for target, (url, headers, model, name, process) in targets.items():
                    run_meters = Meters(dict(meters.readers))
                    if target == "litellm":
                        # LiteLLM's set is itself and the mock: our consumer idles meanwhile.
                        run_meters.readers = {"mock": meters.readers["mock"]}
                    if name == "proxy":
                        run_meters.readers["proxy"] = lambda p=process: tree_cpu(p.pid)
                    count, errors, elapsed, lat, per_call = measure(
                        run_meters,
                        url,
                        {**base.BODY, "model": model},
                        headers,
                        concurrency,
                        args.c1_seconds if concurrency == 1 else args.seconds,
                        stream,
                    )
                    if args.profile and target == "tokenbudget" and concurrency > 1:
                        # A run of its own: the sampler's CPU stays out of the measured one.
                        out = args.profile / f"{point}-{'stream' if stream else 'whole'}.txt"
                        measure(
                            run_meters,
                            url,
                            {**base.BODY, "model": model},
                            headers,
                            concurrency,
                            args.seconds,
                            stream,
                            profile=(process.pid, out),
                        )
                        print(profile_summary(out), flush=True)
                    if target == "floor":
                        per_call = {"mock": per_call["mock"]}
                    result = base.Result(
                        target, "slow", stream, concurrency, count, errors, elapsed, lat
                    )
                    rows.append(
                        Row(
                            point,
                            target,
                            stream,
                            concurrency,
                            result.rps,
                            result.pct(0.5),
                            result.pct(0.99),
                            count,
                            errors,
                            per_call,
                            os.getloadavg()[0],
                        )
                    )
                    _print_row(rows[-1], rows)
        if point == "production" and args.lag_calls:
            found = asyncio.run(
                _record_lag(
                    targets["tokenbudget"][0],
                    {**base.BODY, "model": "bench-slow"},
                    targets["tokenbudget"][1],
                    db_url,
                    args.lag_calls,
                )
            )
            lags[point] = found
            print(
                f"  record reaches the database {statistics.median(found):.0f} ms after the answer"
                f" (median of {len(found)}; worst {max(found):.0f} ms)",
                flush=True,
            )
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                servers.stop(process)
        if db_name:
            production.drop_database(admin_url, db_name)
        shutil.rmtree(workdir, ignore_errors=True)


def _print_row(row: Row, rows: list[Row]) -> None:
    same = [
        r
        for r in rows
        if (r.point, r.stream, r.concurrency) == (row.point, row.stream, row.concurrency)
    ]
    floor = next((r for r in same if r.target == "floor"), None)
    cpu = " ".join(f"{k} {v:,.0f}" for k, v in sorted(row.cpu_us.items()))
    added = f"+{row.p50 - floor.p50:.1f}" if floor and row is not floor else "-"
    print(
        f"{row.point:10} {row.target:11} {'stream' if row.stream else 'whole':6} "
        f"c={row.concurrency:<3} {row.rps:6.0f} rps p50 {row.p50:6.1f} ({added}) p99 {row.p99:6.1f} ms"
        f"  µs/call: {cpu}  errors {row.errors}  load {row.load:.1f}",
        flush=True,
    )


def table(rows: list[Row]) -> str:
    """The closing table: one line per point, mode and concurrency."""
    head = (
        "| point | mode | c | floor µs | Tokenbudget proxy µs | consumer µs | Redis µs | PostgreSQL µs"
        " | whole set µs | LiteLLM µs | LiteLLM / proxy | proxy / floor | req/s TB / LiteLLM / floor"
        " | added p50 ms TB / LiteLLM | load |\n|" + " --- |" * 15
    )
    lines = [head]
    keys = sorted(
        {(r.point, r.stream, r.concurrency) for r in rows}, key=lambda k: (k[0], k[1], -k[2])
    )
    for point, stream, concurrency in keys:
        same = {
            r.target: r
            for r in rows
            if (r.point, r.stream, r.concurrency) == (point, stream, concurrency)
        }
        floor, ours, theirs = same.get("floor"), same.get("tokenbudget"), same.get("litellm")
        if floor is None or ours is None:
            continue
        f_us = floor.cpu_us["mock"]
        c = ours.cpu_us
        lite = f"{theirs.proxy_us:,.0f}" if theirs else "-"
        ratio = f"{theirs.proxy_us / ours.proxy_us:.1f}x" if theirs and ours.proxy_us else "-"
        rps = (
            f"{ours.rps:.0f} / {theirs.rps:.0f} / {floor.rps:.0f}"
            if theirs
            else f"{ours.rps:.0f} / - / {floor.rps:.0f}"
        )
        added = f"{ours.p50 - floor.p50:.1f} / " + (
            f"{theirs.p50 - floor.p50:.1f}" if theirs else "-"
        )
        lines.append(
            f"| {point} | {'stream' if stream else 'whole'} | {concurrency} | {f_us:,.0f} | {ours.proxy_us:,.0f}"
            f" | {c.get('consumer', 0):,.0f} | {c.get('redis', 0):,.0f} | {c.get('postgres', 0):,.0f}"
            f" | {ours.set_us:,.0f} | {lite} | {ratio} | {ours.proxy_us / f_us if f_us else 0:.0f}x"
            f" | {rps} | {added} | {ours.load:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument(
        "--c1-seconds",
        type=float,
        default=10.0,
        help="measured seconds at concurrency 1 (CPU time is read in 10 ms ticks)",
    )
    parser.add_argument("--concurrency", default="64,1")
    parser.add_argument("--points", default="production,embedded")
    parser.add_argument("--server", default="uvicorn", choices=["uvicorn", "granian"])
    parser.add_argument("--no-litellm", dest="litellm", action="store_false")
    parser.add_argument("--lag-calls", type=int, default=30, help="calls timed to the database")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    parser.add_argument(
        "--profile",
        type=Path,
        help="after each measured run of the proxy at c>1, one more under py-spy (not counted):"
        " collapsed stacks into this folder and a summary printed",
    )
    args = parser.parse_args()
    args.levels = [int(c) for c in args.concurrency.split(",")]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    points = args.points.split(",")
    if "production" in points and not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit("The production point needs DATABASE_URL naming a PostgreSQL server.")
    rows: list[Row] = []
    lags: dict[str, list[float]] = {}
    print(f"server {args.server}; load average at start {os.getloadavg()[0]:.1f}", flush=True)
    for point in points:
        run_point(point, args, rows, lags)
    print()
    print(table(rows))
    for point, found in lags.items():
        print(
            f"\n{point}: a record reaches the database {statistics.median(found):.0f} ms after its"
            f" answer (median of {len(found)} calls at c=1; worst {max(found):.0f} ms)"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"rows": [r.__dict__ for r in rows], "lags": lags}, indent=2)
        )


if __name__ == "__main__":
    main()
