"""Identity's URLs: the refusal page of the SSO sign-in, and SCIM 2.0 (the OIDC endpoints are
mozilla-django-oidc's own, un-namespaced, under /oidc/ in config/urls.py)."""

from __future__ import annotations

from django.urls import include, path, re_path

from identity import pages
from identity.scim import views as scim

app_name = "identity"

scim_patterns = [
    path("ServiceProviderConfig", scim.service_provider_config),
    path("Schemas", scim.schema_list),
    re_path(r"^Schemas/(?P<schema_id>[^/]+)$", scim.schema_detail),
    path("ResourceTypes", scim.resource_type_list),
    path("ResourceTypes/<str:name>", scim.resource_type_detail),
    path("Users", scim.users),
    path("Users/.search", scim.users_search),
    path("Users/<str:pk>", scim.user_detail),
    path("Groups", scim.groups),
    path("Groups/.search", scim.groups_search),
    path(".search", scim.root_search),
    path("Groups/<str:pk>", scim.group_detail),
    re_path(r"^(?P<rest>.*)$", scim.not_found),
]

urlpatterns = [
    path("sso/refused/", pages.sign_in_refused, name="sign-in-refused"),
    path("scim/v2/", include(scim_patterns)),
]
