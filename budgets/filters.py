"""Filters shared by the API's list endpoints."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django_filters import rest_framework as filters
from django_filters.fields import IsoDateTimeField


class UtcIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 instant, handed to the database in UTC.

    ISO 8601 allows offsets up to ±23:59, PostgreSQL only up to ±15:59: passed on as given,
    `since=0690-12-10T22:42:24-18:03` was a 500. An instant that has no UTC equivalent in range
    (year 1 with a positive offset) is a 400."""

    def clean(self, value: Any) -> dt.datetime | None:
        cleaned = super().clean(value)
        if cleaned is None:
            return None
        try:
            return cleaned.astimezone(dt.UTC)
        except OverflowError:
            raise forms.ValidationError("Enter a date-time within years 1 to 9999.") from None


class UtcIsoDateTimeFilter(filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField
