"""`manage.py mock_upstream`: serve the deterministic OpenAI/Anthropic stand-in (no database)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from metering.mock import MockSettings, run


class Command(BaseCommand):
    help = "Serve a mock OpenAI- and Anthropic-compatible upstream (see metering/mock/)."
    # The mock touches no database and must start even before migrations.
    requires_system_checks: list[str] = []
    requires_migrations_checks = False

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001)
        parser.add_argument(
            "--latency-ms", type=int, default=0, help="Delay before each response head."
        )
        parser.add_argument(
            "--chunk-latency-ms", type=int, default=0, help="Delay between stream chunks."
        )
        parser.add_argument(
            "--expected-key",
            default="",
            help="Refuse (401) requests whose Authorization / x-api-key is not this key.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        settings = MockSettings(
            latency_ms=options["latency_ms"],
            chunk_latency_ms=options["chunk_latency_ms"],
            expected_key=options["expected_key"] or None,
        )
        self.stdout.write(
            f"Mock upstream on http://{options['host']}:{options['port']} "
            f"(latency {settings.latency_ms} ms, chunk latency {settings.chunk_latency_ms} ms)"
        )
        self.stdout.flush()
        run(options["host"], options["port"], settings)
