"""What changes state in metering: keys, and the ledger side of a proxied call.

The proxy calls `call_reserve` before forwarding and exactly one of `call_settle` /
`call_release` after; each is one database transaction, so the charge and the usage record
commit together or not at all, and a repeated settle is a no-op (idempotent on the hold and on
the usage record's request id).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from budgets import ledger, sql
from budgets.audit import audit_record, snapshot
from budgets.invalidation import invalidation_publish
from budgets.models import Employee
from metering import cache, validation
from metering.models import UsageRecord, VirtualKey
from metering.quota.db import Hold, quota_release, quota_reserve, quota_settle
from metering.selectors import KeyInfo, key_hash

KEY_PREFIX = "tb-"
LAST_USED_WRITE_INTERVAL = 60.0  # seconds; last-used is informative, not worth a write per call
_last_used_written: dict[int, float] = {}


KEY_CAP_MAX = 10**15  # a lifetime cap beyond any real use; keeps the column's range


def key_check(
    *,
    name: str,
    expires_at: Any = None,
    allowed_models: list[str] | None = None,
    cap_tokens: int | None = None,
) -> None:
    """Refuse a key the proxy could never honour, with a field -> messages ValidationError:
    an empty or unprintable name, an expiry not in the future, a cap below one token, an empty
    or unprintable model name. Models need not be routed yet: the key only narrows the policy."""
    errors: dict[str, list[str]] = {}
    if not name.strip():
        errors["name"] = ["Give the key a name, e.g. the tool or laptop that will use it."]
    elif (problem := validation.label_problem(name)) is not None:
        errors["name"] = [f"The name contains {problem}; use plain text."]
    if expires_at is not None and expires_at <= timezone.now():
        errors["expires_at"] = ["Must be in the future."]
    if cap_tokens is not None and not 1 <= cap_tokens <= KEY_CAP_MAX:
        errors["cap_tokens"] = [f"A whole number of tokens from 1 to {KEY_CAP_MAX:,}."]
    for model in allowed_models or []:
        if not model or validation.label_problem(model) is not None:
            errors["allowed_models"] = ["A list of model names."]
    if errors:
        raise ValidationError(errors)


def key_create(
    *,
    employee: Employee,
    name: str,
    actor: Any,
    expires_at: Any = None,
    allowed_models: list[str] | None = None,
    cap_tokens: int | None = None,
    default_intent: str = "",
    source: str = "api",
) -> tuple[VirtualKey, str]:
    """Mint a key: 32 random bytes, returned once; only its hash is stored. Raises
    ValidationError (nothing written) when `key_check` refuses the terms."""
    key_check(
        name=name, expires_at=expires_at, allowed_models=allowed_models, cap_tokens=cap_tokens
    )
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        key = VirtualKey.objects.create(
            employee=employee,
            name=name,
            prefix=raw[:12],
            key_hash=key_hash(raw),
            expires_at=expires_at,
            allowed_models=list(allowed_models or []),
            cap_tokens=cap_tokens,
            default_intent=default_intent,
        )
        audit_record(
            actor=actor, action="key.create", obj=key, after=_key_audit(key), source=source
        )
    return key, raw


def key_revoke(*, key: VirtualKey, actor: Any, source: str = "api") -> VirtualKey:
    if key.revoked_at is None:
        with transaction.atomic():
            before = _key_audit(key)
            key.revoked_at = timezone.now()
            key.save(update_fields=["revoked_at"])
            audit_record(
                actor=actor,
                action="key.revoke",
                obj=key,
                before=before,
                after=_key_audit(key),
                source=source,
            )
            invalidation_publish(cache="keys", entry=key.key_hash)
        cache.keys.invalidate(key.key_hash)
    return key


def _key_audit(key: VirtualKey) -> dict[str, Any] | None:
    data = snapshot(key)
    if data is not None:
        data.pop("key_hash", None)
    return data


@dataclass(frozen=True)
class CallHold:
    hold: Hold
    key_id: int
    key_tokens: int  # tokens held on the key's own cap (0 when the key has none)


def call_reserve(
    *,
    info: KeyInfo,
    estimate: ledger.CallEstimate,
    min_output_tokens: int = 1,
    held_elsewhere: Mapping[str, Decimal] | None = None,
) -> CallHold | ledger.Refusal:
    """Hold the call's worst case on the key's cap, the allowance and the capped cost centers.
    `held_elsewhere` (budget code -> amount) is taken out of those budgets' headroom: what the
    Redis ledger held or charged that the database has not seen (the Redis fallback).

    Lock order: key row, then the ledger's own order (allowance, cost centers by id)."""
    elsewhere = held_elsewhere or {}
    with transaction.atomic(savepoint=False):
        extra: list[ledger.Headroom] = []
        if info.cap_tokens is not None:
            # NO KEY UPDATE, not UPDATE: the usage records' foreign-key checks hold KEY SHARE on
            # this row (the stream consumer's, the fallback's own), and FOR UPDATE would wait on
            # them while they wait on this transaction's earlier update of the row: a deadlock.
            key = (
                VirtualKey.objects.select_for_update(no_key=True)
                .only("cap_tokens", "used_tokens", "reserved_tokens")
                .get(pk=info.key_id)
            )
            outside = elsewhere.get("key_cap", Decimal(0))
            extra.append(
                ledger.Headroom(
                    "key_cap",
                    ledger.TOKENS,
                    Decimal((key.cap_tokens or 0) - key.used_tokens - key.reserved_tokens)
                    - outside,
                    held=Decimal(key.reserved_tokens) + outside,
                )
            )
        result = quota_reserve(
            employee=info.employee(),
            estimate=estimate,
            rule=info.rule,
            capped_cost_center_ids=info.capped_cost_center_ids,
            clamp=info.clamp,
            min_output_tokens=min_output_tokens,
            extra=extra,
            held_elsewhere=elsewhere,
        )
        if isinstance(result, ledger.Refusal):
            return result
        key_tokens = result.tokens if extra else 0
        if key_tokens:
            VirtualKey.objects.filter(pk=info.key_id).update(
                reserved_tokens=F("reserved_tokens") + key_tokens
            )
    return CallHold(hold=result, key_id=info.key_id, key_tokens=key_tokens)


def call_settle(*, held: CallHold, record: UsageRecord) -> bool:
    """Charge the call's actual usage (taken from `record`) and write its usage record, in one
    transaction. Returns False when the hold was already closed (nothing is charged twice)."""
    return _close(held, record, charge=True)


def call_release(*, held: CallHold, record: UsageRecord) -> bool:
    """Give the hold back uncharged and write the (zero-cost) record of the failed call."""
    return _close(held, record, charge=False)


def call_abandon(*, held: CallHold) -> None:
    """Give back a hold whose call never started (the client left during the reserve)."""
    with transaction.atomic(savepoint=False):
        if quota_release(hold=held.hold) and held.key_tokens:
            VirtualKey.objects.filter(pk=held.key_id).update(
                reserved_tokens=F("reserved_tokens") - held.key_tokens
            )


def _close(held: CallHold, record: UsageRecord, *, charge: bool) -> bool:
    """The usage record is written first: its unique request id makes the whole close
    idempotent (a second close finds it and changes nothing), so the close never needs to
    roll back, and a batch of closes can share one transaction."""
    tokens = record.input_tokens + record.output_tokens if charge else 0
    with transaction.atomic(savepoint=False):
        with connection.cursor() as cursor:
            if not sql.insert_one(cursor, record, conflict=("request_id",)):
                return False
        if held.key_tokens:
            VirtualKey.objects.filter(pk=held.key_id).update(
                used_tokens=F("used_tokens") + tokens,
                reserved_tokens=F("reserved_tokens") - held.key_tokens,
            )
        if charge:
            quota_settle(hold=held.hold, tokens=tokens, cost=record.cost, charge_when_expired=True)
        else:
            quota_release(hold=held.hold)
        _touch_key(held.key_id)
    return True


def _touch_key(key_id: int) -> None:
    now = time.monotonic()
    if now - _last_used_written.get(key_id, 0.0) < LAST_USED_WRITE_INTERVAL:
        return
    _last_used_written[key_id] = now
    VirtualKey.objects.filter(pk=key_id).update(last_used_at=timezone.now())
