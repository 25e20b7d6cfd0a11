"""The database quota backend: reserve, settle, release on the ledger rows.

Correct under concurrency on SQLite and PostgreSQL: every change happens inside one transaction
that first locks the rows it changes, always in the same order (allowance, then capped cost
centers by id), so two calls never check-then-act on a stale balance and never deadlock.
On SQLite the IMMEDIATE transaction mode (config.settings) serialises writers.

Callers that hold other budgets (a key's own cap, in `metering.services`) lock those first and
pass their headroom in `extra`, inside their own `transaction.atomic()`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from budgets import balance, ledger, sql
from budgets.balance import LimitRule, allowance_released
from budgets.fiscal import fiscal_year_of
from budgets.models import Allowance, CostCenter, CostCenterSpend, Employee, Reservation

RESERVATION_TTL = dt.timedelta(minutes=30)

__all__ = [
    "RESERVATION_TTL",
    "Hold",
    "quota_release",
    "quota_reserve",
    "quota_settle",
    "reservations_release_expired",
]


@dataclass(frozen=True)
class Hold:
    """A granted reservation; the caller keeps it to settle or release."""

    reservation_id: uuid.UUID
    allowance_id: int
    unit: str
    amount: Decimal
    tokens: int
    cost: Decimal
    output_tokens: int
    clamped: bool
    cost_center_ids: tuple[int, ...]
    fiscal_year: int
    remaining: Decimal = Decimal(0)  # the allowance's remaining amount once this hold is taken


def quota_reserve(
    *,
    employee: Employee,
    estimate: ledger.CallEstimate,
    rule: LimitRule,
    capped_cost_center_ids: list[int] | tuple[int, ...] = (),
    clamp: bool = True,
    min_output_tokens: int = 1,
    extra: list[ledger.Headroom] | tuple[ledger.Headroom, ...] = (),
    day: dt.date | None = None,
    held_elsewhere: Mapping[str, Decimal] | None = None,
) -> Hold | ledger.Refusal:
    """Atomically hold the most this call may cost against every budget it draws on.

    Never check-then-act: the rows are locked before the headroom is read. Call it inside the
    caller's `transaction.atomic()` when the caller locked rows of its own (`extra`).

    This is the proxy's hot path, so it speaks SQL directly (three statements for an employee
    without capped cost centers) and does the arithmetic in Python Decimal on the locked row's
    values: SQLite would do `reserved + x` in binary floating point.

    `held_elsewhere` (budget code -> amount) counts as held on those budgets: what another
    ledger (Redis, during its outage) took that this database has not seen yet.
    """
    elsewhere = held_elsewhere or {}
    # Through the module, so a test that fixes `budgets.balance.today` fixes it here too.
    day = day or balance.today()
    fiscal_year = fiscal_year_of(day, settings.TB_FISCAL_YEAR_START_MONTH)
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        row = sql.locked_row(
            cursor,
            f"SELECT id, unit, amount, release, prorate, used, reserved, adjustments_total "
            f"FROM {_ALLOWANCE} WHERE employee_id = %s AND fiscal_year = %s",
            [employee.pk, fiscal_year],
        )
        if row is None:
            return ledger.Refusal(code="no_allowance", available=Decimal(0), unit="tokens")
        allowance_id, unit, amount, release, prorate, used, reserved, adjusted = row
        allowance = Allowance(
            id=allowance_id,
            fiscal_year=fiscal_year,
            unit=unit,
            amount=sql.dec(amount),
            release=release,
            prorate=bool(prorate),
        )
        used, reserved, adjusted = sql.dec(used), sql.dec(reserved), sql.dec(adjusted)
        _, released = allowance_released(allowance, employee, day)
        limit = rule.limit(released + adjusted, unit)
        in_redis = elsewhere.get("employee_allowance", Decimal(0))
        headrooms = [
            *extra,
            ledger.Headroom(
                "employee_allowance",
                unit,
                limit - used - reserved - in_redis,
                held=reserved + in_redis,
            ),
        ]
        spends = _lock_cost_center_spends(cursor, capped_cost_center_ids, fiscal_year)
        for spend in spends:
            code = f"cost_center_cap:{spend.code}"
            outside = elsewhere.get(code, Decimal(0))
            headrooms.append(
                ledger.Headroom(
                    code,
                    ledger.USD,
                    spend.cap - spend.spent - spend.reserved - outside,
                    held=spend.reserved + outside,
                )
            )
        plan = ledger.plan_reservation(
            headrooms, estimate, clamp=clamp, min_output_tokens=min_output_tokens
        )
        if isinstance(plan, ledger.Refusal):
            return plan
        held = Decimal(plan.tokens) if unit == ledger.TOKENS else plan.cost
        cursor.execute(
            f"UPDATE {_ALLOWANCE} SET reserved = %s WHERE id = %s",
            [sql.db_text(reserved + held), allowance_id],
        )
        for spend in spends:
            cursor.execute(
                f"UPDATE {_SPEND} SET reserved = %s WHERE id = %s",
                [sql.db_text(spend.reserved + plan.cost), spend.id],
            )
        cc_ids = tuple(spend.cost_center_id for spend in spends)
        reservation_id = uuid.uuid4()
        sql.insert_one(
            cursor,
            Reservation(
                id=reservation_id,
                allowance_id=allowance_id,
                amount=held,
                tokens=plan.tokens,
                cost=plan.cost,
                cost_center_ids=list(cc_ids),
                fiscal_year=fiscal_year,
                created_at=timezone.now(),
                expires_at=timezone.now() + RESERVATION_TTL,
            ),
        )
    return Hold(
        reservation_id=reservation_id,
        allowance_id=allowance_id,
        unit=unit,
        amount=held,
        tokens=plan.tokens,
        cost=plan.cost,
        output_tokens=plan.output_tokens,
        clamped=plan.clamped,
        cost_center_ids=cc_ids,
        fiscal_year=fiscal_year,
        remaining=released + adjusted - used - reserved - held - in_redis,
    )


_ALLOWANCE = Allowance._meta.db_table
_SPEND = CostCenterSpend._meta.db_table
_RESERVATION = Reservation._meta.db_table


@dataclass
class _Spend:
    id: int
    cost_center_id: int
    code: str
    cap: Decimal
    spent: Decimal
    reserved: Decimal


def _lock_cost_center_spends(
    cursor: Any, cost_center_ids: list[int] | tuple[int, ...], fiscal_year: int
) -> list[_Spend]:
    """Lock the spend rows of the capped cost centers in id order, creating missing ones."""
    if not cost_center_ids:
        return []
    ids = sorted(cost_center_ids)
    spends = _select_spends(cursor, ids, fiscal_year)
    missing = set(ids) - {spend.cost_center_id for spend in spends}
    if missing:
        for cost_center_id in sorted(missing):
            # A concurrent first call may create the same row; either one wins.
            sql.insert_one(
                cursor,
                CostCenterSpend(cost_center_id=cost_center_id, fiscal_year=fiscal_year),
                conflict=("cost_center_id", "fiscal_year"),
            )
        spends = _select_spends(cursor, ids, fiscal_year)
    return spends


def _select_spends(
    cursor: Any, ids: list[int] | tuple[int, ...], fiscal_year: int, *, capped_only: bool = True
) -> list[_Spend]:
    marks = ", ".join(["%s"] * len(ids))
    query = (
        f"SELECT s.id, s.cost_center_id, c.code, c.annual_cap, s.spent, s.reserved "
        f"FROM {_SPEND} s JOIN {CostCenter._meta.db_table} c ON c.id = s.cost_center_id "
        f"WHERE s.fiscal_year = %s AND s.cost_center_id IN ({marks}) "
        + ("AND c.annual_cap IS NOT NULL " if capped_only else "")
        + "ORDER BY s.cost_center_id"
    )
    if connection.features.has_select_for_update_of:
        query += " FOR UPDATE OF s"
    cursor.execute(query, [fiscal_year, *ids])
    return [
        _Spend(row[0], row[1], row[2], sql.dec(row[3]), sql.dec(row[4]), sql.dec(row[5]))
        for row in cursor.fetchall()
    ]


def quota_settle(
    *, hold: Hold, tokens: int, cost: Decimal, charge_when_expired: bool = False
) -> bool:
    """Replace the hold by the actual charge. Returns False when the hold was already settled,
    released or expired; then nothing changes, so a retry never charges twice.

    With `charge_when_expired`, a hold that expired (released by the sweeper while a very long
    call ran) is still charged, straight to `used`: usage that happened is never dropped. The
    caller must then guarantee idempotency itself (the proxy does, by the usage record's
    unique request id written in the same transaction).
    """
    return _close_hold(hold, tokens=tokens, cost=cost, charge_when_expired=charge_when_expired)


def quota_release(*, hold: Hold) -> bool:
    """Give the hold back uncharged (the call failed before producing anything)."""
    return _close_hold(hold, tokens=0, cost=Decimal(0))


def _close_hold(
    hold: Hold, *, tokens: int, cost: Decimal, charge_when_expired: bool = False
) -> bool:
    """Deleting the reservation decides: only the closer that deleted it moves the amounts."""
    pk = Reservation._meta.pk.get_db_prep_value(hold.reservation_id, connection)
    charge = Decimal(tokens) if hold.unit == ledger.TOKENS else cost
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {_RESERVATION} WHERE id = %s", [pk])
        if cursor.rowcount != 1:
            if not (charge_when_expired and (charge or cost)):
                return False
            # The sweeper already gave the hold back: charge without un-reserving again.
            hold = dataclasses.replace(hold, amount=Decimal(0), cost=Decimal(0))
        row = sql.locked_row(
            cursor, f"SELECT used, reserved FROM {_ALLOWANCE} WHERE id = %s", [hold.allowance_id]
        )
        if row is None:
            # Deleting an allowance deletes its holds, so only a late charge of a swept hold
            # gets here; the close fails (and rolls back) rather than charge nobody.
            raise Allowance.DoesNotExist(f"Allowance {hold.allowance_id} is gone.")
        used, reserved = row
        cursor.execute(
            f"UPDATE {_ALLOWANCE} SET used = %s, reserved = %s WHERE id = %s",
            [
                sql.db_text(sql.dec(used) + charge),
                sql.db_text(sql.dec(reserved) - hold.amount),
                hold.allowance_id,
            ],
        )
        # Every row this hold reserved on, even if its cap was lifted since.
        held_on = (
            _select_spends(cursor, hold.cost_center_ids, hold.fiscal_year, capped_only=False)
            if hold.cost_center_ids
            else []
        )
        for spend in held_on:
            cursor.execute(
                f"UPDATE {_SPEND} SET spent = %s, reserved = %s WHERE id = %s",
                [
                    sql.db_text(spend.spent + cost),
                    sql.db_text(spend.reserved - hold.cost),
                    spend.id,
                ],
            )
    return True


def reservations_release_expired(*, now: dt.datetime) -> int:
    """Release holds left behind by crashed processes (safe to run at any time, any number of
    times). Returns how many were released."""
    released = 0
    for reservation in (
        Reservation.objects.select_related("allowance")
        .filter(expires_at__lt=now)
        .order_by("expires_at")[:1000]
    ):
        hold = Hold(
            reservation_id=reservation.pk,
            allowance_id=reservation.allowance_id,
            unit=reservation.allowance.unit,
            amount=reservation.amount,
            tokens=reservation.tokens,
            cost=reservation.cost,
            output_tokens=0,
            clamped=False,
            cost_center_ids=tuple(reservation.cost_center_ids),
            fiscal_year=reservation.fiscal_year,
        )
        released += quota_release(hold=hold)
    return released
