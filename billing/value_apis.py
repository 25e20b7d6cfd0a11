"""REST API of value reports and model comparisons (thin callers of billing.value).

Everyone signed in may ask; each sees only the usage and outcomes their role shows them
(employees their own, managers their cost-center subtree, admins and finance everything).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import value, value_store
from budgets.fiscal import add_months

RATIO_FIELD: dict[str, Any] = {"max_digits": 40, "decimal_places": 6, "allow_null": True}
MONEY_FIELD: dict[str, Any] = {"max_digits": 40, "decimal_places": 10, "allow_null": True}


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


class ValueReportSerializer(serializers.Serializer):
    dimension = serializers.CharField()
    since = serializers.DateField(help_text="First local day, inclusive.")
    until = serializers.DateField(help_text="Last local day, exclusive.")
    stored = serializers.BooleanField(
        help_text="True: the rows come from the stored report of this month, computed by the "
        "periodic job at `computed_at` (admins and finance only; `fresh=true` computes "
        "instead). False: computed for this request."
    )
    computed_at = serializers.DateTimeField(help_text="When the figures were computed.")
    complete = serializers.BooleanField(
        help_text="False: the period had not ended when the figures were computed (to date)."
    )
    rows = ValueRowSerializer(many=True)


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


STORED_HELP = """

Stored reports: a periodic job stores the last complete month's report and the current
month's to date, by every dimension, hourly. For a whole month (`period=YYYY-MM`, or since and
until spanning exactly that month) admins and finance are served the stored report when there
is one (`stored: true`, figures as of `computed_at`); everyone else, other periods, and
`fresh=true` get the report computed for the request (`stored: false`). Both give the same
figures for the same data."""


class ValueReportView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter(
                "dimension", str, enum=list(value.DIMENSIONS), description="Group rows by this."
            ),
            *PERIOD_PARAMS,
            OpenApiParameter(
                "fresh",
                bool,
                description="true: compute now even when the month's report is stored.",
            ),
        ],
        responses=ValueReportSerializer,
        description=(value.__doc__ or "").split("\n\n", 1)[1] + STORED_HELP,
    )
    def get(self, request: Request) -> Response:
        dimension = request.query_params.get("dimension", "cost_center")
        if dimension not in value.DIMENSIONS:
            raise ValidationError({"dimension": f"One of {', '.join(value.DIMENSIONS)}."})
        start, end = _period(request)
        fresh = request.query_params.get("fresh", "").lower() in ("1", "true", "yes")
        report = value_store.value_report_served(
            dimension=dimension, start=start, end=end, user=request.user, fresh=fresh
        )
        return Response(
            ValueReportSerializer(
                {
                    "dimension": dimension,
                    "since": start,
                    "until": end,
                    "stored": report.stored,
                    "computed_at": report.computed_at,
                    "complete": report.complete,
                    "rows": report.rows,
                }
            ).data
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
