from __future__ import annotations

import datetime as dt
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from budgets.balance import current_fiscal_year
from budgets.models import Allowance, AuditEvent, Employee, EmployeeMove
from budgets.roster import RosterInvalid, roster_import
from tests.budgets.conftest import Cast, row_counts

FY = current_fiscal_year()
HEADER = "employee_id,email,name,cost_center,allowance\n"

# The cast's three employees, unchanged, plus two new ones.
ROSTER = (
    HEADER
    + "M-1,manager@example.com,Person M-1,eng,2000000\n"
    + "E-100,employee@example.com,Person E-100,eng-ml,1000000\n"
    + "S-200,other@example.com,Person S-200,sales,300000\n"
    + "N-1,New.One@Example.com,New One,sales,750000\n"
    + "N-2,new.two@example.com,New Two,eng,\n"
)


def test_dry_run_returns_the_diff_and_writes_nothing(cast: Cast) -> None:
    before = row_counts()
    result = roster_import(content=ROSTER, actor=cast.users["admin"], dry_run=True)
    assert row_counts() == before
    assert result.counts == {"created": 2, "updated": 0, "deactivated": 0, "unchanged": 3}
    assert result.created[0] == {
        "row": 5,
        "employee_id": "N-1",
        "email": "new.one@example.com",
        "name": "New One",
        "cost_center": "sales",
        "start_date": None,
        "end_date": None,
        "active": True,
        "allowance": "750000",
        "unit": "tokens",
    }
    # A blank allowance takes the policy's new-joiner default (acme: 500000).
    assert result.created[1]["allowance"] == "500000"
    assert [item["employee_id"] for item in result.unchanged] == ["M-1", "E-100", "S-200"]


def test_apply_creates_employees_allowances_and_audit(cast: Cast) -> None:
    before = row_counts()
    result = roster_import(content=ROSTER, actor=cast.users["admin"])
    assert result.counts == {"created": 2, "updated": 0, "deactivated": 0, "unchanged": 3}
    new = Employee.objects.get(employee_id="N-1")
    assert (new.email, new.name, new.cost_center, new.active) == (
        "new.one@example.com",
        "New One",
        cast.sales,
        True,
    )
    allowance = Allowance.objects.get(employee=new)
    assert (allowance.fiscal_year, allowance.amount, allowance.unit) == (FY, 750_000, "tokens")
    assert Allowance.objects.get(employee__employee_id="N-2").amount == 500_000
    after = row_counts()
    assert after["Employee"] == before["Employee"] + 2
    assert after["Allowance"] == before["Allowance"] + 2
    events = AuditEvent.objects.filter(source="import")
    assert events.count() == 4
    assert set(events.values_list("actor__username", flat=True)) == {"admin"}


def test_second_import_of_the_same_file_changes_nothing(cast: Cast) -> None:
    roster_import(content=ROSTER, actor=None)
    stamps = dict(Employee.objects.values_list("employee_id", "updated_at"))
    before = row_counts()
    result = roster_import(content=ROSTER, actor=None)
    assert result.counts == {"created": 0, "updated": 0, "deactivated": 0, "unchanged": 5}
    assert row_counts() == before
    assert dict(Employee.objects.values_list("employee_id", "updated_at")) == stamps


def test_missing_employees_are_deactivated(cast: Cast) -> None:
    roster = HEADER + "E-100,employee@example.com,Person E-100,eng-ml,1000000\n"
    result = roster_import(content=roster, actor=None)
    assert result.deactivated == [
        {"employee_id": "M-1", "email": "manager@example.com"},
        {"employee_id": "S-200", "email": "other@example.com"},
    ]
    assert set(Employee.objects.filter(active=False).values_list("employee_id", flat=True)) == {
        "M-1",
        "S-200",
    }
    # Allowances and history stay; a later file brings the employee back.
    assert Allowance.objects.filter(employee__employee_id="S-200").count() == 1
    assert AuditEvent.objects.filter(action="deactivate").count() == 2
    again = roster_import(content=ROSTER, actor=None)
    assert again.counts["updated"] == 2
    assert not Employee.objects.filter(active=False).exists()


def test_changes_are_updates_and_a_new_cost_center_is_a_move(cast: Cast) -> None:
    roster = ROSTER.replace(
        "E-100,employee@example.com,Person E-100,eng-ml,1000000",
        "E-100,emp@example.com,Person E-100,sales,1200000",
    )
    result = roster_import(content=roster, actor=None)
    assert result.updated == [
        {
            "row": 3,
            "employee_id": "E-100",
            "changes": {
                "email": {"from": "employee@example.com", "to": "emp@example.com"},
                "cost_center": {"from": "eng-ml", "to": "sales"},
                "allowance": {"from": "1000000", "to": "1200000"},
            },
        }
    ]
    cast.employee.refresh_from_db()
    assert (cast.employee.email, cast.employee.cost_center) == ("emp@example.com", cast.sales)
    move = EmployeeMove.objects.get(employee=cast.employee)
    assert (move.from_cost_center, move.to_cost_center) == (cast.eng_ml, cast.sales)
    assert move.effective_date == dt.date.today()
    cast.employee_allowance.refresh_from_db()
    assert cast.employee_allowance.amount == 1_200_000


def test_optional_columns(cast: Cast) -> None:
    roster = (
        "employee_id,email,name,cost_center,allowance,unit,start_date,end_date\n"
        "N-1,n1@example.com,N1,sales,12.50,usd,2020-01-01,\n"
        "N-2,n2@example.com,N2,sales,100,tokens,2020-01-01,2020-06-30\n"
    )
    roster_import(content=roster, actor=None)
    n1 = Employee.objects.get(employee_id="N-1")
    assert (n1.start_date, n1.active) == (dt.date(2020, 1, 1), True)
    assert Allowance.objects.get(employee=n1).amount == Decimal("12.50")
    assert Allowance.objects.get(employee=n1).unit == "usd"
    # An end date in the past: imported, inactive.
    assert Employee.objects.get(employee_id="N-2").active is False


def test_a_bad_row_refuses_the_whole_file(cast: Cast) -> None:
    roster = ROSTER + "N-3,not-an-email,Bad,sales,10\n"
    before = row_counts()
    with pytest.raises(RosterInvalid) as exc:
        roster_import(content=roster, actor=None)
    assert [e.as_dict() for e in exc.value.errors] == [
        {"row": 7, "column": "email", "message": "'not-an-email' is not a valid email address."}
    ]
    assert row_counts() == before


@pytest.mark.parametrize(
    ("line", "column", "message"),
    [
        ("N-3,n3@example.com,X,nowhere,10", "cost_center", "Unknown cost center 'nowhere'."),
        ("N-3,n3@example.com,X,sales,-5", "allowance", "Must not be negative."),
        ("N-3,n3@example.com,X,sales,ten", "allowance", "'ten' is not a number."),
        ("N-3,n3@example.com,X,sales,1.5", "allowance", "Not a whole amount of tokens."),
        (",n3@example.com,X,sales,1", "employee_id", "Required."),
        ("N-1,n3@example.com,X,sales,1", "employee_id", "Repeats row 5."),
        ("N-3,other@example.com,X,sales,1", "email", "Repeats row 4."),
        (
            "N-3,n3@example.com,X,eng-ml,",
            "allowance",
            "Required: no policy above cost center eng-ml sets a default.",
        ),
    ],
)
def test_row_errors_name_row_and_column(cast: Cast, line: str, column: str, message: str) -> None:
    before = row_counts()
    with pytest.raises(RosterInvalid) as exc:
        roster_import(content=ROSTER + line + "\n", actor=None)
    assert [e.as_dict() for e in exc.value.errors] == [
        {"row": 7, "column": column, "message": message}
    ]
    assert row_counts() == before


def test_email_of_another_existing_employee_is_refused(cast: Cast) -> None:
    roster = HEADER + "X-1,other@example.com,X,sales,1\n"
    with pytest.raises(RosterInvalid) as exc:
        roster_import(content=roster, actor=None)
    assert exc.value.errors[0].message == "Already the email of employee S-200."


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "The file is empty."),
        (HEADER, "The file has no employee rows."),
        ("employee_id,email,name\n", "Missing column(s): cost_center, allowance."),
        (HEADER.strip() + ",team\n", "Unknown column(s): team."),
    ],
)
def test_file_level_errors(cast: Cast, content: str, message: str) -> None:
    with pytest.raises(RosterInvalid) as exc:
        roster_import(content=content, actor=None)
    assert exc.value.errors[0].message == message


def test_used_allowance_cannot_change_unit_or_drop_below_use(cast: Cast) -> None:
    Allowance.objects.filter(pk=cast.other_allowance.pk).update(used=Decimal(200_000))
    bad_unit = ROSTER.replace("S-200,other@example.com,Person S-200,sales,300000", "") + (
        "S-200,other@example.com,Person S-200,sales,300000\n"
    )
    bad_unit = bad_unit.replace(HEADER, HEADER.strip() + ",unit\n")
    with pytest.raises(RosterInvalid) as exc:
        roster_import(content=bad_unit.replace("300000\n", "300000,usd\n"), actor=None)
    assert (exc.value.errors[0].column, exc.value.errors[0].message) == (
        "unit",
        "A used allowance cannot change its unit.",
    )
    lowered = ROSTER.replace("sales,300000", "sales,100000")
    with pytest.raises(RosterInvalid) as exc:
        roster_import(content=lowered, actor=None)
    assert exc.value.errors[0].column == "allowance"
    cast.other_allowance.refresh_from_db()
    assert cast.other_allowance.amount == 300_000


def test_new_employee_links_to_the_user_with_that_email(cast: Cast) -> None:
    outsider = cast.users["outsider"]  # outsider@example.com, no employee yet
    roster = ROSTER + "N-9,Outsider@example.com,Out Sider,sales,1\n"
    roster_import(content=roster, actor=None)
    assert Employee.objects.get(employee_id="N-9").user == outsider


def test_import_roster_command(cast: Cast, tmp_path) -> None:
    path = tmp_path / "roster.csv"
    path.write_text(ROSTER)
    out = StringIO()
    call_command("import_roster", str(path), "--dry-run", stdout=out)
    assert out.getvalue().strip() == (
        f"Dry run, nothing written: 2 created, 0 updated, 0 deactivated, 3 unchanged "
        f"(fiscal year {FY})."
    )
    assert not Employee.objects.filter(employee_id="N-1").exists()
    call_command("import_roster", str(path), stdout=out)
    assert Employee.objects.filter(employee_id="N-1").exists()
    assert AuditEvent.objects.filter(actor_label="command:import_roster").count() == 4


def test_import_roster_command_reports_errors(cast: Cast, tmp_path) -> None:
    path = tmp_path / "roster.csv"
    path.write_text(ROSTER + "N-3,bad,X,sales,1\n")
    err = StringIO()
    before = row_counts()
    with pytest.raises(CommandError, match="1 error"):
        call_command("import_roster", str(path), stderr=err)
    assert "row 7, column email" in err.getvalue()
    assert row_counts() == before


def test_every_problem_of_every_row_is_reported_in_one_pass(cast: Cast) -> None:
    """A file with a bad email, a bad number, a duplicate, an unknown cost center and an email
    owned by someone else reports all of them at once (the unknown cost center, a database
    check, comes even on a row whose other cells are wrong), and writes nothing."""
    roster = (
        ROSTER.replace("S-200,other@example.com,Person S-200,sales,300000\n", "")
        + "N-3,not-an-email,Bad Mail,sales,1\n"  # row 6
        + "N-4,n4@example.com,Bad Number,sales,lots\n"  # row 7
        + "N-1,n5@example.com,Repeated Id,sales,1\n"  # row 8
        + "N-6,n6@example.com,Unknown Center,nowhere,1\n"  # row 9
        + "N-7,other@example.com,Taken Mail,sales,1\n"  # row 10
        + "N-8,n8@example.com,Two Problems,atlantis,-5\n"  # row 11
    )
    before = row_counts()
    for dry_run in (True, False):
        with pytest.raises(RosterInvalid) as exc:
            roster_import(content=roster, actor=cast.users["admin"], dry_run=dry_run)
        assert [(e.row, e.column, e.message) for e in exc.value.errors] == [
            (6, "email", "'not-an-email' is not a valid email address."),
            (7, "allowance", "'lots' is not a number."),
            (8, "employee_id", "Repeats row 4."),
            (9, "cost_center", "Unknown cost center 'nowhere'."),
            (10, "email", "Already the email of employee S-200."),
            (11, "allowance", "Must not be negative."),
            (11, "cost_center", "Unknown cost center 'atlantis'."),
        ]
        assert exc.value.total == 7
    assert row_counts() == before
    assert not AuditEvent.objects.filter(source="import").exists()
