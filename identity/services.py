"""Identity's changes of state: sign-in linking and roles, SCIM tokens, users and groups.

Employees are created, moved and deactivated only through the roster services of
`budgets.services` (`employee_create`, `employee_update`, `employee_move`,
`employee_deactivate`, `allowance_create`), so SCIM and SSO write the same audit events and
publish the same cache invalidation as the roster import and the admin pages.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from budgets import roles
from budgets.models import CostCenter, Employee
from budgets.services import (
    allowance_create,
    cost_center_update,
    employee_create,
    employee_deactivate,
    employee_update,
)
from identity.models import ScimGroup, ScimToken, ScimUser

TOKEN_PREFIX = "tbscim_"


class SignInRefused(Exception):
    """The IdP vouched for the person, but Tokenbudget will not sign them in."""

    def __init__(self, reason: str, value: str = "") -> None:
        super().__init__(reason)
        self.reason = reason  # no_claim, no_employee, inactive, disabled
        self.value = value


# --- sign-in --------------------------------------------------------------------------------------


def _link_lookup(value: str) -> Employee | None:
    query = Employee.objects.select_related("user", "cost_center")
    if settings.TB_OIDC_LINK_FIELD == "email":
        return query.filter(email=value.strip().lower()).first()
    return query.filter(employee_id=value.strip()).first()


def _free_username(base: str) -> str:
    users = get_user_model().objects
    base = base[:140] or "sso-user"
    name, n = base, 1
    while users.filter(username=name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def sso_user_for(*, claims: dict[str, Any]) -> Any:
    """The Django user the verified `claims` sign in as: the user linked to the employee the
    link claim names, created and linked on first sign-in. Roles follow the group claim.
    Raises SignInRefused when there is no such active employee."""
    value = claims.get(settings.TB_OIDC_LINK_CLAIM)
    if not isinstance(value, str) or not value.strip():
        raise SignInRefused("no_claim", settings.TB_OIDC_LINK_CLAIM)
    employee = _link_lookup(value)
    if employee is None:
        raise SignInRefused("no_employee", value)
    if not employee.active:
        raise SignInRefused("inactive", value)
    with transaction.atomic():
        user = employee.user
        if user is None:
            username = claims.get("preferred_username") or employee.email
            user = get_user_model().objects.create_user(
                _free_username(str(username)), email=employee.email
            )
            user.set_unusable_password()  # signs in through the IdP only
            user.save(update_fields=["password"])
            employee_update(actor="sso", employee=employee, data={"user": user}, source="sso")
        elif not user.is_active:
            raise SignInRefused("disabled", value)
        roles_apply(user=user, employee=employee, groups=_groups_claim(claims))
    return user


def _groups_claim(claims: dict[str, Any]) -> set[str]:
    raw = claims.get(settings.TB_OIDC_GROUPS_CLAIM) or []
    if isinstance(raw, str):
        raw = [raw]
    return {str(group) for group in raw if isinstance(group, str | int)}


def roles_apply(*, user: Any, employee: Employee, groups: set[str]) -> None:
    """Give `user` exactly the roles their IdP groups map to, at each sign-in. A role whose
    mapping is empty is left as it is (managed locally). A manager manages their own cost
    center, and with it its subtree (budgets.roles); a manager no longer in a manager group
    manages nothing."""
    for wanted_groups, django_group in (
        (settings.TB_OIDC_ADMIN_GROUPS, roles.ADMIN_GROUP),
        (settings.TB_OIDC_FINANCE_GROUPS, roles.FINANCE_GROUP),
    ):
        if not wanted_groups:
            continue
        group, _ = Group.objects.get_or_create(name=django_group)
        if groups & set(wanted_groups):
            user.groups.add(group)
        else:
            user.groups.remove(group)
    if settings.TB_OIDC_MANAGER_GROUPS:
        wanted = (
            {employee.cost_center_id} if groups & set(settings.TB_OIDC_MANAGER_GROUPS) else set()
        )
        for center in CostCenter.objects.filter(managers=user).exclude(pk__in=wanted):
            managers = [m for m in center.managers.all() if m.pk != user.pk]
            cost_center_update(
                actor="sso", cost_center=center, data={"managers": managers}, source="sso"
            )
        for center in CostCenter.objects.filter(pk__in=wanted).exclude(managers=user):
            managers = [*center.managers.all(), user]
            cost_center_update(
                actor="sso", cost_center=center, data={"managers": managers}, source="sso"
            )
    for cached in ("_tb_groups", "_tb_managed"):
        if hasattr(user, cached):
            delattr(user, cached)


# --- SCIM tokens --------------------------------------------------------------------------------


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def scim_token_create(*, name: str) -> tuple[ScimToken, str]:
    """A new bearer token for the IdP's SCIM client; the raw token is returned only here."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ScimToken.objects.create(name=name, token_hash=_digest(raw), prefix=raw[:12])
    return token, raw


def scim_token_check(raw: str) -> ScimToken | None:
    """The active token `raw` is, or None. Compared by its hash (an index lookup of a digest,
    so the comparison leaks nothing about a stored token)."""
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > 200:
        return None
    token = ScimToken.objects.filter(token_hash=_digest(raw), active=True).first()
    if token is not None:
        now = timezone.now()
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            ScimToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


# --- SCIM users ---------------------------------------------------------------------------------


@dataclass
class ScimUserData:
    """A SCIM User's attributes as Tokenbudget keeps them."""

    user_name: str
    employee_id: str
    email: str
    name: str
    cost_center: CostCenter
    active: bool
    external_id: str = ""
    email_primary: bool = True


def scim_user_create(*, actor: str, data: ScimUserData) -> Employee:
    """A joiner: the employee, this year's allowance by the policy's new-joiner default (when
    the policy sets one), and the SCIM identity, all or nothing."""
    with transaction.atomic():
        employee = employee_create(
            actor=actor,
            employee_id=data.employee_id,
            email=data.email,
            name=data.name,
            cost_center=data.cost_center,
            active=True,
            source="scim",
        )
        try:
            allowance_create(actor=actor, employee=employee, source="scim")
        except ValidationError as exc:
            # No policy above the cost center sets a new-joiner default: the employee starts
            # without an allowance, as the admin pages allow; anything else is refused.
            if "amount" not in getattr(exc, "message_dict", {}):
                raise
        ScimUser.objects.create(
            employee=employee,
            user_name=data.user_name,
            external_id=data.external_id,
            email_primary=data.email_primary,
        )
        if not data.active:
            employee = employee_deactivate(actor=actor, employee=employee, source="scim")
    return employee


def scim_user_update(*, actor: str, employee: Employee, data: ScimUserData) -> Employee:
    """A mover or a change of details: a new cost center is a move effective today (the
    history stays), `active: false` a deactivation, `active: true` a return. A deleted
    resource created again comes back through here too."""
    with transaction.atomic():
        employee = employee_update(
            actor=actor,
            employee=employee,
            data={
                "email": data.email,
                "name": data.name,
                "cost_center": data.cost_center,
                "active": data.active,
            },
            source="scim",
        )
        ScimUser.objects.update_or_create(
            employee=employee,
            defaults={
                "user_name": data.user_name,
                "external_id": data.external_id,
                "email_primary": data.email_primary,
                "deleted": False,
            },
        )
    return employee


def scim_user_deactivate(*, actor: str, employee: Employee) -> Employee:
    """A leaver (SCIM DELETE): deactivated, never deleted, so their usage and statements stay;
    SCIM no longer shows them. Their keys stop on every proxy at the invalidation message."""
    with transaction.atomic():
        employee = employee_deactivate(actor=actor, employee=employee, source="scim")
        ScimUser.objects.update_or_create(
            employee=employee,
            defaults={"deleted": True},
            create_defaults={"user_name": employee.email, "deleted": True},
        )
    return employee


# --- SCIM groups --------------------------------------------------------------------------------


def scim_group_save(
    *,
    group: ScimGroup | None,
    display_name: str,
    external_id: str,
    members: list[Employee],
) -> ScimGroup:
    with transaction.atomic():
        if group is None:
            group = ScimGroup.objects.create(display_name=display_name, external_id=external_id)
        else:
            group.display_name = display_name
            group.external_id = external_id
            group.save()
        group.members.set(members)
    return group


def scim_group_delete(*, group: ScimGroup) -> None:
    group.delete()
