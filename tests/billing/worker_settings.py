"""Settings for the Celery worker process the end-to-end tests start (test-only).

The base settings plus: mail to files the test reads, a private queue so concurrent test runs
never take each other's tasks, and Stripe pointed at the test's localstripe.
"""

import os

from config.settings import *  # noqa: F403

MAILERS = {
    "default": {
        "BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "OPTIONS": {"file_path": os.environ["TB_TEST_MAIL_DIR"]},
    }
}
CELERY_TASK_DEFAULT_QUEUE = os.environ["TB_TEST_QUEUE"]
TB_STRIPE_SECRET_KEY = os.environ.get("TB_STRIPE_SECRET_KEY", "")
TB_STRIPE_API_BASE = os.environ.get("TB_STRIPE_API_BASE", "")
TB_STRIPE_LOCALSTRIPE = True
