"""The Celery app. With no broker configured, tasks run in-process (CELERY_TASK_ALWAYS_EAGER)."""

import os

from celery import Celery
from celery.schedules import crontab

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("tokenbudget")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Every periodic job is declared here, each with an expiry so a backlog never runs duplicates.
app.conf.beat_schedule = {
    # Give back database holds left behind by crashed proxy processes.
    "metering-reservations-sweep": {
        "task": "metering.tasks.reservations_sweep_task",
        "schedule": 60.0,
        "options": {"expires": 50},
    },
    # Give back Redis holds left behind by crashed proxy processes (no-op without Redis).
    "metering-quota-holds-sweep": {
        "task": "metering.tasks.quota_holds_sweep_task",
        "schedule": 60.0,
        "options": {"expires": 50},
    },
    # Safety net for the usage-stream consumers: drain whatever is waiting.
    "metering-usage-stream-drain": {
        "task": "metering.tasks.usage_stream_drain_task",
        "schedule": 30.0,
        "options": {"expires": 25},
    },
    # Nightly: compare the Redis quota counters with the database, report and repair drift.
    "metering-quota-counters-reconcile": {
        "task": "metering.tasks.quota_counters_reconcile_task",
        "schedule": crontab(hour=3, minute=30),
        "options": {"expires": 3600},
    },
    # Fold new usage records into DailyUsage (one upsert from a watermark).
    "billing-daily-usage-rollup": {
        "task": "billing.tasks.daily_usage_rollup_task",
        "schedule": 300.0,
        "options": {"expires": 240},
    },
    # Create or refresh chargeback drafts for ended months (a catch-up: hourly is plenty).
    "billing-statements-close": {
        "task": "billing.tasks.statements_close_as_needed_task",
        "schedule": 3600.0,
        "options": {"expires": 3000},
    },
    # Allowance thresholds, pacing and cost-center caps (each alert is sent once).
    "billing-alerts-check": {
        "task": "billing.tasks.alerts_check_task",
        "schedule": 900.0,
        "options": {"expires": 800},
    },
    # Monthly personal statements by email, once per employee and month.
    "billing-personal-statements": {
        "task": "billing.tasks.personal_statements_send_as_needed_task",
        "schedule": 3600.0,
        "options": {"expires": 3000},
    },
    # Last month's value report by email to admins and finance, once per month.
    "billing-value-reports": {
        "task": "billing.tasks.value_reports_send_as_needed_task",
        "schedule": 3600.0,
        "options": {"expires": 3000},
    },
    # Store last month's and this month's value reports (by every dimension) and move the
    # intents' recommended models; the current month's stored figures are at most this old.
    "billing-value-reports-store": {
        "task": "billing.tasks.value_reports_store_as_needed_task",
        "schedule": 3600.0,
        "options": {"expires": 3000},
    },
    # Stripe syncs that are due: never run, or failed and past their back-off (each statement
    # keeps its own next retry time, so this runs often and usually finds nothing).
    "billing-stripe-sync-pending": {
        "task": "billing.tasks.statements_stripe_sync_pending_task",
        "schedule": 300.0,
        "options": {"expires": 250},
    },
}
