from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from identity import pages as identity_pages

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    # Each app owns its URLs: budgets (and keys/usage of metering, billing) under /api/v1/,
    # the OpenAI/Anthropic-compatible proxy under /v1/.
    path("api/v1/", include("budgets.urls")),
    path("api/v1/", include("metering.urls")),
    path("api/v1/", include("billing.urls")),
    path("", include("metering.proxy_urls")),
    # Identity: OIDC sign-in, SCIM 2.0; its sign-out answers the pages' sign-out URL (first
    # match wins) so that an SSO session also ends at the identity provider.
    path("accounts/logout/", identity_pages.sign_out),
    path("oidc/", include("mozilla_django_oidc.urls")),
    path("", include("identity.urls")),
    path("", include("config.pages_urls")),
]
