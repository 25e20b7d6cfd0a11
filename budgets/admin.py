"""Django admin for the budgets app: enough for a small company to run Tokenbudget with no
other UI. Every save goes through budgets.services (source "admin"), so it is validated like an
API call and lands in the audit trail. Ledger counters, moves, reservations and audit events
are read-only here; deletion is switched off where it would erase history.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

from budgets import services
from budgets.models import (
    Adjustment,
    Allowance,
    AuditEvent,
    BudgetRequest,
    CostCenter,
    CostCenterSpend,
    Employee,
    EmployeeMove,
    Policy,
    Reservation,
)
from budgets.requests import budget_request_decide


def _changes(form: forms.ModelForm, fields: tuple[str, ...]) -> dict[str, Any]:
    return {name: form.cleaned_data[name] for name in form.changed_data if name in fields}


class ReadOnlyAdmin(admin.ModelAdmin):
    """History and ledger rows: visible, never edited by hand."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ServiceSaveMixin:
    """Saves through the services; the form's many-to-many data is saved by them too.

    The forms run the model's validation; a rule only a service knows (a cycle in the cost
    center tree, a correction below what is used) is refused by the service inside the admin's
    transaction, which rolls back, and is shown as an error message.
    """

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(  # type: ignore[misc]
                request, object_id, form_url, extra_context
            )
        except ValidationError as exc:
            self.message_user(  # type: ignore[attr-defined]
                request, "Not saved: " + " ".join(exc.messages), messages.ERROR
            )
            return HttpResponseRedirect(request.get_full_path())

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)  # type: ignore[attr-defined]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _saved_formset(formset: Any, created: list[Any]) -> None:
    """What formset.save() would have recorded, for the admin's change message."""
    formset.new_objects = created
    formset.changed_objects = []
    formset.deleted_objects = []


def _adopt(target: Any, saved: Any) -> None:
    """Let the admin's redirect and messages see the row the service saved."""
    target.pk = saved.pk
    target._state.adding = False
    target.__dict__.update({k: v for k, v in saved.__dict__.items() if not k.startswith("_")})


# --- cost centers and policies -----------------------------------------------------------------


class PolicyInline(admin.StackedInline):
    model = Policy
    extra = 0
    max_num = 1
    can_delete = False
    fields = [
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
    ]


@admin.register(CostCenter)
class CostCenterAdmin(ServiceSaveMixin, admin.ModelAdmin):
    list_display = ["code", "name", "parent", "gl_code", "annual_cap", "employee_count"]
    list_filter = ["parent"]
    search_fields = ["code", "name", "gl_code"]
    autocomplete_fields = ["parent"]
    filter_horizontal = ["managers"]
    inlines = [PolicyInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[CostCenter]:
        return super().get_queryset(request).select_related("parent")

    @admin.display(description="employees")
    def employee_count(self, obj: CostCenter) -> int:
        return obj.employees.filter(active=True).count()

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        fields = ("code", "name", "gl_code", "parent", "annual_cap", "stripe_customer_id")
        if change:
            data: dict[str, Any] = _changes(form, (*fields, "managers"))
            saved = services.cost_center_update(
                actor=request.user,
                cost_center=obj,
                data=data,  # type: ignore[arg-type]
                source="admin",
            )
        else:
            saved = services.cost_center_create(
                actor=request.user,
                managers=form.cleaned_data.get("managers") or (),
                source="admin",
                **{name: form.cleaned_data[name] for name in fields},
            )
        _adopt(obj, saved)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        saved: list[Any] = []
        for inline_form in formset.forms:
            if not inline_form.has_changed() or not inline_form.cleaned_data:
                continue
            data = {
                name: inline_form.cleaned_data[name]
                for name in PolicyInline.fields
                if name in inline_form.cleaned_data
            }
            policy = services.policy_set(
                actor=request.user,
                cost_center=form.instance,
                data=data,  # type: ignore[arg-type]
                source="admin",
            )
            saved.append(policy)
        _saved_formset(formset, saved)


@admin.register(Policy)
class PolicyAdmin(ServiceSaveMixin, admin.ModelAdmin):
    list_display = [
        "cost_center",
        "default_allowance",
        "default_unit",
        "limit_mode",
        "per_request_token_cap",
        "updated_at",
    ]
    list_filter = ["limit_mode", "default_unit"]
    search_fields = ["cost_center__code", "cost_center__name"]
    autocomplete_fields = ["cost_center"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["cost_center"] if obj else []

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        data = {name: value for name, value in form.cleaned_data.items() if name != "cost_center"}
        saved = services.policy_set(
            actor=request.user,
            cost_center=obj.cost_center,
            data=data,  # type: ignore[arg-type]
            source="admin",
        )
        _adopt(obj, saved)


# --- employees ---------------------------------------------------------------------------------


class EmployeeMoveInline(admin.TabularInline):
    model = EmployeeMove
    fk_name = "employee"
    extra = 0
    can_delete = False
    fields = ["effective_date", "from_cost_center", "to_cost_center", "actor", "created_at"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Employee)
class EmployeeAdmin(ServiceSaveMixin, admin.ModelAdmin):
    list_display = ["employee_id", "name", "email", "cost_center", "active", "start_date"]
    list_filter = ["active", "cost_center"]
    search_fields = ["employee_id", "email", "name"]
    autocomplete_fields = ["cost_center", "user"]
    inlines = [EmployeeMoveInline]
    actions = ["deactivate"]
    fields = [
        "employee_id",
        "email",
        "name",
        "cost_center",
        "user",
        "start_date",
        "end_date",
        "active",
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["employee_id"] if obj else []

    def get_queryset(self, request: HttpRequest) -> QuerySet[Employee]:
        return super().get_queryset(request).select_related("cost_center", "user")

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            saved = services.employee_update(
                actor=request.user,
                employee=obj,
                data=_changes(form, tuple(self.fields)),  # type: ignore[arg-type]
                source="admin",
            )
        else:
            saved = services.employee_create(
                actor=request.user, source="admin", **form.cleaned_data
            )
        _adopt(obj, saved)

    @admin.action(description="Deactivate selected employees")
    def deactivate(self, request: HttpRequest, queryset: QuerySet[Employee]) -> None:
        for employee in queryset:
            services.employee_deactivate(actor=request.user, employee=employee, source="admin")
        self.message_user(request, f"Deactivated {queryset.count()} employee(s).")


# --- allowances and adjustments ----------------------------------------------------------------


class AdjustmentInlineForm(forms.ModelForm):
    class Meta:
        model = Adjustment
        fields = ["kind", "amount", "reason"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        allowance = self.instance.allowance if self.instance.allowance_id else None
        if allowance is not None and not self.instance.pk and {"amount", "kind"} <= set(data):
            try:
                services.adjustment_check(
                    allowance=allowance,
                    kind=data["kind"],
                    amount=data["amount"],
                    reason=data.get("reason", ""),
                )
            except ValidationError as exc:
                self.add_error(None, exc)
        return data


class AdjustmentInline(admin.TabularInline):
    """Existing adjustments read-only; new rows are appended through the service."""

    model = Adjustment
    form = AdjustmentInlineForm
    extra = 1
    can_delete = False
    fields = ["created_at", "kind", "amount", "reason", "actor"]
    readonly_fields = ["created_at", "actor"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The inline's existing rows are shown read-only; adding stays allowed.
        return False


@admin.register(Allowance)
class AllowanceAdmin(ServiceSaveMixin, admin.ModelAdmin):
    list_display = [
        "employee",
        "fiscal_year",
        "unit",
        "amount",
        "adjustments_total",
        "used",
        "reserved",
        "release",
    ]
    list_filter = ["fiscal_year", "unit", "release", "employee__cost_center"]
    search_fields = ["employee__employee_id", "employee__email", "employee__name"]
    autocomplete_fields = ["employee"]
    readonly_fields = ["used", "reserved", "adjustments_total", "created_at", "updated_at"]
    inlines = [AdjustmentInline]
    actions = ["rollover"]
    terms = ("amount", "unit", "release", "prorate", "rollover", "rollover_percent", "rollover_cap")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fixed = ["employee", "fiscal_year"] if obj else []
        return [*fixed, *self.readonly_fields]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Allowance]:
        return super().get_queryset(request).select_related("employee")

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            saved = services.allowance_update(
                actor=request.user,
                allowance=obj,
                data=_changes(form, self.terms),  # type: ignore[arg-type]
                source="admin",
            )
        else:
            saved = services.allowance_create(
                actor=request.user,
                employee=form.cleaned_data["employee"],
                fiscal_year=form.cleaned_data["fiscal_year"],
                source="admin",
                **{name: form.cleaned_data[name] for name in self.terms},
            )
        _adopt(obj, saved)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        saved: list[Any] = []
        for inline_form in formset.forms:
            if inline_form.instance.pk or not inline_form.has_changed():
                continue
            data = inline_form.cleaned_data
            if not data:
                continue
            saved.append(
                services.adjustment_create(
                    actor=request.user,
                    allowance=form.instance,
                    kind=data["kind"],
                    amount=data["amount"],
                    reason=data["reason"],
                    source="admin",
                )
            )
        _saved_formset(formset, saved)

    @admin.action(description="Roll unused allowance over into next year")
    def rollover(self, request: HttpRequest, queryset: QuerySet[Allowance]) -> None:
        carried = 0
        for allowance in queryset:
            try:
                if services.allowance_rollover(
                    actor=request.user, allowance=allowance, source="admin"
                ):
                    carried += 1
            except ValidationError as exc:
                self.message_user(request, f"{allowance}: {exc.messages[0]}", messages.ERROR)
        self.message_user(request, f"Rolled over {carried} allowance(s).")


@admin.register(Adjustment)
class AdjustmentAdmin(ServiceSaveMixin, admin.ModelAdmin):
    """Append-only: add through the service, never change or delete."""

    list_display = ["created_at", "allowance", "kind", "amount", "reason", "actor"]
    list_filter = ["kind", "allowance__fiscal_year"]
    search_fields = ["reason", "allowance__employee__employee_id", "allowance__employee__email"]
    autocomplete_fields = ["allowance"]
    fields = ["allowance", "kind", "amount", "reason"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Adjustment]:
        return super().get_queryset(request).select_related("allowance__employee", "actor")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def get_form(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, **kwargs)

        class CheckedForm(form):  # type: ignore[misc, valid-type]
            def clean(self) -> dict[str, Any]:
                data = super().clean()
                if {"allowance", "kind", "amount"} <= set(data):
                    try:
                        services.adjustment_check(
                            allowance=data["allowance"],
                            kind=data["kind"],
                            amount=data["amount"],
                            reason=data.get("reason", ""),
                        )
                    except ValidationError as exc:
                        self.add_error(None, exc)
                return data

        return CheckedForm

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        saved = services.adjustment_create(
            actor=request.user,
            allowance=form.cleaned_data["allowance"],
            kind=form.cleaned_data["kind"],
            amount=form.cleaned_data["amount"],
            reason=form.cleaned_data["reason"],
            source="admin",
        )
        _adopt(obj, saved)


# --- history and ledger (read-only) ------------------------------------------------------------


@admin.register(EmployeeMove)
class EmployeeMoveAdmin(ReadOnlyAdmin):
    list_display = ["employee", "from_cost_center", "to_cost_center", "effective_date", "actor"]
    list_filter = ["effective_date"]
    search_fields = ["employee__employee_id", "employee__email"]


@admin.register(CostCenterSpend)
class CostCenterSpendAdmin(ReadOnlyAdmin):
    list_display = ["cost_center", "fiscal_year", "spent", "reserved"]
    list_filter = ["fiscal_year"]
    search_fields = ["cost_center__code"]


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyAdmin):
    list_display = ["id", "allowance", "amount", "tokens", "cost", "created_at", "expires_at"]
    search_fields = ["allowance__employee__employee_id"]


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "actor_label", "source", "action", "object_type", "object_repr"]
    list_filter = ["source", "action", "object_type"]
    search_fields = ["object_repr", "object_id", "actor_label"]
    date_hierarchy = "created_at"


# --- budget requests ---------------------------------------------------------------------------


@admin.register(BudgetRequest)
class BudgetRequestAdmin(ReadOnlyAdmin):
    """Requests are asked for by employees (API and pages) and decided once, through
    `budgets.requests.budget_request_decide`: the actions below approve as asked or decline,
    with the same rules (nobody decides their own request) and the same audited adjustment.
    An approval of another amount is made from the API or the approvals page."""

    list_display = ["created_at", "employee", "amount", "status", "reason", "decided_by",
                    "decided_at", "adjustment"]  # fmt: skip
    list_filter = ["status", "allowance__fiscal_year"]
    search_fields = ["employee__employee_id", "employee__email", "reason"]
    list_select_related = ["employee", "decided_by", "adjustment"]
    actions = ["approve", "decline"]

    def _decide(
        self, request: HttpRequest, queryset: QuerySet[BudgetRequest], approve: bool
    ) -> None:
        done = 0
        for request_id in queryset.values_list("pk", flat=True):
            try:
                budget_request_decide(actor=request.user, request_id=request_id, approve=approve)
                done += 1
            except (PermissionDenied, ValidationError) as exc:
                reason = " ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
                self.message_user(request, f"Request {request_id}: {reason}", messages.WARNING)
        self.message_user(request, f"{done} request(s) {'approved' if approve else 'declined'}.")

    @admin.action(description="Approve selected requests (the amount asked)")
    def approve(self, request: HttpRequest, queryset: QuerySet[BudgetRequest]) -> None:
        self._decide(request, queryset, approve=True)

    @admin.action(description="Decline selected requests")
    def decline(self, request: HttpRequest, queryset: QuerySet[BudgetRequest]) -> None:
        self._decide(request, queryset, approve=False)
