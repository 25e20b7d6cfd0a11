"""Billing URLs, included under /api/v1/ by config.urls."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from billing import apis, views

router = SimpleRouter()
router.register("statements", apis.StatementViewSet, basename="statement")

urlpatterns = [
    path("daily-usage/", apis.DailyUsageView.as_view(), name="daily-usage"),
    path("me/statements/", apis.MyStatementsView.as_view(), name="my-statements"),
    path("billing/stripe/webhook/", views.stripe_webhook, name="stripe-webhook"),
    *router.urls,
]
