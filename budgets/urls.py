"""Budgets API routes, included under /api/v1/ by config.urls."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from budgets import apis, request_apis

router = SimpleRouter()
router.register("cost-centers", apis.CostCenterViewSet, basename="cost-center")
router.register("employees", apis.EmployeeViewSet, basename="employee")
router.register("allowances", apis.AllowanceViewSet, basename="allowance")
router.register("adjustments", apis.AdjustmentViewSet, basename="adjustment")
router.register("policies", apis.PolicyViewSet, basename="policy")
router.register("audit", apis.AuditEventViewSet, basename="audit-event")
router.register("budget-requests", request_apis.BudgetRequestViewSet, basename="budget-request")

urlpatterns = [
    path("me/quota/", apis.MeQuotaView.as_view(), name="me-quota"),
    path("roster-imports/", apis.RosterImportView.as_view(), name="roster-import"),
    *router.urls,
]
