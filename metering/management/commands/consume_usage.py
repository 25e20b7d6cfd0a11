"""Drain the Redis usage stream into the database (run one or more beside the proxy)."""

from __future__ import annotations

import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from metering.usage_stream import consumer_name, stream_drain


class Command(BaseCommand):
    help = "Consume the usage stream: batches into the database, acknowledged after commit."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="Drain what is there and exit.")
        parser.add_argument("--name", default="", help="Consumer name (default: host and time).")
        parser.add_argument("--batch", type=int, default=0, help="Events per transaction.")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.REDIS_URL:
            raise CommandError("REDIS_URL is not set: usage is written straight to the database.")
        stopping = False

        def stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True  # finish the batch in hand, acknowledge it, then exit

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        total = stream_drain(
            consumer=options["name"] or consumer_name(),
            batch=options["batch"] or None,
            until_empty=options["once"],
            stop=lambda: stopping,
        )
        self.stdout.write(f"{total} usage records written")
