"""Drain the Redis usage stream into the database (run one or more beside the proxy)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from metering.usage_stream import consumer_name, stream_drain


class Command(BaseCommand):
    help = "Consume the usage stream: batches into the database, acknowledged after commit."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="Drain what is there and exit.")
        parser.add_argument("--name", default="", help="Consumer name (default: host and time).")
        parser.add_argument("--batch", type=int, default=0, help="Events per transaction.")
        parser.add_argument(
            "--processes",
            type=int,
            default=1,
            help="Consumers to run side by side (each its own connection and consumer name); "
            "the database's work for one batch overlaps another's reading and committing.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.REDIS_URL:
            raise CommandError("REDIS_URL is not set: usage is written straight to the database.")
        processes = max(1, options["processes"])
        name = options["name"] or consumer_name()
        stopping = False
        children: list[multiprocessing.Process] = []

        def stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True  # finish the batch in hand, acknowledge it, then exit
            for child in children:
                if child.pid is not None and child.is_alive():
                    os.kill(child.pid, signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        drain = {
            "batch": options["batch"] or None,
            "until_empty": options["once"],
        }
        started = time.perf_counter()
        if processes == 1:
            total = stream_drain(consumer=name, stop=lambda: stopping, **drain)
        else:
            total = self._run_children(processes, name, drain, children)
        elapsed = time.perf_counter() - started
        self.stdout.write(f"{total} usage records written in {elapsed:.3f} s")

    def _run_children(
        self,
        processes: int,
        name: str,
        drain: dict[str, Any],
        children: list[multiprocessing.Process],
    ) -> int:
        """Fork the consumers (each with its own name, so a dead one's pending entries are
        claimed by the others) and add up what they wrote."""
        connections.close_all()  # a connection must not be shared across a fork
        context = multiprocessing.get_context("fork")
        results = context.SimpleQueue()
        for index in range(processes):
            child = context.Process(
                target=_child, args=(f"{name}-{index}", drain, results), daemon=False
            )
            child.start()
            children.append(child)
        for child in children:
            child.join()
        total = 0
        while not results.empty():
            total += results.get()
        failed = [c.exitcode for c in children if c.exitcode]
        if failed:
            raise CommandError(f"consumers exited with {failed}")
        return total


def _child(name: str, drain: dict[str, Any], results: Any) -> None:
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    results.put(stream_drain(consumer=name, stop=lambda: stopping, **drain))
