"""Make a SCIM bearer token for an identity provider: `manage.py scim_token okta`.

The token is printed once; only its SHA-256 is stored. `--revoke NAME` turns one off."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from identity.models import ScimToken
from identity.services import scim_token_create


class Command(BaseCommand):
    help = "Create (or revoke) the bearer token an identity provider's SCIM client uses."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name", help="a name for the token, e.g. the IdP: okta, entra")
        parser.add_argument("--revoke", action="store_true", help="turn the named token off")

    def handle(self, *args: Any, name: str, revoke: bool, **options: Any) -> None:
        if revoke:
            if not ScimToken.objects.filter(name=name).update(active=False):
                raise CommandError(f"No SCIM token named {name!r}.")
            self.stdout.write(f"SCIM token {name!r} revoked.")
            return
        if ScimToken.objects.filter(name=name).exists():
            raise CommandError(f"A SCIM token named {name!r} exists (revoke it, or pick a name).")
        _, raw = scim_token_create(name=name)
        self.stdout.write(raw)
