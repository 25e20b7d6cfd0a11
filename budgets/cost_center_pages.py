"""The cost center editor: create, rename, move in the tree, set the annual cap and the managers.

Writes go through `cost_center_create` / `cost_center_update` (validation, audit, the proxies'
invalidation); who may do what is `roles.can_place_cost_center` and `roles.can_edit_cost_center`,
the rules the API asks too: admins shape the whole tree, a manager only below the cost centers
they manage, and nobody changes the cost center they manage themselves.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from budgets import page_selectors, roles, selectors
from budgets.models import CostCenter
from budgets.pages import form_decimal
from budgets.services import CostCenterData, cost_center_create, cost_center_update

FIELDS = ("code", "name", "gl_code", "parent", "annual_cap", "managers")


def _form_of(center: CostCenter | None) -> dict[str, str]:
    if center is None:
        return dict.fromkeys(FIELDS, "")
    cap = center.annual_cap
    return {
        "code": center.code,
        "name": center.name,
        "gl_code": center.gl_code,
        "parent": str(center.parent_id or ""),
        "annual_cap": "" if cap is None else format(cap, "f"),
        "managers": ", ".join(sorted(center.managers.values_list("username", flat=True))),
    }


def _read(
    post: Any, *, parents: list[CostCenter]
) -> tuple[dict[str, str], CostCenterData, dict[str, str]]:
    """(the form as posted, CostCenterData for the services, errors of values that are not even
    well-formed: an unknown parent, a cap that is no amount, a username nobody has)."""
    form = {name: post.get(name, "").strip() for name in FIELDS}
    errors: dict[str, str] = {}
    data = CostCenterData(code=form["code"], name=form["name"], gl_code=form["gl_code"])
    by_pk = {str(c.pk): c for c in parents}
    if form["parent"] and form["parent"] not in by_pk:
        errors["parent"] = "Choose a cost center from the list."
    data["parent"] = by_pk.get(form["parent"])
    if form["annual_cap"]:
        cap = form_decimal(form["annual_cap"])
        if cap is None or cap < 0 or cap != cap.quantize(Decimal("0.01")):
            errors["annual_cap"] = "An amount in USD with at most cents, e.g. 25000, or empty."
        data["annual_cap"] = cap
    else:
        data["annual_cap"] = None
    names = {n.strip() for n in form["managers"].replace(";", ",").split(",") if n.strip()}
    users = page_selectors.users_by_username(names=names)
    if unknown := sorted(names - set(users)):
        errors["managers"] = f"No login named {', '.join(unknown)}."
    data["managers"] = [users[n] for n in sorted(users)]
    return form, data, errors


def _service_errors(exc: ValidationError) -> dict[str, str]:
    return {
        (name if name in FIELDS else "form"): " ".join(problems)
        for name, problems in exc.message_dict.items()
    }


def _render(request: HttpRequest, context: dict[str, Any], errors: dict[str, str]) -> HttpResponse:
    context = {"nav": "cost-centers", "errors": errors, **context}
    return render(request, "budgets/cost_center_form.html", context, status=400 if errors else 200)


@login_required
def cost_center_new(request: HttpRequest) -> HttpResponse:
    """Create a cost center; `?parent=<id>` preselects where it goes."""
    user = request.user
    parents = page_selectors.cost_center_parent_choices(user=user, moving=None)
    if not roles.is_admin(user) and not parents:
        raise PermissionDenied
    form = _form_of(None)
    form["parent"] = request.GET.get("parent", "")
    errors: dict[str, str] = {}
    if request.method == "POST":
        form, data, errors = _read(request.POST, parents=parents)
        if not errors and not roles.can_place_cost_center(user, data["parent"]):
            errors["parent"] = "Choose the cost center it sits under."
        if not errors:
            try:
                center = cost_center_create(actor=user, source="admin", **data)
            except ValidationError as exc:
                errors = _service_errors(exc)
            else:
                messages.success(request, f"Cost center {center.name} ({center.code}) created.")
                return redirect("pages:cost-centers")
    context = {
        "center": None,
        "form": form,
        "parents": parents,
        "root_allowed": roles.is_admin(user),
    }
    return _render(request, context, errors)


@login_required
def cost_center_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """Rename, move, re-cap or re-staff one cost center."""
    user = request.user
    center = get_object_or_404(selectors.cost_center_list(user=user), pk=pk)
    if not roles.can_edit_cost_center(user, center):
        raise PermissionDenied
    parents = page_selectors.cost_center_parent_choices(user=user, moving=center)
    form = _form_of(center)
    errors: dict[str, str] = {}
    if request.method == "POST":
        form, data, errors = _read(request.POST, parents=parents)
        if not errors and not roles.can_place_cost_center(user, data["parent"]):
            errors["parent"] = "Choose the cost center it sits under."
        if not errors:
            try:
                cost_center_update(
                    actor=user,
                    cost_center=center,
                    data=data,
                    source="admin",
                )
            except ValidationError as exc:
                errors = _service_errors(exc)
            else:
                messages.success(request, f"Cost center {data['name']} saved.")
                return redirect("pages:cost-centers")
    context = {
        "center": center,
        "form": form,
        "parents": parents,
        "root_allowed": roles.is_admin(user),
        "events": page_selectors.cost_center_audit(cost_center=center),
    }
    return _render(request, context, errors)
