"""The Celery app. With no broker configured, tasks run in-process (CELERY_TASK_ALWAYS_EAGER)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("tokenbudget")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Every periodic job is declared here, each with an expiry so a backlog never runs duplicates.
app.conf.beat_schedule = {}
