"""Celery tasks: thin, idempotent callers of billing services (they take ids, not objects).

Periodic ones are catch-ups (see config.celery beat_schedule): a missed or repeated run is
harmless. Retries are for transient failures only.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

import httpx
from celery import shared_task
from django import db
from django.db import OperationalError
from django.utils import timezone

from billing import alerts, rollup, statements, stripe_api, stripe_sync, value, value_store

logger = logging.getLogger(__name__)


@shared_task(acks_late=True, ignore_result=True)
def daily_usage_rollup_task() -> int:
    """Fold new usage records into DailyUsage; returns the number of groups touched."""
    return rollup.daily_usage_rollup().groups


@shared_task(acks_late=True, ignore_result=True)
def statements_close_as_needed_task() -> int:
    """Create or refresh drafts for every ended month; returns the months processed."""
    return len(statements.statements_close_as_needed(now=timezone.now()))


@shared_task(acks_late=True, ignore_result=True)
def statement_stripe_sync_task(statement_id: int) -> str:
    """Invoice a finalized statement in Stripe if it is due (safe to run twice).

    No Celery retries: a failure is recorded on the statement with its next retry time, and
    `statements_stripe_sync_pending_task` runs it again then (the same way with or without a broker).
    Returns the outcome: invoiced, failed, busy or skipped.
    """
    if not stripe_api.is_configured():
        return "skipped"
    return stripe_sync.statement_stripe_sync_attempt(statement_id=statement_id)


@shared_task(acks_late=True, ignore_result=True)
def statements_stripe_sync_pending_task() -> int:
    """Sync every statement that is due, each on its own (one failing never stops the others);
    returns how many were due."""
    if not stripe_api.is_configured():
        return 0
    ids = stripe_sync.statements_stripe_due(now=timezone.now())
    for statement_id in ids:
        statement_stripe_sync_task.delay(statement_id)
    return len(ids)


def statement_stripe_sync_soon(statement_id: int) -> None:
    """Start a statement's sync now without making the caller wait for Stripe (call it after
    the commit): queued with a broker; without one, in a thread of this process, since the
    in-process (eager) task would run inside the web request."""
    if not stripe_api.is_configured():
        return
    if not statement_stripe_sync_task.app.conf.task_always_eager:
        statement_stripe_sync_task.delay(statement_id)
        return
    thread = threading.Thread(
        target=_sync_in_thread, args=(statement_id,), name=f"stripe-sync-{statement_id}",
        daemon=True,  # a sync cut short by shutdown is still due; the job runs it again
    )  # fmt: skip
    thread.start()


def _sync_in_thread(statement_id: int) -> None:
    try:
        stripe_sync.statement_stripe_sync_attempt(statement_id=statement_id)
    except Exception:
        logger.exception("Stripe sync of statement %s failed", statement_id)
    finally:
        db.connection.close()  # this thread's own connection


@shared_task(acks_late=True, ignore_result=True)
def alerts_check_task() -> int:
    """Raise due budget alerts (each once); returns how many were new."""
    return len(alerts.alerts_check(now=timezone.now()))


@shared_task(
    acks_late=True,
    ignore_result=True,
    autoretry_for=(httpx.HTTPError, OSError),
    retry_backoff=10,
    max_retries=5,
)
def alert_notify_task(alert_id: int) -> bool:
    """Send one alert by email and chat webhook unless already sent."""
    return alerts.alert_notify(alert_id=alert_id)


@shared_task(acks_late=True, ignore_result=True)
def personal_statements_send_as_needed_task() -> int:
    """Email last month's personal statements not yet sent; returns how many were sent."""
    return alerts.personal_statements_send_as_needed(now=timezone.now())


@shared_task(acks_late=True, ignore_result=True)
def value_reports_send_as_needed_task() -> str:
    """Email last month's value report to admins and finance once; returns the month or ''."""
    sent = value.value_reports_send_as_needed(now=timezone.now())
    return sent.isoformat() if sent else ""


# Stored value reports: a lost connection or a locked SQLite database is worth a retry; any
# other error is a bug that retrying would not fix.
STORE_RETRY = {
    "autoretry_for": (OperationalError,),
    "retry_backoff": 30,
    "retry_backoff_max": 600,
    "max_retries": 5,
}


@shared_task(acks_late=True, ignore_result=True, **STORE_RETRY)
def value_report_store_task(period: str) -> int:
    """Compute and store the value reports of the month starting at `period` (YYYY-MM-01),
    replacing that month's stored rows; safe to run twice. Returns the rows stored."""
    stored = value_store.value_report_store(
        period=dt.date.fromisoformat(period), now=timezone.now()
    )
    return stored.rows.count()


@shared_task(acks_late=True, ignore_result=True, **STORE_RETRY)
def value_reports_store_as_needed_task() -> list[str]:
    """Store last month's and this month's value reports and move the intents' recommended
    models; returns the months stored."""
    months = value_store.value_reports_store_as_needed(now=timezone.now())
    return [month.isoformat() for month in months]
