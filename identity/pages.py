"""Identity's HTML: the page a refused SSO sign-in lands on, and the sign-out."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from mozilla_django_oidc.views import OIDCLogoutView

from identity.oidc import REFUSAL_KEY


def sign_in_refused(request: HttpRequest) -> HttpResponse:
    """The identity provider signed the person in, but no active employee matches them."""
    refusal = request.session.get(REFUSAL_KEY) or {"reason": "failed", "value": ""}
    return render(request, "identity/sign_in_refused.html", {"refusal": refusal}, status=403)


def sign_out(request: HttpRequest) -> HttpResponse:
    """The pages' sign-out: after an SSO sign-in (an ID token in the session) it ends the IdP
    session too (RP-initiated logout), otherwise it is Django's own."""
    if request.method == "POST" and request.session.get("oidc_id_token"):
        return OIDCLogoutView.as_view()(request)
    return auth_views.LogoutView.as_view(next_page="pages:login")(request)
