"""Admin for the intent catalogue, model routes' deployments, outcomes and usage dead letters.

A route's deployments are edited inline; the saved set goes through
`catalog_services.route_deployments_set` (validated, audited, caches invalidated, the route's
own upstream and model set to the first deployment's). Routes are created on the Models page
or through the API.

Intents are saved through `metering.outcomes.intent_save` (the same validation as the API: a
default model must be a model route); the recommended model is the value report job's to
write, so it is read-only here. Outcomes are evidence recorded by callers: read-only. Usage
dead letters are the consumer's to write: read-only, with a replay action for the unapplied.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils.html import format_html

from metering import catalog_services, outcomes
from metering.models import Deployment, Intent, ModelRoute, Outcome, UsageDeadLetter
from metering.usage_stream import dead_letters_replay
from metering.usage_stream.poison import payload_text, text_storable


@admin.register(Intent)
class IntentAdmin(admin.ModelAdmin):
    list_display = ["name", "owner_cost_center", "expected_value", "default_model",
                    "recommended_model", "recommended_at"]  # fmt: skip
    search_fields = ["name", "description", "default_model", "recommended_model"]
    list_filter = ["owner_cost_center"]
    autocomplete_fields = ["owner_cost_center"]
    fields = ["name", "description", "owner_cost_center", "expected_value", "default_model",
              "recommended_model", "recommended_at", "created_at", "updated_at"]  # fmt: skip
    readonly_fields = ["recommended_model", "recommended_at", "created_at", "updated_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Intent]:
        return super().get_queryset(request).select_related("owner_cost_center")

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ValidationError as exc:
            # A rule only the service checks: the admin's transaction rolled back.
            self.message_user(request, "Not saved: " + " ".join(exc.messages), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        data = form.cleaned_data
        saved = outcomes.intent_save(
            instance=obj if change else None,
            name=data["name"],
            description=data.get("description", ""),
            owner_cost_center=data.get("owner_cost_center"),
            expected_value=data.get("expected_value"),
            default_model=data.get("default_model", ""),
        )
        obj.pk = saved.pk
        obj._state.adding = False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # outcomes and usage refer to intents by name; keep the catalogue whole


class DeploymentInline(admin.TabularInline):
    model = Deployment
    extra = 0
    min_num = 1
    fields = ["upstream", "upstream_model", "weight", "priority", "rpm", "tpm"]


@admin.register(ModelRoute)
class ModelRouteAdmin(admin.ModelAdmin):
    list_display = ["public_name", "upstream", "upstream_model", "active"]
    search_fields = ["public_name", "upstream_model"]
    fields = ["public_name", "upstream", "upstream_model", "default_max_output_tokens",
              "unmetered_cost", "active", "fallback_models"]  # fmt: skip
    readonly_fields = ["upstream", "upstream_model"]  # the first deployment's
    inlines = [DeploymentInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ValidationError as exc:
            self.message_user(request, "Not saved: " + " ".join(exc.messages), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        data = {name: form.cleaned_data[name] for name in form.changed_data}
        catalog_services.route_update(actor=request.user, route=obj, data=data, source="admin")

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """The inline rows are not saved as they are: the service replaces the route's
        deployments with them (validated, audited, caches invalidated)."""
        form.save_m2m()
        rows = []
        for formset in formsets:
            for row in formset.forms:
                data = getattr(row, "cleaned_data", None)
                if not data or data.get("DELETE") or not data.get("upstream_model"):
                    continue
                rows.append({name: data.get(name) for name in DeploymentInline.fields})
            # What the admin's change message reads after a formset's own save.
            formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        catalog_services.route_deployments_set(
            actor=request.user,
            route=form.instance,
            deployments=rows,  # type: ignore[arg-type]
            source="admin",
        )


@admin.register(Outcome)
class OutcomeAdmin(admin.ModelAdmin):
    list_display = ["created_at", "kind", "quantity", "value", "intent", "model", "request_id",
                    "employee", "source"]  # fmt: skip
    list_filter = ["kind", "day", "source"]
    search_fields = ["request_id", "intent", "client_id"]
    date_hierarchy = "day"
    list_select_related = ["employee"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UsageDeadLetter)
class UsageDeadLetterAdmin(admin.ModelAdmin):
    list_display = ["created_at", "state", "request_id", "short_error", "attempts", "resolved_at",
                    "entry_id"]  # fmt: skip
    list_filter = ["state"]
    search_fields = ["request_id", "entry_id", "error"]
    fields = ["entry_id", "request_id", "state", "error", "event", "attempts", "created_at",
              "resolved_at"]  # fmt: skip
    readonly_fields = fields
    actions = ["replay"]

    @admin.display(description="error")
    def short_error(self, obj: UsageDeadLetter) -> str:
        return obj.error if len(obj.error) <= 120 else obj.error[:119] + "…"

    @admin.display(description="event as on the stream (NUL and invalid bytes escaped)")
    def event(self, obj: UsageDeadLetter) -> str:
        text = text_storable(payload_text(bytes(obj.payload)))
        return format_html("<pre style='white-space: pre-wrap'>{}</pre>", text)

    @admin.action(description="Replay the selected unapplied dead letters")
    def replay(self, request: HttpRequest, queryset: QuerySet[UsageDeadLetter]) -> None:
        result = dead_letters_replay(ids=list(queryset.values_list("pk", flat=True)))
        level = messages.WARNING if result.failing else messages.SUCCESS
        self.message_user(
            request,
            f"{result.replayed} replayed, {result.failing} still failing, "
            f"{result.new} usage records written.",
            level,
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the trace of what was changed or waits to be applied
