"""OIDC sign-in on mozilla-django-oidc: endpoints discovered from the issuer, the signed-in
person linked to their `Employee` by a configured claim, roles taken from the group claim.

The library does the protocol (authorization code flow with PKCE, state, nonce, ID token
signature); this module decides who the person is (`identity.services.sso_user_for`) and
where the sign-out goes (the IdP's end-session endpoint when it publishes one).
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlencode

import requests
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, resolve_url
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from identity.services import SignInRefused, sso_user_for

REFUSAL_KEY = "identity_refusal"  # the session key the refusal page reads

_discovered: dict[str, dict[str, Any]] = {}
_lock = threading.Lock()


def provider_endpoints() -> dict[str, str]:
    """The provider's endpoints: TB_OIDC_*_ENDPOINT where set, else the issuer's discovery
    document (fetched once per process; a failed fetch is retried at the next sign-in)."""
    issuer = settings.TB_OIDC_ISSUER
    explicit = {
        "authorization_endpoint": settings.OIDC_OP_AUTHORIZATION_ENDPOINT,
        "token_endpoint": settings.OIDC_OP_TOKEN_ENDPOINT,
        "userinfo_endpoint": settings.OIDC_OP_USER_ENDPOINT,
        "jwks_uri": settings.OIDC_OP_JWKS_ENDPOINT,
        "end_session_endpoint": settings.TB_OIDC_END_SESSION_ENDPOINT,
    }
    if all(explicit.values()):
        return explicit
    with _lock:
        document = _discovered.get(issuer)
        if document is None:
            response = requests.get(
                f"{issuer}/.well-known/openid-configuration", timeout=settings.OIDC_TIMEOUT
            )
            response.raise_for_status()
            document = response.json()
            _discovered[issuer] = document
    return {name: value or str(document.get(name) or "") for name, value in explicit.items()}


def sso_enabled() -> bool:
    return bool(settings.TB_OIDC_ISSUER and settings.OIDC_RP_CLIENT_ID)


class SignInStart(OIDCAuthenticationRequestView):
    """/oidc/authenticate/: off (404) unless an issuer and a client are configured."""

    def get(self, request: HttpRequest) -> HttpResponse:
        if not sso_enabled():
            raise Http404("Single sign-on is not configured.")
        try:
            self.OIDC_OP_AUTH_ENDPOINT = provider_endpoints()["authorization_endpoint"]
        except (requests.RequestException, ValueError):
            request.session[REFUSAL_KEY] = {"reason": "provider", "value": ""}
            return redirect(settings.LOGIN_REDIRECT_URL_FAILURE)
        request.session.pop(REFUSAL_KEY, None)
        return super().get(request)


class SignInCallback(OIDCAuthenticationCallbackView):
    def get(self, request: HttpRequest) -> HttpResponse:
        if not sso_enabled():
            raise Http404("Single sign-on is not configured.")
        return super().get(request)


class EmployeeOIDCBackend(OIDCAuthenticationBackend):
    """Answers only the OIDC callback (a request carrying `code` and `state`); any other
    authenticate call (a password sign-in) passes it by without a network call."""

    def authenticate(self, request: Any, **kwargs: Any) -> Any:
        if request is None or not sso_enabled() or "code" not in request.GET:
            return None
        try:
            endpoints = provider_endpoints()
        except (requests.RequestException, ValueError):
            request.session[REFUSAL_KEY] = {"reason": "provider", "value": ""}
            return None
        self.OIDC_OP_TOKEN_ENDPOINT = endpoints["token_endpoint"]
        self.OIDC_OP_USER_ENDPOINT = endpoints["userinfo_endpoint"]
        self.OIDC_OP_JWKS_ENDPOINT = endpoints["jwks_uri"]
        try:
            return super().authenticate(request, **kwargs)
        except requests.RequestException:
            # The token or JWKS endpoint is unreachable or refused the code: a clear page.
            request.session[REFUSAL_KEY] = {"reason": "provider", "value": ""}
            return None

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict) -> Any:
        claims = dict(payload)
        if self.OIDC_OP_USER_ENDPOINT:
            claims.update(self.get_userinfo(access_token, id_token, payload))
        try:
            return sso_user_for(claims=claims)
        except SignInRefused as refusal:
            self.request.session[REFUSAL_KEY] = {"reason": refusal.reason, "value": refusal.value}
            return None


def logout_url(request: HttpRequest) -> str:
    """Where the sign-out goes: the IdP's end-session endpoint (RP-initiated logout, with the
    ID token as hint and back to the sign-in page), or straight to the sign-in page."""
    back = request.build_absolute_uri(resolve_url(settings.LOGOUT_REDIRECT_URL))
    id_token = request.session.get("oidc_id_token")
    if not id_token or not sso_enabled():
        return back
    try:
        end_session = provider_endpoints()["end_session_endpoint"]
    except (requests.RequestException, ValueError):
        return back  # the local session still ends; the IdP's lasts until it expires
    if not end_session:
        return back
    query = urlencode(
        {
            "id_token_hint": id_token,
            "post_logout_redirect_uri": back,
            "client_id": settings.OIDC_RP_CLIENT_ID,
        }
    )
    return f"{end_session}{'&' if '?' in end_session else '?'}{query}"
