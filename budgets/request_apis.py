"""REST API of budget requests (thin callers of budgets.requests).

`POST /api/v1/budget-requests/` (the employee asks), list and detail (employees their own,
managers their subtree, admins and finance all), `…/{id}/approve/` (optional `amount`, `note`)
and `…/{id}/decline/` (`note`) for the employee's managers and admins.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from budgets.apis import service_errors
from budgets.models import BudgetRequest
from budgets.requests import (
    budget_request_create,
    budget_request_decide,
    budget_requests_visible,
)
from budgets.serializers import AmountField


class BudgetRequestSerializer(serializers.ModelSerializer):
    employee = serializers.CharField(source="employee.employee_id", read_only=True)
    fiscal_year = serializers.IntegerField(source="allowance.fiscal_year", read_only=True)
    unit = serializers.CharField(source="allowance.unit", read_only=True)
    amount = AmountField(help_text="More allowance asked for, in the allowance's unit.")
    approved_amount = AmountField(
        source="adjustment.amount", read_only=True, allow_null=True, default=None
    )
    decided_by = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True, help_text="Null while pending."
    )

    class Meta:
        model = BudgetRequest
        fields = [
            "id", "employee", "fiscal_year", "unit", "amount", "reason", "status",
            "approved_amount", "decided_by", "decided_at", "decision_note", "created_at",
        ]  # fmt: skip
        read_only_fields = [
            "id", "status", "decided_by", "decided_at", "decision_note", "created_at",
        ]  # fmt: skip


class DecisionSerializer(serializers.Serializer):
    amount = AmountField(
        required=False, allow_null=True, help_text="Approved amount; the asked amount if unset."
    )
    note = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")


class BudgetRequestViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = BudgetRequestSerializer
    queryset = BudgetRequest.objects.none()  # the schema generator reads the model from here
    filterset_fields = ["status"]
    ordering_fields = ["created_at", "status"]

    def get_queryset(self) -> Any:
        return budget_requests_visible(self.request.user)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        with service_errors():
            made = budget_request_create(user=request.user, **serializer.validated_data)
        return Response(BudgetRequestSerializer(made).data, status=status.HTTP_201_CREATED)

    def _decide(self, request: Request, *, approve: bool) -> Response:
        target = self.get_object()  # 404 outside the caller's scope
        decision = DecisionSerializer(data=request.data)
        decision.is_valid(raise_exception=True)
        amount = decision.validated_data.get("amount") if approve else None
        with service_errors():
            decided = budget_request_decide(
                actor=request.user,
                request_id=target.pk,
                approve=approve,
                amount=amount,
                note=decision.validated_data["note"],
            )
        return Response(BudgetRequestSerializer(decided).data)

    @extend_schema(request=DecisionSerializer, responses=BudgetRequestSerializer)
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str) -> Response:
        return self._decide(request, approve=True)

    @extend_schema(request=DecisionSerializer, responses=BudgetRequestSerializer)
    @action(detail=True, methods=["post"])
    def decline(self, request: Request, pk: str) -> Response:
        return self._decide(request, approve=False)
