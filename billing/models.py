"""What usage cost: daily rollups, chargeback statements, Stripe links, alerts.

Money in billing tables is stored as an integer count of `COST_SCALE` units (1e-10 of the
currency), the same resolution as `UsageRecord.cost` (10 decimal places). Integer columns make
sums exact on every database: SQLite keeps DECIMAL columns as binary floats, so summing them in
SQL would drift. The `cost` properties turn the integers back into exact Decimals.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from budgets.formatting import label_text
from budgets.models import CostCenter, Employee

COST_SCALE = 10**10
TOKEN_KINDS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


def units_to_cost(units: int | None) -> Decimal:
    """Exact Decimal amount for an integer count of COST_SCALE units."""
    return Decimal(units or 0).scaleb(-10)


def cost_to_units(cost: Decimal) -> int:
    """Inverse of units_to_cost; refuses amounts finer than the 1e-10 resolution."""
    units = cost.scaleb(10)
    if units != units.to_integral_value():
        raise ValueError(f"{cost} has more than 10 decimal places")
    return int(units)


class Watermark(models.Model):
    """A named progress marker for a catch-up job (see billing.rollup for the rollup's use)."""

    name = models.CharField(max_length=64, unique=True)
    position = models.BigIntegerField(default=0)
    pending_position = models.BigIntegerField(default=0)
    pending_xids = models.JSONField(default=list, blank=True)
    period = models.DateField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} @ {self.position}"


class TokenCounts(models.Model):
    """Requests, every token kind and cost in COST_SCALE units (shared by rollups and lines)."""

    requests = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    cost_units = models.BigIntegerField(default=0, help_text="Cost in 1e-10 currency units.")

    class Meta:
        abstract = True

    @property
    def cost(self) -> Decimal:
        return units_to_cost(self.cost_units)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class DailyUsage(TokenCounts):
    """Usage per local day (settings.TIME_ZONE) x employee x cost center at the time of the call
    x model x intent. Written only by billing.rollup; the source of every report."""

    day = models.DateField()
    # No database FK constraints: every row comes from usage records, whose own constraints
    # (PROTECT) already guarantee the employee and cost center exist. Checking them again per
    # rolled-up row was the largest cost of a big catch-up (millions of deferred trigger checks
    # at commit).
    employee = models.ForeignKey(
        Employee, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False
    )
    cost_center = models.ForeignKey(
        CostCenter, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False
    )
    model = models.CharField(max_length=200)
    intent = models.CharField(max_length=100, blank=True)

    class Meta:
        # The unique key leads with the employee so it also serves per-person reads; the fold
        # inserts in this key's order, so a large catch-up appends to the index instead of
        # writing all over it.
        constraints = [
            models.UniqueConstraint(
                fields=["employee", "day", "cost_center", "model", "intent"],
                name="daily_usage_key",
            )
        ]
        indexes = [
            models.Index(fields=["cost_center", "day"]),
            models.Index(fields=["day"]),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.employee_id} {self.model}: {self.cost}"


class CostCenterDay(TokenCounts):
    """Usage per local day x cost center: the daily rollup folded once more, by billing.rollup
    in the same transaction as DailyUsage (so the two always agree). The dashboards read a
    month of spend here: a few thousand rows (days x cost centers) instead of the month's
    DailyUsage rows (about two million at ten million calls a month)."""

    day = models.DateField()
    cost_center = models.ForeignKey(
        CostCenter, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["day", "cost_center"], name="cost_center_day_key")
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.cost_center_id}: {self.cost}"


class ChargebackStatement(models.Model):
    """One month's chargeback for one cost center. Only drafts change; see billing.statements."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        FINAL = "final", "Final"
        SENT = "sent", "Sent"
        PAID = "paid", "Paid"

    period = models.DateField(help_text="First day of the month.")
    cost_center = models.ForeignKey(CostCenter, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.DRAFT)
    currency = models.CharField(max_length=3, default="USD")
    requests = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    total_units = models.BigIntegerField(default=0, help_text="Total in 1e-10 currency units.")
    refreshed_at = models.DateTimeField(null=True, blank=True)
    finalized_at = models.DateTimeField(null=True, blank=True)
    finalized_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    sent_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    stripe_invoice_id = models.CharField(max_length=64, blank=True, db_index=True)
    stripe_invoice_status = models.CharField(max_length=32, blank=True)
    # The Stripe sync's own record (billing.stripe_sync): each statement fails and retries on
    # its own, so one bad statement never holds back the others.
    stripe_sync_attempts = models.PositiveIntegerField(
        default=0, help_text="Failed Stripe sync attempts since the last manual retry."
    )
    stripe_sync_error = models.TextField(blank=True, help_text="The last sync failure.")
    stripe_sync_failed_at = models.DateTimeField(null=True, blank=True)
    stripe_sync_next_at = models.DateTimeField(
        null=True, blank=True, help_text="Earliest automatic retry (empty: due now)."
    )
    stripe_sync_blocked = models.BooleanField(
        default=False,
        help_text="Stripe refused the request: no automatic retry until someone retries it.",
    )
    stripe_sync_claimed_until = models.DateTimeField(
        null=True, blank=True, help_text="A sync of this statement is running until then."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-period", "cost_center"]
        constraints = [
            models.UniqueConstraint(
                fields=["period", "cost_center"], name="one_statement_per_cost_center_month"
            )
        ]

    def __str__(self) -> str:
        return f"{self.period:%Y-%m} {self.cost_center_id} ({self.status})"

    @property
    def total(self) -> Decimal:
        return units_to_cost(self.total_units)

    @property
    def is_open(self) -> bool:
        return self.status == self.Status.DRAFT

    @property
    def stripe_sync_state(self) -> str:
        """invoiced, blocked (needs a fix and a retry), retrying, pending, or '' (no sync)."""
        if self.stripe_invoice_id:
            return "invoiced"
        if self.stripe_sync_blocked:
            return "blocked"
        if self.stripe_sync_error:
            return "retrying"
        if self.status == self.Status.FINAL and self.cost_center.stripe_customer_id:
            return "pending"
        return ""


class StatementLine(TokenCounts):
    """An employee x model amount on a statement. `usage_month` is the month the usage happened:
    equal to the statement's period for usage lines, earlier for adjustment lines (usage that
    arrived after its own month's statement was finalized)."""

    class Kind(models.TextChoices):
        USAGE = "usage", "Usage"
        ADJUSTMENT = "adjustment", "Late usage adjustment"

    statement = models.ForeignKey(
        ChargebackStatement, on_delete=models.CASCADE, related_name="lines"
    )
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.USAGE)
    usage_month = models.DateField()
    employee = models.ForeignKey(Employee, on_delete=models.PROTECT, related_name="+")
    model = models.CharField(max_length=200)

    class Meta:
        ordering = ["statement", "usage_month", "employee", "model"]
        constraints = [
            models.UniqueConstraint(
                fields=["statement", "usage_month", "employee", "model"],
                name="one_line_per_statement_month_employee_model",
            )
        ]

    def __str__(self) -> str:
        return f"{self.statement_id}: {self.employee_id} {self.model} {self.cost}"


class StripeInvoiceItem(models.Model):
    """A Stripe invoice item created for a statement, keyed by its deterministic key."""

    statement = models.ForeignKey(
        ChargebackStatement, on_delete=models.CASCADE, related_name="stripe_items"
    )
    key = models.CharField(max_length=255, unique=True)
    stripe_id = models.CharField(max_length=64)
    amount_cents = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.key} -> {self.stripe_id}"


class StripeEvent(models.Model):
    """A processed Stripe webhook event; the unique id makes redelivery a no-op."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    received_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.event_id} {self.type}"


class AlertEvent(models.Model):
    """One alert, sent once: the unique key (kind, subject, period, threshold) is the guard."""

    class Kind(models.TextChoices):
        THRESHOLD = "threshold", "Allowance threshold crossed"
        PACING = "pacing", "On pace to run out before the period ends"
        COST_CENTER_CAP = "cc_cap", "Cost center cap reached"

    kind = models.CharField(max_length=12, choices=Kind.choices)
    employee = models.ForeignKey(
        Employee, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    cost_center = models.ForeignKey(CostCenter, on_delete=models.CASCADE, related_name="+")
    period = models.CharField(max_length=16, help_text="e.g. FY2026")
    threshold = models.PositiveIntegerField(default=0)
    subject_key = models.CharField(max_length=64, help_text="emp:<id> or cc:<id>")
    message = models.TextField()
    recipients = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "subject_key", "period", "threshold"], name="alert_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.subject_key} {self.period} {self.threshold}"


class PersonalStatementNotice(models.Model):
    """Marks a monthly personal statement as emailed, so the job sends it once."""

    employee = models.ForeignKey(Employee, on_delete=models.CASCADE, related_name="+")
    period = models.DateField()
    sent_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["employee", "period"], name="personal_notice_once")
        ]

    def __str__(self) -> str:
        return f"{self.employee_id} {self.period:%Y-%m}"


class ValueReportPeriod(models.Model):
    """A month whose value reports are stored (billing.value_store). The rows of a period are
    replaced together, so a period is always one consistent computation."""

    since = models.DateField(unique=True, help_text="First local day (the month's first).")
    until = models.DateField(help_text="First local day after the period.")
    complete = models.BooleanField(
        default=False, help_text="False: computed while the month was still running (to date)."
    )
    computed_at = models.DateTimeField(
        help_text="When the last computation started (the figures are as of then)."
    )
    changed_at = models.DateTimeField(help_text="When the stored rows last changed.")
    comparison = models.JSONField(
        default=list,
        blank=True,
        encoder=DjangoJSONEncoder,
        help_text="The period's model comparison (default rule), as the API returns it.",
    )

    class Meta:
        ordering = ["-since"]

    def __str__(self) -> str:
        return f"{self.since:%Y-%m}{'' if self.complete else ' (to date)'}"


class ValueReport(models.Model):
    """One stored row of a value report: period x dimension x key.

    Only exact sums are stored (integers; money and value in COST_SCALE units, energy in 1e-9
    Wh); every ratio of the report is derived from them on read, by the same code that
    computes reports on demand, so a stored row reads exactly like a computed one."""

    class Dimension(models.TextChoices):
        COST_CENTER = "cost_center", "Cost center"
        INTENT = "intent", "Intent"
        MODEL = "model", "Model"
        EMPLOYEE = "employee", "Employee"

    period = models.ForeignKey(ValueReportPeriod, on_delete=models.CASCADE, related_name="rows")
    dimension = models.CharField(max_length=16, choices=Dimension.choices)
    key = models.CharField(
        max_length=200, blank=True, help_text="Cost-center code, intent, model or HR id."
    )
    requests = models.BigIntegerField(default=0)
    tokens = models.BigIntegerField(default=0)
    cost_units = models.BigIntegerField(default=0, help_text="Cost in 1e-10 currency units.")
    outcomes = models.BigIntegerField(default=0)
    accepted = models.BigIntegerField(default=0)
    rejected = models.BigIntegerField(default=0)
    value_units = models.BigIntegerField(default=0, help_text="Value in 1e-10 currency units.")
    energy_nwh = models.BigIntegerField(default=0, help_text="Energy in 1e-9 Wh.")
    energy_tokens = models.BigIntegerField(default=0)
    energy_cost_units = models.BigIntegerField(
        default=0, help_text="Cost of the energy-covered calls, in 1e-10 currency units."
    )
    generation_ms = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["period", "dimension", "-cost_units", "key"]
        constraints = [
            models.UniqueConstraint(
                fields=["period", "dimension", "key"], name="one_value_row_per_period_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.period} {self.dimension} {label_text(self.key)}"

    @property
    def cost(self) -> Decimal:
        return units_to_cost(self.cost_units)

    @property
    def value(self) -> Decimal:
        return units_to_cost(self.value_units)
