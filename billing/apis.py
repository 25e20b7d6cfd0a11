"""Billing API: statements (list, detail, finalize, exports), daily usage, personal statements.

Scoping: finance and admins see everything; managers their cost-center subtree; employees only
their own lines. Every queryset comes from billing.selectors.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any, cast

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import exports, personal, selectors, stripe_api
from billing.models import ChargebackStatement, StatementLine, units_to_cost
from billing.statements import StatementStateError, statement_finalize
from billing.stripe_sync import statement_stripe_retry
from budgets import roles


def parse_month(value: str | None, *, name: str = "period") -> dt.date | None:
    """'YYYY-MM' (or 'YYYY-MM-DD') -> first day of that month; 400 on anything else."""
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value if len(value) > 7 else f"{value}-01").replace(day=1)
    except ValueError as exc:
        raise ValidationError({name: "expected YYYY-MM"}) from exc


class ExportNegotiation(DefaultContentNegotiation):
    """`?format=` names the export format here, not a DRF renderer, so it is not negotiated."""

    def select_renderer(
        self, request: Any, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderers = list(renderers)
        return renderers[0], renderers[0].media_type


class LineSerializer(serializers.ModelSerializer):
    employee_id = serializers.CharField(source="employee.employee_id")
    employee_name = serializers.CharField(source="employee.name")
    usage_month = serializers.DateField(format="%Y-%m")
    cost = serializers.DecimalField(max_digits=24, decimal_places=10)

    class Meta:
        model = StatementLine
        fields = [
            "kind", "usage_month", "employee_id", "employee_name", "model", "requests",
            "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens",
            "reasoning_tokens", "cost",
        ]  # fmt: skip


class StatementSerializer(serializers.ModelSerializer):
    period = serializers.DateField(format="%Y-%m")
    cost_center = serializers.CharField(source="cost_center.code")
    cost_center_name = serializers.CharField(source="cost_center.name")
    gl_code = serializers.CharField(source="cost_center.gl_code")
    total = serializers.DecimalField(max_digits=24, decimal_places=10)
    stripe_sync_state = serializers.CharField(read_only=True)
    stripe_sync_next_retry_at = serializers.DateTimeField(source="stripe_sync_next_at")
    scope = serializers.SerializerMethodField(
        help_text="`statement`: the figures are the cost center's; `own`: the caller is an "
        "employee reading their own lines, and requests, tokens and totals are theirs only."
    )

    class Meta:
        model = ChargebackStatement
        fields = [
            "id", "period", "cost_center", "cost_center_name", "gl_code", "status", "currency",
            "requests", "total_tokens", "total", "finalized_at", "sent_at", "paid_at",
            "stripe_invoice_id", "stripe_invoice_status", "stripe_sync_state",
            "stripe_sync_error", "stripe_sync_attempts", "stripe_sync_failed_at",
            "stripe_sync_next_retry_at", "scope",
        ]  # fmt: skip
        read_only_fields = fields

    def _whole(self, obj: ChargebackStatement) -> bool:
        return selectors.statement_shows_whole(statement=obj, user=self.context["request"].user)

    def get_scope(self, obj: ChargebackStatement) -> str:
        return "statement" if self._whole(obj) else "own"

    def to_representation(self, instance: ChargebackStatement) -> dict[str, Any]:
        data = super().to_representation(instance)
        if data["scope"] == "own":
            # The department's figures are not the employee's to read.
            own = selectors.statement_own_totals(
                statement=instance, user=self.context["request"].user
            )
            data["requests"] = own.requests
            data["total_tokens"] = own.total_tokens
            data["total"] = self.fields["total"].to_representation(own.total)
        return data


class StatementDetailSerializer(StatementSerializer):
    subtree_total = serializers.SerializerMethodField()
    subtotals = serializers.SerializerMethodField()
    lines = serializers.SerializerMethodField()

    class Meta(StatementSerializer.Meta):
        fields = [*StatementSerializer.Meta.fields, "subtree_total", "subtotals", "lines"]
        read_only_fields = fields

    def _lines(self, obj: ChargebackStatement) -> list[StatementLine]:
        cache = self.context.setdefault("_lines", {})  # type: ignore[attr-defined]  # a dict at run time
        if obj.pk not in cache:
            user = self.context["request"].user
            cache[obj.pk] = list(selectors.statement_lines(statement=obj, user=user))
        return cache[obj.pk]

    def get_subtree_total(self, obj: ChargebackStatement) -> str:
        if not self._whole(obj):
            own = selectors.statement_own_totals(statement=obj, user=self.context["request"].user)
            return str(own.total)
        return str(selectors.statement_subtree_total(statement=obj))

    def get_subtotals(self, obj: ChargebackStatement) -> list[dict[str, Any]]:
        """Per employee: requests, tokens and cost over the lines visible to the caller."""
        totals: dict[str, dict[str, Any]] = {}
        for line in self._lines(obj):
            row = totals.setdefault(
                line.employee.employee_id,
                {"employee_id": line.employee.employee_id, "requests": 0, "tokens": 0, "units": 0},
            )
            row["requests"] += line.requests
            row["tokens"] += line.total_tokens
            row["units"] += line.cost_units
        return [
            {
                **{k: v for k, v in row.items() if k != "units"},
                "cost": str(units_to_cost(row["units"])),
            }
            for row in totals.values()
        ]

    def get_lines(self, obj: ChargebackStatement) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], LineSerializer(self._lines(obj), many=True).data)


def _export_response(fmt: str, filename: str, statements: Any, lines: Any) -> Any:
    if fmt not in exports.FORMATS:
        raise ValidationError({"format": f"one of {', '.join(exports.FORMATS)}"})
    content_type, ext = exports.FORMATS[fmt]
    if fmt == "csv":
        body = exports.finance_csv(lines)
    elif fmt == "focus":
        body = exports.focus_csv(lines)
    elif fmt == "journal":
        body = exports.journal_csv(statements)
    else:
        body = exports.file_chunks(exports.xlsx_file(statements, lines))
    response = StreamingHttpResponse(body, content_type=content_type)
    suffix = "-focus" if fmt == "focus" else "-journal" if fmt == "journal" else ""
    response["Content-Disposition"] = f'attachment; filename="{filename}{suffix}.{ext}"'
    return response


EXPORT_FORMAT = OpenApiParameter(
    "format", OpenApiTypes.STR, enum=list(exports.FORMATS), description="Default csv."
)
EXPORT_RESPONSES = {
    (200, "text/csv"): OpenApiResponse(OpenApiTypes.BINARY, description="csv, focus, journal"),
    (200, exports.FORMATS["xlsx"][0]): OpenApiResponse(OpenApiTypes.BINARY, description="xlsx"),
    (400, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT, description="Bad format"),
    (403, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT),
    (404, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT),
}


class StatementViewSet(viewsets.ReadOnlyModelViewSet):
    """Chargeback statements. Filters: `period=YYYY-MM`, `status`, `cost_center` (code).

    `POST {id}/finalize/` (finance, admins) answers at once; the Stripe sync runs after the
    commit and its outcome is in `stripe_sync_*`. `POST {id}/stripe-retry/` (finance, admins)
    makes a failed or blocked sync due now and runs it, audited.
    `GET {id}/export/?format=csv|focus|xlsx|journal`;
    `GET export/?period=YYYY-MM&format=...` exports every visible statement of a month.
    """

    filter_backends: list = []

    def get_serializer_class(self) -> type[serializers.Serializer]:
        return StatementDetailSerializer if self.action == "retrieve" else StatementSerializer

    def get_queryset(self) -> Any:
        qs = selectors.statement_list(user=self.request.user)
        params = self.request.query_params
        if period := parse_month(params.get("period")):
            qs = qs.filter(period=period)
        if value := params.get("status"):
            qs = qs.filter(status=value)
        if value := params.get("cost_center"):
            qs = qs.filter(cost_center__code=value)
        return qs

    @action(detail=True, methods=["post"])
    def finalize(self, request: Request, pk: str | None = None) -> Response:
        if not (roles.is_finance(request.user) or roles.is_admin(request.user)):
            raise PermissionDenied("only finance and admins finalize statements")
        statement = self.get_object()
        try:
            statement = statement_finalize(statement_id=statement.pk, actor=request.user)
        except StatementStateError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(StatementSerializer(statement, context={"request": request}).data)

    @action(detail=True, methods=["post"], url_path="stripe-retry")
    def stripe_retry(self, request: Request, pk: str | None = None) -> Response:
        if not (roles.is_finance(request.user) or roles.is_admin(request.user)):
            raise PermissionDenied("only finance and admins retry Stripe syncs")
        statement = self.get_object()
        if not stripe_api.is_configured():
            return Response({"detail": "Stripe is not configured"}, status=status.HTTP_409_CONFLICT)
        try:
            statement = statement_stripe_retry(statement_id=statement.pk, actor=request.user)
        except StatementStateError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(
            StatementSerializer(statement, context={"request": request}).data,
            status=status.HTTP_202_ACCEPTED,
        )

    def _export_lines(self, statements: Any) -> Any:
        user = self.request.user
        if roles.sees_all(user):
            return StatementLine.objects.filter(statement__in=statements)
        managed = roles.managed_cost_center_ids(user)
        if not managed:
            raise PermissionDenied("exports are for finance, admins and managers")
        return StatementLine.objects.filter(
            statement__in=statements.filter(cost_center_id__in=managed)
        )

    @extend_schema(parameters=[EXPORT_FORMAT], responses=EXPORT_RESPONSES)
    @action(detail=True, methods=["get"], content_negotiation_class=ExportNegotiation)
    def export(self, request: Request, pk: str | None = None) -> Any:
        statement = self.get_object()
        statements = ChargebackStatement.objects.filter(pk=statement.pk)
        lines = self._export_lines(statements)
        name = f"chargeback-{statement.period:%Y-%m}-{statement.cost_center.code}"
        return _export_response(request.query_params.get("format", "csv"), name, statements, lines)

    @extend_schema(
        operation_id="v1_statements_export_month",
        parameters=[
            OpenApiParameter("period", OpenApiTypes.STR, required=True, description="YYYY-MM"),
            EXPORT_FORMAT,
        ],
        responses=EXPORT_RESPONSES,
    )
    @action(
        detail=False,
        methods=["get"],
        url_path="export",
        content_negotiation_class=ExportNegotiation,
    )
    def export_month(self, request: Request) -> Any:
        period = parse_month(request.query_params.get("period"))
        if period is None:
            raise ValidationError({"period": "required, YYYY-MM"})
        lines = self._export_lines(self.get_queryset())
        statements = self.get_queryset().filter(id__in=lines.values("statement"))
        if roles.sees_all(request.user):
            statements = self.get_queryset()
        return _export_response(
            request.query_params.get("format", "csv"),
            f"chargeback-{period:%Y-%m}",
            statements,
            lines,
        )


class DailyUsageView(APIView):
    """`GET /api/v1/daily-usage/`: sums of the daily rollup.

    Filters: `from`, `to` (dates, inclusive), `cost_center` (code), `employee` (HR id),
    `model`, `intent`. `group_by`: comma list of cost_center, employee, model, intent, day,
    month (default day). Costs are decimal strings.
    """

    @extend_schema(
        parameters=[
            OpenApiParameter("from", OpenApiTypes.DATE),
            OpenApiParameter("to", OpenApiTypes.DATE),
            OpenApiParameter("cost_center", OpenApiTypes.STR),
            OpenApiParameter("employee", OpenApiTypes.STR),
            OpenApiParameter("model", OpenApiTypes.STR),
            OpenApiParameter("intent", OpenApiTypes.STR),
            OpenApiParameter("group_by", OpenApiTypes.STR, description="Comma list."),
            OpenApiParameter("limit", OpenApiTypes.INT, description="1 to 10000, default 1000."),
        ],
        responses={
            200: inline_serializer(
                "DailyUsageSums",
                {
                    "group_by": serializers.ListField(child=serializers.CharField()),
                    "results": serializers.ListField(child=serializers.DictField()),
                },
            ),
            400: OpenApiResponse(OpenApiTypes.OBJECT),
        },
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        qs = selectors.daily_usage_scoped(user=request.user)
        try:
            if value := params.get("from"):
                qs = qs.filter(day__gte=dt.date.fromisoformat(value))
            if value := params.get("to"):
                qs = qs.filter(day__lte=dt.date.fromisoformat(value))
        except ValueError as exc:
            raise ValidationError({"from/to": "expected YYYY-MM-DD"}) from exc
        for param, field in (("cost_center", "cost_center__code"),
                             ("employee", "employee__employee_id"),
                             ("model", "model"), ("intent", "intent")):  # fmt: skip
            if (value := params.get(param)) is not None:
                qs = qs.filter(**{field: value})
        group_by = [g for g in params.get("group_by", "day").split(",") if g]
        unknown = set(group_by) - set(selectors.GROUPS)
        if unknown:
            raise ValidationError({"group_by": f"unknown: {', '.join(sorted(unknown))}"})
        rows = selectors.daily_usage_grouped(queryset=qs, group_by=group_by)
        try:
            limit = min(max(int(params.get("limit", 1000)), 1), 10000)
        except ValueError as exc:
            raise ValidationError({"limit": "expected an integer"}) from exc
        results = []
        for row in rows[:limit]:
            out = {g: row[selectors.GROUPS[g]] for g in group_by}
            for key in ("day", "month"):
                if key in out:
                    out[key] = out[key].strftime("%Y-%m-%d" if key == "day" else "%Y-%m")
            out.update({k: v for k, v in row.items() if k not in selectors.GROUPS.values()})
            out["cost"] = str(units_to_cost(out.pop("cost_units")))
            results.append(out)
        return Response({"group_by": group_by, "results": results})


class _TopSerializer(serializers.Serializer):
    model = serializers.CharField(required=False)
    intent = serializers.CharField(required=False)
    tokens = serializers.IntegerField()
    cost = serializers.CharField()


class PersonalStatementSerializer(serializers.Serializer):
    """The schema of `billing.personal.PersonalStatement.as_dict()`."""

    period = serializers.CharField(help_text="YYYY-MM")
    employee_id = serializers.CharField()
    requests = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cost = serializers.CharField(help_text="Exact decimal.")
    top_models = _TopSerializer(many=True)
    top_intents = _TopSerializer(many=True)
    allowance_unit = serializers.CharField()
    remaining = serializers.CharField(help_text="Exact decimal, in the allowance's unit.")
    projected_run_out = serializers.DateField(
        allow_null=True,
        help_text="At the last 30 days' pace; null for no spend or beyond 100 years.",
    )


class MyStatementsView(APIView):
    """`GET /api/v1/me/statements/`: the caller's monthly summaries (`?period=YYYY-MM` for one;
    default the last 12 months with usage)."""

    @extend_schema(
        parameters=[OpenApiParameter("period", OpenApiTypes.STR, description="YYYY-MM")],
        responses={
            200: inline_serializer(
                "PersonalStatementList", {"results": PersonalStatementSerializer(many=True)}
            ),
            400: OpenApiResponse(OpenApiTypes.OBJECT),
            403: OpenApiResponse(OpenApiTypes.OBJECT),
        },
    )
    def get(self, request: Request) -> Response:
        employee = roles.employee_of(request.user)
        if employee is None:
            raise PermissionDenied("no employee record for this user")
        period = parse_month(request.query_params.get("period"))
        periods = [period] if period else personal.recent_periods(employee=employee)
        return Response(
            {
                "results": [
                    personal.personal_statement_get(employee=employee, period=p).as_dict()
                    for p in periods
                ]
            }
        )
