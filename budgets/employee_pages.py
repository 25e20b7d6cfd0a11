"""The employees editor: a new hire (with this year's allowance and, if asked, a login and an
invitation to choose its password), an invitation for someone without a login, and a
deactivation that first says what it does.

Writes go through budgets.onboarding and `employee_deactivate`; who may is
`roles.can_edit_employees` (admins, as in the API) and nobody deactivates themselves.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from budgets import page_selectors, roles, selectors
from budgets.balance import quota_get
from budgets.models import Unit
from budgets.onboarding import employee_hire, employee_login_create, invitation_send
from budgets.pages import form_decimal
from budgets.services import employee_deactivate

FIELDS = ("employee_id", "email", "name", "cost_center", "start_date", "allowance", "unit")


def _require_editor(user: Any) -> None:
    if not roles.can_edit_employees(user):
        raise PermissionDenied


def _read(
    post: Any, *, centers: list[Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """(the form as posted, `employee_hire`'s arguments, errors of values that are not even
    well-formed; the services check the rest)."""
    form: dict[str, Any] = {name: post.get(name, "").strip() for name in FIELDS}
    form["with_login"] = post.get("with_login") == "yes"
    errors: dict[str, str] = {}
    by_pk = {str(c.pk): c for c in centers}
    if form["cost_center"] not in by_pk:
        errors["cost_center"] = "Choose a cost center."
    start = None
    if form["start_date"]:
        try:
            start = dt.date.fromisoformat(form["start_date"])
        except ValueError:
            errors["start_date"] = "A date (YYYY-MM-DD), or empty."
    amount = None
    if form["allowance"]:
        amount = form_decimal(form["allowance"])
        if amount is None:
            errors["allowance"] = "A number, e.g. 1000000, or empty for the policy's default."
    if form["unit"] not in Unit.values:
        errors["unit"] = "Choose tokens or US dollars."
    data = {
        "employee_id": form["employee_id"],
        "email": form["email"],
        "name": form["name"],
        "cost_center": by_pk.get(form["cost_center"]),
        "start_date": start,
        "allowance": amount,
        "unit": form["unit"] if amount is not None else None,
        "with_login": form["with_login"],
    }
    return form, data, errors


@login_required
def employee_new(request: HttpRequest) -> HttpResponse:
    user = request.user
    _require_editor(user)
    centers = page_selectors.cost_center_choices(user=user)
    form: dict[str, Any] = {**dict.fromkeys(FIELDS, ""), "unit": Unit.TOKENS, "with_login": True}
    errors: dict[str, str] = {}
    if request.method == "POST":
        form, data, errors = _read(request.POST, centers=centers)
        if not errors:
            try:
                employee = employee_hire(actor=user, source="admin", **data)
            except ValidationError as exc:
                errors = {
                    (name if name in FIELDS else "form"): " ".join(problems)
                    for name, problems in exc.message_dict.items()
                }
                if "amount" in exc.message_dict:
                    errors["allowance"] = " ".join(exc.message_dict["amount"])
                    errors.pop("form", None)
            else:
                invited = (
                    f" An invitation to sign in went to {employee.email}."
                    if employee.user_id
                    else ""
                )
                messages.success(
                    request, f"{employee.name or employee.employee_id} added.{invited}"
                )
                return redirect("pages:employee", pk=employee.pk)
    context = {
        "nav": "employees",
        "form": form,
        "errors": errors,
        "centers": centers,
        "units": Unit.choices,
    }
    return render(request, "budgets/employee_form.html", context, status=400 if errors else 200)


@login_required
@require_POST
def employee_invite_page(request: HttpRequest, pk: int) -> HttpResponse:
    """A login and an invitation for an employee without one; for a login that has never had a
    password, the invitation again."""
    user = request.user
    _require_editor(user)
    employee = get_object_or_404(selectors.employee_list(user=user), pk=pk)
    if employee.user_id is None:
        try:
            login = employee_login_create(actor=user, employee=employee, source="admin")
        except ValidationError as exc:
            messages.error(request, "No invitation sent. " + " ".join(exc.messages))
            return redirect("pages:employee", pk=employee.pk)
        messages.success(
            request, f"Login {login.username} made; the invitation went to {employee.email}."
        )
    elif (
        (login := employee.user) is not None and not login.has_usable_password() and employee.active
    ):
        invitation_send(user=login)
        messages.success(request, f"The invitation went again to {login.email}.")
    else:
        messages.error(request, "This employee already signs in; nothing was sent.")
    return redirect("pages:employee", pk=employee.pk)


@login_required
def employee_deactivate_page(request: HttpRequest, pk: int) -> HttpResponse:
    """What a deactivation does, and the button that does it only with its confirmation."""
    user = request.user
    _require_editor(user)
    employee = get_object_or_404(
        selectors.employee_list(user=user).select_related("cost_center", "user"), pk=pk
    )
    if roles.is_self(user, employee):
        raise PermissionDenied
    error = ""
    if request.method == "POST" and employee.active:
        if request.POST.get("confirm") == employee.employee_id:
            employee_deactivate(actor=user, employee=employee, source="admin")
            messages.success(
                request,
                f"{employee.name or employee.employee_id} deactivated; their keys stop working.",
            )
            return redirect("pages:employee", pk=employee.pk)
        error = f"Tick the box to confirm the deactivation of {employee.employee_id}."
    context = {
        "nav": "employees",
        "employee": employee,
        "keys": page_selectors.live_key_names(employee=employee),
        "quota": quota_get(employee),
        "manages": page_selectors.managed_by(user=employee.user),
        "error": error,
    }
    return render(
        request, "budgets/employee_deactivate.html", context, status=400 if error else 200
    )
