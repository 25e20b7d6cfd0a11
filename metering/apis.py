"""REST API of metering: keys, upstreams, model routes, prices, usage."""

from __future__ import annotations

import django_filters
from django.db.models import ProtectedError
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
from budgets.invalidation import invalidation_publish
from budgets.models import Employee
from metering import cache, services
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
        key, raw = services.key_create(
            employee=employee,
            name=data["name"],
            actor=request.user,
            expires_at=expires_at,
            allowed_models=data.get("allowed_models"),
            cap_tokens=data.get("cap_tokens"),
            default_intent=data.get("default_intent", ""),
        )
        key.key = raw
        return Response(CreatedKeySerializer(key).data, status=status.HTTP_201_CREATED)

    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, employee_id: str, pk: str) -> Response:
        key = self.get_object()
        services.key_revoke(key=key, actor=request.user)
        return Response(VirtualKeySerializer(key).data)


class UpstreamViewSet(viewsets.ModelViewSet):
    queryset = Upstream.objects.all()
    serializer_class = UpstreamSerializer
    permission_classes = [IsBudgetAdmin]
    lookup_field = "name"

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
        routes = list(upstream.routes.order_by("public_name").values_list("public_name", flat=True))
        if not routes:
            try:
                upstream.delete()
            except ProtectedError:
                pass  # a route was added meanwhile: answer as below
            else:
                cache.routes.invalidate()
                invalidation_publish(cache="routes")
                return Response(status=status.HTTP_204_NO_CONTENT)
            routes = list(
                upstream.routes.order_by("public_name").values_list("public_name", flat=True)
            )
        return Response(
            {
                "detail": f"Upstream {upstream.name} is used by {len(routes)} route(s): "
                "point them at another upstream or delete them first.",
                "routes": routes,
            },
            status=status.HTTP_409_CONFLICT,
        )

    def perform_create(self, serializer) -> None:
        serializer.save()
        cache.routes.invalidate()
        invalidation_publish(cache="routes")

    def perform_update(self, serializer) -> None:
        serializer.save()
        cache.routes.invalidate()
        invalidation_publish(cache="routes")


class ModelRouteViewSet(viewsets.ModelViewSet):
    queryset = ModelRoute.objects.select_related("upstream").prefetch_related("aliases")
    serializer_class = ModelRouteSerializer
    permission_classes = [IsBudgetAdmin]
    lookup_field = "public_name"
    lookup_value_regex = "[^/]+"

    def perform_create(self, serializer) -> None:
        serializer.save()
        cache.routes.invalidate()
        invalidation_publish(cache="routes")

    def perform_update(self, serializer) -> None:
        serializer.save()
        cache.routes.invalidate()
        invalidation_publish(cache="routes")


class ModelPriceViewSet(viewsets.ModelViewSet):
    """Prices per million tokens. Admin writes are overrides (negotiated prices)."""

    queryset = ModelPrice.objects.all()
    serializer_class = ModelPriceSerializer
    permission_classes = [AdminWritesOthersRead]
    filterset_fields = ["model", "source", "provider"]
    ordering_fields = ["model", "effective_from"]

    def perform_create(self, serializer) -> None:
        serializer.save(source=ModelPrice.Source.OVERRIDE)
        cache.routes.invalidate()
        invalidation_publish(cache="routes")

    def perform_update(self, serializer) -> None:
        serializer.save()
        cache.routes.invalidate()
        invalidation_publish(cache="routes")


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
