"""Pages for keys (create, revoke) and the model catalogue. The proxy is metering.views."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from budgets import roles
from metering import page_selectors
from metering.models import VirtualKey
from metering.services import key_create, key_revoke

NEW_KEY_SESSION = "tb_new_key"


@login_required
@require_POST
def key_new(request: HttpRequest) -> HttpResponse:
    """Mint a key for the signed-in employee; the raw key is shown once, on the next page."""
    employee = roles.employee_of(request.user)
    if employee is None or not employee.active:
        raise PermissionDenied
    name = request.POST.get("name", "").strip()[:100]
    if not name:
        messages.error(request, "Give the key a name, e.g. the tool or laptop that will use it.")
        return redirect("pages:my-tokens")
    key, raw = key_create(employee=employee, name=name, actor=request.user, source="admin")
    # The session carries the raw key across one redirect (so a reload cannot mint another);
    # the landing page pops it, so it is rendered exactly once.
    request.session[NEW_KEY_SESSION] = {"id": key.pk, "name": key.name, "raw": raw}
    return redirect("pages:my-tokens")


@login_required
@require_POST
def key_remove(request: HttpRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(VirtualKey.objects.select_related("employee"), pk=pk)
    own = roles.employee_of(request.user)
    if not (own is not None and key.employee_id == own.pk) and not roles.can_manage_employee(
        request.user, key.employee
    ):
        raise PermissionDenied
    key_revoke(key=key, actor=request.user, source="admin")
    messages.success(request, f"Key “{key.name}” revoked; it stops working within seconds.")
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = "pages:my-tokens"
    return redirect(target or "pages:my-tokens")


@login_required
def routes(request: HttpRequest) -> HttpResponse:
    if not roles.is_admin(request.user):
        raise PermissionDenied
    upstreams, model_routes, prices = page_selectors.catalogue()
    return render(
        request,
        "metering/routes.html",
        {"nav": "routes", "upstreams": upstreams, "routes": model_routes, "prices": prices},
    )
