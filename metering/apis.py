"""REST API of metering: keys, upstreams, model routes, prices, usage."""

from __future__ import annotations

from typing import Any

import django_filters
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle, ScopedRateThrottle

from budgets import roles
from budgets.filters import UtcIsoDateTimeFilter
from budgets.models import Employee
from metering import catalog_services, services
from metering.models import ModelPrice, ModelRoute, Upstream, UsageRecord, VirtualKey
from metering.serializers import (
    CreatedKeySerializer,
    ModelPriceSerializer,
    ModelRouteSerializer,
    UpstreamSerializer,
    UsageRecordSerializer,
    VirtualKeySerializer,
)


class IsBudgetAdmin(permissions.BasePermission):
    def has_permission(self, request: Request, view: object) -> bool:
        return roles.is_admin(request.user)


class AdminWritesOthersRead(permissions.BasePermission):
    """Anyone signed in reads (prices are not secret); only admins write."""

    def has_permission(self, request: Request, view: object) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return bool(request.user and request.user.is_authenticated)
        return roles.is_admin(request.user)


class EmployeeKeysViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Keys of one employee: the employee themselves, their managers and admins."""

    serializer_class = VirtualKeySerializer
    filterset_fields = ["revoked_at"]
    throttle_scope = "key-create"

    def get_throttles(self) -> list[BaseThrottle]:
        # Minting keys is rate limited (settings TB_KEY_CREATE_RATE); reading them is not.
        return [ScopedRateThrottle()] if self.action == "create" else []

    ordering_fields = ["created_at", "name", "last_used_at"]

    def get_employee(self) -> Employee:
        employee = get_object_or_404(
            roles.visible_employees(self.request.user), employee_id=self.kwargs["employee_id"]
        )
        return employee

    def _check_manage(self, employee: Employee) -> None:
        if not roles.can_manage_keys(self.request.user, employee):
            raise PermissionDenied("You may not manage this employee's keys.")

    queryset = VirtualKey.objects.none()  # the schema generator reads the model from here

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return VirtualKey.objects.none()
        employee = self.get_employee()
        self._check_manage(employee)
        return VirtualKey.objects.filter(employee=employee).select_related("employee")

    def create(self, request: Request, employee_id: str) -> Response:
        employee = self.get_employee()
        self._check_manage(employee)
        serializer = VirtualKeySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        expires_at = data.get("expires_at")
        if expires_at is not None and expires_at <= timezone.now():
            return Response(
                {"expires_at": ["Must be in the future."]}, status=status.HTTP_400_BAD_REQUEST
            )
        try:
            key, raw = services.key_create(
                employee=employee,
                name=data["name"],
                actor=request.user,
                expires_at=expires_at,
                allowed_models=data.get("allowed_models"),
                cap_tokens=data.get("cap_tokens"),
                default_intent=data.get("default_intent", ""),
            )
        except DjangoValidationError as exc:
            raise _service_errors(exc) from exc
        key.key = raw  # type: ignore[attr-defined]  # shown this once, never stored
        return Response(CreatedKeySerializer(key).data, status=status.HTTP_201_CREATED)

    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, employee_id: str, pk: str) -> Response:
        key = self.get_object()
        services.key_revoke(key=key, actor=request.user)
        return Response(VirtualKeySerializer(key).data)


def _service_errors(exc: DjangoValidationError) -> serializers.ValidationError:
    """A catalogue service's field -> messages refusal as the API's 400."""
    return serializers.ValidationError(exc.message_dict)


class CatalogViewSet(viewsets.ModelViewSet):
    """Every write goes through `metering.catalog_services` (validation, an audit event, and the
    invalidation every proxy process listens for); the serializer only reads the input."""

    def _create(self, data: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _update(self, instance: Any, data: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _delete(self, instance: Any) -> None:
        raise NotImplementedError

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        try:
            serializer.instance = self._create(dict(serializer.validated_data))
        except DjangoValidationError as exc:
            raise _service_errors(exc) from exc

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        try:
            serializer.instance = self._update(serializer.instance, dict(serializer.validated_data))
        except DjangoValidationError as exc:
            raise _service_errors(exc) from exc

    def perform_destroy(self, instance: Any) -> None:
        try:
            self._delete(instance)
        except DjangoValidationError as exc:
            raise _service_errors(exc) from exc


class UpstreamViewSet(CatalogViewSet):
    queryset = Upstream.objects.all()
    serializer_class = UpstreamSerializer
    permission_classes = [IsBudgetAdmin]
    lookup_field = "name"

    def _create(self, data: dict[str, Any]) -> Upstream:
        return catalog_services.upstream_create(actor=self.request.user, data=data)  # type: ignore[arg-type]

    def _update(self, instance: Upstream, data: dict[str, Any]) -> Upstream:
        return catalog_services.upstream_update(
            actor=self.request.user,
            upstream=instance,
            data=data,  # type: ignore[arg-type]
        )

    @extend_schema(
        responses={
            204: None,
            409: inline_serializer(
                "UpstreamInUse",
                {
                    "detail": serializers.CharField(),
                    "routes": serializers.ListField(child=serializers.CharField()),
                },
            ),
        }
    )
    def destroy(self, request: Request, *args: object, **kwargs: object) -> Response:
        """Delete an upstream no route uses; one still in use answers 409 naming its routes."""
        upstream = self.get_object()
        try:
            catalog_services.upstream_delete(actor=request.user, upstream=upstream)
        except catalog_services.UpstreamInUse as exc:
            return Response(
                {
                    "detail": f"Upstream {upstream.name} is used by {len(exc.routes)} route(s): "
                    "point them at another upstream or delete them first.",
                    "routes": exc.routes,
                },
                status=status.HTTP_409_CONFLICT,
            )
        return Response(status=status.HTTP_204_NO_CONTENT)


class ModelRouteViewSet(CatalogViewSet):
    queryset = ModelRoute.objects.select_related("upstream").prefetch_related(
        "aliases", "deployments__upstream"
    )
    serializer_class = ModelRouteSerializer
    permission_classes = [IsBudgetAdmin]
    lookup_field = "public_name"
    lookup_value_regex = "[^/]+"

    def _create(self, data: dict[str, Any]) -> ModelRoute:
        aliases = data.pop("aliases", None)
        deployments = data.pop("deployments", None)
        if deployments and "upstream" not in data:
            data["upstream"] = deployments[0]["upstream"]
            data["upstream_model"] = deployments[0].get("upstream_model", "")
        with transaction.atomic():
            route = catalog_services.route_create(actor=self.request.user, data=data)  # type: ignore[arg-type]
            self._aliases_set(route, aliases)
            self._deployments_set(route, deployments)
        return route

    def _update(self, instance: ModelRoute, data: dict[str, Any]) -> ModelRoute:
        aliases = data.pop("aliases", None)
        deployments = data.pop("deployments", None)
        with transaction.atomic():
            route = catalog_services.route_update(
                actor=self.request.user,
                route=instance,
                data=data,  # type: ignore[arg-type]
            )
            self._aliases_set(route, aliases)
            self._deployments_set(route, deployments)
        return route

    def _deployments_set(self, route: ModelRoute, deployments: list[dict] | None) -> None:
        """Deployments replace the route's own, in the route's transaction (its upstream and
        upstream model become the first deployment's)."""
        if deployments is not None:
            catalog_services.route_deployments_set(
                actor=self.request.user,
                route=route,
                deployments=deployments,  # type: ignore[arg-type]
            )

    def _aliases_set(self, route: ModelRoute, aliases: list[str] | None) -> None:
        """Aliases are written by their own service (audited, clashes refused), in the route's
        transaction: a refused alias leaves the route unchanged too."""
        if aliases is not None:
            catalog_services.route_aliases_set(actor=self.request.user, route=route, names=aliases)

    def _delete(self, instance: ModelRoute) -> None:
        catalog_services.route_delete(actor=self.request.user, route=instance)


class ModelPriceViewSet(CatalogViewSet):
    """Prices per million tokens. Admin writes are overrides (negotiated prices); only an
    override not yet in force may be changed or deleted (a new row supersedes one in force)."""

    queryset = ModelPrice.objects.all()
    serializer_class = ModelPriceSerializer
    permission_classes = [AdminWritesOthersRead]
    filterset_fields = ["model", "source", "provider"]
    ordering_fields = ["model", "effective_from"]

    def _create(self, data: dict[str, Any]) -> ModelPrice:
        return catalog_services.price_override_create(actor=self.request.user, data=data)  # type: ignore[arg-type]

    def _update(self, instance: ModelPrice, data: dict[str, Any]) -> ModelPrice:
        return catalog_services.price_override_update(
            actor=self.request.user,
            price=instance,
            data=data,  # type: ignore[arg-type]
        )

    def _delete(self, instance: ModelPrice) -> None:
        catalog_services.price_override_delete(actor=self.request.user, price=instance)


class UsageFilter(django_filters.FilterSet):
    employee = django_filters.CharFilter(field_name="employee__employee_id")
    cost_center = django_filters.CharFilter(field_name="cost_center__code")
    model = django_filters.CharFilter()
    intent = django_filters.CharFilter()
    since = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = UsageRecord
        fields = [
            "employee",
            "cost_center",
            "model",
            "intent",
            "since",
            "until",
            "endpoint",
            "streamed",
        ]


class UsageViewSet(viewsets.ReadOnlyModelViewSet):
    """Usage records; employees see their own, managers their subtree, admins and finance all."""

    serializer_class = UsageRecordSerializer
    filterset_class = UsageFilter
    ordering_fields = ["created_at", "cost", "output_tokens"]
    lookup_field = "request_id"

    def get_queryset(self):
        user = self.request.user
        qs = UsageRecord.objects.select_related("employee", "cost_center").order_by(
            "-created_at", "-id"
        )
        if roles.sees_all(user):
            return qs
        return qs.filter(employee__in=roles.visible_employees(user))
