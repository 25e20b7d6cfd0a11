"""Who may spend what: cost centers, employees, allowances, adjustments, policies, the ledger."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

MONEY = {"max_digits": 24, "decimal_places": 10}  # exact cost of single calls needs sub-cent places
AMOUNT = {"max_digits": 24, "decimal_places": 10}


class Unit(models.TextChoices):
    TOKENS = "tokens", "Tokens"
    USD = "usd", "US dollars"


class Release(models.TextChoices):
    UPFRONT = "upfront", "Upfront"
    MONTHLY = "monthly", "Monthly (1/12 at each month start)"


class CostCenter(models.Model):
    code = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    gl_code = models.CharField("GL code", max_length=64, blank=True)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    managers = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="managed_cost_centers"
    )
    annual_cap = models.DecimalField(
        max_digits=24,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0))],
        help_text="Most this cost center (with its subtree) may spend per fiscal year, in USD.",
    )
    stripe_customer_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} {self.name}"


class Employee(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="employee",
    )
    employee_id = models.CharField("HR employee id", max_length=64, unique=True)
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=200, blank=True)
    cost_center = models.ForeignKey(CostCenter, on_delete=models.PROTECT, related_name="employees")
    start_date = models.DateField(null=True, blank=True)
    end_date = models.DateField(null=True, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["employee_id"]
        indexes = [models.Index(fields=["cost_center", "active"])]

    def __str__(self) -> str:
        return f"{self.employee_id} {self.name or self.email}"


class EmployeeMove(models.Model):
    """A change of cost center, effective on a date: spend before it stays with the old one."""

    employee = models.ForeignKey(Employee, on_delete=models.CASCADE, related_name="moves")
    from_cost_center = models.ForeignKey(
        CostCenter, null=True, on_delete=models.PROTECT, related_name="+"
    )
    to_cost_center = models.ForeignKey(CostCenter, on_delete=models.PROTECT, related_name="+")
    effective_date = models.DateField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["employee", "effective_date", "id"]

    def __str__(self) -> str:
        return f"{self.employee_id}: -> {self.to_cost_center_id} on {self.effective_date}"


class Policy(models.Model):
    """Defaults and limits for a cost center; a cost center without one inherits its parent's."""

    class LimitMode(models.TextChoices):
        HARD = "hard", "Hard: refuse past the allowance"
        SOFT = "soft", "Soft: allow an overage percentage"

    class OverBudget(models.TextChoices):
        CLAMP = "clamp", "Clamp max output to what remains"
        REFUSE = "refuse", "Refuse the call"

    cost_center = models.OneToOneField(CostCenter, on_delete=models.CASCADE, related_name="policy")
    default_allowance = models.DecimalField(**AMOUNT, null=True, blank=True)
    default_unit = models.CharField(max_length=8, choices=Unit.choices, default=Unit.TOKENS)
    default_release = models.CharField(
        max_length=8, choices=Release.choices, default=Release.UPFRONT
    )
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Public model names; empty allows every routed model."
    )
    alert_thresholds = models.JSONField(
        default=list, blank=True, help_text="Percentages, e.g. [50, 80, 100]."
    )
    limit_mode = models.CharField(max_length=8, choices=LimitMode.choices, default=LimitMode.HARD)
    soft_overage_percent = models.PositiveIntegerField(
        default=0, validators=[MaxValueValidator(1000)]
    )
    per_request_token_cap = models.PositiveIntegerField(null=True, blank=True)
    over_budget = models.CharField(
        max_length=8, choices=OverBudget.choices, default=OverBudget.CLAMP
    )
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    downgrade_models = models.JSONField(
        default=dict,
        blank=True,
        help_text='Public model name to its cheaper stand-in, e.g. {"gpt-4o": "gpt-4o-mini"}.',
    )
    downgrade_at_percent = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(100)],
        help_text="Past this share of the allowance used, calls go to the downgrade model.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "policies"

    def __str__(self) -> str:
        return f"policy of {self.cost_center_id}"


class Allowance(models.Model):
    """An employee's grant for one fiscal year, with its ledger counters.

    `used` and `reserved` change only through the ledger services (row lock + arithmetic in one
    transaction); `adjustments_total` caches the sum of this allowance's adjustments and can be
    rebuilt from them.
    """

    class Rollover(models.TextChoices):
        NONE = "none", "None"
        PERCENT = "percent", "A percentage, capped"

    employee = models.ForeignKey(Employee, on_delete=models.PROTECT, related_name="allowances")
    fiscal_year = models.PositiveIntegerField(
        validators=[MinValueValidator(2000), MaxValueValidator(2200)]
    )
    unit = models.CharField(max_length=8, choices=Unit.choices, default=Unit.TOKENS)
    amount = models.DecimalField(**AMOUNT, validators=[MinValueValidator(Decimal(0))])
    release = models.CharField(max_length=8, choices=Release.choices, default=Release.UPFRONT)
    prorate = models.BooleanField(default=True)
    rollover = models.CharField(max_length=8, choices=Rollover.choices, default=Rollover.NONE)
    rollover_percent = models.PositiveIntegerField(default=0, validators=[MaxValueValidator(100)])
    rollover_cap = models.DecimalField(**AMOUNT, null=True, blank=True)
    used = models.DecimalField(**AMOUNT, default=Decimal(0))
    reserved = models.DecimalField(**AMOUNT, default=Decimal(0))
    adjustments_total = models.DecimalField(**AMOUNT, default=Decimal(0))
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-fiscal_year", "employee"]
        constraints = [
            models.UniqueConstraint(
                fields=["employee", "fiscal_year"], name="one_allowance_per_year"
            ),
            models.CheckConstraint(
                condition=Q(amount__gte=0), name="allowance_amount_non_negative"
            ),
            models.CheckConstraint(
                condition=Q(reserved__gte=0), name="allowance_reserved_non_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.employee_id} FY{self.fiscal_year} {self.amount} {self.unit}"


class Adjustment(models.Model):
    """An append-only signed change to an allowance (top-up, correction, rollover)."""

    class Kind(models.TextChoices):
        TOP_UP = "top_up", "Top-up"
        CORRECTION = "correction", "Correction"
        ROLLOVER = "rollover", "Rollover from last year"
        REQUEST = "request", "Approved budget request"

    allowance = models.ForeignKey(Allowance, on_delete=models.PROTECT, related_name="adjustments")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.TOP_UP)
    amount = models.DecimalField(**AMOUNT)
    reason = models.CharField(max_length=500)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} on allowance {self.allowance_id}"


class CostCenterSpend(models.Model):
    """Ledger counters for a cost center's annual cap (USD), one row per fiscal year."""

    cost_center = models.ForeignKey(CostCenter, on_delete=models.CASCADE, related_name="spend")
    fiscal_year = models.PositiveIntegerField()
    spent = models.DecimalField(**MONEY, default=Decimal(0))
    reserved = models.DecimalField(**MONEY, default=Decimal(0))

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["cost_center", "fiscal_year"], name="one_spend_row_per_year"
            )
        ]

    def __str__(self) -> str:
        return f"{self.cost_center_id} FY{self.fiscal_year}: {self.spent} spent"


class Reservation(models.Model):
    """An open hold against an allowance (and cost-center caps) for a call in flight.

    Settling or releasing deletes it; a reservation left by a crashed process expires and is
    released by `reservations_release_expired`.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    allowance = models.ForeignKey(Allowance, on_delete=models.CASCADE, related_name="reservations")
    amount = models.DecimalField(**AMOUNT, help_text="In the allowance's unit.")
    tokens = models.PositiveBigIntegerField()
    cost = models.DecimalField(**MONEY)
    cost_center_ids = models.JSONField(
        default=list, help_text="Capped cost centers held, in lock order."
    )
    fiscal_year = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"reservation {self.id} of {self.amount}"


class AuditEvent(models.Model):
    """Who changed what, from where, with the object's state before and after."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=200, blank=True)
    source = models.CharField(max_length=16, default="api")  # api, admin, import, command, system
    action = models.CharField(max_length=32)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=300, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"{self.action} {self.object_type}:{self.object_id}"


class BudgetRequest(models.Model):
    """An employee's ask for more allowance this fiscal year. A manager of their cost center
    (or an admin) approves or declines it; an approval appends an `Adjustment` of kind
    `request` with the approver as actor, so the ledger stays the one record of the change."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        DECLINED = "declined", "Declined"

    employee = models.ForeignKey(Employee, on_delete=models.PROTECT, related_name="requests")
    allowance = models.ForeignKey(Allowance, on_delete=models.PROTECT, related_name="requests")
    amount = models.DecimalField(**AMOUNT, help_text="Asked for, in the allowance's unit.")
    reason = models.CharField(max_length=1000)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.CharField(max_length=1000, blank=True)
    adjustment = models.OneToOneField(
        Adjustment, null=True, blank=True, on_delete=models.PROTECT, related_name="request"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="budget_request_positive")
        ]

    def __str__(self) -> str:
        return f"request {self.pk} of {self.employee_id}: {self.amount} ({self.status})"
