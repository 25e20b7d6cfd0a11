"""Reads for the metering pages (keys, recent calls, the model catalogue)."""

from __future__ import annotations

from django.db.models import QuerySet

from budgets.models import Employee
from metering.models import ModelPrice, ModelRoute, Upstream, UsageRecord, VirtualKey

RECENT_CALLS = 15


def keys_of(*, employee: Employee) -> QuerySet[VirtualKey]:
    """The employee's keys, live ones first."""
    return employee.keys.order_by("revoked_at", "-created_at")


def recent_calls(*, employee: Employee, limit: int = RECENT_CALLS) -> list[UsageRecord]:
    """The latest calls without any prompt or completion text (the proxy never stores them; the
    `only()` keeps it that way should a column be added)."""
    return list(
        UsageRecord.objects.filter(employee=employee)
        .only(
            "created_at",
            "model",
            "input_tokens",
            "output_tokens",
            "cost",
            "intent",
            "status_code",
            "streamed",
            "estimated",
            "key__name",
        )
        .select_related("key")
        .order_by("-created_at")[:limit]
    )


def catalogue() -> tuple[list[Upstream], list[ModelRoute], list[ModelPrice]]:
    return (
        list(Upstream.objects.order_by("name")),
        list(ModelRoute.objects.select_related("upstream").order_by("public_name")),
        list(ModelPrice.objects.order_by("model", "-effective_from")),
    )
