"""Run the periodic jobs in this process, on the beat schedule of config/celery.py.

It lives in `config` beside that schedule: it runs every app's jobs, so no app owns it.

The embedded default has no broker and no beat: `scripts/run.sh` starts this beside the web
server instead. With a broker, run `celery -A config beat` and a worker; never both.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from celery.schedules import maybe_schedule
from django.core.management.base import BaseCommand
from django.utils import timezone

from config.celery import app

log = logging.getLogger("tokenbudget.jobs")


class Command(BaseCommand):
    help = "Run the periodic jobs in-process (embedded default, no Celery broker)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="run every job once and exit")

    def handle(self, *args: Any, once: bool = False, **options: Any) -> None:
        app.loader.import_default_modules()  # registers every app's tasks (autodiscovery)
        entries = dict(app.conf.beat_schedule)
        if once:
            for name, entry in entries.items():
                self._run(name, entry)
            return
        last: dict[str, dt.datetime] = {}
        while True:
            wait = 60.0
            for name, entry in entries.items():
                schedule = maybe_schedule(entry["schedule"])
                due, next_in = schedule.is_due(
                    last.get(name, timezone.now() - dt.timedelta(days=1))
                )
                if due:
                    self._run(name, entry)
                    last[name] = timezone.now()
                wait = min(wait, max(float(next_in), 1.0))
            time.sleep(wait)

    def _run(self, name: str, entry: dict) -> None:
        started = time.monotonic()
        try:
            result = app.tasks[entry["task"]].apply(
                args=entry.get("args", ()), kwargs=entry.get("kwargs", {})
            )
            if result.failed():
                log.error("job %s failed: %s", name, result.result)
            else:
                log.info("job %s done in %.2f s", name, time.monotonic() - started)
        except Exception:  # one job's failure must not stop the others
            log.exception("job %s failed", name)
