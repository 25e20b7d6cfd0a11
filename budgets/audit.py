"""Audit trail writer: every change to budget objects goes through `audit_record`."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

from django.db import models

from budgets.models import AuditEvent


def snapshot(obj: models.Model | None) -> dict[str, Any] | None:
    """A JSON-safe dict of an object's concrete fields (foreign keys by id)."""
    if obj is None:
        return None
    data: dict[str, Any] = {}
    for field in obj._meta.concrete_fields:
        data[field.attname] = _json_safe(getattr(obj, field.attname))
    return data


def _json_safe(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.date | dt.datetime | uuid.UUID):
        return value.isoformat() if not isinstance(value, uuid.UUID) else str(value)
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    return value


def audit_event(
    *,
    actor: Any,
    action: str,
    obj: models.Model,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    source: str = "api",
) -> AuditEvent:
    """An unsaved audit event; `actor` is a user, or a label (a command name) or None."""
    user = actor if getattr(actor, "is_authenticated", False) else None
    return AuditEvent(
        actor=user,
        actor_label=getattr(user, "username", "") if user else (str(actor) if actor else "system"),
        source=source,
        action=action,
        object_type=obj._meta.label_lower,
        object_id=str(obj.pk),
        object_repr=str(obj)[:300],
        before=before,
        after=after,
    )


def audit_record(
    *,
    actor: Any,
    action: str,
    obj: models.Model,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    source: str = "api",
) -> AuditEvent:
    event = audit_event(
        actor=actor, action=action, obj=obj, before=before, after=after, source=source
    )
    event.save()
    return event


def audit_bulk(events: list[AuditEvent]) -> None:
    """Write many audit events in few statements (roster imports)."""
    AuditEvent.objects.bulk_create(events, batch_size=1000)
