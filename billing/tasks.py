"""Celery tasks: thin, idempotent callers of billing services (they take ids, not objects)."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from billing import rollup, statements


@shared_task(acks_late=True, ignore_result=True)
def daily_usage_rollup() -> int:
    """Fold new usage records into DailyUsage; returns the number of groups touched."""
    return rollup.daily_usage_rollup().groups


@shared_task(acks_late=True, ignore_result=True)
def statements_close_as_needed() -> int:
    """Create or refresh drafts for every ended month; returns the months processed."""
    return len(statements.statements_close_as_needed(now=timezone.now()))
