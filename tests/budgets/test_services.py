from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from budgets import services
from budgets.balance import current_fiscal_year, quota_get
from budgets.models import Adjustment, Allowance, AuditEvent, EmployeeMove, Policy
from tests.budgets.conftest import Cast, row_counts
from tests.budgets.factories import AllowanceFactory, CostCenterFactory, EmployeeFactory

FY = current_fiscal_year()


def test_policy_resolve_takes_the_nearest_whole_policy(cast: Cast) -> None:
    # eng has none: inherits acme's; eng-ml has its own and takes nothing from acme.
    assert services.policy_resolve(cast.eng).cost_center == cast.acme
    own = services.policy_resolve(cast.eng_ml)
    assert own.cost_center == cast.eng_ml
    assert own.default_allowance is None  # not acme's 500000: no field-by-field merge
    assert services.policy_resolve(CostCenterFactory(code="orphan")) is None


def test_policy_set_creates_then_updates_with_audit(cast: Cast) -> None:
    admin = cast.users["admin"]
    policy = services.policy_set(
        actor=admin, cost_center=cast.sales, data={"alert_thresholds": [100, 50, 80, 50]}
    )
    assert policy.alert_thresholds == [50, 80, 100]
    services.policy_set(actor=admin, cost_center=cast.sales, data={"limit_mode": "soft"})
    events = AuditEvent.objects.filter(object_type="budgets.policy", object_id=str(policy.pk))
    assert sorted(events.values_list("action", flat=True)) == ["create", "update"]
    update = events.get(action="update")
    assert (update.before["limit_mode"], update.after["limit_mode"]) == ("hard", "soft")
    assert update.actor == admin and update.source == "api"


def test_policy_set_refuses_bad_thresholds(cast: Cast) -> None:
    before = row_counts()
    with pytest.raises(ValidationError) as exc:
        services.policy_set(actor=None, cost_center=cast.sales, data={"alert_thresholds": [0, 50]})
    assert "alert_thresholds" in exc.value.message_dict
    assert row_counts() == before


def test_cost_center_update_refuses_a_cycle(cast: Cast) -> None:
    before = row_counts()
    with pytest.raises(ValidationError) as exc:
        services.cost_center_update(
            actor=cast.users["admin"], cost_center=cast.acme, data={"parent": cast.eng_ml}
        )
    assert list(exc.value.message_dict) == ["parent"]
    assert row_counts() == before
    cast.acme.refresh_from_db()
    assert cast.acme.parent is None


def test_cost_center_create_and_update_are_audited(cast: Cast) -> None:
    admin = cast.users["admin"]
    cc = services.cost_center_create(
        actor=admin, code="ops", name="Ops", parent=cast.acme, managers=[admin], source="admin"
    )
    services.cost_center_update(actor=admin, cost_center=cc, data={"name": "Operations"})
    events = list(AuditEvent.objects.filter(object_type="budgets.costcenter").order_by("id"))
    assert [(e.action, e.source) for e in events] == [("create", "admin"), ("update", "api")]
    assert events[0].after["managers"] == [admin.pk]
    assert (events[1].before["name"], events[1].after["name"]) == ("Ops", "Operations")


def test_employee_move_records_the_move_and_keeps_the_allowance(cast: Cast) -> None:
    day = dt.date.today() - dt.timedelta(days=3)
    move = services.employee_move(
        actor=cast.users["admin"],
        employee=cast.employee,
        to_cost_center=cast.sales,
        effective_date=day,
    )
    cast.employee.refresh_from_db()
    assert cast.employee.cost_center == cast.sales
    assert (move.from_cost_center, move.to_cost_center, move.effective_date) == (
        cast.eng_ml,
        cast.sales,
        day,
    )
    assert Allowance.objects.get(employee=cast.employee, fiscal_year=FY).amount == 1_000_000
    event = AuditEvent.objects.get(action="move")
    assert event.after["effective_date"] == day.isoformat()


@pytest.mark.parametrize(
    ("days", "field"),
    [(-1, "effective_date"), (0, "cost_center")],
    ids=["future", "same-cost-center"],
)
def test_employee_move_refusals_write_nothing(cast: Cast, days: int, field: str) -> None:
    target = cast.sales if days else cast.eng_ml
    before = row_counts()
    with pytest.raises(ValidationError) as exc:
        services.employee_move(
            actor=None,
            employee=cast.employee,
            to_cost_center=target,
            effective_date=dt.date.today() - dt.timedelta(days=days),
        )
    assert field in exc.value.message_dict
    assert row_counts() == before


def test_employee_update_with_new_cost_center_is_a_move(cast: Cast) -> None:
    services.employee_update(
        actor=None, employee=cast.employee, data={"cost_center": cast.sales, "name": "Renamed"}
    )
    cast.employee.refresh_from_db()
    assert (cast.employee.cost_center, cast.employee.name) == (cast.sales, "Renamed")
    assert EmployeeMove.objects.filter(employee=cast.employee).count() == 1
    actions = list(AuditEvent.objects.order_by("id").values_list("action", flat=True))
    assert actions == ["move", "update"]


def test_employee_deactivate_is_idempotent(cast: Cast) -> None:
    services.employee_deactivate(actor=None, employee=cast.employee, source="command")
    services.employee_deactivate(actor=None, employee=cast.employee, source="command")
    cast.employee.refresh_from_db()
    assert cast.employee.active is False
    event = AuditEvent.objects.get()
    assert (event.action, event.source, event.actor_label) == ("deactivate", "command", "system")


def test_allowance_create_defaults_from_the_policy(cast: Cast) -> None:
    employee = EmployeeFactory(cost_center=cast.eng)  # inherits acme's policy
    allowance = services.allowance_create(actor=None, employee=employee)
    assert (allowance.fiscal_year, allowance.amount, allowance.unit) == (FY, 500_000, "tokens")


def test_allowance_create_without_default_needs_an_amount(cast: Cast) -> None:
    employee = EmployeeFactory(cost_center=cast.eng_ml)  # own policy, no default amount
    before = row_counts()
    with pytest.raises(ValidationError) as exc:
        services.allowance_create(actor=None, employee=employee)
    assert list(exc.value.message_dict) == ["amount"]
    assert row_counts() == before


@pytest.mark.parametrize(
    ("unit", "amount"), [("tokens", Decimal("10.5")), ("usd", Decimal("1.001"))]
)
def test_allowance_amounts_are_whole_units(cast: Cast, unit: str, amount: Decimal) -> None:
    with pytest.raises(ValidationError) as exc:
        services.allowance_create(
            actor=None, employee=cast.employee, fiscal_year=FY + 1, amount=amount, unit=unit
        )
    assert list(exc.value.message_dict) == ["amount"]


def test_adjustment_updates_the_cached_total(cast: Cast) -> None:
    allowance = cast.employee_allowance
    services.adjustment_create(
        actor=cast.users["manager"],
        allowance=allowance,
        kind="top_up",
        amount=Decimal(250),
        reason="Hackathon",
    )
    services.adjustment_create(
        actor=cast.users["admin"],
        allowance=allowance,
        kind="correction",
        amount=Decimal(-50),
        reason="Typo",
    )
    allowance.refresh_from_db()
    assert allowance.adjustments_total == Decimal(200)
    assert sum(a.amount for a in allowance.adjustments.all()) == Decimal(200)
    assert quota_get(cast.employee).allowance == Decimal(1_000_200)
    assert AuditEvent.objects.filter(object_type="budgets.adjustment").count() == 2


def test_correction_may_not_take_back_what_is_used(cast: Cast) -> None:
    allowance = cast.other_allowance
    Allowance.objects.filter(pk=allowance.pk).update(used=Decimal(299_000), reserved=Decimal(500))
    before = row_counts()
    with pytest.raises(ValidationError) as exc:
        services.adjustment_create(
            actor=None, allowance=allowance, kind="correction", amount=Decimal(-501), reason="x"
        )
    assert "amount" in exc.value.message_dict
    assert row_counts() == before
    allowance.refresh_from_db()
    assert allowance.adjustments_total == 0
    # Exactly down to used + reserved is fine.
    services.adjustment_create(
        actor=None, allowance=allowance, kind="correction", amount=Decimal(-500), reason="x"
    )
    assert quota_get(cast.other).remaining == 0


@pytest.mark.parametrize(
    ("kind", "amount", "reason", "field"),
    [
        ("top_up", Decimal(-1), "x", "amount"),
        ("top_up", Decimal(0), "x", "amount"),
        ("top_up", Decimal(1), " ", "reason"),
        ("top_up", Decimal("0.5"), "x", "amount"),
        ("bonus", Decimal(1), "x", "kind"),
    ],
)
def test_adjustment_refusals_write_nothing(
    cast: Cast, kind: str, amount: Decimal, reason: str, field: str
) -> None:
    before = row_counts()
    with pytest.raises(ValidationError) as exc:
        services.adjustment_create(
            actor=None, allowance=cast.employee_allowance, kind=kind, amount=amount, reason=reason
        )
    assert field in exc.value.message_dict
    assert row_counts() == before


def test_allowance_update_refuses_lowering_below_used(cast: Cast) -> None:
    allowance = cast.other_allowance
    Allowance.objects.filter(pk=allowance.pk).update(used=Decimal(200_000))
    with pytest.raises(ValidationError):
        services.allowance_update(actor=None, allowance=allowance, data={"amount": Decimal(1)})
    allowance.refresh_from_db()
    assert allowance.amount == 300_000


def test_allowance_update_cannot_touch_ledger_counters(cast: Cast) -> None:
    with pytest.raises(TypeError):
        services.allowance_update(
            actor=None, allowance=cast.employee_allowance, data={"used": Decimal(0)}
        )


def test_rollover_carries_a_capped_percentage_once(cast: Cast) -> None:
    last = AllowanceFactory(
        employee=cast.employee,
        fiscal_year=FY - 1,
        amount=Decimal(100_000),
        used=Decimal(40_001),
        rollover="percent",
        rollover_percent=50,
        rollover_cap=Decimal(20_000),
    )
    services.adjustment_create(
        actor=None, allowance=last, kind="top_up", amount=Decimal(10_000), reason="x"
    )
    adjustment = services.allowance_rollover(actor=None, allowance=last)
    # unused = 100000 + 10000 - 40001 = 69999; 50 % = 34999 (rounded down), capped at 20000.
    assert (adjustment.kind, adjustment.amount) == ("rollover", Decimal(20_000))
    assert adjustment.allowance == cast.employee_allowance
    again = services.allowance_rollover(actor=None, allowance=last)
    assert again == adjustment
    cast.employee_allowance.refresh_from_db()
    assert cast.employee_allowance.adjustments_total == Decimal(20_000)


def test_rollover_uncapped_creates_next_years_allowance(cast: Cast) -> None:
    last = AllowanceFactory(
        employee=cast.other,
        fiscal_year=FY - 1,
        amount=Decimal(1_001),
        rollover="percent",
        rollover_percent=25,
    )
    Allowance.objects.filter(employee=cast.other, fiscal_year=FY).delete()
    adjustment = services.allowance_rollover(actor=None, allowance=last)
    assert adjustment.amount == Decimal(250)  # floor(1001 * 25 %)
    following = Allowance.objects.get(employee=cast.other, fiscal_year=FY)
    assert following.amount == Decimal(500_000)  # acme's new-joiner default
    assert following.adjustments_total == Decimal(250)
    assert following.rollover_percent == 25


def test_rollover_before_the_year_ends_is_refused(cast: Cast) -> None:
    Allowance.objects.filter(pk=cast.employee_allowance.pk).update(
        rollover="percent", rollover_percent=10
    )
    cast.employee_allowance.refresh_from_db()
    with pytest.raises(ValidationError):
        services.allowance_rollover(actor=None, allowance=cast.employee_allowance)
    assert not Adjustment.objects.exists()


def test_policy_default_unit_must_fit_the_amount(cast: Cast) -> None:
    with pytest.raises(ValidationError):
        services.policy_set(
            actor=None,
            cost_center=cast.sales,
            data={"default_allowance": Decimal("1.5"), "default_unit": "tokens"},
        )
    assert not Policy.objects.filter(cost_center=cast.sales).exists()
