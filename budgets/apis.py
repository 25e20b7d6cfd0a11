"""The budgets REST API under /api/v1/: thin views over budgets.selectors and budgets.services.

Who may do what (roles from budgets.roles):
- admin (staff or group `budget-admins`): reads everything, changes everything, imports the
  roster, reads the audit trail.
- finance (group `finance`): reads every budget object, changes nothing.
- cost-center manager: reads the cost centers, employees, allowances, adjustments and policies
  of their subtree, and may add adjustments (top-ups, corrections, approved requests) to the
  allowances of employees in it. Granting or changing the allowance itself stays with admins,
  so the base grant matches HR's roster while managers steer the year with adjustments.
- a manager may also create cost centers below the ones they manage and rename, re-cap,
  re-staff or move those below (within their subtree); the cost centers they manage
  themselves are changed from above.
- nobody grants, changes or adjusts their own allowance (a manager's comes from the manager
  above or an admin). Each rule is one `budgets.roles.can_*` function, shared with the pages.
- employee: reads only their own record, allowances, adjustments, cost center and its policy.
Objects outside a user's view answer 404; writes the user may not make answer 403.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.http import Http404
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from budgets import roles, selectors, services
from budgets.filters import UtcIsoDateTimeFilter
from budgets.models import Adjustment, Allowance, AuditEvent, CostCenter, Employee, Policy
from budgets.roster import RosterInvalid, RowError, roster_import
from budgets.serializers import (
    AdjustmentSerializer,
    AllowanceSerializer,
    AllowanceUpdateSerializer,
    AuditEventSerializer,
    CostCenterSerializer,
    EmployeeMoveInputSerializer,
    EmployeeMoveSerializer,
    EmployeeSerializer,
    EmployeeUpdateSerializer,
    PolicySerializer,
    PolicyUpdateSerializer,
    QuotaSerializer,
    RosterErrorsSerializer,
    RosterImportSerializer,
    RosterResultSerializer,
)

LOOKUP = "[^/]+"  # codes and HR ids may contain dots


@contextmanager
def service_errors() -> Iterator[None]:
    """Turn a service's ValidationError into DRF's 400 with the same field messages."""
    try:
        yield
    except DjangoValidationError as exc:
        detail: Any = exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        if isinstance(detail, dict) and "__all__" in detail:
            detail["non_field_errors"] = detail.pop("__all__")
        raise ValidationError(detail) from exc


class ReadOrAdminWrite(BasePermission):
    """Reads for any signed-in user (querysets are scoped by role); writes for admins."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        return request.method in SAFE_METHODS or roles.is_admin(request.user)


class AdminOnly(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return roles.is_admin(request.user)


class AdjustmentPermission(BasePermission):
    """Reads for any signed-in user; adding adjustments for admins and managers (the employee
    must be in the manager's subtree, checked against the chosen allowance)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        if request.method in SAFE_METHODS:
            return True
        return roles.is_admin(request.user) or bool(roles.managed_cost_center_ids(request.user))


class CostCenterPermission(BasePermission):
    """Reads for any signed-in user; writes for admins and managers, each write then checked
    against `roles.can_place_cost_center` / `roles.can_edit_cost_center`."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        if request.method in SAFE_METHODS:
            return True
        return roles.is_admin(request.user) or bool(roles.managed_cost_center_ids(request.user))


def _actor(request: Request) -> Any:
    return request.user


class BudgetViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """List, read, create, change; never delete (history and audit must stay whole)."""

    permission_classes = [ReadOrAdminWrite]
    update_serializer_class: type | None = None

    def get_serializer_class(self) -> type:
        if self.action in ("update", "partial_update") and self.update_serializer_class:
            return self.update_serializer_class
        return super().get_serializer_class()


# --- cost centers --------------------------------------------------------------------------------


class CostCenterFilter(filters.FilterSet):
    parent = filters.CharFilter(field_name="parent__code", help_text="Parent cost center code.")

    class Meta:
        model = CostCenter
        fields = ["parent"]


class CostCenterViewSet(BudgetViewSet):
    serializer_class = CostCenterSerializer
    lookup_field = "code"
    lookup_value_regex = LOOKUP
    filterset_class = CostCenterFilter
    search_fields = ["code", "name", "gl_code"]
    ordering_fields = ["code", "name", "created_at"]
    ordering = ["code"]

    permission_classes = [CostCenterPermission]

    def get_queryset(self) -> QuerySet[CostCenter]:
        return selectors.cost_center_list(user=self.request.user)

    def perform_create(self, serializer: Any) -> None:
        if not roles.can_place_cost_center(
            self.request.user, serializer.validated_data.get("parent")
        ):
            raise PermissionDenied("You may create cost centers only below those you manage.")
        with service_errors():
            serializer.instance = services.cost_center_create(
                actor=_actor(self.request), source="api", **serializer.validated_data
            )

    def perform_update(self, serializer: Any) -> None:
        user = self.request.user
        data = serializer.validated_data
        if not roles.can_edit_cost_center(user, serializer.instance) or (
            "parent" in data and not roles.can_place_cost_center(user, data["parent"])
        ):
            raise PermissionDenied("You may change only cost centers below those you manage.")
        with service_errors():
            serializer.instance = services.cost_center_update(
                actor=_actor(self.request),
                cost_center=serializer.instance,
                data=serializer.validated_data,
                source="api",
            )

    @extend_schema(
        responses={200: PolicySerializer},
        summary="The policy in force (its own or the nearest ancestor's)",
    )
    @action(detail=True, methods=["get"], url_path="policy")
    def effective_policy(self, request: Request, code: str | None = None) -> Response:
        policy = selectors.policy_resolve(self.get_object())
        if policy is None:
            raise Http404("No policy applies to this cost center.")
        return Response(PolicySerializer(policy).data)


# --- employees -----------------------------------------------------------------------------------


class EmployeeFilter(filters.FilterSet):
    cost_center = filters.CharFilter(field_name="cost_center__code", help_text="Cost center code.")
    active = filters.BooleanFilter()

    class Meta:
        model = Employee
        fields = ["cost_center", "active"]


@extend_schema_view(
    deactivate=extend_schema(request=None, responses={200: EmployeeSerializer}),
    move=extend_schema(request=EmployeeMoveInputSerializer, responses={200: EmployeeSerializer}),
    moves=extend_schema(responses={200: EmployeeMoveSerializer(many=True)}),
    quota=extend_schema(responses={200: QuotaSerializer}),
)
class EmployeeViewSet(BudgetViewSet):
    serializer_class = EmployeeSerializer
    update_serializer_class = EmployeeUpdateSerializer
    lookup_field = "employee_id"
    lookup_value_regex = LOOKUP
    filterset_class = EmployeeFilter
    search_fields = ["employee_id", "email", "name"]
    ordering_fields = ["employee_id", "email", "name", "created_at", "cost_center__code"]
    ordering = ["employee_id"]

    def get_queryset(self) -> QuerySet[Employee]:
        return selectors.employee_list(user=self.request.user)

    def perform_create(self, serializer: Any) -> None:
        with service_errors():
            serializer.instance = services.employee_create(
                actor=_actor(self.request), source="api", **serializer.validated_data
            )

    def perform_update(self, serializer: Any) -> None:
        with service_errors():
            serializer.instance = services.employee_update(
                actor=_actor(self.request),
                employee=serializer.instance,
                data=serializer.validated_data,
                source="api",
            )

    @action(detail=True, methods=["post"])
    def deactivate(self, request: Request, employee_id: str | None = None) -> Response:
        employee = services.employee_deactivate(
            actor=_actor(request), employee=self.get_object(), source="api"
        )
        return Response(EmployeeSerializer(employee).data)

    @action(detail=True, methods=["post"])
    def move(self, request: Request, employee_id: str | None = None) -> Response:
        employee = self.get_object()
        data = EmployeeMoveInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        with service_errors():
            services.employee_move(
                actor=_actor(request),
                employee=employee,
                to_cost_center=data.validated_data["cost_center"],
                effective_date=data.validated_data.get("effective_date"),
                source="api",
            )
        employee.refresh_from_db()
        return Response(EmployeeSerializer(employee).data)

    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def moves(self, request: Request, employee_id: str | None = None) -> Response:
        moves = selectors.employee_moves(employee=self.get_object())
        return Response(EmployeeMoveSerializer(moves, many=True).data)

    @action(detail=True, methods=["get"], filter_backends=[])
    def quota(self, request: Request, employee_id: str | None = None) -> Response:
        return Response(_quota_data(self.get_object()))


def _quota_data(employee: Employee) -> Any:
    view = selectors.employee_quota(employee=employee)
    return QuotaSerializer(
        {
            "employee": employee.employee_id,
            "fiscal_year": view.fiscal_year,
            "unit": view.unit,
            "allowance": view.allowance,
            "released": view.released,
            "used": view.used,
            "reserved": view.reserved,
            "remaining": view.remaining,
            "period_end": view.period_end,
            "next_release": view.next_release,
        }
    ).data


class MeQuotaView(APIView):
    """The signed-in employee's quota for the current fiscal year."""

    @extend_schema(responses={200: QuotaSerializer})
    def get(self, request: Request) -> Response:
        employee = roles.employee_of(request.user)
        if employee is None:
            raise Http404("No employee record is linked to this user.")
        return Response(_quota_data(employee))


# --- allowances and adjustments ------------------------------------------------------------------


class AllowanceFilter(filters.FilterSet):
    employee = filters.CharFilter(field_name="employee__employee_id", help_text="HR employee id.")
    cost_center = filters.CharFilter(
        field_name="employee__cost_center__code", help_text="Cost center code."
    )

    class Meta:
        model = Allowance
        fields = ["employee", "cost_center", "fiscal_year", "unit"]


@extend_schema_view(
    rollover=extend_schema(request=None, responses={200: AdjustmentSerializer, 204: None})
)
class AllowanceViewSet(BudgetViewSet):
    serializer_class = AllowanceSerializer
    update_serializer_class = AllowanceUpdateSerializer
    filterset_class = AllowanceFilter
    search_fields = ["employee__employee_id", "employee__email", "employee__name"]
    ordering_fields = ["fiscal_year", "employee__employee_id", "amount", "created_at"]
    ordering = ["-fiscal_year", "employee__employee_id"]

    def get_queryset(self) -> QuerySet[Allowance]:
        return selectors.allowance_list(user=self.request.user)

    def perform_create(self, serializer: Any) -> None:
        if not roles.can_set_allowance(self.request.user, serializer.validated_data["employee"]):
            raise PermissionDenied("Only admins grant allowances, and never their own.")
        with service_errors():
            serializer.instance = services.allowance_create(
                actor=_actor(self.request), source="api", **serializer.validated_data
            )

    def perform_update(self, serializer: Any) -> None:
        if not roles.can_set_allowance(self.request.user, serializer.instance.employee):
            raise PermissionDenied("Only admins change allowances, and never their own.")
        with service_errors():
            serializer.instance = services.allowance_update(
                actor=_actor(self.request),
                allowance=serializer.instance,
                data=serializer.validated_data,
                source="api",
            )

    @action(detail=True, methods=["post"])
    def rollover(self, request: Request, pk: str | None = None) -> Response:
        """Carry the allowance's unused share into next year (once the year has ended)."""
        with service_errors():
            adjustment = services.allowance_rollover(
                actor=_actor(request), allowance=self.get_object(), source="api"
            )
        if adjustment is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(AdjustmentSerializer(adjustment, context={"request": request}).data)


class AdjustmentFilter(filters.FilterSet):
    employee = filters.CharFilter(
        field_name="allowance__employee__employee_id", help_text="HR employee id."
    )
    fiscal_year = filters.NumberFilter(field_name="allowance__fiscal_year")

    class Meta:
        model = Adjustment
        fields = ["allowance", "employee", "fiscal_year", "kind"]


class AdjustmentViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Append-only: adjustments are created and listed, never changed or deleted."""

    serializer_class = AdjustmentSerializer
    permission_classes = [AdjustmentPermission]
    filterset_class = AdjustmentFilter
    ordering_fields = ["created_at", "amount"]
    ordering = ["-created_at", "-id"]
    search_fields = ["reason", "allowance__employee__employee_id"]

    def get_queryset(self) -> QuerySet[Adjustment]:
        return selectors.adjustment_list(user=self.request.user)

    def perform_create(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        allowance = data.pop("allowance")
        if not roles.can_adjust_allowance(self.request.user, allowance.employee):
            raise PermissionDenied(
                "You may adjust only the allowances of employees you manage, never your own."
            )
        with service_errors():
            serializer.instance = services.adjustment_create(
                actor=_actor(self.request), allowance=allowance, source="api", **data
            )


# --- policies ------------------------------------------------------------------------------------


class PolicyViewSet(BudgetViewSet):
    """A cost center's own policy, addressed by the cost center code. Its subtree inherits the
    whole policy unless a cost center below has one of its own."""

    serializer_class = PolicySerializer
    update_serializer_class = PolicyUpdateSerializer
    lookup_field = "cost_center__code"
    lookup_url_kwarg = "code"
    lookup_value_regex = LOOKUP
    ordering_fields = ["cost_center__code", "updated_at"]
    ordering = ["cost_center__code"]
    search_fields = ["cost_center__code", "cost_center__name"]

    def get_queryset(self) -> QuerySet[Policy]:
        return selectors.policy_list(user=self.request.user)

    def perform_create(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        cost_center = data.pop("cost_center")
        if Policy.objects.filter(cost_center=cost_center).exists():
            raise ValidationError(
                {"cost_center": [f"{cost_center.code} already has a policy; change it instead."]}
            )
        with service_errors():
            serializer.instance = services.policy_set(
                actor=_actor(self.request), cost_center=cost_center, data=data, source="api"
            )

    def perform_update(self, serializer: Any) -> None:
        with service_errors():
            serializer.instance = services.policy_set(
                actor=_actor(self.request),
                cost_center=serializer.instance.cost_center,
                data=serializer.validated_data,
                source="api",
            )


# --- roster imports and audit ------------------------------------------------------------------


class RosterImportView(APIView):
    """Import the HR roster (admins). `?dry_run=1` returns the diff and writes nothing."""

    permission_classes = [AdminOnly]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        request={"multipart/form-data": RosterImportSerializer},
        parameters=[
            OpenApiParameter(
                "dry_run",
                OpenApiTypes.BOOL,
                description="Compute and return the diff without writing anything.",
            )
        ],
        responses={200: RosterResultSerializer, 400: RosterErrorsSerializer},
    )
    def post(self, request: Request) -> Response:
        upload = RosterImportSerializer(data=request.data)
        if not upload.is_valid():
            # The documented 400 shape, for a missing or unreadable file as for a bad row.
            errors = [
                RowError(None, field, str(message))
                for field, messages in upload.errors.items()
                for message in messages
            ]
            return Response(RosterInvalid(errors).as_dict(), status=status.HTTP_400_BAD_REQUEST)
        dry_run = request.query_params.get("dry_run", "").lower() in ("1", "true", "yes")
        try:
            result = roster_import(
                content=upload.validated_data["file"].read(),
                actor=request.user,
                dry_run=dry_run,
                source="import",
            )
        except RosterInvalid as exc:
            return Response(exc.as_dict(), status=status.HTTP_400_BAD_REQUEST)
        return Response(result.as_dict())


class AuditEventFilter(filters.FilterSet):
    actor = filters.CharFilter(field_name="actor__username")
    since = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields = ["object_type", "object_id", "action", "source", "actor"]


class AuditEventViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit trail of every budget change (admins only)."""

    serializer_class = AuditEventSerializer
    permission_classes = [AdminOnly]
    filterset_class = AuditEventFilter
    ordering_fields = ["created_at"]
    ordering = ["-created_at", "-id"]
    search_fields = ["object_repr", "actor_label"]

    def get_queryset(self) -> QuerySet[AuditEvent]:
        return selectors.audit_event_list()
