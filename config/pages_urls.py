"""The web pages: sign-in, My tokens, admin and manager pages, finance statements."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

from billing import dashboards
from billing import pages as billing_pages
from budgets import cost_center_pages, employee_pages, roster_pages
from budgets import pages as budget_pages
from metering import pages as metering_pages

app_name = "pages"

urlpatterns = [
    path("", billing_pages.home, name="home"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="pages:login"), name="logout"),
    # The invitation of a new hire (budgets.onboarding): Django's one-time password-reset token.
    path(
        "accounts/password/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(
            success_url=reverse_lazy("pages:password-set-done")
        ),
        name="password-set",
    ),
    path(
        "accounts/password/done/",
        auth_views.PasswordResetCompleteView.as_view(),
        name="password-set-done",
    ),
    path("me/", billing_pages.my_tokens, name="my-tokens"),
    path("manage/overview/", dashboards.admin_dashboard, name="dashboard-admin"),
    path("manage/team/", dashboards.team_dashboard, name="dashboard-team"),
    path("finance/", dashboards.finance_dashboard, name="dashboard-finance"),
    path("me/keys/", metering_pages.key_new, name="key-new"),
    path("me/requests/", budget_pages.budget_request_new, name="request-new"),
    path("manage/requests/", budget_pages.approvals, name="approvals"),
    path("manage/requests/<int:pk>/", budget_pages.approval_decide, name="approval-decide"),
    path("keys/<int:pk>/revoke/", metering_pages.key_remove, name="key-revoke"),
    path("manage/cost-centers/", budget_pages.cost_centers, name="cost-centers"),
    path("manage/cost-centers/new/", cost_center_pages.cost_center_new, name="cost-center-new"),
    path(
        "manage/cost-centers/<int:pk>/",
        cost_center_pages.cost_center_edit,
        name="cost-center-edit",
    ),
    path("manage/employees/", budget_pages.employees, name="employees"),
    path("manage/employees/assign/", budget_pages.employees_assign, name="employees-assign"),
    path("manage/employees/new/", employee_pages.employee_new, name="employee-new"),
    path(
        "manage/employees/<int:pk>/deactivate/",
        employee_pages.employee_deactivate_page,
        name="employee-deactivate",
    ),
    path(
        "manage/employees/<int:pk>/invite/",
        employee_pages.employee_invite_page,
        name="employee-invite",
    ),
    path("manage/employees/<int:pk>/", budget_pages.employee_detail, name="employee"),
    path("manage/roster/", budget_pages.roster, name="roster"),
    path("manage/roster/template.csv", roster_pages.roster_template, name="roster-template"),
    path("manage/roster/export.csv", roster_pages.roster_export, name="roster-export"),
    path("manage/policies/", budget_pages.policies, name="policies"),
    path("manage/policies/<int:pk>/", budget_pages.policy_edit, name="policy-edit"),
    path("manage/models/", metering_pages.routes, name="routes"),
    path("manage/models/routes/new/", metering_pages.route_new, name="route-new"),
    path("manage/models/routes/<int:pk>/", metering_pages.route_edit, name="route-edit"),
    path(
        "manage/models/routes/<int:pk>/deployments/",
        metering_pages.route_deployments,
        name="route-deployments",
    ),
    path("manage/models/upstreams/<int:pk>/", metering_pages.upstream_edit, name="upstream-edit"),
    path("manage/models/prices/new/", metering_pages.price_new, name="price-new"),
    path("value/", billing_pages.value_page, name="value"),
    path("finance/statements/", billing_pages.statements, name="statements"),
    path("finance/statements/close/", billing_pages.month_close, name="month-close"),
    path("finance/statements/export/", billing_pages.statements_export, name="export"),
    path("finance/statements/<int:pk>/", billing_pages.statement_detail, name="statement"),
    path(
        "finance/statements/<int:pk>/finalize/",
        billing_pages.statement_finalize_page,
        name="finalize",
    ),
    path(
        "finance/statements/<int:pk>/stripe-retry/",
        billing_pages.statement_stripe_retry_page,
        name="stripe-retry",
    ),
]
