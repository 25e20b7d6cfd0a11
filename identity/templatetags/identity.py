from __future__ import annotations

from django import template
from django.conf import settings

from identity.oidc import sso_enabled

register = template.Library()


@register.simple_tag
def sign_in_options() -> dict[str, bool]:
    """What the sign-in page offers: the SSO button, and whether passwords are for the
    break-glass admins only."""
    return {"sso": sso_enabled(), "passwords_restricted": not settings.TB_PASSWORD_SIGN_IN}
