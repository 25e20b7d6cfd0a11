"""Password sign-in that can be switched off for everyone but the break-glass admins."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.backends import ModelBackend


def password_allowed(username: str | None) -> bool:
    """With TB_PASSWORD_SIGN_IN off, only the names in TB_BREAK_GLASS_USERS may use a password
    (the way in when the identity provider is down or misconfigured)."""
    if settings.TB_PASSWORD_SIGN_IN:
        return True
    return bool(username) and username in settings.TB_BREAK_GLASS_USERS


class PasswordBackend(ModelBackend):
    def authenticate(
        self, request: Any, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> Any:
        if username is None:
            username = kwargs.get("username")
        if username is None or password is None or not password_allowed(username):
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
