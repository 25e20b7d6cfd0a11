"""Start real server processes for end-to-end tests: the ASGI proxy and the mock upstream."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited with {process.returncode} before listening on {port}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def database_url_of(settings_dict: dict) -> str:
    """A DATABASE_URL for the database Django is connected to (the test database)."""
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    user = settings_dict.get("USER") or "postgres"
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    password = f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{host}:{port}/{settings_dict['NAME']}"


def start(
    args: list[str],
    port: int,
    env: dict[str, str | None] | None = None,
    timeout: float = 30.0,
) -> subprocess.Popen:
    """Start a server on top of this environment (`None` removes a variable) and wait until it
    listens on `port` (at most `timeout` seconds)."""
    merged = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env = {name: value for name, value in merged.items() if value is not None}
    process = subprocess.Popen(args, cwd=ROOT, env=full_env)
    try:
        wait_for_port(port, process, timeout)
    except Exception:
        process.kill()
        raise
    return process


def start_mock_upstream(port: int, *extra: str) -> subprocess.Popen:
    return start(
        [
            sys.executable,
            "manage.py",
            "mock_upstream",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *extra,
        ],
        port,
    )


def start_proxy(port: int, env: dict[str, str], workers: int = 1) -> subprocess.Popen:
    return start(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "config.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        port,
        env,
    )


def start_proxy_granian(port: int, env: dict[str, str], workers: int = 1) -> subprocess.Popen:
    """The proxy on granian (Rust HTTP server, ASGI interface) instead of uvicorn."""
    return start(
        [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asginl",  # no lifespan: Django's handler has none
            "config.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        port,
        env,
        timeout=120,  # its worker process imports Django after the server starts
    )


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
