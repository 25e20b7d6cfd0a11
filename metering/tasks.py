"""Metering jobs (Celery). Each takes no objects and is safe to run twice; each but the
database hold sweep does nothing without Redis (the embedded default writes usage straight to
the database)."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from metering.quota import clients, sweep
from metering.quota.db import reservations_release_expired
from metering.quota.reconcile import holds_reconcile, quotas_reconcile
from metering.usage_stream import stream_drain

_REDIS_DOWN = clients.UNAVAILABLE


@shared_task(acks_late=True, ignore_result=True)
def reservations_sweep_task() -> int:
    """Give back database holds left by crashed proxy processes (expired reservations)."""
    return reservations_release_expired(now=timezone.now())


@shared_task(
    acks_late=True,
    ignore_result=True,
    autoretry_for=_REDIS_DOWN,
    retry_backoff=True,
    max_retries=3,
)
def usage_stream_drain_task() -> int:
    """A safety net beside the `consume_usage` processes: drain what is there and return."""
    if not settings.REDIS_URL:
        return 0
    return stream_drain(until_empty=True)


@shared_task(acks_late=True, ignore_result=True, autoretry_for=_REDIS_DOWN, retry_backoff=True)
def quota_holds_sweep_task() -> int:
    """Give back Redis holds nobody can close: at once when the process is gone (its liveness
    key lapsed) or does not have the hold in hand (a reserve whose answer it never got), else
    when the hold's 30 minutes are up."""
    if not settings.REDIS_URL:
        return 0
    return sweep.holds_release_dead() + sweep.holds_sweep()


@shared_task(acks_late=True, ignore_result=True, autoretry_for=_REDIS_DOWN, retry_backoff=True)
def quota_counters_reconcile_task() -> int:
    """Nightly: report and repair drift between the Redis counters and the database (`used`),
    and between the counters and their open holds (`reserved`, after giving back dead holds)."""
    if not settings.REDIS_URL:
        return 0
    drifts = quotas_reconcile(repair=True)
    holds = holds_reconcile()
    return len(drifts) + len(holds.reserved)
