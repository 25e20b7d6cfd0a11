from __future__ import annotations

from django.contrib import admin

from identity.models import ScimGroup, ScimToken, ScimUser


@admin.register(ScimToken)
class ScimTokenAdmin(admin.ModelAdmin):
    """Tokens are made by `manage.py scim_token` (the raw token is shown only there); here they
    can be seen and turned off."""

    list_display = ("name", "prefix", "active", "created_at", "last_used_at")
    fields = ("name", "prefix", "active", "created_at", "last_used_at")
    readonly_fields = ("name", "prefix", "created_at", "last_used_at")

    def has_add_permission(self, request: object) -> bool:
        return False


@admin.register(ScimUser)
class ScimUserAdmin(admin.ModelAdmin):
    list_display = ("user_name", "employee", "external_id", "deleted", "updated_at")
    search_fields = ("user_name", "external_id", "employee__employee_id")
    readonly_fields = [f.name for f in ScimUser._meta.fields]

    def has_add_permission(self, request: object) -> bool:
        return False


@admin.register(ScimGroup)
class ScimGroupAdmin(admin.ModelAdmin):
    list_display = ("display_name", "external_id", "updated_at")
    search_fields = ("display_name",)
