from __future__ import annotations

from rest_framework import serializers

from metering import validation
from metering.models import (
    Deployment,
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


class DeploymentSerializer(serializers.ModelSerializer):
    upstream = serializers.SlugRelatedField(slug_field="name", queryset=Upstream.objects.all())

    class Meta:
        model = Deployment
        fields = ["id", "upstream", "upstream_model", "weight", "priority", "rpm", "tpm"]
        read_only_fields = ["id"]


class ModelRouteSerializer(serializers.ModelSerializer):
    # Optional when `deployments` are given: the route's own are the first deployment's.
    upstream = serializers.SlugRelatedField(
        slug_field="name", queryset=Upstream.objects.all(), required=False
    )
    aliases = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, max_length=50, write_only=True
    )
    # Written through `catalog_services.route_deployments_set`; read back with their ids.
    deployments = DeploymentSerializer(many=True, required=False)
    fallback_models = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, max_length=5
    )

    def validate_public_name(self, value: str) -> str:
        if ModelRouteAlias.objects.filter(name=value.strip()).exists():
            raise serializers.ValidationError("Already an alias of another route.")
        return value

    def to_representation(self, instance: ModelRoute) -> dict:
        data = super().to_representation(instance)
        data["aliases"] = sorted(alias.name for alias in instance.aliases.all())
        return data

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
            "deployments",
            "fallback_models",
        ]
        extra_kwargs = {"upstream_model": {"required": False}}


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
            "deployment",
            "attempts",
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
