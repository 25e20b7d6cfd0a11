"""REST API for intents, outcomes and feedback (thin callers of metering.outcomes).

Integrations authenticate with `Authorization: Token <token>` of a service user in the group
`outcome-writers` (create the user, add the group, `manage.py drf_create_token <user>`): that
token may record outcomes on any call and nothing else.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from budgets import roles
from budgets.models import CostCenter
from metering import outcomes
from metering.models import Intent, Outcome


def _drf_error(exc: DjangoValidationError) -> ValidationError:
    return ValidationError(getattr(exc, "message_dict", {"detail": exc.messages}))


class AdminWritesSignedInRead(permissions.BasePermission):
    def has_permission(self, request: Request, view: object) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return bool(request.user and request.user.is_authenticated)
        return roles.is_admin(request.user)


class IntentSerializer(serializers.ModelSerializer):
    owner_cost_center = serializers.SlugRelatedField(
        slug_field="code",
        queryset=CostCenter.objects.all(),
        required=False,
        allow_null=True,
        help_text="Code of the cost center that owns this use of AI.",
    )
    expected_value = serializers.DecimalField(
        max_digits=24,
        decimal_places=10,
        required=False,
        allow_null=True,
        help_text="Money one accepted outcome is worth when the outcome itself carries no value.",
    )

    class Meta:
        model = Intent
        fields = [
            "id",
            "name",
            "description",
            "owner_cost_center",
            "expected_value",
            "default_model",
            "recommended_model",
            "recommended_at",
        ]
        read_only_fields = ["recommended_model", "recommended_at"]
        extra_kwargs = {
            "default_model": {
                "help_text": "Public model name that `auto:<intent>` routes to until the value "
                "report recommends one (`recommended_model`, which then wins)."
            }
        }


class IntentViewSet(viewsets.ModelViewSet):
    """The intent catalogue: everyone signed in reads, admins write."""

    queryset = Intent.objects.select_related("owner_cost_center")
    serializer_class = IntentSerializer
    permission_classes = [AdminWritesSignedInRead]
    lookup_field = "name"
    lookup_value_regex = "[^/]+"

    def perform_create(self, serializer: IntentSerializer) -> None:
        serializer.instance = self._save(serializer, None)

    def perform_update(self, serializer: IntentSerializer) -> None:
        serializer.instance = self._save(serializer, serializer.instance)

    def _save(self, serializer: IntentSerializer, instance: Intent | None) -> Intent:
        data = serializer.validated_data
        current = instance or Intent()
        try:
            return outcomes.intent_save(
                instance=instance,
                name=data.get("name", current.name),
                description=data.get("description", current.description),
                owner_cost_center=data.get("owner_cost_center", current.owner_cost_center),
                expected_value=data.get("expected_value", current.expected_value),
                default_model=data.get("default_model", current.default_model),
            )
        except DjangoValidationError as exc:
            raise _drf_error(exc) from exc


class UnknownIntentSerializer(serializers.Serializer):
    name = serializers.CharField()
    requests = serializers.IntegerField()
    last_seen = serializers.DateField()


class UnknownIntentsView(APIView):
    """Intent tags seen in the daily rollup that the catalogue lacks (admins), for adoption."""

    @extend_schema(responses=UnknownIntentSerializer(many=True))
    def get(self, request: Request) -> Response:
        if not roles.is_admin(request.user):
            return Response({"detail": "Admins only."}, status=status.HTTP_403_FORBIDDEN)
        return Response(UnknownIntentSerializer(outcomes.intents_unknown(), many=True).data)


class OutcomeSerializer(serializers.ModelSerializer):
    client_id = serializers.CharField(
        max_length=100, help_text="Your idempotency key: resending it records nothing new."
    )
    kind = serializers.CharField(
        max_length=100,
        help_text="`accepted`, `rejected`, or a named business outcome such as `ticket resolved`.",
    )
    request_id = serializers.CharField(
        max_length=64, required=False, allow_blank=True, help_text="The call's x-request-id."
    )
    intent = serializers.CharField(max_length=100, required=False, allow_blank=True)
    value = serializers.DecimalField(
        max_digits=24,
        decimal_places=10,
        required=False,
        allow_null=True,
        help_text="Money the outcome was worth (optional).",
    )
    quantity = serializers.IntegerField(min_value=1, max_value=1_000_000, default=1)
    note = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")
    source = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    employee_id = serializers.CharField(
        source="employee.employee_id", read_only=True, allow_null=True
    )
    model = serializers.CharField(read_only=True)
    day = serializers.DateField(read_only=True)

    class Meta:
        model = Outcome
        fields = [
            "id", "client_id", "kind", "request_id", "intent", "window_start", "window_end",
            "value", "quantity", "note", "source", "employee_id", "model", "day", "created_at",
        ]  # fmt: skip
        read_only_fields = ["id", "created_at"]


class OutcomeViewSet(mixins.CreateModelMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    """Record outcomes (201 new, 200 when the client id was already recorded the same way,
    409 when it was recorded differently); list the ones you recorded."""

    serializer_class = OutcomeSerializer
    filterset_fields = ["kind", "intent", "request_id"]
    ordering_fields = ["created_at"]

    queryset = Outcome.objects.none()  # the schema generator reads the model from here

    def get_queryset(self) -> Any:
        if getattr(self, "swagger_fake_view", False):
            return Outcome.objects.none()
        return Outcome.objects.filter(recorded_by=self.request.user).select_related("employee")

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            outcome, created = outcomes.outcome_record(
                user=request.user,
                data=outcomes.OutcomeInput(
                    client_id=data["client_id"],
                    kind=data["kind"],
                    request_id=data.get("request_id", ""),
                    intent=data.get("intent", ""),
                    window_start=data.get("window_start"),
                    window_end=data.get("window_end"),
                    value=data.get("value"),
                    quantity=data["quantity"],
                    note=data["note"],
                    source=data["source"],
                ),
            )
        except DjangoValidationError as exc:
            raise _drf_error(exc) from exc
        except outcomes.OutcomeConflict:
            return Response(
                {"client_id": ["Already used for a different outcome."]},
                status=status.HTTP_409_CONFLICT,
            )
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(OutcomeSerializer(outcome).data, status=code)


class FeedbackSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=list(outcomes.FEEDBACK_KINDS))
    note = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")


class FeedbackView(APIView):
    """Accepted or rejected on one call; answering again replaces your earlier answer."""

    @extend_schema(request=FeedbackSerializer, responses=OutcomeSerializer)
    def post(self, request: Request, request_id: str) -> Response:
        serializer = FeedbackSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            outcome = outcomes.feedback_record(
                user=request.user, request_id=request_id, **serializer.validated_data
            )
        except DjangoValidationError as exc:
            if "request_id" in getattr(exc, "message_dict", {}):
                # Someone else's call answers like a missing one.
                raise NotFound("No such call of yours.") from exc
            raise _drf_error(exc) from exc
        return Response(OutcomeSerializer(outcome).data, status=status.HTTP_200_OK)
