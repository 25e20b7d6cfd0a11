from django.urls import include, path
from rest_framework.routers import SimpleRouter

from metering import apis, outcome_apis

router = SimpleRouter()
router.register("upstreams", apis.UpstreamViewSet, basename="upstream")
router.register("model-routes", apis.ModelRouteViewSet, basename="model-route")
router.register("prices", apis.ModelPriceViewSet, basename="price")
router.register("usage", apis.UsageViewSet, basename="usage")
router.register("intents", outcome_apis.IntentViewSet, basename="intent")
router.register("outcomes", outcome_apis.OutcomeViewSet, basename="outcome")

keys = SimpleRouter()
keys.register("keys", apis.EmployeeKeysViewSet, basename="employee-key")

urlpatterns = [
    path("intents-unknown/", outcome_apis.UnknownIntentsView.as_view(), name="intents-unknown"),
    path(
        "usage/<str:request_id>/feedback/",
        outcome_apis.FeedbackView.as_view(),
        name="usage-feedback",
    ),
    path("", include(router.urls)),
    path("employees/<str:employee_id>/", include(keys.urls)),
]
