"""Budget jobs (Celery). Each takes no objects, only ids or the clock, and is safe to re-run."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from budgets.quota import reservations_release_expired


@shared_task(acks_late=True, ignore_result=True)
def reservations_sweep_task() -> int:
    """Give back holds left by crashed proxy processes (expired reservations)."""
    return reservations_release_expired(now=timezone.now())
