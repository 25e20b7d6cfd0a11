"""New hires from the employees editor: the employee, this year's allowance, and a login with an
invitation to set its password.

The invitation is Django's password-reset token (`default_token_generator`): it is tied to the
login's current password hash and last sign-in, so it works once and expires after
`PASSWORD_RESET_TIMEOUT` (3 days unless set). The login is created with an unusable password,
so nobody can sign in as the new hire before they choose one. The mail leaves after the commit
(a rolled-back hire mails nobody) through budgets.mail, like every notification.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from budgets.audit import audit_record
from budgets.mail import mail_send, page_url
from budgets.models import CostCenter, Employee
from budgets.selectors import policy_resolve
from budgets.services import Actor, Source, allowance_create, employee_create, employee_update


def _free_username(email: str) -> str:
    """The address's local part, or with -2, -3… when taken."""
    users = get_user_model().objects
    base = email.split("@", 1)[0][:140] or "employee"
    name, n = base, 1
    while users.filter(username=name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def employee_login_create(*, actor: Actor, employee: Employee, source: Source = "admin") -> Any:
    """Give `employee` a login (username from their email, no usable password) and mail them
    the link to choose one. Refused when they already have a login or are inactive."""
    if employee.user_id is not None:
        raise ValidationError({"user": ["This employee already has a login."]})
    if not employee.active:
        raise ValidationError({"user": ["Reactivate the employee before inviting them."]})
    with transaction.atomic():
        users = get_user_model()
        if users.objects.filter(email__iexact=employee.email).exists():
            raise ValidationError(
                {"user": [f"A login with the address {employee.email} exists already."]}
            )
        user = users.objects.create_user(
            username=_free_username(employee.email),
            email=employee.email,
            first_name=employee.name[:150],
        )
        user.set_unusable_password()
        user.save(update_fields=["password"])
        employee_update(actor=actor, employee=employee, data={"user": user}, source=source)
        audit_record(
            actor=actor,
            action="invite",
            obj=employee,
            after={"username": user.username, "email": employee.email},
            source=source,
        )
        transaction.on_commit(lambda: invitation_send(user=user))
    employee.refresh_from_db()
    return user


def invitation_link(*, user: Any) -> str:
    """The absolute, one-time address where `user` chooses their password."""
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    return page_url("password-set", uid, default_token_generator.make_token(user))


def invitation_send(*, user: Any) -> None:
    """Mail the password-set link; raises what the mail backend raises."""
    days = max(1, settings.PASSWORD_RESET_TIMEOUT // 86400)
    mail_send(
        subject="Your Tokenbudget sign-in",
        text=(
            f"A Tokenbudget login was made for you: your username is {user.username}.\n\n"
            "Choose your password with the link below. It works once, for "
            f"{days} day{'s' if days != 1 else ''}; after that, ask an admin for a new invitation."
        ),
        recipients=[user.email],
        link=invitation_link(user=user),
        link_label="Choose your password",
    )


def employee_hire(
    *,
    actor: Actor,
    employee_id: str,
    email: str,
    name: str,
    cost_center: CostCenter,
    start_date: dt.date | None = None,
    allowance: Decimal | None = None,
    unit: str | None = None,
    with_login: bool = False,
    source: Source = "admin",
) -> Employee:
    """Create the employee and, in the same transaction, this year's allowance (the amount
    given, else the policy's new-joiner default, else none) and, if asked, their login with an
    invitation. Any refusal leaves nothing behind."""
    with transaction.atomic():
        employee = employee_create(
            actor=actor,
            employee_id=employee_id,
            email=email,
            name=name,
            cost_center=cost_center,
            start_date=start_date,
            source=source,
        )
        policy = policy_resolve(cost_center)
        if allowance is not None or (policy is not None and policy.default_allowance is not None):
            allowance_create(
                actor=actor, employee=employee, amount=allowance, unit=unit, source=source
            )
        if with_login:
            employee_login_create(actor=actor, employee=employee, source=source)
    return employee
