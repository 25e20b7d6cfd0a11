"""Pages for admins and managers: cost centers, employees, allowances, top-ups, roster, policies.

Every view decides who may see what through budgets.roles: admins everything, finance reads
everything, managers their cost-center subtree; anything else is a 403 page.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from budgets import page_selectors, roles, selectors
from budgets.balance import current_fiscal_year, quota_get
from budgets.bulk import allowances_assign
from budgets.formatting import ratio_text, usd_text
from budgets.models import Adjustment, BudgetRequest, Policy, Release, Unit
from budgets.requests import (
    budget_request_create,
    budget_request_decide,
    budget_requests_visible,
    can_decide,
)
from budgets.roster import RosterInvalid, roster_import
from budgets.services import adjustment_create, policy_set

PAGE_SIZE = 50
ROSTER_SESSION = "tb_roster"
MAX_ROSTER_BYTES = 5 * 1024 * 1024


def _require_reader(user: Any) -> None:
    """Admins, finance and managers read budgets; employees only their own (on My tokens)."""
    if not roles.can_read_budgets(user):
        raise PermissionDenied


def require_admin(user: Any) -> None:
    """Editors of every app: admins only (403 for everyone else)."""
    if not roles.is_admin(user):
        raise PermissionDenied


def form_decimal(raw: str) -> Decimal | None:
    """A finite Decimal from a form field (money is never a float), or None."""
    try:
        value = Decimal(raw.replace(",", "").replace("_", "").strip())
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


@login_required
def cost_centers(request: HttpRequest) -> HttpResponse:
    _require_reader(request.user)
    year = current_fiscal_year()
    nodes = page_selectors.cost_center_tree(user=request.user, fiscal_year=year)
    context = {
        "nav": "cost-centers",
        "nodes": nodes,
        "year": year,
        "editable": page_selectors.editable_cost_center_ids(
            user=request.user, centers=[n.center for n in nodes]
        ),
        "placeable": {
            c.pk for c in page_selectors.cost_center_parent_choices(user=request.user, moving=None)
        },
        "can_create": roles.is_admin(request.user)
        or bool(roles.managed_cost_center_ids(request.user)),
    }
    return render(request, "budgets/cost_centers.html", context)


@login_required
def employees(request: HttpRequest) -> HttpResponse:
    user = request.user
    _require_reader(user)
    year = current_fiscal_year()
    params = request.GET
    center_ids = {int(v) for v in params.getlist("cost_center") if v.isdigit()}
    status = params.get("status", "active")
    sort = params.get("sort", "employee_id")
    table = page_selectors.employee_table(
        user=user,
        fiscal_year=year,
        search=params.get("q", "").strip()[:100],
        cost_center_ids=center_ids,
        status=status,
        sort=sort,
    )
    page = Paginator(table, PAGE_SIZE).get_page(params.get("page"))
    keep = params.copy()
    keep.pop("page", None)
    sort_links = {}
    for column in page_selectors.SORTS:
        flipped = params.copy()
        flipped["sort"] = f"-{column}" if sort == column else column
        flipped.pop("page", None)
        sort_links[column] = flipped.urlencode()
    context = {
        "nav": "employees",
        "page": page,
        "year": year,
        "centers": selectors.cost_center_list(user=user).order_by("code"),
        "chosen_centers": center_ids,
        "status": status,
        "sort": sort,
        "q": params.get("q", ""),
        "query": keep.urlencode(),
        "sort_links": sort_links,
        # The bulk form is for admins: managers steer the year with top-ups, not the grant.
        "can_assign": roles.is_admin(user),
        "can_create": roles.can_edit_employees(user),
        "units": Unit.choices,
    }
    return render(request, "budgets/employees.html", context)


@login_required
@require_POST
def employees_assign(request: HttpRequest) -> HttpResponse:
    """Bulk: set this year's allowance of the ticked employees."""
    user = request.user
    back = f"{reverse('pages:employees')}?{request.POST.get('query', '')}"
    if (target := request.POST.get("next", "")).startswith("/manage/employees/"):
        back = target  # the single-employee form on an employee's page returns there
    ids = [int(v) for v in request.POST.getlist("employee") if v.isdigit()]
    amount = form_decimal(request.POST.get("amount", ""))
    unit = request.POST.get("unit", Unit.TOKENS)
    if not ids:
        messages.error(request, "Tick at least one employee.")
        return redirect(back)
    if amount is None or amount < 0 or unit not in Unit.values:
        messages.error(request, "Give the amount as a number of tokens or dollars, 0 or more.")
        return redirect(back)
    chosen = list(roles.visible_employees(user).filter(pk__in=ids).select_related("cost_center"))
    if len(chosen) != len(set(ids)) or not all(roles.can_set_allowance(user, e) for e in chosen):
        raise PermissionDenied
    result = allowances_assign(
        actor=user, employees=chosen, amount=amount, unit=unit, fiscal_year=current_fiscal_year()
    )
    if result.errors:
        messages.error(request, "Nothing changed. " + " ".join(result.errors[:5]))
    else:
        messages.success(
            request,
            f"Allowance set to {amount:,} {unit} for {len(chosen)} employees "
            f"({result.created} new, {result.updated} changed, {result.unchanged} already so).",
        )
    return redirect(back)


@login_required
def employee_detail(request: HttpRequest, pk: int) -> HttpResponse:
    user = request.user
    _require_reader(user)
    employee = get_object_or_404(selectors.employee_list(user=user), pk=pk)
    year = current_fiscal_year()
    errors: dict[str, str] = {}
    form = {"amount": "", "reason": "", "kind": Adjustment.Kind.TOP_UP}
    history = page_selectors.employee_history(
        employee=employee, fiscal_year=year, with_keys=roles.can_see_keys(user, employee)
    )
    if request.method == "POST":
        if not roles.can_adjust_allowance(user, employee):
            raise PermissionDenied
        form = {k: request.POST.get(k, "").strip() for k in form}
        amount = form_decimal(form["amount"])
        if history["allowance"] is None:
            errors["amount"] = "Assign an allowance for this year first."
        elif amount is None:
            errors["amount"] = "A number, e.g. 100000."
        if form["kind"] not in (Adjustment.Kind.TOP_UP, Adjustment.Kind.CORRECTION):
            errors["kind"] = "Choose top-up or correction."
        if not errors:
            try:
                adjustment_create(
                    actor=user,
                    allowance=history["allowance"],
                    kind=form["kind"],
                    amount=amount,
                    reason=form["reason"],
                    source="admin",
                )
            except ValidationError as exc:
                for name, problems in exc.message_dict.items():
                    errors[name if name in form else "amount"] = " ".join(problems)
            else:
                label = dict(Adjustment.Kind.choices)[form["kind"]]
                messages.success(request, f"{label} of {amount:,} saved for {employee.name}.")
                return redirect("pages:employee", pk=employee.pk)
    context = {
        "nav": "employees",
        "employee": employee,
        "quota": quota_get(employee),
        "history": history,
        "year": year,
        "can_set": roles.can_set_allowance(user, employee),
        "can_adjust": roles.can_adjust_allowance(user, employee),
        "can_see_keys": roles.can_see_keys(user, employee),
        "can_manage_keys": roles.can_manage_keys(user, employee),
        "can_edit_employee": roles.can_edit_employees(user) and not roles.is_self(user, employee),
        "form": form,
        "errors": errors,
        "kinds": [(Adjustment.Kind.TOP_UP, "Top-up"), (Adjustment.Kind.CORRECTION, "Correction")],
        "keys": (
            employee.keys.order_by("revoked_at", "-created_at")
            if roles.can_see_keys(user, employee)
            else None
        ),
        "units": Unit.choices,
    }
    return render(request, "budgets/employee.html", context, status=400 if errors else 200)


def _describe(row: dict[str, Any]) -> str:
    """One roster diff row as a sentence-like cell: changes as 'from → to', else the fields."""
    if changes := row.get("changes"):
        return "; ".join(
            f"{name.replace('_', ' ')}: {change['from'] or 'none'} → {change['to'] or 'none'}"
            for name, change in changes.items()
        )
    return "; ".join(
        f"{name.replace('_', ' ')}: {value}"
        for name, value in row.items()
        if name not in {"row", "employee_id"} and value not in (None, "")
    )


def _diff(result: Any) -> list[tuple[str, str, list[tuple[int, str, str]]]]:
    sections = [
        ("New employees", "diff-created", result.created),
        ("Changes", "diff-updated", result.updated),
        ("Deactivated (missing from the file)", "diff-deactivated", result.deactivated),
    ]
    return [
        (title, css, [(r.get("row") or 0, r["employee_id"], _describe(r)) for r in rows])
        for title, css, rows in sections
        if rows
    ]


def _unconfirmed_deactivations(request: HttpRequest, content: str) -> dict[str, Any] | None:
    """A roster that deactivates people applies only with a confirmation naming how many:
    a 4-row file would otherwise deactivate everyone else behind an ordinary button. When the
    confirmation is missing or names another count, returns the preview to show again with
    the error; None when the import may go ahead."""
    try:
        preview = roster_import(content=content, actor=request.user, dry_run=True)
    except RosterInvalid:
        return None  # the import itself refuses the file and shows every problem
    count = preview.counts["deactivated"]
    if count == 0 or request.POST.get("confirm_deactivate") == str(count):
        return None
    return {
        "result": preview,
        "diff": _diff(preview),
        "filename": "the previewed file",
        "confirm_error": f"Tick the box to confirm that {count} employees will be deactivated.",
    }


@login_required
def roster(request: HttpRequest) -> HttpResponse:
    """Upload a roster CSV: a dry run shows the diff; "Apply" imports the same file."""
    require_admin(request.user)
    context: dict[str, Any] = {"nav": "roster", "result": None, "errors": None}
    if request.method == "POST" and request.POST.get("action") == "apply":
        content = request.session.get(ROSTER_SESSION)
        if not content:
            messages.error(request, "Upload the file again: its preview has expired.")
            return redirect("pages:roster")
        if unconfirmed := _unconfirmed_deactivations(request, content):
            return render(request, "budgets/roster.html", {**context, **unconfirmed}, status=400)
        try:
            result = roster_import(content=content, actor=request.user, source="import")
        except RosterInvalid as exc:
            context["errors"] = exc
        else:
            request.session.pop(ROSTER_SESSION, None)
            counts = result.counts
            messages.success(
                request,
                f"Roster imported: {counts['created']} created, {counts['updated']} updated, "
                f"{counts['deactivated']} deactivated, {counts['unchanged']} unchanged.",
            )
            return redirect("pages:roster")
    elif request.method == "POST":
        upload = request.FILES.get("file")
        if upload is None:
            context["file_error"] = "Choose a CSV file."
        elif upload.size > MAX_ROSTER_BYTES:
            context["file_error"] = "The file is larger than 5 MB."
        else:
            content = upload.read().decode("utf-8-sig", errors="replace")
            try:
                context["result"] = roster_import(content=content, actor=request.user, dry_run=True)
            except RosterInvalid as exc:
                context["errors"] = exc
            else:
                # The preview's file waits in the session so "Apply" imports exactly what was
                # previewed, without a second upload.
                request.session[ROSTER_SESSION] = content
                context["filename"] = upload.name
                context["diff"] = _diff(context["result"])
    return render(request, "budgets/roster.html", context)


@login_required
def policies(request: HttpRequest) -> HttpResponse:
    """Every visible policy; admins also pick a cost center to create or change its policy."""
    user = request.user
    _require_reader(user)
    is_admin = roles.is_admin(user)
    if is_admin and (chosen := request.GET.get("cost_center", "")).isdigit():
        return redirect("pages:policy-edit", pk=int(chosen))
    rows = selectors.policy_list(user=user).order_by("cost_center__code")
    centers = page_selectors.cost_center_choices(user=user) if is_admin else []
    return render(
        request,
        "budgets/policies.html",
        {"nav": "policies", "policies": rows, "is_admin": is_admin, "centers": centers},
    )


# --- the policy editor (admins) --------------------------------------------------------------

POLICY_CHOICES = {
    "default_unit": Unit.values,
    "default_release": Release.values,
    "limit_mode": Policy.LimitMode.values,
    "over_budget": Policy.OverBudget.values,
}
POLICY_WHOLE_NUMBERS = (
    "per_request_token_cap",
    "requests_per_minute",
    "tokens_per_minute",
    "downgrade_at_percent",
)
DOWNGRADE_BLANK_ROWS = 2


def _policy_form(policy: Policy | None) -> dict[str, Any]:
    """The editor's field values as the form shows them (a new policy shows the defaults)."""
    policy = policy or Policy()

    def text(value: Any) -> str:
        return (
            ""
            if value is None
            else format(value.normalize(), "f")
            if isinstance(value, Decimal)
            else str(value)
        )

    return {
        "default_allowance": text(policy.default_allowance),
        "default_unit": policy.default_unit,
        "default_release": policy.default_release,
        "allowed_models": list(policy.allowed_models or []),
        "alert_thresholds": ", ".join(str(t) for t in policy.alert_thresholds or []),
        "limit_mode": policy.limit_mode,
        "soft_overage_percent": text(policy.soft_overage_percent),
        "per_request_token_cap": text(policy.per_request_token_cap),
        "over_budget": policy.over_budget,
        "requests_per_minute": text(policy.requests_per_minute),
        "tokens_per_minute": text(policy.tokens_per_minute),
        "downgrades": list((policy.downgrade_models or {}).items()),
        "downgrade_at_percent": text(policy.downgrade_at_percent),
    }


def _whole(raw: str, *, optional: bool) -> int | None:
    """A whole number 0 or more from a form field; None for empty (when allowed)."""
    raw = raw.replace(",", "").replace("_", "").strip()
    if not raw and optional:
        return None
    if not raw.isdigit():
        raise ValueError
    return int(raw)


def _policy_data(post: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """(PolicyData for `policy_set`, the form as posted, errors of values that are not even
    numbers). Range and consistency checks are the service's."""
    form = _policy_form(None)
    errors: dict[str, str] = {}
    data: dict[str, Any] = {}
    for name in form:
        if name not in ("allowed_models", "downgrades"):
            form[name] = post.get(name, "").strip()
    form["allowed_models"] = [m.strip() for m in post.getlist("allowed_models") if m.strip()]
    rows = list(zip(post.getlist("downgrade_from"), post.getlist("downgrade_to"), strict=False))
    form["downgrades"] = [(a.strip(), b.strip()) for a, b in rows if a.strip() or b.strip()]

    for name, allowed in POLICY_CHOICES.items():
        if form[name] not in allowed:
            errors[name] = "Choose one of the options."
        data[name] = form[name]
    if form["default_allowance"]:
        amount = form_decimal(form["default_allowance"])
        if amount is None:
            errors["default_allowance"] = "A number, e.g. 1000000, or empty for none."
        data["default_allowance"] = amount
    else:
        data["default_allowance"] = None
    try:
        data["soft_overage_percent"] = _whole(form["soft_overage_percent"] or "0", optional=False)
    except ValueError:
        errors["soft_overage_percent"] = "A whole percentage, e.g. 10."
    for name in POLICY_WHOLE_NUMBERS:
        try:
            data[name] = _whole(form[name], optional=True)
        except ValueError:
            errors[name] = "A whole number, or empty for no limit."
    try:
        parts = form["alert_thresholds"].replace(";", ",").split(",")
        data["alert_thresholds"] = sorted({int(part) for part in parts if part.strip()})
    except ValueError:
        errors["alert_thresholds"] = "Whole percentages separated by commas, e.g. 50, 80, 100."
    data["allowed_models"] = form["allowed_models"]
    downgrades: dict[str, str] = {}
    for source_model, target in form["downgrades"]:
        if not source_model or not target:
            errors["downgrade_models"] = "Choose both models in each row, or clear the row."
        elif source_model in downgrades:
            errors["downgrade_models"] = f"{source_model} has more than one downgrade."
        else:
            downgrades[source_model] = target
    data["downgrade_models"] = downgrades
    return data, form, errors


def _pricier_downgrades(downgrades: dict[str, str]) -> list[str]:
    """Each downgrade whose replacement lists dearer than the model asked for, in words with
    the multiple: 'gpt-4o-mini → gpt-4o costs 16.7x as much ($0.75 → $12.50 per million
    input + output tokens)'."""
    prices = page_selectors.model_list_prices(names={*downgrades, *downgrades.values()})
    out = []
    for source_model, target in downgrades.items():
        old, new = prices.get(source_model), prices.get(target)
        if old is not None and new is not None and new > old:
            multiple = ratio_text(new / old) if old else "more"
            out.append(
                f"{source_model} → {target} costs {multiple} as much ({usd_text(old)} → "
                f"{usd_text(new)} per million input + output tokens)"
            )
    return out


@login_required
def policy_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """Create or change one cost center's policy. Every save goes through `policy_set`, which
    validates and audits it; on any error nothing is saved and the form shows why."""
    user = request.user
    require_admin(user)
    center = get_object_or_404(selectors.cost_center_list(user=user), pk=pk)
    own = Policy.objects.filter(cost_center=center).first()
    inherited = None if own else selectors.policy_resolve(center)
    form = _policy_form(own or inherited)
    errors: dict[str, str] = {}
    if request.method == "POST":
        data, form, errors = _policy_data(request.POST)
        pricier = [] if errors else _pricier_downgrades(data.get("downgrade_models") or {})
        if pricier and request.POST.get("confirm_pricier") != "yes":
            errors["downgrade_models"] = (
                "A downgrade should cost less, but "
                + "; ".join(pricier)
                + ". Tick the box below to save it anyway."
            )
            form["pricier"] = pricier
        if not errors:
            unchanged = own is not None and all(getattr(own, k) == v for k, v in data.items())
            try:
                policy_set(actor=user, cost_center=center, data=data, source="admin")
            except ValidationError as exc:
                for name, problems in exc.message_dict.items():
                    key = name if name in form or name == "downgrade_models" else "form"
                    errors[key] = " ".join(problems)
            else:
                if unchanged:
                    messages.info(request, "Nothing changed.")
                else:
                    messages.success(request, f"Policy of {center.name} saved.")
                return redirect("pages:policy-edit", pk=center.pk)
    models_ = page_selectors.routed_model_names()
    known = set(models_)
    extra = [m for m in form["allowed_models"] if m not in known]
    extra += [m for row in form["downgrades"] for m in row if m and m not in known]
    context = {
        "nav": "policies",
        "center": center,
        "own": own,
        "inherited": inherited,
        "form": form,
        "errors": errors,
        "model_names": models_ + sorted(set(extra)),
        "downgrade_rows": form["downgrades"] + [("", "")] * DOWNGRADE_BLANK_ROWS,
        "units": Unit.choices,
        "releases": Release.choices,
        "limit_modes": Policy.LimitMode.choices,
        "over_budget_choices": Policy.OverBudget.choices,
        "events": page_selectors.policy_audit(policy=own),
        "cache_seconds": settings.TB_KEY_CACHE_SECONDS,
    }
    return render(request, "budgets/policy_edit.html", context, status=400 if errors else 200)


# --- budget requests -----------------------------------------------------------------------


def _service_message(exc: ValidationError) -> str:
    return " ".join(" ".join(v) for v in getattr(exc, "message_dict", {"": exc.messages}).values())


@login_required
@require_POST
def budget_request_new(request: HttpRequest) -> HttpResponse:
    """The "Request more allowance" form on My tokens."""
    amount = form_decimal(request.POST.get("amount", ""))
    if amount is None:
        messages.error(request, "Give the amount as a number.")
        return redirect("pages:my-tokens")
    try:
        made = budget_request_create(
            user=request.user, amount=amount, reason=request.POST.get("reason", "")
        )
    except ValidationError as exc:
        messages.error(request, "Not sent. " + _service_message(exc))
    else:
        messages.success(request, f"Request for {made.amount:,} sent to your managers.")
    return redirect("pages:my-tokens")


@login_required
def approvals(request: HttpRequest) -> HttpResponse:
    """Pending requests the user may decide, and the last decided ones they may see."""
    user = request.user
    if not (roles.is_admin(user) or roles.managed_cost_center_ids(user) or roles.is_finance(user)):
        raise PermissionDenied
    visible = budget_requests_visible(user)
    pending = [
        (r, can_decide(user, r)) for r in visible.filter(status=BudgetRequest.Status.PENDING)
    ]
    decided = visible.exclude(status=BudgetRequest.Status.PENDING)[:50]
    context = {"nav": "approvals", "pending": pending, "decided": decided}
    return render(request, "budgets/approvals.html", context)


DECIDE_RETURNS = ("/manage/overview/", "/manage/team/")


@login_required
@require_POST
def approval_decide(request: HttpRequest, pk: int) -> HttpResponse:
    target = get_object_or_404(budget_requests_visible(request.user), pk=pk)
    # The dashboards decide in place and return there; anything else goes back to Approvals.
    back = request.POST.get("next", "")
    back = back if back in DECIDE_RETURNS else reverse("pages:approvals")
    approve = request.POST.get("decision") == "approve"
    raw = request.POST.get("amount", "").strip()
    amount = form_decimal(raw) if raw else None
    if raw and amount is None:
        messages.error(request, "Give the approved amount as a number, or leave it empty.")
        return redirect(back)
    try:
        decided = budget_request_decide(
            actor=request.user,
            request_id=target.pk,
            approve=approve,
            amount=amount,
            note=request.POST.get("note", ""),
        )
    except ValidationError as exc:
        messages.error(request, "Not decided. " + _service_message(exc))
    else:
        messages.success(request, f"Request of {decided.employee.name} {decided.status}.")
    return redirect(back)
