"""State changes of the budgets domain: cost centers, employees, allowances, adjustments,
policies. Every function here writes an audit event in the same transaction as its change.

Functions take keyword-only arguments and raise `django.core.exceptions.ValidationError` with a
field -> messages dict for anything the caller got wrong, so the API can answer 400 and the
admin can show the message on the field. `source` names where the change came from (api, admin,
import, command, system) and `actor` is the user (or, for commands, a label).

Rules decided here:
- An employee's move to another cost center is recorded as an `EmployeeMove` with its
  effective date (today or earlier, never before the previous move); the allowance stays with
  the employee. Usage records keep the cost center at the time of the call, so spend before
  the move stays with the old cost center.
- Adjustments are append-only. A negative correction may not take back what is already used
  or held by calls in flight: after it, released >= used + reserved.
- Lowering an allowance (amount, release schedule, proration, dates) obeys the same rule.
- Rollover moves a percentage of last year's unused allowance (capped by `rollover_cap`) into
  next year's allowance as an adjustment of kind `rollover`, once per allowance.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from decimal import ROUND_DOWN, Decimal
from typing import Any, Literal, TypedDict

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models, transaction
from django.db.models import F

from budgets import ledger, roles
from budgets.audit import audit_record, snapshot
from budgets.balance import allowance_released, current_fiscal_year, today
from budgets.fiscal import fiscal_year_bounds
from budgets.invalidation import invalidation_publish
from budgets.models import (
    Adjustment,
    Allowance,
    CostCenter,
    Employee,
    EmployeeMove,
    Policy,
    Release,
    Unit,
)
from budgets.selectors import cost_center_ancestor_ids, policy_resolve

__all__ = [
    "adjustment_create",
    "allowance_create",
    "allowance_rollover",
    "allowance_update",
    "cost_center_create",
    "cost_center_update",
    "employee_create",
    "employee_deactivate",
    "employee_move",
    "employee_update",
    "policy_resolve",
    "policy_set",
]

Source = Literal["api", "admin", "import", "command", "system", "sso", "scim"]
type Actor = Any  # a user, a label such as "command:import_roster", or None


class CostCenterData(TypedDict, total=False):
    code: str
    name: str
    gl_code: str
    parent: CostCenter | None
    annual_cap: Decimal | None
    stripe_customer_id: str
    managers: Iterable[Any]


class EmployeeData(TypedDict, total=False):
    email: str
    name: str
    cost_center: CostCenter
    start_date: dt.date | None
    end_date: dt.date | None
    active: bool
    user: Any


class AllowanceData(TypedDict, total=False):
    amount: Decimal
    unit: str
    release: str
    prorate: bool
    rollover: str
    rollover_percent: int
    rollover_cap: Decimal | None


class PolicyData(TypedDict, total=False):
    default_allowance: Decimal | None
    default_unit: str
    default_release: str
    allowed_models: list[str]
    alert_thresholds: list[int]
    limit_mode: str
    soft_overage_percent: int
    per_request_token_cap: int | None
    over_budget: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    downgrade_models: dict[str, str]
    downgrade_at_percent: int | None


PolicyFields = tuple(PolicyData.__annotations__)


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError({field: [message]})


def _apply(instance: models.Model, data: Mapping[str, Any], allowed: Iterable[str]) -> list[str]:
    """Set the given fields on `instance`; return the names of those that changed."""
    unknown = set(data) - set(allowed)
    if unknown:
        raise TypeError(f"cannot update {', '.join(sorted(unknown))}")
    changed = []
    for field, value in data.items():
        if getattr(instance, field) != value:
            setattr(instance, field, value)
            changed.append(field)
    return changed


def own_budget_refuse(actor: Actor, employee: Employee) -> None:
    """Nobody changes their own budget, whatever the route (API, pages, admin, bulk, requests):
    the last line behind the role checks of each caller."""
    if roles.is_self(actor, employee):
        raise PermissionDenied("Nobody may change their own allowance.")


def amount_check(amount: Decimal, unit: str, *, field: str = "amount") -> None:
    """Token amounts are whole tokens, money amounts whole cents."""
    quantum = ledger.QUANTUM.get(unit)
    if quantum is None:
        raise _invalid("unit", f"Unknown unit {unit!r}.")
    if amount % quantum:
        what = "a whole number of tokens" if unit == ledger.TOKENS else "whole cents"
        raise _invalid(field, f"Must be {what}.")


# --- cost centers ----------------------------------------------------------------------------


def _cost_center_snapshot(cost_center: CostCenter) -> dict[str, Any]:
    data = snapshot(cost_center) or {}
    data["managers"] = sorted(cost_center.managers.values_list("id", flat=True))
    return data


def _check_parent(cost_center: CostCenter, parent: CostCenter | None) -> None:
    if parent is None or cost_center.pk is None:
        return
    if parent.pk == cost_center.pk or cost_center.pk in cost_center_ancestor_ids(parent):
        raise _invalid("parent", "A cost center cannot sit under itself or its own subtree.")


def cost_center_create(
    *,
    actor: Actor,
    code: str,
    name: str,
    gl_code: str = "",
    parent: CostCenter | None = None,
    annual_cap: Decimal | None = None,
    stripe_customer_id: str = "",
    managers: Iterable[Any] = (),
    source: Source = "api",
) -> CostCenter:
    cost_center = CostCenter(
        code=code,
        name=name,
        gl_code=gl_code,
        parent=parent,
        annual_cap=annual_cap,
        stripe_customer_id=stripe_customer_id,
    )
    cost_center.full_clean()
    with transaction.atomic():
        cost_center.save()
        cost_center.managers.set(list(managers))
        audit_record(
            actor=actor,
            action="create",
            obj=cost_center,
            after=_cost_center_snapshot(cost_center),
            source=source,
        )
    return cost_center


def cost_center_update(
    *, actor: Actor, cost_center: CostCenter, data: CostCenterData, source: Source = "api"
) -> CostCenter:
    fields = dict(data)
    managers = fields.pop("managers", None)
    with transaction.atomic():
        invalidation_publish(cache="keys")  # proxies cache what this changes
        cost_center = CostCenter.objects.select_for_update().get(pk=cost_center.pk)
        before = _cost_center_snapshot(cost_center)
        if "parent" in fields:
            _check_parent(cost_center, fields["parent"])
        changed = _apply(
            cost_center,
            fields,
            ("code", "name", "gl_code", "parent", "annual_cap", "stripe_customer_id"),
        )
        if changed:
            cost_center.full_clean()
            cost_center.save(update_fields=changed)
        if managers is not None:
            cost_center.managers.set(list(managers))
        after = _cost_center_snapshot(cost_center)
        if after != before:
            audit_record(
                actor=actor,
                action="update",
                obj=cost_center,
                before=before,
                after=after,
                source=source,
            )
    return cost_center


# --- employees -------------------------------------------------------------------------------


def _normalize_email(email: str) -> str:
    # Lower-cased so the roster's and the API's spelling of one address never make two people.
    return email.strip().lower()


def _check_dates(start: dt.date | None, end: dt.date | None) -> None:
    if start and end and end < start:
        raise _invalid("end_date", "The end date is before the start date.")


def _check_user_free(user: Any, employee: Employee | None) -> None:
    if user is None:
        return
    taken = Employee.objects.filter(user=user)
    if employee is not None:
        taken = taken.exclude(pk=employee.pk)
    if taken.exists():
        raise _invalid("user", "This user is already linked to another employee.")


def employee_create(
    *,
    actor: Actor,
    employee_id: str,
    email: str,
    cost_center: CostCenter,
    name: str = "",
    start_date: dt.date | None = None,
    end_date: dt.date | None = None,
    user: Any = None,
    active: bool = True,
    source: Source = "api",
) -> Employee:
    _check_dates(start_date, end_date)
    _check_user_free(user, None)
    employee = Employee(
        employee_id=employee_id.strip(),
        email=_normalize_email(email),
        name=name,
        cost_center=cost_center,
        start_date=start_date,
        end_date=end_date,
        user=user,
        active=active,
    )
    employee.full_clean()
    with transaction.atomic():
        employee.save()
        audit_record(
            actor=actor, action="create", obj=employee, after=snapshot(employee), source=source
        )
    return employee


def employee_update(
    *, actor: Actor, employee: Employee, data: EmployeeData, source: Source = "api"
) -> Employee:
    """Change an employee's fields. A new cost center is recorded as a move effective today;
    `active=False` is a deactivation."""
    fields = dict(data)
    if "email" in fields:
        fields["email"] = _normalize_email(fields["email"])
    with transaction.atomic():
        invalidation_publish(cache="keys")  # proxies cache what this changes
        employee = Employee.objects.select_for_update().get(pk=employee.pk)
        to_cost_center = fields.pop("cost_center", None)
        if to_cost_center is not None and to_cost_center.pk != employee.cost_center_id:
            employee_move(
                actor=actor, employee=employee, to_cost_center=to_cost_center, source=source
            )
            employee.refresh_from_db()
        if fields.get("active") is False and employee.active:
            fields.pop("active")
            employee_deactivate(actor=actor, employee=employee, source=source)
            employee.refresh_from_db()
        before = snapshot(employee)
        if "user" in fields:
            _check_user_free(fields["user"], employee)
        changed = _apply(
            employee, fields, ("email", "name", "start_date", "end_date", "active", "user")
        )
        if not changed:
            return employee
        _check_dates(employee.start_date, employee.end_date)
        employee.full_clean()
        if {"start_date", "end_date"} & set(changed):
            # Proration follows the dates: a later start or an earlier end shrinks the grant.
            for allowance in Allowance.objects.select_for_update().filter(employee=employee):
                _check_covers_spend(allowance, employee, field="end_date")
        employee.save(update_fields=[*changed, "updated_at"])
        audit_record(
            actor=actor,
            action="update",
            obj=employee,
            before=before,
            after=snapshot(employee),
            source=source,
        )
    return employee


def employee_deactivate(*, actor: Actor, employee: Employee, source: Source = "api") -> Employee:
    """Mark the employee inactive (idempotent). The end date and allowance are left as they are:
    setting an end date would shrink a prorated grant below what may already be spent."""
    with transaction.atomic():
        invalidation_publish(cache="keys")  # proxies cache what this changes
        employee = Employee.objects.select_for_update().get(pk=employee.pk)
        if not employee.active:
            return employee
        before = snapshot(employee)
        employee.active = False
        employee.save(update_fields=["active", "updated_at"])
        audit_record(
            actor=actor,
            action="deactivate",
            obj=employee,
            before=before,
            after=snapshot(employee),
            source=source,
        )
    return employee


def employee_move(
    *,
    actor: Actor,
    employee: Employee,
    to_cost_center: CostCenter,
    effective_date: dt.date | None = None,
    source: Source = "api",
) -> EmployeeMove:
    """Move the employee to another cost center, effective `effective_date` (default today).

    The allowance stays with the employee. A future date is refused: the move applies at once,
    so a planned move is made on its day. A date before the previous move is refused too, so
    the moves read as a timeline.
    """
    effective_date = effective_date or today()
    if effective_date > today():
        raise _invalid("effective_date", "A move cannot take effect in the future.")
    with transaction.atomic():
        invalidation_publish(cache="keys")  # proxies cache what this changes
        employee = Employee.objects.select_for_update().get(pk=employee.pk)
        if to_cost_center.pk == employee.cost_center_id:
            raise _invalid("cost_center", "The employee is already in this cost center.")
        last = employee.moves.order_by("-effective_date").values_list("effective_date", flat=True)
        if last and last[0] > effective_date:
            raise _invalid("effective_date", f"The previous move took effect later, on {last[0]}.")
        before = snapshot(employee)
        move = EmployeeMove.objects.create(
            employee=employee,
            from_cost_center_id=employee.cost_center_id,
            to_cost_center=to_cost_center,
            effective_date=effective_date,
            actor=actor if getattr(actor, "is_authenticated", False) else None,
        )
        employee.cost_center = to_cost_center
        employee.save(update_fields=["cost_center", "updated_at"])
        after = snapshot(employee) or {}
        after["effective_date"] = effective_date.isoformat()
        audit_record(
            actor=actor, action="move", obj=employee, before=before, after=after, source=source
        )
    return move


# --- allowances --------------------------------------------------------------------------------


def _released_total(allowance: Allowance, employee: Employee, day: dt.date) -> Decimal:
    """What the allowance has released by `day`, adjustments included."""
    _, released = allowance_released(allowance, employee, day)
    return released + allowance.adjustments_total


def _check_covers_spend(
    allowance: Allowance, employee: Employee, *, field: str, delta: Decimal = Decimal(0)
) -> None:
    """Refuse a change that would release less than is already used or held."""
    spent = allowance.used + allowance.reserved
    released = _released_total(allowance, employee, today()) + delta
    if released < spent:
        raise _invalid(
            field,
            f"This would release {released} {allowance.unit}, less than the {spent} already "
            f"used or held by calls in flight (used {allowance.used}, "
            f"reserved {allowance.reserved}).",
        )


def _check_rollover(rollover: str, percent: int, cap: Decimal | None) -> None:
    if rollover == Allowance.Rollover.PERCENT and not 0 < percent <= 100:
        raise _invalid("rollover_percent", "A percentage rollover needs 1 to 100 percent.")
    if cap is not None and cap < 0:
        raise _invalid("rollover_cap", "Must not be negative.")


def allowance_create(
    *,
    actor: Actor,
    employee: Employee,
    fiscal_year: int | None = None,
    amount: Decimal | None = None,
    unit: str | None = None,
    release: str | None = None,
    prorate: bool = True,
    rollover: str = Allowance.Rollover.NONE,
    rollover_percent: int = 0,
    rollover_cap: Decimal | None = None,
    source: Source = "api",
) -> Allowance:
    """Grant `employee` an allowance for `fiscal_year` (default: the current one). Amount, unit
    and release schedule default to the policy in force for the employee's cost center."""
    own_budget_refuse(actor, employee)
    fiscal_year = fiscal_year or current_fiscal_year()
    policy = policy_resolve(employee.cost_center)
    if amount is None:
        if policy is None or policy.default_allowance is None:
            raise _invalid(
                "amount",
                f"Give an amount: no policy above cost center {employee.cost_center.code} "
                "sets a default allowance.",
            )
        amount = policy.default_allowance
    unit = unit or (policy.default_unit if policy else Unit.TOKENS)
    release = release or (policy.default_release if policy else Release.UPFRONT)
    if amount < 0:
        raise _invalid("amount", "Must not be negative.")
    amount_check(amount, unit)
    _check_rollover(rollover, rollover_percent, rollover_cap)
    if Allowance.objects.filter(employee=employee, fiscal_year=fiscal_year).exists():
        raise _invalid(
            "fiscal_year",
            f"Employee {employee.employee_id} already has an allowance for {fiscal_year}.",
        )
    allowance = Allowance(
        employee=employee,
        fiscal_year=fiscal_year,
        amount=amount,
        unit=unit,
        release=release,
        prorate=prorate,
        rollover=rollover,
        rollover_percent=rollover_percent,
        rollover_cap=rollover_cap,
    )
    allowance.full_clean()
    with transaction.atomic():
        invalidation_publish(cache="keys")  # proxies cache what this changes
        allowance.save()
        audit_record(
            actor=actor, action="create", obj=allowance, after=snapshot(allowance), source=source
        )
    return allowance


def _lock_allowance(pk: int) -> Allowance:
    # The same lock the quota ledger takes, so a change never races a reservation.
    return Allowance.objects.select_for_update().select_related("employee").get(pk=pk)


def allowance_update(
    *, actor: Actor, allowance: Allowance, data: AllowanceData, source: Source = "api"
) -> Allowance:
    """Change the grant's terms. `used`, `reserved` and `adjustments_total` are never set here:
    they move only through the quota ledger and adjustments."""
    own_budget_refuse(actor, allowance.employee)
    with transaction.atomic():
        invalidation_publish(cache="keys")  # proxies cache what this changes
        allowance = _lock_allowance(allowance.pk)
        before = snapshot(allowance)
        changed = _apply(
            allowance,
            data,
            tuple(AllowanceData.__annotations__),
        )
        if not changed:
            return allowance
        if "unit" in changed and (
            allowance.used or allowance.reserved or allowance.adjustments_total
        ):
            raise _invalid("unit", "The unit cannot change once the allowance has been used.")
        if allowance.amount < 0:
            raise _invalid("amount", "Must not be negative.")
        amount_check(allowance.amount, allowance.unit)
        _check_rollover(allowance.rollover, allowance.rollover_percent, allowance.rollover_cap)
        allowance.full_clean()
        _check_covers_spend(allowance, allowance.employee, field="amount")
        allowance.save(update_fields=[*changed, "updated_at"])
        audit_record(
            actor=actor,
            action="update",
            obj=allowance,
            before=before,
            after=snapshot(allowance),
            source=source,
        )
    return allowance


def adjustment_check(*, allowance: Allowance, kind: str, amount: Decimal, reason: str) -> None:
    """Validate an adjustment without writing it (the admin form calls this to show errors on
    the form; `adjustment_create` calls it again under the row lock)."""
    if kind not in Adjustment.Kind.values:
        raise _invalid("kind", f"Unknown kind {kind!r}.")
    if amount == 0:
        raise _invalid("amount", "An adjustment of zero changes nothing.")
    if kind != Adjustment.Kind.CORRECTION and amount < 0:
        raise _invalid("amount", "Only a correction may be negative.")
    amount_check(amount, allowance.unit)
    if not reason.strip():
        raise _invalid("reason", "Say why.")
    if amount < 0:
        _check_covers_spend(allowance, allowance.employee, field="amount", delta=amount)


def adjustment_create(
    *,
    actor: Actor,
    allowance: Allowance,
    kind: str,
    amount: Decimal,
    reason: str,
    source: Source = "api",
) -> Adjustment:
    """Append a signed adjustment and add it to the allowance's cached total in one
    transaction (with F(), so a concurrent ledger update is never overwritten)."""
    own_budget_refuse(actor, allowance.employee)
    with transaction.atomic():
        invalidation_publish(cache="keys")  # proxies cache what this changes
        locked = _lock_allowance(allowance.pk)
        adjustment_check(allowance=locked, kind=kind, amount=amount, reason=reason)
        adjustment = Adjustment(
            allowance=locked,
            kind=kind,
            amount=amount,
            reason=reason.strip(),
            actor=actor if getattr(actor, "is_authenticated", False) else None,
        )
        adjustment.full_clean()
        adjustment.save()
        Allowance.objects.filter(pk=locked.pk).update(
            adjustments_total=F("adjustments_total") + amount
        )
        audit_record(
            actor=actor,
            action="create",
            obj=adjustment,
            after=snapshot(adjustment),
            source=source,
        )
    allowance.refresh_from_db(fields=["adjustments_total"])
    return adjustment


def _default_amount(employee: Employee, unit: str) -> Decimal:
    """The policy's new-joiner amount when it is counted in `unit`, else nothing."""
    policy = policy_resolve(employee.cost_center)
    if policy is None or policy.default_allowance is None or policy.default_unit != unit:
        return Decimal(0)
    return policy.default_allowance


def allowance_rollover(
    *, actor: Actor, allowance: Allowance, day: dt.date | None = None, source: Source = "system"
) -> Adjustment | None:
    """Carry `rollover_percent` of the year's unused allowance (at most `rollover_cap`) into the
    next year's allowance, creating that allowance from the policy if needed.

    Only once the fiscal year has ended, and only once per allowance: a second call returns the
    existing rollover adjustment. Returns None when there is nothing to carry.
    """
    day = day or today()
    _, year_end = fiscal_year_bounds(allowance.fiscal_year, settings.TB_FISCAL_YEAR_START_MONTH)
    if day < year_end:
        raise _invalid("fiscal_year", f"Fiscal year {allowance.fiscal_year} has not ended yet.")
    if allowance.rollover != Allowance.Rollover.PERCENT or not allowance.rollover_percent:
        return None
    with transaction.atomic():
        invalidation_publish(cache="keys")  # proxies cache what this changes
        source_allowance = _lock_allowance(allowance.pk)
        employee = source_allowance.employee
        following = Allowance.objects.filter(
            employee=employee, fiscal_year=source_allowance.fiscal_year + 1
        ).first()
        if following is None:
            following = allowance_create(
                actor=actor,
                employee=employee,
                fiscal_year=source_allowance.fiscal_year + 1,
                amount=_default_amount(employee, source_allowance.unit),
                unit=source_allowance.unit,
                release=source_allowance.release,
                prorate=source_allowance.prorate,
                rollover=source_allowance.rollover,
                rollover_percent=source_allowance.rollover_percent,
                rollover_cap=source_allowance.rollover_cap,
                source=source,
            )
        existing = following.adjustments.filter(kind=Adjustment.Kind.ROLLOVER).first()
        if existing is not None:
            return existing
        if following.unit != source_allowance.unit:
            raise _invalid("unit", "Next year's allowance is counted in another unit.")
        grant, _ = allowance_released(source_allowance, employee, year_end)
        unused = max(
            Decimal(0),
            grant
            + source_allowance.adjustments_total
            - source_allowance.used
            - source_allowance.reserved,
        )
        carried = ledger.quantize_down(
            unused * source_allowance.rollover_percent / 100, source_allowance.unit
        )
        if source_allowance.rollover_cap is not None:
            carried = min(
                carried,
                source_allowance.rollover_cap.quantize(
                    ledger.QUANTUM[source_allowance.unit], rounding=ROUND_DOWN
                ),
            )
        if carried <= 0:
            return None
        return adjustment_create(
            actor=actor,
            allowance=following,
            kind=Adjustment.Kind.ROLLOVER,
            amount=carried,
            reason=(
                f"{source_allowance.rollover_percent}% of {unused} unused in "
                f"{source_allowance.fiscal_year}"
            ),
            source=source,
        )


# --- policies ----------------------------------------------------------------------------------


def _check_policy(policy: Policy) -> None:
    models_ = policy.allowed_models
    if not isinstance(models_, list) or not all(isinstance(m, str) and m for m in models_):
        raise _invalid("allowed_models", "A list of model names.")
    thresholds = policy.alert_thresholds
    if not isinstance(thresholds, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and 0 < t <= 1000 for t in thresholds
    ):
        raise _invalid("alert_thresholds", "A list of percentages from 1 to 1000.")
    policy.alert_thresholds = sorted(set(thresholds))
    if policy.downgrade_models is None:  # an empty form field
        policy.downgrade_models = {}
    downgrades = policy.downgrade_models
    if not isinstance(downgrades, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v and k != v
        for k, v in downgrades.items()
    ):
        raise _invalid("downgrade_models", "A map of model name to a different model name.")
    if downgrades and policy.downgrade_at_percent is None:
        raise _invalid("downgrade_at_percent", "Say at which share of the allowance to downgrade.")
    if policy.default_allowance is not None:
        if policy.default_allowance < 0:
            raise _invalid("default_allowance", "Must not be negative.")
        amount_check(policy.default_allowance, policy.default_unit, field="default_allowance")


def policy_set(
    *, actor: Actor, cost_center: CostCenter, data: PolicyData, source: Source = "api"
) -> Policy:
    """Create or change the policy of `cost_center` (its subtree inherits it, see
    `policy_resolve`)."""
    with transaction.atomic():
        invalidation_publish(cache="keys")  # proxies cache what this changes
        policy = Policy.objects.select_for_update().filter(cost_center=cost_center).first()
        created = policy is None
        if policy is None:
            policy = Policy(cost_center=cost_center)
        before = None if created else snapshot(policy)
        changed = _apply(policy, data, PolicyFields)
        if not created and not changed:
            return policy
        _check_policy(policy)
        policy.full_clean()
        policy.save()
        audit_record(
            actor=actor,
            action="create" if created else "update",
            obj=policy,
            before=before,
            after=snapshot(policy),
            source=source,
        )
    return policy
