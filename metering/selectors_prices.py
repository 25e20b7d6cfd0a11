"""Which price is in force (reads only; the arithmetic lives in metering.pricing)."""

from __future__ import annotations

import datetime as dt

from django.db.models import Case, IntegerField, QuerySet, Value, When

from metering.models import ModelPrice


def _in_force(model: str, at: dt.datetime) -> QuerySet[ModelPrice]:
    # An override in force beats any catalogue row (a negotiated price stays until an admin
    # ends it with a newer override); within a source the latest start wins.
    return (
        ModelPrice.objects.filter(model=model, effective_from__lte=at)
        .annotate(
            is_override=Case(
                When(source=ModelPrice.Source.OVERRIDE, then=Value(1)),
                default=Value(0),
                output_field=IntegerField(),
            )
        )
        .order_by("-is_override", "-effective_from", "-pk")
    )


def price_in_force(model: str, at: dt.datetime) -> ModelPrice | None:
    """The ModelPrice for upstream model name `model` at moment `at`, None when there is none.

    Override rows with effective_from <= at win over catalogue rows; among rows of the winning
    source the one with the latest effective_from <= at is chosen."""
    return _in_force(model, at).first()


async def aprice_in_force(model: str, at: dt.datetime) -> ModelPrice | None:
    """`price_in_force` for async callers."""
    return await _in_force(model, at).afirst()
