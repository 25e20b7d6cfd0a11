"""Admin: statements are read-only once final; the rollup is read-only always."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest

from billing.models import AlertEvent, ChargebackStatement, DailyUsage, StatementLine, StripeEvent
from billing.statements import StatementStateError, statement_finalize


class StatementLineInline(admin.TabularInline):
    model = StatementLine
    extra = 0
    can_delete = False
    fields = ["kind", "usage_month", "employee", "model", "requests", "input_tokens",
              "output_tokens", "cost"]  # fmt: skip
    readonly_fields = fields

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
