"""Billing's calendar: the zone that defines its days and months, and which month has ended.

Pure helpers over the clock a caller passes in; every billing module may import this one (it
imports no other billing module), which keeps calendar needs out of the import circle between
statements, alerts, value reports and tasks.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from django.conf import settings
from django.utils import timezone

from budgets.fiscal import add_months, month_start


def local_tz() -> zoneinfo.ZoneInfo:
    """The zone that defines days and months for billing (settings.TIME_ZONE)."""
    return zoneinfo.ZoneInfo(settings.TIME_ZONE)


def last_complete_month(now: dt.datetime) -> dt.date:
    """First day of the latest month that has fully ended at `now`, in the billing zone."""
    return add_months(month_start(timezone.localtime(now, local_tz()).date()), -1)
