"""SCIM bearer tokens (stored hashed) and the groups an identity provider pushes over SCIM."""

from __future__ import annotations

from django.db import models

from budgets.models import Employee


class ScimToken(models.Model):
    """A bearer token for /scim/v2/. Only its SHA-256 is stored; the token is shown once."""

    name = models.CharField(max_length=100, unique=True)
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12)  # the first characters, to tell tokens apart
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class ScimGroup(models.Model):
    """A group as the IdP keeps it (for example the role groups of the sign-in mapping)."""

    display_name = models.CharField(max_length=200, unique=True)
    external_id = models.CharField(max_length=200, blank=True)
    members = models.ManyToManyField(Employee, blank=True, related_name="scim_groups")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.display_name


class ScimUser(models.Model):
    """What SCIM knows of an employee beyond the roster: the IdP's externalId and userName."""

    employee = models.OneToOneField(Employee, on_delete=models.CASCADE, related_name="scim")
    user_name = models.CharField(max_length=254, unique=True)
    external_id = models.CharField(max_length=200, blank=True)
    email_primary = models.BooleanField(default=True)  # as the IdP flagged the one address
    # A SCIM DELETE: the employee is deactivated, never deleted (their usage stays), and the
    # resource answers 404 from then on (RFC 7644 3.6) until the IdP creates it again.
    deleted = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.user_name
