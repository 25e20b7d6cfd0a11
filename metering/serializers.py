from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from rest_framework import serializers

from metering import validation
from metering.catalog_services import route_aliases_set
from metering.models import (
    ModelPrice,
    ModelRoute,
    ModelRouteAlias,
    Upstream,
    UsageRecord,
    VirtualKey,
)


class VirtualKeySerializer(serializers.ModelSerializer):
    employee_id = serializers.CharField(source="employee.employee_id", read_only=True)
    revoked = serializers.SerializerMethodField()

    class Meta:
        model = VirtualKey
        fields = [
            "id",
            "employee_id",
            "name",
            "prefix",
            "created_at",
            "expires_at",
            "revoked",
            "revoked_at",
            "allowed_models",
            "cap_tokens",
            "used_tokens",
            "default_intent",
            "last_used_at",
        ]
        read_only_fields = [
            "id",
            "prefix",
            "created_at",
            "revoked_at",
            "used_tokens",
            "last_used_at",
        ]

    def get_revoked(self, key: VirtualKey) -> bool:
        return key.revoked_at is not None

    def validate_allowed_models(self, value: list) -> list:
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise serializers.ValidationError("A list of model names.")
        for item in value:
            _label(item)
        return value

    def validate_name(self, value: str) -> str:
        return _label(value)

    def validate_default_intent(self, value: str) -> str:
        return _label(value)


def _label(value: str) -> str:
    """Labels are stored and shown on pages and exports: no NUL, surrogate or control
    character (see metering.validation)."""
    problem = validation.label_problem(value)
    if problem is not None:
        raise serializers.ValidationError(f"The text contains {problem}.")
    return value


class CreatedKeySerializer(VirtualKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The key itself. Shown this once only.")

    class Meta(VirtualKeySerializer.Meta):
        fields = [*VirtualKeySerializer.Meta.fields, "key"]


class UpstreamSerializer(serializers.ModelSerializer):
    credential_configured = serializers.SerializerMethodField()

    class Meta:
        model = Upstream
        fields = [
            "id",
            "name",
            "kind",
            "base_url",
            "credential_env",
            "credential_configured",
            "api_version",
            "connect_timeout",
            "read_timeout",
            "active",
        ]

    def get_credential_configured(self, upstream: Upstream) -> bool:
        import os

        return bool(upstream.credential_env and os.environ.get(upstream.credential_env))

    def validate_credential_env(self, value: str) -> str:
        from metering.catalog_services import credential_env_check

        try:
            credential_env_check(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict["credential_env"]) from exc
        return value

    def validate_base_url(self, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise serializers.ValidationError("Use an http(s) URL.")
        return value


class ModelRouteSerializer(serializers.ModelSerializer):
    upstream = serializers.SlugRelatedField(slug_field="name", queryset=Upstream.objects.all())
    aliases = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, max_length=50, write_only=True
    )

    def validate_public_name(self, value: str) -> str:
        if ModelRouteAlias.objects.filter(name=value.strip()).exists():
            raise serializers.ValidationError("Already an alias of another route.")
        return value

    def to_representation(self, instance: ModelRoute) -> dict:
        data = super().to_representation(instance)
        data["aliases"] = sorted(alias.name for alias in instance.aliases.all())
        return data

    def create(self, validated_data: dict) -> ModelRoute:
        aliases = validated_data.pop("aliases", None)
        with transaction.atomic():
            route = super().create(validated_data)
            self._aliases_set(route, aliases)
        return route

    def update(self, instance: ModelRoute, validated_data: dict) -> ModelRoute:
        aliases = validated_data.pop("aliases", None)
        with transaction.atomic():
            route = super().update(instance, validated_data)
            self._aliases_set(route, aliases)
        return route

    def _aliases_set(self, route: ModelRoute, aliases: list[str] | None) -> None:
        if aliases is None:
            return
        request = self.context.get("request")
        try:
            route_aliases_set(actor=getattr(request, "user", None), route=route, names=aliases)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from exc

    class Meta:
        model = ModelRoute
        fields = [
            "id",
            "public_name",
            "upstream",
            "upstream_model",
            "default_max_output_tokens",
            "unmetered_cost",
            "active",
            "aliases",
        ]


class ModelPriceSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelPrice
        fields = [
            "id",
            "model",
            "provider",
            "input_per_mtok",
            "output_per_mtok",
            "cached_input_per_mtok",
            "cache_write_per_mtok",
            "energy_wh_per_1k_input",
            "energy_wh_per_1k_output",
            "effective_from",
            "source",
            "created_at",
        ]
        read_only_fields = ["id", "source", "created_at"]

    def validate(self, attrs: dict) -> dict:
        for name in (
            "input_per_mtok",
            "output_per_mtok",
            "cached_input_per_mtok",
            "cache_write_per_mtok",
        ):
            value = attrs.get(name)
            if value is not None and value < 0:
                raise serializers.ValidationError({name: "Prices cannot be negative."})
        return attrs


class UsageRecordSerializer(serializers.ModelSerializer):
    employee_id = serializers.CharField(source="employee.employee_id", read_only=True)
    cost_center = serializers.CharField(source="cost_center.code", read_only=True)

    class Meta:
        model = UsageRecord
        fields = [
            "request_id",
            "created_at",
            "employee_id",
            "cost_center",
            "provider",
            "model",
            "upstream_model",
            "endpoint",
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "cost",
            "latency_ms",
            "ttft_ms",
            "status_code",
            "streamed",
            "estimated",
            "usage_source",
            "clamped",
            "intent",
            "error_type",
        ]
        read_only_fields = fields
