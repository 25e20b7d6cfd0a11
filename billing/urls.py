"""Billing URLs, included under /api/v1/ by config.urls."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from billing import apis, value_apis, views

router = SimpleRouter()
router.register("statements", apis.StatementViewSet, basename="statement")

urlpatterns = [
    path("daily-usage/", apis.DailyUsageView.as_view(), name="daily-usage"),
    path("value-reports/", value_apis.ValueReportView.as_view(), name="value-report"),
    path("model-comparison/", value_apis.ModelComparisonView.as_view(), name="model-comparison"),
    path("me/statements/", apis.MyStatementsView.as_view(), name="my-statements"),
    path("billing/stripe/webhook/", views.stripe_webhook, name="stripe-webhook"),
    *router.urls,
]
