"""JSON shapes of the budgets API. Serializers validate input and render output; they never
save: the API views pass validated data to budgets.services.

Amounts are exact decimal strings without trailing zeros ("1000", "12.5", "0.0000315"):
never floats. Ledger counters (`used`, `reserved`, `adjustments_total`) are read-only.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from rest_framework import serializers

from budgets.models import (
    Adjustment,
    Allowance,
    AuditEvent,
    CostCenter,
    Employee,
    EmployeeMove,
    Policy,
)
from budgets.selectors import allowance_list


class AmountField(serializers.DecimalField):
    """An exact amount in and out as a decimal string."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_digits", 24)
        kwargs.setdefault("decimal_places", 10)
        kwargs.setdefault("coerce_to_string", True)
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> str | None:
        if value is None:
            return None
        value = Decimal(value)
        if not value:
            return "0"
        return format(value.normalize(), "f")


class CostCenterSerializer(serializers.ModelSerializer):
    parent = serializers.SlugRelatedField(
        slug_field="code",
        queryset=CostCenter.objects.all(),
        allow_null=True,
        required=False,
        help_text="Code of the parent cost center.",
    )
    managers = serializers.SlugRelatedField(
        slug_field="username",
        queryset=get_user_model().objects.all(),
        many=True,
        required=False,
        help_text="Usernames of the managers (they see and top up the subtree).",
    )
    annual_cap = serializers.DecimalField(
        max_digits=24,
        decimal_places=2,
        min_value=Decimal(0),
        allow_null=True,
        required=False,
        help_text="Most this cost center and its subtree may spend per fiscal year, in USD.",
    )

    class Meta:
        model = CostCenter
        fields = [
            "code",
            "name",
            "gl_code",
            "parent",
            "managers",
            "annual_cap",
            "stripe_customer_id",
            "created_at",
        ]
        read_only_fields = ["created_at"]


class EmployeeSerializer(serializers.ModelSerializer):
    cost_center = serializers.SlugRelatedField(
        slug_field="code", queryset=CostCenter.objects.all(), help_text="Cost center code."
    )
    username = serializers.SlugRelatedField(
        source="user",
        slug_field="username",
        queryset=get_user_model().objects.all(),
        allow_null=True,
        required=False,
        help_text="The login linked to this employee.",
    )

    class Meta:
        model = Employee
        fields = [
            "employee_id",
            "email",
            "name",
            "cost_center",
            "start_date",
            "end_date",
            "active",
            "username",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]


class EmployeeUpdateSerializer(EmployeeSerializer):
    """The HR id is the lookup key and cannot change; a cost center change is a move today."""

    class Meta(EmployeeSerializer.Meta):
        read_only_fields = ["employee_id", "created_at", "updated_at"]


class EmployeeMoveInputSerializer(serializers.Serializer):
    cost_center = serializers.SlugRelatedField(
        slug_field="code", queryset=CostCenter.objects.all(), help_text="Destination code."
    )
    effective_date = serializers.DateField(
        required=False, help_text="Default today; never in the future."
    )


class EmployeeMoveSerializer(serializers.ModelSerializer):
    from_cost_center = serializers.SlugRelatedField(slug_field="code", read_only=True)
    to_cost_center = serializers.SlugRelatedField(slug_field="code", read_only=True)
    actor = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = EmployeeMove
        fields = ["from_cost_center", "to_cost_center", "effective_date", "actor", "created_at"]
        read_only_fields = fields


class AllowanceSerializer(serializers.ModelSerializer):
    employee = serializers.SlugRelatedField(
        slug_field="employee_id", queryset=Employee.objects.all(), help_text="HR employee id."
    )
    fiscal_year = serializers.IntegerField(
        min_value=2000, max_value=2200, required=False, help_text="Default: the current one."
    )
    amount = AmountField(
        min_value=Decimal(0),
        required=False,
        help_text="Annual grant (before proration). Default: the policy's new-joiner amount.",
    )
    unit = serializers.ChoiceField(
        choices=Allowance._meta.get_field("unit").choices, required=False
    )
    release = serializers.ChoiceField(
        choices=Allowance._meta.get_field("release").choices, required=False
    )
    rollover_cap = AmountField(min_value=Decimal(0), allow_null=True, required=False)
    used = AmountField(read_only=True)
    reserved = AmountField(read_only=True)
    adjustments_total = AmountField(read_only=True)

    class Meta:
        model = Allowance
        fields = [
            "id",
            "employee",
            "fiscal_year",
            "unit",
            "amount",
            "release",
            "prorate",
            "rollover",
            "rollover_percent",
            "rollover_cap",
            "used",
            "reserved",
            "adjustments_total",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]
        # One allowance per employee and year is checked by the service with a clear message.
        validators: list[Any] = []


class AllowanceUpdateSerializer(AllowanceSerializer):
    employee = serializers.SlugRelatedField(slug_field="employee_id", read_only=True)
    fiscal_year = serializers.IntegerField(read_only=True)


class AdjustmentSerializer(serializers.ModelSerializer):
    allowance = serializers.PrimaryKeyRelatedField(queryset=Allowance.objects.none())
    employee = serializers.CharField(source="allowance.employee.employee_id", read_only=True)
    fiscal_year = serializers.IntegerField(source="allowance.fiscal_year", read_only=True)
    amount = AmountField(help_text="Signed; only a correction may be negative.")
    actor = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = Adjustment
        fields = [
            "id",
            "allowance",
            "employee",
            "fiscal_year",
            "kind",
            "amount",
            "reason",
            "actor",
            "created_at",
        ]
        read_only_fields = ["id", "created_at"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            # Only allowances the caller can see: anything else reads as "does not exist".
            self.fields["allowance"].queryset = allowance_list(user=request.user)

    def validate_kind(self, value: str) -> str:
        if value == Adjustment.Kind.ROLLOVER:
            raise serializers.ValidationError(
                "Rollovers are made by the year-end rollover, not by hand."
            )
        return value


class PolicySerializer(serializers.ModelSerializer):
    cost_center = serializers.SlugRelatedField(
        slug_field="code",
        queryset=CostCenter.objects.all(),
        help_text="The cost center this policy belongs to (for a resolved policy: the ancestor "
        "it is inherited from).",
    )
    default_allowance = AmountField(min_value=Decimal(0), allow_null=True, required=False)
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=200),
        required=False,
        help_text="Public model names; empty allows every routed model.",
    )
    alert_thresholds = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=1000),
        required=False,
        help_text="Percentages of the allowance, e.g. [50, 80, 100].",
    )
    downgrade_models = serializers.DictField(
        child=serializers.CharField(max_length=200),
        required=False,
        help_text='Public model name to its cheaper stand-in, e.g. {"gpt-4o": "gpt-4o-mini"}: '
        "once the employee has used `downgrade_at_percent` of the allowance, calls for the "
        "model are served by the stand-in and the response says so in "
        "`x-tokenbudget-downgraded-from`.",
    )
    downgrade_at_percent = serializers.IntegerField(
        min_value=1, max_value=100, allow_null=True, required=False
    )

    class Meta:
        model = Policy
        fields = [
            "cost_center",
            "default_allowance",
            "default_unit",
            "default_release",
            "allowed_models",
            "alert_thresholds",
            "limit_mode",
            "soft_overage_percent",
            "per_request_token_cap",
            "over_budget",
            "requests_per_minute",
            "tokens_per_minute",
            "downgrade_models",
            "downgrade_at_percent",
            "updated_at",
        ]
        read_only_fields = ["updated_at"]


class PolicyUpdateSerializer(PolicySerializer):
    cost_center = serializers.SlugRelatedField(slug_field="code", read_only=True)


class QuotaSerializer(serializers.Serializer):
    employee = serializers.CharField(help_text="HR employee id.")
    fiscal_year = serializers.IntegerField()
    unit = serializers.CharField()
    allowance = AmountField(help_text="The year's grant after proration, plus adjustments.")
    released = AmountField(help_text="Released so far (monthly schedules release each month).")
    used = AmountField()
    reserved = AmountField(help_text="Held by calls in flight.")
    remaining = AmountField(help_text="released - used - reserved.")
    period_end = serializers.DateField(help_text="Last day of the fiscal year or employment.")
    next_release = serializers.DateField(allow_null=True)


class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.SlugRelatedField(
        slug_field="username",
        read_only=True,
        allow_null=True,
        help_text="Null for jobs and commands.",
    )

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor",
            "actor_label",
            "source",
            "action",
            "object_type",
            "object_id",
            "object_repr",
            "before",
            "after",
        ]
        read_only_fields = fields


class RosterImportSerializer(serializers.Serializer):
    file = serializers.FileField(
        help_text="CSV: employee_id,email,name,cost_center,allowance[,unit,start_date,end_date]"
    )


class RosterCountsSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    deactivated = serializers.IntegerField()
    unchanged = serializers.IntegerField()


class RosterResultSerializer(serializers.Serializer):
    dry_run = serializers.BooleanField()
    fiscal_year = serializers.IntegerField()
    counts = RosterCountsSerializer()
    created = serializers.ListField(child=serializers.DictField())
    updated = serializers.ListField(child=serializers.DictField())
    deactivated = serializers.ListField(child=serializers.DictField())
    unchanged = serializers.ListField(child=serializers.DictField())


class RosterErrorSerializer(serializers.Serializer):
    row = serializers.IntegerField(allow_null=True, help_text="1 is the header row.")
    column = serializers.CharField(allow_null=True)
    message = serializers.CharField()


class RosterErrorsSerializer(serializers.Serializer):
    errors = RosterErrorSerializer(many=True)
    error_count = serializers.IntegerField()
