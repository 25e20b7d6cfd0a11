"""Admin: statements are read-only once final; the rollup and stored value reports are
read-only always (a stored month is recomputed by its job, which an action can enqueue)."""

from __future__ import annotations

from functools import partial
from typing import Any

from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from billing.models import (
    AlertEvent,
    ChargebackStatement,
    DailyUsage,
    StatementLine,
    StripeEvent,
    ValueReport,
    ValueReportPeriod,
)
from billing.statements import StatementStateError, statement_finalize
from billing.value_store import row_group


class StatementLineInline(admin.TabularInline):
    model = StatementLine
    extra = 0
    can_delete = False
    fields = readonly_fields = ("kind", "usage_month", "employee", "model", "requests",
                                "input_tokens", "output_tokens", "cost")  # fmt: skip

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ChargebackStatement)
class ChargebackStatementAdmin(admin.ModelAdmin):
    list_display = ["period", "cost_center", "status", "total", "requests", "stripe_invoice_id"]
    list_filter = ["status", "period"]
    search_fields = ["cost_center__code", "stripe_invoice_id"]
    inlines = [StatementLineInline]
    actions = ["finalize"]
    readonly_fields = [f.name for f in ChargebackStatement._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # statements come from the month close only

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and not obj.is_open:
            return False
        return super().has_delete_permission(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A final statement never changes: the admin refuses any edit once it left draft.
        if obj is not None and not obj.is_open:
            return False
        return super().has_change_permission(request, obj)

    @admin.action(description="Finalize selected draft statements")
    def finalize(self, request: HttpRequest, queryset: Any) -> None:
        done = 0
        for statement_id in queryset.values_list("id", flat=True):
            try:
                statement_finalize(statement_id=statement_id, actor=request.user)
                done += 1
            except StatementStateError as exc:
                self.message_user(request, f"#{statement_id}: {exc}", messages.WARNING)
        self.message_user(request, f"{done} statement(s) finalized.")


@admin.register(DailyUsage)
class DailyUsageAdmin(admin.ModelAdmin):
    list_display = ["day", "employee", "cost_center", "model", "intent", "requests", "cost"]
    list_filter = ["day", "model"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


admin.site.register(AlertEvent)
admin.site.register(StripeEvent)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ValueReportPeriod)
class ValueReportPeriodAdmin(ReadOnlyAdmin):
    list_display = ["since", "until", "complete", "computed_at", "changed_at", "row_count"]
    actions = ["recompute"]

    @admin.display(description="rows")
    def row_count(self, obj: ValueReportPeriod) -> int:
        return obj.rows.count()

    @admin.action(description="Recompute the selected months (queued)")
    def recompute(self, request: HttpRequest, queryset: QuerySet[ValueReportPeriod]) -> None:
        from billing.tasks import value_report_store_task

        months = [since.isoformat() for since in queryset.values_list("since", flat=True)]
        for month in months:
            transaction.on_commit(partial(value_report_store_task.delay, month))
        self.message_user(request, f"{len(months)} month(s) queued for recomputation.")


@admin.register(ValueReport)
class ValueReportAdmin(ReadOnlyAdmin):
    """Stored sums; the ratios shown are derived from them exactly as the API derives them."""

    list_display = ["period", "dimension", "key", "requests", "tokens", "cost", "value",
                    "acceptance_rate", "return_on_spend", "energy_kwh"]  # fmt: skip
    list_filter = ["dimension", "period"]
    search_fields = ["key"]
    list_select_related = ["period"]

    @admin.display(description="acceptance rate")
    def acceptance_rate(self, obj: ValueReport) -> Any:
        return row_group(obj).as_dict()["acceptance_rate"]

    @admin.display(description="return on spend")
    def return_on_spend(self, obj: ValueReport) -> Any:
        return row_group(obj).as_dict()["return_on_spend"]

    @admin.display(description="kWh")
    def energy_kwh(self, obj: ValueReport) -> Any:
        return row_group(obj).as_dict()["energy_kwh"]
