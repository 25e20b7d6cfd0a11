"""Intents and outcomes: what AI calls were for and what they produced.

Who may record an outcome:
- an employee, on their own calls (by request id) or on their own calls of an intent within a
  time window;
- an integration, with a DRF token of a user in the group `outcome-writers`, on any call;
- admins, on any call.

Outcomes are idempotent on the caller's `client_id`: the same id with the same content returns
the first row unchanged; the same id with different content is refused (a conflict), because
silently keeping either version would hide a client bug. Feedback (accepted or rejected on one
call) is the exception: the latest answer of a person on a call replaces their earlier one.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.db.models import Max, Sum

from budgets import roles
from budgets.invalidation import invalidation_publish
from budgets.models import CostCenter
from metering.models import Intent, ModelRoute, Outcome, UsageRecord

OUTCOME_WRITERS_GROUP = "outcome-writers"
VALUE_SCALE = 10**10  # the 1e-10 currency units of Outcome.value_units (as in billing tables)
FEEDBACK_KINDS = (Outcome.ACCEPTED, Outcome.REJECTED)


class OutcomeConflict(Exception):
    """The client id was already used for a different outcome."""


def is_outcome_writer(user: Any) -> bool:
    """A service identity that may record outcomes on anyone's calls."""
    return roles.is_admin(user) or (
        bool(user and user.is_authenticated) and OUTCOME_WRITERS_GROUP in roles._groups(user)
    )


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError({field: [message]})


def _local_day(at: dt.datetime) -> dt.date:
    # Same day boundary as the daily rollup, so an outcome lands on its call's DailyUsage day.
    return at.astimezone(zoneinfo.ZoneInfo(settings.TIME_ZONE)).date()


def value_to_units(value: Decimal) -> int:
    units = value.scaleb(10)
    if units != units.to_integral_value():
        raise _invalid("value", "At most 10 decimal places.")
    return int(units)


@dataclass(frozen=True)
class OutcomeInput:
    client_id: str
    kind: str
    request_id: str = ""
    intent: str = ""
    window_start: dt.datetime | None = None
    window_end: dt.datetime | None = None
    value: Decimal | None = None
    quantity: int = 1
    note: str = ""
    source: str = ""


def _target(*, user: Any, data: OutcomeInput) -> dict[str, Any]:
    """The attribution of an outcome (employee, cost center, model, intent, day), checked
    against what the user may record on."""
    writer = is_outcome_writer(user)
    me = roles.employee_of(user)
    if data.request_id:
        record = (
            UsageRecord.objects.filter(request_id=data.request_id)
            .only("employee_id", "cost_center_id", "model", "intent", "created_at")
            .first()
        )
        # Another employee's call reads as unknown: the id must not reveal that it exists.
        if record is None or not (writer or (me is not None and record.employee_id == me.pk)):
            raise _invalid("request_id", "No such call of yours.")
        return {
            "employee_id": record.employee_id,
            "cost_center_id": record.cost_center_id,
            "model": record.model,
            "intent": record.intent,
            "day": _local_day(record.created_at),
        }
    if not data.intent:
        raise _invalid("request_id", "Give a request id, or an intent with a time window.")
    if data.window_start is None or data.window_end is None:
        raise _invalid("window_start", "An intent outcome needs window_start and window_end.")
    if data.window_end <= data.window_start:
        raise _invalid("window_end", "Must be after window_start.")
    if writer:
        return {
            "employee_id": None,
            "cost_center_id": None,
            "model": "",
            "intent": data.intent,
            "day": _local_day(data.window_end),
        }
    if me is None:
        raise _invalid("intent", "Only employees and outcome writers record outcomes.")
    calls = UsageRecord.objects.filter(
        employee=me,
        intent=data.intent,
        created_at__gte=data.window_start,
        created_at__lt=data.window_end,
    )
    if not calls.exists():
        raise _invalid("intent", "You made no call of this intent in that window.")
    return {
        "employee_id": me.pk,
        "cost_center_id": me.cost_center_id,
        "model": "",
        "intent": data.intent,
        "day": _local_day(data.window_end),
    }


def _check(data: OutcomeInput) -> None:
    if not data.client_id.strip():
        raise _invalid("client_id", "Required: the outcome's idempotency key.")
    if not data.kind.strip():
        raise _invalid("kind", "Required: accepted, rejected, or a named business outcome.")
    if data.quantity < 1:
        raise _invalid("quantity", "At least 1.")
    if data.value is not None and data.value < 0:
        raise _invalid("value", "May not be negative.")


def _same(outcome: Outcome, fields: dict[str, Any]) -> bool:
    return all(getattr(outcome, name) == value for name, value in fields.items())


def outcome_record(*, user: Any, data: OutcomeInput) -> tuple[Outcome, bool]:
    """Record an outcome once per (user, client_id); returns (outcome, created).

    Raises ValidationError for bad input or a call the user may not record on (nothing is
    written), OutcomeConflict when the client id already names a different outcome.
    """
    _check(data)
    fields = {
        **_target(user=user, data=data),
        "request_id": data.request_id,
        "window_start": data.window_start,
        "window_end": data.window_end,
        "kind": data.kind.strip(),
        "value_units": None if data.value is None else value_to_units(data.value),
        "quantity": data.quantity,
        "note": data.note,
        "source": data.source,
    }
    existing = Outcome.objects.filter(recorded_by=user, client_id=data.client_id).first()
    if existing is None:
        try:
            # The savepoint keeps a concurrent duplicate's IntegrityError from breaking an
            # outer transaction; the unique constraint decides who was first.
            with transaction.atomic():
                return Outcome.objects.create(
                    recorded_by=user, client_id=data.client_id, **fields
                ), True
        except IntegrityError:
            existing = Outcome.objects.get(recorded_by=user, client_id=data.client_id)
    if not _same(existing, fields):
        raise OutcomeConflict(data.client_id)
    return existing, False


def feedback_record(*, user: Any, request_id: str, kind: str, note: str = "") -> Outcome:
    """Accepted or rejected on one call; a person's later answer on the call replaces theirs."""
    if kind not in FEEDBACK_KINDS:
        raise _invalid("kind", "accepted or rejected.")
    data = OutcomeInput(
        client_id=f"feedback:{request_id}", kind=kind, request_id=request_id, note=note
    )
    target = _target(user=user, data=data)
    with transaction.atomic():
        outcome, _ = Outcome.objects.update_or_create(
            recorded_by=user,
            client_id=data.client_id,
            defaults={
                **target,
                "request_id": request_id,
                "kind": kind,
                "note": note,
                "source": "feedback",
                "quantity": 1,
                "value_units": None,
            },
        )
    return outcome


def intent_save(
    *,
    name: str,
    description: str = "",
    owner_cost_center: CostCenter | None = None,
    expected_value: Decimal | None = None,
    default_model: str = "",
    instance: Intent | None = None,
) -> Intent:
    """Create or update a catalogue entry (admins only; the API checks the role)."""
    if expected_value is not None and expected_value < 0:
        raise _invalid("expected_value", "May not be negative.")
    default_model = default_model.strip()
    if default_model and not ModelRoute.objects.filter(public_name=default_model).exists():
        raise _invalid("default_model", f"No model route is named {default_model!r}.")
    previous = instance.name if instance is not None else None
    intent = instance or Intent()
    intent.name = name.strip()
    intent.description = description
    intent.owner_cost_center = owner_cost_center
    intent.expected_value = expected_value
    intent.default_model = default_model
    intent.full_clean()
    with transaction.atomic():
        if intent.pk is None:
            intent.save()
        else:
            # Only what the admin edits: the value job writes the recommendation meanwhile, and
            # a form opened before it ran must not put the old one back.
            intent.save(update_fields=[*_INTENT_EDITED, "updated_at"])
        for name in {intent.name, previous} - {None}:
            invalidation_publish(cache="intents", entry=name)  # auto:<intent> routing
    return intent


_INTENT_EDITED = ["name", "description", "owner_cost_center", "expected_value", "default_model"]


def intents_unknown() -> list[dict[str, Any]]:
    """Intent tags seen in usage but missing from the catalogue, with how often and last seen.

    Reads the daily rollup (one grouped query), not the usage table."""
    from_rollup = _daily_usage_model()
    rows = (
        from_rollup.objects.exclude(intent="")
        .exclude(intent__in=Intent.objects.values("name"))
        .values("intent")
        .annotate(requests=Sum("requests"), last_day=Max("day"))
        .order_by("-requests", "intent")
    )
    return [
        {"name": r["intent"], "requests": r["requests"], "last_seen": r["last_day"]} for r in rows
    ]


def _daily_usage_model() -> type[models.Model]:
    # The rollup lives in billing, which imports metering; asking the app registry keeps the
    # import arrow pointing billing -> metering.
    from django.apps import apps

    return apps.get_model("billing", "DailyUsage")
