"""Roster import: the HR system's CSV of employees becomes employees and this year's allowances.

Columns: `employee_id,email,name,cost_center,allowance` (required, in any order) and optionally
`unit,start_date,end_date`. Rules:

- The file is the whole roster. Active employees missing from it are deactivated (their
  allowances and history stay; they can come back in a later file). A file without any
  employee row is refused, so an empty export never deactivates everybody.
- A row's employee is matched by `employee_id`; emails are stored lower-cased. An email that
  belongs to another existing employee is refused (change it in a separate step first).
- `allowance` is the annual amount of the current fiscal year's allowance (prorated by the
  employee's dates as usual). Left blank, an existing allowance keeps its amount and a new one
  takes the policy's new-joiner default. `unit` blank: the existing allowance's unit, else the
  policy's default, else tokens. The unit of a used allowance cannot change.
- An optional column that is absent leaves that field alone; present but blank clears it.
  A row whose `end_date` has passed is imported as inactive, any other row as active.
- A cost-center change is recorded as a move effective on the import day.
- A new employee is linked to the Django user with the same email, if exactly one such user
  exists and is not linked yet.
- Every row is validated first; any error refuses the whole file (row numbers count the header
  as row 1, as a spreadsheet shows them). One pass reports every problem of every row: a bad
  cell, a repeated id or email, an unknown cost center, an email owned by someone else, so a
  file is fixed in one round. Only a broken header or a file that is not CSV stops early. A real run writes everything in one transaction with
  bulk statements; a dry run computes the same diff and writes nothing. Importing the same file
  again finds everything unchanged.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models.functions import Lower
from django.utils import timezone

from budgets import ledger
from budgets.audit import audit_bulk, audit_event, snapshot
from budgets.balance import allowance_released, current_fiscal_year, today
from budgets.invalidation import invalidation_publish
from budgets.models import Allowance, AuditEvent, CostCenter, Employee, EmployeeMove, Release, Unit
from budgets.selectors import policy_resolve_many

REQUIRED_COLUMNS = ("employee_id", "email", "name", "cost_center", "allowance")
OPTIONAL_COLUMNS = ("unit", "start_date", "end_date")
MAX_ERRORS = 200  # enough to fix a file in one go without a multi-megabyte error response
BATCH = 1000  # rows per INSERT/UPDATE: well under SQLite's 32k bound parameters per statement
EMPLOYEE_FIELDS = ("email", "name", "cost_center_id", "start_date", "end_date", "active")


@dataclass(frozen=True)
class RowError:
    row: int | None
    column: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "message": self.message}


class RosterInvalid(Exception):
    """The file was refused; `errors` says where and why. Nothing was written."""

    def __init__(self, errors: list[RowError]) -> None:
        super().__init__(f"{len(errors)} error(s) in the roster")
        self.errors = errors[:MAX_ERRORS]
        self.total = len(errors)

    def as_dict(self) -> dict[str, Any]:
        return {
            "errors": [error.as_dict() for error in self.errors],
            "error_count": self.total,
        }


@dataclass
class RosterRow:
    row: int
    employee_id: str
    email: str
    name: str
    cost_center: str
    allowance: Decimal | None
    unit: str | None
    start_date: dt.date | None
    end_date: dt.date | None
    # False when a cell of the row is wrong: the row is still checked against the database
    # (cost center, email owner) so every problem is reported at once, but never planned.
    valid: bool = True


@dataclass
class RosterFile:
    rows: list[RosterRow]
    columns: frozenset[str]


@dataclass
class RosterResult:
    dry_run: bool
    fiscal_year: int
    created: list[dict[str, Any]] = field(default_factory=list)
    updated: list[dict[str, Any]] = field(default_factory=list)
    deactivated: list[dict[str, Any]] = field(default_factory=list)
    unchanged: list[dict[str, Any]] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {
            "created": len(self.created),
            "updated": len(self.updated),
            "deactivated": len(self.deactivated),
            "unchanged": len(self.unchanged),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "fiscal_year": self.fiscal_year,
            "counts": self.counts,
            "created": self.created,
            "updated": self.updated,
            "deactivated": self.deactivated,
            "unchanged": self.unchanged,
        }


# --- parsing (no database) ---------------------------------------------------------------------


def roster_parse(content: bytes | str) -> RosterFile:
    """Read and validate the file's shape and every cell; raise RosterInvalid on any error."""
    roster, errors = roster_read(content)
    if errors:
        raise RosterInvalid(errors)
    return roster


def roster_read(content: bytes | str) -> tuple[RosterFile, list[RowError]]:
    """The file's rows, the wrong ones included (marked `valid=False`), and every cell error.
    Raises RosterInvalid only when the rows cannot be read at all (encoding, header, CSV)."""
    if isinstance(content, bytes):
        try:
            content = content.decode("utf-8-sig")  # spreadsheets often prepend a BOM
        except UnicodeDecodeError as exc:
            raise RosterInvalid(
                [RowError(None, None, f"The file is not UTF-8 text ({exc.reason}).")]
            ) from exc
    reader = csv.reader(io.StringIO(content, newline=""))
    try:
        header = next(reader, None)
        if not header:
            raise RosterInvalid([RowError(1, None, "The file is empty.")])
        columns = [name.strip().lower() for name in header]
        errors = _check_header(columns)
        if errors:
            raise RosterInvalid(errors)
        rows: list[RosterRow] = []
        seen_ids: dict[str, int] = {}
        seen_emails: dict[str, int] = {}
        for number, cells in enumerate(reader, start=2):
            if not any(cell.strip() for cell in cells):
                continue  # blank lines, e.g. a trailing one
            if len(cells) > len(columns):
                errors.append(
                    RowError(number, None, f"{len(cells)} cells for {len(columns)} columns.")
                )
                continue
            values = dict(zip(columns, cells, strict=False))
            row = _parse_row(number, values, errors)
            _check_unique(row, seen_ids, seen_emails, errors)
            rows.append(row)
    except csv.Error as exc:
        raise RosterInvalid([RowError(reader.line_num, None, f"Not valid CSV: {exc}.")]) from exc
    if not rows and not errors:
        errors.append(RowError(2, None, "The file has no employee rows."))
    return RosterFile(rows=rows, columns=frozenset(columns)), errors


def _check_header(columns: list[str]) -> list[RowError]:
    errors = []
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        errors.append(RowError(1, None, f"Missing column(s): {', '.join(missing)}."))
    unknown = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        errors.append(RowError(1, None, f"Unknown column(s): {', '.join(unknown)}."))
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        errors.append(RowError(1, None, f"Repeated column(s): {', '.join(repeated)}."))
    return errors


def _parse_row(number: int, values: dict[str, str], errors: list[RowError]) -> RosterRow:
    """The row with its good cells (a wrong cell reads as empty) and `valid` telling whether
    any cell was wrong; the problems are appended to `errors`."""
    before = len(errors)

    def error(column: str, message: str) -> None:
        errors.append(RowError(number, column, message))

    def text(column: str, max_length: int, *, required: bool) -> str:
        value = (values.get(column) or "").strip()
        if required and not value:
            error(column, "Required.")
        elif len(value) > max_length:
            error(column, f"At most {max_length} characters.")
        return value

    employee_id = text("employee_id", 64, required=True)
    email = text("email", 254, required=True).lower()
    if email:
        try:
            validate_email(email)
        except ValidationError:
            error("email", f"{email!r} is not a valid email address.")
    name = text("name", 200, required=False)
    cost_center = text("cost_center", 64, required=True)
    unit = text("unit", 8, required=False).lower() or None
    if unit is not None and unit not in Unit.values:
        error("unit", f"Must be one of {', '.join(Unit.values)}.")
        unit = None
    allowance = _parse_amount(values.get("allowance") or "", unit, error)
    start_date = _parse_date(values.get("start_date") or "", "start_date", error)
    end_date = _parse_date(values.get("end_date") or "", "end_date", error)
    if start_date and end_date and end_date < start_date:
        error("end_date", "The end date is before the start date.")
    return RosterRow(
        row=number,
        employee_id=employee_id,
        email=email,
        name=name,
        cost_center=cost_center,
        allowance=allowance,
        unit=unit,
        start_date=start_date,
        end_date=end_date,
        valid=len(errors) == before,
    )


def _parse_amount(raw: str, unit: str | None, error: Any) -> Decimal | None:
    raw = raw.strip().replace("_", "")
    if not raw:
        return None
    try:
        amount = Decimal(raw)
    except InvalidOperation:
        error("allowance", f"{raw!r} is not a number.")
        return None
    if not amount.is_finite():
        error("allowance", f"{raw!r} is not a number.")
    elif amount < 0:
        error("allowance", "Must not be negative.")
    elif amount >= Decimal(10) ** 14:
        error("allowance", "Too large.")
    elif unit is not None and amount % ledger.QUANTUM[unit]:
        error("allowance", "Tokens are whole numbers." if unit == "tokens" else "Whole cents.")
    else:
        return amount
    return None


def _parse_date(raw: str, column: str, error: Any) -> dt.date | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        error(column, f"{raw!r} is not a date (use YYYY-MM-DD).")
        return None


def _check_unique(
    row: RosterRow, seen_ids: dict[str, int], seen_emails: dict[str, int], errors: list[RowError]
) -> None:
    if not row.employee_id:
        pass  # already reported as required
    elif row.employee_id in seen_ids:
        errors.append(RowError(row.row, "employee_id", f"Repeats row {seen_ids[row.employee_id]}."))
        row.valid = False
    else:
        seen_ids[row.employee_id] = row.row
    if not row.email:
        pass
    elif row.email in seen_emails:
        errors.append(RowError(row.row, "email", f"Repeats row {seen_emails[row.email]}."))
        row.valid = False
    else:
        seen_emails[row.email] = row.row


# --- planning (reads only) -----------------------------------------------------------------------


@dataclass
class _Plan:
    result: RosterResult
    new_employees: list[Employee] = field(default_factory=list)
    changed_employees: list[tuple[Employee, dict[str, Any]]] = field(default_factory=list)
    moves: list[tuple[Employee, int]] = field(default_factory=list)  # (employee, from cc id)
    deactivate: list[Employee] = field(default_factory=list)
    new_allowances: list[Allowance] = field(default_factory=list)
    changed_allowances: list[tuple[Allowance, dict[str, Any]]] = field(default_factory=list)


def _plan(
    roster: RosterFile,
    *,
    dry_run: bool,
    day: dt.date,
    actor_id: int | None = None,
    errors: list[RowError] | None = None,
) -> _Plan:
    """The diff of a roster; `errors` (the cell errors of `roster_read`) are reported together
    with the database checks, all in one RosterInvalid."""
    fiscal_year = current_fiscal_year(day)
    plan = _Plan(result=RosterResult(dry_run=dry_run, fiscal_year=fiscal_year))
    errors = list(errors or [])
    codes = dict(CostCenter.objects.values_list("id", "code"))
    centers = {code: pk for pk, code in codes.items()}
    # The whole table: employees missing from the file are deactivated, and every email must
    # stay unique across the table, not just the file.
    existing = {e.employee_id: e for e in Employee.objects.all()}
    email_owner = {e.email.lower(): e.employee_id for e in existing.values()}
    allowances = {a.employee_id: a for a in Allowance.objects.filter(fiscal_year=fiscal_year)}
    policies = policy_resolve_many(set(codes))
    users = _users_by_email(
        {row.email for row in roster.rows if row.valid and row.employee_id not in existing}
    )

    # One problem per cell: a repeated email is not also reported as someone else's.
    reported = {(error.row, error.column) for error in errors}
    for row in roster.rows:
        center_id = centers.get(row.cost_center)
        if center_id is None and row.cost_center:
            errors.append(
                RowError(row.row, "cost_center", f"Unknown cost center {row.cost_center!r}.")
            )
        owner = email_owner.get(row.email)
        if owner is not None and owner != row.employee_id and (row.row, "email") not in reported:
            errors.append(RowError(row.row, "email", f"Already the email of employee {owner}."))
            continue
        if center_id is None or not row.valid:
            continue
        target = {
            "email": row.email,
            "name": row.name,
            "cost_center_id": center_id,
            "start_date": row.start_date,
            "end_date": row.end_date,
        }
        for column in ("start_date", "end_date"):
            if column not in roster.columns and row.employee_id in existing:
                target[column] = getattr(existing[row.employee_id], column)
        target["active"] = target["end_date"] is None or target["end_date"] >= day
        employee = existing.get(row.employee_id)
        policy = policies.get(center_id)
        grants = len(plan.new_allowances) + len(plan.changed_allowances)
        if employee is None:
            _plan_new(plan, row, target, policy, users, fiscal_year, codes, errors)
            user = users.get(row.email)
            owner_id = user.pk if user is not None else None
        else:
            allowance = allowances.get(employee.pk)
            if _row_ok(row, target, allowance, day, errors):
                _plan_existing(plan, row, employee, target, allowance, policy, codes)
            owner_id = employee.user_id
        granted = len(plan.new_allowances) + len(plan.changed_allowances) > grants
        if granted and actor_id is not None and owner_id == actor_id:
            # Segregation of duties holds for the roster too: another admin imports this row.
            errors.append(RowError(row.row, "allowance", "You may not set your own allowance."))
    listed = {row.employee_id for row in roster.rows if row.employee_id}
    for employee_id in sorted(existing):
        employee = existing[employee_id]
        if employee.active and employee_id not in listed:
            plan.deactivate.append(employee)
            plan.result.deactivated.append({"employee_id": employee_id, "email": employee.email})
    if errors:
        raise RosterInvalid(sorted(errors, key=lambda e: (e.row or 0, e.column or "")))
    return plan


def _users_by_email(emails: set[str]) -> dict[str, Any]:
    if not emails:
        return {}
    user_model = get_user_model()
    found: dict[str, list[Any]] = {}
    for user in (
        user_model.objects.annotate(email_lower=Lower("email"))
        .filter(email_lower__in=emails, employee__isnull=True)
        .only("pk", "email")
    ):
        found.setdefault(user.email.lower(), []).append(user)
    # Two accounts with one address: link neither rather than guess.
    return {email: users[0] for email, users in found.items() if len(users) == 1}


def _allowance_terms(
    row: RosterRow, allowance: Allowance | None, policy: Any
) -> tuple[Decimal | None, str]:
    unit = row.unit or (allowance.unit if allowance else None)
    unit = unit or (policy.default_unit if policy else Unit.TOKENS)
    amount = row.allowance
    if amount is None:
        if allowance is not None:
            amount = allowance.amount
        elif policy is not None and policy.default_allowance is not None:
            amount = policy.default_allowance
    return amount, unit


def _row_ok(
    row: RosterRow,
    target: dict[str, Any],
    allowance: Allowance | None,
    day: dt.date,
    errors: list[RowError],
) -> bool:
    """Checks that need the existing allowance: a used allowance keeps its unit, and no change
    may release less than is already used or held."""
    if allowance is None:
        return True
    amount, unit = _allowance_terms(row, allowance, None)
    if unit != allowance.unit and (
        allowance.used or allowance.reserved or allowance.adjustments_total
    ):
        errors.append(RowError(row.row, "unit", "A used allowance cannot change its unit."))
        return False
    if amount is not None and amount % ledger.QUANTUM[unit]:
        errors.append(RowError(row.row, "allowance", f"Not a whole amount of {unit}."))
        return False
    spent = allowance.used + allowance.reserved
    if spent <= 0:
        return True
    trial = Allowance(
        amount=amount if amount is not None else allowance.amount,
        unit=unit,
        release=allowance.release,
        prorate=allowance.prorate,
        fiscal_year=allowance.fiscal_year,
    )
    person = Employee(start_date=target["start_date"], end_date=target["end_date"])
    _, released = allowance_released(trial, person, day)
    if released + allowance.adjustments_total < spent:
        errors.append(
            RowError(
                row.row,
                "allowance",
                f"Would release {released + allowance.adjustments_total}, less than the "
                f"{spent} already used or held.",
            )
        )
        return False
    return True


def _plan_new(
    plan: _Plan,
    row: RosterRow,
    target: dict[str, Any],
    policy: Any,
    users: dict[str, Any],
    fiscal_year: int,
    codes: dict[int, str],
    errors: list[RowError],
) -> None:
    amount, unit = _allowance_terms(row, None, policy)
    if amount is None:
        errors.append(
            RowError(
                row.row,
                "allowance",
                f"Required: no policy above cost center {row.cost_center} sets a default.",
            )
        )
        return
    if amount % ledger.QUANTUM[unit]:
        errors.append(RowError(row.row, "allowance", f"Not a whole amount of {unit}."))
        return
    employee = Employee(employee_id=row.employee_id, user=users.get(row.email), **target)
    plan.new_employees.append(employee)
    plan.new_allowances.append(
        Allowance(
            employee=employee,
            fiscal_year=fiscal_year,
            amount=amount,
            unit=unit,
            release=policy.default_release if policy else Release.UPFRONT,
        )
    )
    plan.result.created.append(
        {
            "row": row.row,
            "employee_id": row.employee_id,
            "email": row.email,
            "name": row.name,
            "cost_center": codes[target["cost_center_id"]],
            "start_date": _json(row.start_date),
            "end_date": _json(row.end_date),
            "active": target["active"],
            "allowance": _json(amount),
            "unit": unit,
        }
    )


def _plan_existing(
    plan: _Plan,
    row: RosterRow,
    employee: Employee,
    target: dict[str, Any],
    allowance: Allowance | None,
    policy: Any,
    codes: dict[int, str],
) -> None:
    changes: dict[str, dict[str, Any]] = {}
    employee_changes = {
        name: value for name, value in target.items() if getattr(employee, name) != value
    }
    for name, value in employee_changes.items():
        label = "cost_center" if name == "cost_center_id" else name
        old = getattr(employee, name)
        if name == "cost_center_id":
            old, value = codes[old], codes[value]
        changes[label] = {"from": _json(old), "to": _json(value)}
    if employee_changes:
        plan.changed_employees.append((employee, employee_changes))
        if "cost_center_id" in employee_changes:
            plan.moves.append((employee, employee.cost_center_id))
    amount, unit = _allowance_terms(row, allowance, policy)
    if allowance is None:
        if amount is not None:
            plan.new_allowances.append(
                Allowance(
                    employee=employee,
                    fiscal_year=plan.result.fiscal_year,
                    amount=amount,
                    unit=unit,
                    release=policy.default_release if policy else Release.UPFRONT,
                )
            )
            changes["allowance"] = {"from": None, "to": _json(amount)}
            changes["unit"] = {"from": None, "to": unit}
    else:
        allowance_changes = {}
        if amount is not None and amount != allowance.amount:
            allowance_changes["amount"] = amount
            changes["allowance"] = {"from": _json(allowance.amount), "to": _json(amount)}
        if unit != allowance.unit:
            allowance_changes["unit"] = unit
            changes["unit"] = {"from": allowance.unit, "to": unit}
        if allowance_changes:
            plan.changed_allowances.append((allowance, allowance_changes))
    if changes:
        plan.result.updated.append(
            {"row": row.row, "employee_id": row.employee_id, "changes": changes}
        )
    else:
        plan.result.unchanged.append({"row": row.row, "employee_id": row.employee_id})


def _json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value else "0"
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


# --- applying ----------------------------------------------------------------------------------


def roster_import(
    *,
    content: bytes | str,
    actor: Any,
    dry_run: bool = False,
    source: str = "import",
    day: dt.date | None = None,
) -> RosterResult:
    """Validate the roster and compute its diff; unless `dry_run`, apply it all-or-nothing.

    Raises RosterInvalid (nothing written) when any row is wrong.
    """
    day = day or today()
    roster, errors = roster_read(content)
    actor_id = actor.pk if getattr(actor, "is_authenticated", False) else None
    if dry_run or errors:
        # A file with wrong cells is still planned, read-only, so the database's objections
        # (unknown cost centers, taken emails) come in the same report.
        return _plan(roster, dry_run=True, day=day, actor_id=actor_id, errors=errors).result
    with transaction.atomic():
        plan = _plan(roster, dry_run=False, day=day, actor_id=actor_id)
        changing = sorted(allowance.pk for allowance, _ in plan.changed_allowances)
        if changing:
            # Lock only the allowances whose terms change (the ledger's lock), so the proxy
            # keeps reserving against everybody else during a large import; then plan again
            # so the "not below what is used" check reads the locked values.
            list(
                Allowance.objects.select_for_update()
                .filter(pk__in=changing)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
            plan = _plan(roster, dry_run=False, day=day, actor_id=actor_id)
        _apply(plan, actor=actor, source=source, day=day)
        invalidation_publish(cache="keys")  # proxies cache employees and allowances
    return plan.result


def _apply(plan: _Plan, *, actor: Any, source: str, day: dt.date) -> None:
    now = timezone.now()
    events: list[AuditEvent] = []

    def event(action: str, obj: Any, before: Any = None, after: Any = None) -> None:
        events.append(
            audit_event(
                actor=actor, action=action, obj=obj, before=before, after=after, source=source
            )
        )

    # Employees first: new allowances need their ids (returned by the bulk insert on both
    # PostgreSQL and SQLite >= 3.35).
    Employee.objects.bulk_create(plan.new_employees, batch_size=BATCH)
    for employee in plan.new_employees:
        event("create", employee, after=snapshot(employee))

    _bulk_apply(Employee, plan.changed_employees, now=now, event=event)
    actor_user = actor if getattr(actor, "is_authenticated", False) else None
    EmployeeMove.objects.bulk_create(
        [
            EmployeeMove(
                employee=employee,
                from_cost_center_id=from_id,
                to_cost_center_id=employee.cost_center_id,
                effective_date=day,
                actor=actor_user,
            )
            for employee, from_id in plan.moves
        ],
        batch_size=BATCH,
    )

    if plan.deactivate:
        ids = [employee.pk for employee in plan.deactivate]
        for start in range(0, len(ids), BATCH):
            Employee.objects.filter(pk__in=ids[start : start + BATCH]).update(
                active=False, updated_at=now
            )
        for employee in plan.deactivate:
            before = snapshot(employee)
            employee.active = False
            employee.updated_at = now
            event("deactivate", employee, before=before, after=snapshot(employee))

    for allowance in plan.new_allowances:
        allowance.employee_id = allowance.employee.pk  # set after the employees' insert
    Allowance.objects.bulk_create(plan.new_allowances, batch_size=BATCH)
    for allowance in plan.new_allowances:
        event("create", allowance, after=snapshot(allowance))

    # Only the changed terms are written: used/reserved move under the ledger's own updates.
    _bulk_apply(Allowance, plan.changed_allowances, now=now, event=event)
    audit_bulk(events)


def _bulk_apply(model: Any, changed: list, *, now: Any, event: Any) -> None:
    """Set each object's changed fields, audit it, and write them all in batched updates of
    only the fields that changed (plus `updated_at`)."""
    fields: set[str] = set()
    objects = []
    for obj, changes in changed:
        before = snapshot(obj)
        for name, value in changes.items():
            setattr(obj, name, value)
        obj.updated_at = now
        fields |= set(changes)
        objects.append(obj)
        event("update", obj, before=before, after=snapshot(obj))
    if objects:
        model.objects.bulk_update(objects, [*sorted(fields), "updated_at"], batch_size=BATCH)
