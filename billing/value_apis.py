"""REST API of value reports and model comparisons (thin callers of billing.value).

Everyone signed in may ask; each sees only the usage and outcomes their role shows them
(employees their own, managers their cost-center subtree, admins and finance everything).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import value
from budgets.fiscal import add_months

RATIO_FIELD = {"max_digits": 40, "decimal_places": 6, "allow_null": True}
MONEY_FIELD = {"max_digits": 40, "decimal_places": 10, "allow_null": True}


class ValueRowSerializer(serializers.Serializer):
    key = serializers.CharField(
        help_text="Cost-center code, intent, model or HR employee id; empty: not attributed."
    )
    requests = serializers.IntegerField(help_text="Calls in the period.")
    tokens = serializers.IntegerField(help_text="Input + output tokens.")
    cost = serializers.DecimalField(
        max_digits=40, decimal_places=10, help_text="Exact cost of the calls."
    )
    outcomes = serializers.IntegerField(help_text="Quantity of all outcomes recorded.")
    accepted = serializers.IntegerField(help_text="Quantity of `accepted` outcomes.")
    rejected = serializers.IntegerField(help_text="Quantity of `rejected` outcomes.")
    acceptance_rate = serializers.DecimalField(
        **RATIO_FIELD, help_text="accepted / (accepted + rejected); null when nothing was rated."
    )
    value = serializers.DecimalField(
        max_digits=40,
        decimal_places=10,
        help_text="Sum of outcome values, plus quantity x the intent's expected value for "
        "accepted outcomes without a value.",
    )
    value_per_1k_tokens = serializers.DecimalField(
        **MONEY_FIELD, help_text="value x 1000 / tokens."
    )
    cost_per_accepted_outcome = serializers.DecimalField(
        **MONEY_FIELD, help_text="cost / accepted."
    )
    return_on_spend = serializers.DecimalField(**RATIO_FIELD, help_text="value / cost.")
    tokens_per_dollar = serializers.DecimalField(**RATIO_FIELD, help_text="tokens / cost.")
    energy_kwh = serializers.DecimalField(
        max_digits=40,
        decimal_places=20,
        allow_null=True,
        help_text="Sum over models with both energy coefficients of input/1000 x Wh per 1k "
        "input + output/1000 x Wh per 1k output, in kWh; null when no model has them.",
    )
    energy_tokens = serializers.IntegerField(
        help_text="Tokens of the models with energy coefficients (what the energy figures cover)."
    )
    generation_seconds = serializers.DecimalField(
        max_digits=30,
        decimal_places=3,
        allow_null=True,
        help_text="Summed latency of the covered calls.",
    )
    average_power_w = serializers.DecimalField(
        **RATIO_FIELD, help_text="Energy (Wh) x 3600 / generation seconds."
    )
    tokens_per_kwh = serializers.DecimalField(**RATIO_FIELD, help_text="Covered tokens / kWh.")
    tokens_per_dollar_per_watt = serializers.DecimalField(
        **RATIO_FIELD,
        help_text="Covered tokens / covered cost / average power (tokens per dollar per watt).",
    )


class ModelStatsSerializer(serializers.Serializer):
    model = serializers.CharField()
    requests = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=40, decimal_places=10)
    accepted = serializers.IntegerField()
    rejected = serializers.IntegerField()
    acceptance_rate = serializers.DecimalField(**RATIO_FIELD)
    acceptance_interval = serializers.ListField(
        child=serializers.DecimalField(max_digits=10, decimal_places=6),
        allow_null=True,
        help_text="95 % Wilson score interval of the acceptance rate [low, high].",
    )
    cost_per_accepted_outcome = serializers.DecimalField(**MONEY_FIELD)


class RecommendationSerializer(serializers.Serializer):
    from_model = serializers.CharField()
    to_model = serializers.CharField()
    saving = serializers.DecimalField(
        max_digits=40,
        decimal_places=10,
        help_text="accepted outcomes of from_model x (its cost per accepted outcome - "
        "to_model's), over the period.",
    )
    monthly_saving = serializers.DecimalField(
        max_digits=40, decimal_places=10, help_text="saving x 30 / days in the period."
    )


class IntentComparisonSerializer(serializers.Serializer):
    intent = serializers.CharField()
    models = ModelStatsSerializer(many=True)
    recommendations = RecommendationSerializer(
        many=True,
        help_text="A switch is recommended only when both models have at least `min_rated` "
        "rated outcomes, the target costs less per accepted outcome, and the low end of its "
        "95 % Wilson interval is at least the current model's acceptance rate minus `margin`.",
    )


PERIOD_PARAMS = [
    OpenApiParameter("period", str, description="A month, YYYY-MM (or give since and until)."),
    OpenApiParameter("since", dt.date, description="First local day, inclusive."),
    OpenApiParameter("until", dt.date, description="Last local day, exclusive."),
]


def _period(request: Request) -> tuple[dt.date, dt.date]:
    params = request.query_params
    try:
        if params.get("period"):
            start = dt.date.fromisoformat(f"{params['period']}-01")
            return start, add_months(start, 1)
        start = dt.date.fromisoformat(params["since"])
        end = dt.date.fromisoformat(params["until"])
    except (KeyError, ValueError) as exc:
        raise ValidationError({"period": "Give period=YYYY-MM, or since and until."}) from exc
    if end <= start or (end - start).days > 366:
        raise ValidationError({"until": "After since, and at most 366 days later."})
    return start, end


class ValueReportView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter(
                "dimension", str, enum=list(value.DIMENSIONS), description="Group rows by this."
            ),
            *PERIOD_PARAMS,
        ],
        responses=ValueRowSerializer(many=True),
        description=(value.__doc__ or "").split("\n\n", 1)[1],
    )
    def get(self, request: Request) -> Response:
        dimension = request.query_params.get("dimension", "cost_center")
        if dimension not in value.DIMENSIONS:
            raise ValidationError({"dimension": f"One of {', '.join(value.DIMENSIONS)}."})
        start, end = _period(request)
        rows = value.value_report(dimension=dimension, start=start, end=end, user=request.user)
        return Response(
            {
                "dimension": dimension,
                "since": start,
                "until": end,
                "rows": ValueRowSerializer(rows, many=True).data,
            }
        )


class ModelComparisonView(APIView):
    @extend_schema(
        parameters=[
            *PERIOD_PARAMS,
            OpenApiParameter("min_rated", int, description="Least rated outcomes per model (30)."),
            OpenApiParameter("margin", str, description="Non-inferiority margin, e.g. 0.02 (0)."),
        ],
        responses=IntentComparisonSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        start, end = _period(request)
        try:
            min_rated = int(request.query_params.get("min_rated", value.MIN_RATED))
            margin = Decimal(request.query_params.get("margin", "0"))
        except (ValueError, InvalidOperation) as exc:
            raise ValidationError({"min_rated": "An integer; margin a decimal."}) from exc
        if min_rated < 1 or not margin.is_finite() or not Decimal(0) <= margin < 1:
            raise ValidationError({"min_rated": "At least 1; margin in [0, 1)."})
        report = value.model_comparison(
            start=start, end=end, user=request.user, min_rated=min_rated, margin=margin
        )
        return Response(
            {
                "since": start,
                "until": end,
                "intents": IntentComparisonSerializer(report, many=True).data,
            }
        )
