"""Pages for keys (create, revoke) and the model catalogue (upstreams, routes, price overrides;
admins only). The proxy is metering.proxy."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
import secrets
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from budgets import roles
from budgets.pages import form_decimal, require_admin
from metering import page_selectors
from metering.catalog_services import (
    DeploymentData,
    PriceData,
    RouteData,
    UpstreamData,
    price_override_create,
    route_create,
    route_deployments_set,
    route_update,
    upstream_update,
)
from metering.models import ModelRoute, Upstream, VirtualKey
from metering.services import key_create, key_revoke

NEW_KEY_SESSION = "tb_new_key"
NEW_KEY_COOKIE = "tb_new_key_pad"
NEW_KEY_COOKIE_PATH = "/me/"
NEW_KEY_SECONDS = 300


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def _xor(data: bytes, pad: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, pad, strict=True))


def new_key_hand_over(request: HttpRequest, response: HttpResponse, *, key: Any, raw: str) -> None:
    """Carry a new raw key across one redirect without storing it anywhere readable: the session
    (a database row) holds it encrypted with a one-time pad, and the pad travels only in a
    short-lived cookie of the browser that asked. Neither half alone reveals the key."""
    data = raw.encode()
    pad = secrets.token_bytes(len(data))
    request.session[NEW_KEY_SESSION] = {
        "id": key.pk,
        "name": key.name,
        "sealed": _b64(_xor(data, pad)),
    }
    response.set_cookie(
        NEW_KEY_COOKIE,
        _b64(pad),
        max_age=NEW_KEY_SECONDS,
        path=NEW_KEY_COOKIE_PATH,
        secure=settings.SESSION_COOKIE_SECURE,
        httponly=True,
        samesite="Strict",
    )


def new_key_take(request: HttpRequest) -> dict[str, Any] | None:
    """The new key for the landing page, once: the session half is removed as it is read (call
    `new_key_forget` on the response to drop the cookie half)."""
    held = request.session.pop(NEW_KEY_SESSION, None)
    pad = request.COOKIES.get(NEW_KEY_COOKIE, "")
    if not isinstance(held, dict) or not pad:
        return None
    try:
        raw = _xor(base64.urlsafe_b64decode(held["sealed"]), base64.urlsafe_b64decode(pad))
        return {"id": held["id"], "name": held["name"], "raw": raw.decode()}
    except (KeyError, ValueError, binascii.Error, UnicodeDecodeError):
        return None  # a stale or tampered half: nothing to show


def new_key_forget(request: HttpRequest, response: HttpResponse) -> None:
    if NEW_KEY_COOKIE in request.COOKIES:
        response.delete_cookie(NEW_KEY_COOKIE, path=NEW_KEY_COOKIE_PATH, samesite="Strict")


def _key_terms(post: Any, *, choices: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The key form's cap, expiry and model scope as `key_create` takes them, and the problems
    of values that are not even well-formed (the service checks the rest)."""
    problems: list[str] = []
    terms: dict[str, Any] = {"cap_tokens": None, "expires_at": None, "allowed_models": []}
    cap = post.get("cap_tokens", "").replace(",", "").replace("_", "").strip()
    if cap:
        if cap.isdigit():
            terms["cap_tokens"] = int(cap)
        else:
            problems.append("The cap is a whole number of tokens, e.g. 500000, or empty.")
    expires = post.get("expires_on", "").strip()
    if expires:
        try:
            day = dt.date.fromisoformat(expires)
        except ValueError:
            problems.append("The expiry is a date (YYYY-MM-DD), or empty for none.")
        else:
            # The key works through the whole chosen day, in the site's time zone.
            terms["expires_at"] = timezone.make_aware(
                dt.datetime.combine(day + dt.timedelta(days=1), dt.time.min)
            )
    models_ = [m for m in post.getlist("allowed_models") if m]
    unknown = [m for m in models_ if m not in choices]
    if unknown:
        problems.append(f"Not a model you may use: {', '.join(unknown)}.")
    terms["allowed_models"] = models_
    return terms, problems


KEY_FIELD_LABELS = {"name": "Name", "expires_at": "Expiry", "cap_tokens": "Cap"}


def key_form_errors(exc: ValidationError) -> list[str]:
    """The service's refusal as sentences, each led by the form field it is about."""
    return [
        f"{KEY_FIELD_LABELS[field]}: {' '.join(problems)}"
        if field in KEY_FIELD_LABELS
        else " ".join(problems)
        for field, problems in exc.message_dict.items()
    ]


@login_required
@require_POST
def key_new(request: HttpRequest) -> HttpResponse:
    """Mint a key for the signed-in employee, with an optional lifetime cap, expiry date and
    model scope (a subset of what the policy allows); the raw key is shown once, on the next
    page. Any problem mints nothing and says why."""
    employee = roles.employee_of(request.user)
    if employee is None or not employee.active:
        raise PermissionDenied
    name = request.POST.get("name", "").strip()[:100]
    choices = page_selectors.key_model_choices(employee=employee)
    terms, problems = _key_terms(request.POST, choices=choices)
    try:
        if problems:
            raise ValidationError({"form": problems})
        key, raw = key_create(
            employee=employee, name=name, actor=request.user, source="admin", **terms
        )
    except ValidationError as exc:
        messages.error(request, "No key was created. " + " ".join(key_form_errors(exc)))
        return redirect("pages:my-tokens")
    # The key crosses one redirect (so a reload cannot mint another) and the landing page takes
    # it, so it is rendered exactly once.
    response = redirect("pages:my-tokens")
    new_key_hand_over(request, response, key=key, raw=raw)
    return response


@login_required
@require_POST
def key_remove(request: HttpRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(VirtualKey.objects.select_related("employee"), pk=pk)
    if not roles.can_manage_keys(request.user, key.employee):
        raise PermissionDenied
    if request.POST.get("confirm") != key.prefix:
        # The revoke form names the key and sends its prefix; without it nothing is revoked.
        messages.error(request, f"Confirm the revoke of key “{key.name}” ({key.prefix}…) first.")
    else:
        key_revoke(key=key, actor=request.user, source="admin")
        messages.success(request, f"Key “{key.name}” revoked; it stops working within seconds.")
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = "pages:my-tokens"
    return redirect(target or "pages:my-tokens")


def _field_errors(exc: ValidationError, fields: Any) -> dict[str, str]:
    """A service's field -> messages dict as one message per form field; the rest (uniqueness
    across fields) under `form`, shown above the form."""
    errors: dict[str, str] = {}
    for name, problems in exc.message_dict.items():
        key = name if name in fields else "form"
        errors[key] = " ".join(filter(None, [errors.get(key, ""), *problems]))
    return errors


def _cache_note() -> str:
    seconds = settings.TB_KEY_CACHE_SECONDS
    return (
        f"Running proxies pick up a change within {seconds} s"
        if seconds
        else "Running proxies pick up a change at their next call"
    ) + " (their route and price caches expire); calls already in flight finish as they began."


@login_required
def routes(request: HttpRequest) -> HttpResponse:
    """The model catalogue: upstreams, routes with the price each is charged at now, prices."""
    require_admin(request.user)
    view = page_selectors.catalogue_view(now=timezone.now())
    context = {"nav": "routes", "catalogue": view, "cache_note": _cache_note()}
    return render(request, "metering/routes.html", context)


# --- routes -----------------------------------------------------------------------------------

ROUTE_FORM = ("public_name", "upstream", "upstream_model", "default_max_output_tokens")


def _route_form(route: ModelRoute) -> dict[str, Any]:
    return {
        "public_name": route.public_name,
        "upstream": str(route.upstream_id or ""),
        "upstream_model": route.upstream_model,
        "default_max_output_tokens": str(route.default_max_output_tokens),
        "unmetered_cost": route.unmetered_cost,
        "active": route.active,
        "fallback_models": ", ".join(route.fallback_models or ()),
    }


def _route_data(post: Any) -> tuple[RouteData, dict[str, Any], dict[str, str]]:
    form = {name: post.get(name, "").strip() for name in ROUTE_FORM}
    form["unmetered_cost"] = post.get("unmetered_cost") == "on"
    form["active"] = post.get("active") == "on"
    errors: dict[str, str] = {}
    form["fallback_models"] = post.get("fallback_models", "").strip()
    data: RouteData = {
        "public_name": form["public_name"],
        "upstream_model": form["upstream_model"],
        "unmetered_cost": form["unmetered_cost"],
        "active": form["active"],
        "fallback_models": [n.strip() for n in form["fallback_models"].split(",") if n.strip()],
    }
    upstream = {str(u.pk): u for u in page_selectors.upstreams()}.get(form["upstream"])
    if upstream is None:
        errors["upstream"] = "Choose an upstream."
    else:
        data["upstream"] = upstream
    tokens = form["default_max_output_tokens"].replace(",", "").replace("_", "")
    if not tokens.isdigit():
        errors["default_max_output_tokens"] = "A whole number of tokens, e.g. 4096."
    else:
        data["default_max_output_tokens"] = int(tokens)
    return data, form, errors


def _route_page(
    request: HttpRequest,
    route: ModelRoute | None,
    form: dict[str, Any],
    errors: dict[str, str],
    *,
    deployment_rows: list[dict[str, str]] | None = None,
    deployment_errors: dict[str, str] | None = None,
) -> HttpResponse:
    context = {
        "nav": "routes",
        "route": route,
        "form": form,
        "errors": errors,
        "upstreams": page_selectors.upstreams(),
        "cache_note": _cache_note(),
        "deployment_rows": deployment_rows
        if deployment_rows is not None
        else _deployment_rows(route),
        "deployment_errors": deployment_errors or {},
    }
    failed = errors or deployment_errors
    return render(request, "metering/route_form.html", context, status=400 if failed else 200)


DEPLOYMENT_FORM = ("upstream", "upstream_model", "weight", "priority", "rpm", "tpm")
BLANK_DEPLOYMENT_ROWS = 2


def _deployment_rows(route: ModelRoute | None) -> list[dict[str, str]]:
    """The route's deployments as form rows, and blank rows to add more."""
    rows = []
    if route is not None:
        for d in route.deployments.all():
            rows.append(
                {
                    "upstream": str(d.upstream_id),
                    "upstream_model": d.upstream_model,
                    "weight": str(d.weight),
                    "priority": str(d.priority),
                    "rpm": "" if d.rpm is None else str(d.rpm),
                    "tpm": "" if d.tpm is None else str(d.tpm),
                }
            )
    blank = {name: "" for name in DEPLOYMENT_FORM}
    return rows + [dict(blank, weight="1", priority="0") for _ in range(BLANK_DEPLOYMENT_ROWS)]


def _deployments_data(
    post: Any,
) -> tuple[list[DeploymentData], list[dict[str, str]], dict[str, str]]:
    """The posted rows (those with an upstream model), as service data, form rows and errors."""
    upstreams = {str(u.pk): u for u in page_selectors.upstreams()}
    count = min(int(post.get("deployment_count", "0") or 0), 50)
    data: list[DeploymentData] = []
    rows: list[dict[str, str]] = []
    errors: dict[str, str] = {}
    for index in range(count):
        row = {name: post.get(f"d{index}-{name}", "").strip() for name in DEPLOYMENT_FORM}
        rows.append(row)
        if not row["upstream_model"]:
            continue
        upstream = upstreams.get(row["upstream"])
        numbers: dict[str, int | None] = {}
        for name in ("weight", "priority", "rpm", "tpm"):
            text = row[name].replace(",", "").replace("_", "")
            if not text and name in ("rpm", "tpm"):
                numbers[name] = None
            elif text.isdigit():
                numbers[name] = int(text)
            else:
                errors[f"row{index}"] = f"{name}: a whole number."
        if upstream is None:
            errors[f"row{index}"] = "Choose an upstream."
        if f"row{index}" in errors:
            continue
        data.append({"upstream": upstream, "upstream_model": row["upstream_model"], **numbers})  # type: ignore[typeddict-item]
    if not data and not errors:
        errors["form"] = "A route needs at least one deployment."
    return data, rows, errors


@login_required
@require_POST
def route_deployments(request: HttpRequest, pk: int) -> HttpResponse:
    """Replace a route's deployments (the route's own upstream and model become the first's)."""
    require_admin(request.user)
    route = get_object_or_404(ModelRoute.objects.select_related("upstream"), pk=pk)
    data, rows, errors = _deployments_data(request.POST)
    if not errors:
        try:
            route_deployments_set(actor=request.user, route=route, deployments=data, source="admin")
        except ValidationError as exc:
            errors = {"form": " ".join(exc.messages)}
        else:
            messages.success(request, f"Deployments of {route.public_name} saved.")
            return redirect("pages:route-edit", pk=route.pk)
    rows += [dict.fromkeys(DEPLOYMENT_FORM, "") for _ in range(BLANK_DEPLOYMENT_ROWS)]
    return _route_page(
        request, route, _route_form(route), {}, deployment_rows=rows, deployment_errors=errors
    )


@login_required
def route_new(request: HttpRequest) -> HttpResponse:
    require_admin(request.user)
    return _route_save(request, None)


@login_required
def route_edit(request: HttpRequest, pk: int) -> HttpResponse:
    require_admin(request.user)
    route = get_object_or_404(ModelRoute.objects.select_related("upstream"), pk=pk)
    return _route_save(request, route)


def _route_save(request: HttpRequest, route: ModelRoute | None) -> HttpResponse:
    """The route form: shown on GET; on POST saved through the catalogue service (a new route
    when `route` is None), or shown again with the errors beside their fields."""
    form = _route_form(route or ModelRoute())
    errors: dict[str, str] = {}
    if request.method == "POST":
        data, form, errors = _route_data(request.POST)
        if not errors:
            try:
                if route is None:
                    saved = route_create(actor=request.user, data=data, source="admin")
                else:
                    saved = route_update(actor=request.user, route=route, data=data, source="admin")
            except ValidationError as exc:
                errors = _field_errors(exc, form)
            else:
                done = "added" if route is None else "saved"
                messages.success(request, f"Route {saved.public_name} {done}.")
                return redirect("pages:routes")
    return _route_page(request, route, form, errors)


# --- upstreams --------------------------------------------------------------------------------


# What an upstream's `api_version` field means for the kinds that use it (the page's label and
# hint); other kinds have no such field on the page.
API_VERSION_FIELDS = {
    "azure_openai": ("API version", "Azure's api-version, e.g. 2024-10-21."),
    "bedrock": ("Region", "The AWS region signed for, e.g. eu-west-1 (empty: the base URL's)."),
    "bedrock_anthropic": (
        "Region",
        "The AWS region signed for, e.g. us-east-1 (empty: the base URL's).",
    ),
    "vertex": ("Region", "The Vertex AI region of the base URL, e.g. us-east5."),
    "vertex_anthropic": ("Region", "The Vertex AI region of the base URL, e.g. us-east5."),
}


@login_required
def upstream_edit(request: HttpRequest, pk: int) -> HttpResponse:
    """URL, region or API version, timeouts and state of an upstream. Its credential is an
    environment variable set in configuration: the page shows the variable's name and whether
    it is set, never a value, and has no field that would accept one."""
    require_admin(request.user)
    upstream = get_object_or_404(Upstream, pk=pk)
    version = API_VERSION_FIELDS.get(upstream.kind)
    form: dict[str, Any] = {
        "base_url": upstream.base_url,
        "api_version": upstream.api_version,
        "connect_timeout": format(upstream.connect_timeout.normalize(), "f"),
        "read_timeout": format(upstream.read_timeout.normalize(), "f"),
        "active": upstream.active,
    }
    errors: dict[str, str] = {}
    if request.method == "POST":
        form = {
            n: request.POST.get(n, "").strip()
            for n in ("base_url", "api_version", "connect_timeout", "read_timeout")
        }
        form["active"] = request.POST.get("active") == "on"
        data: UpstreamData = {"base_url": form["base_url"], "active": form["active"]}
        if version is not None:
            data["api_version"] = form["api_version"]
        for name in ("connect_timeout", "read_timeout"):
            seconds = form_decimal(form[name])
            if seconds is None:
                errors[name] = "A number of seconds, e.g. 10."
            else:
                data[name] = seconds  # type: ignore[literal-required]
        if not errors:
            try:
                saved = upstream_update(
                    actor=request.user, upstream=upstream, data=data, source="admin"
                )
            except ValidationError as exc:
                errors = _field_errors(exc, form)
            else:
                messages.success(request, f"Upstream {saved.name} saved.")
                return redirect("pages:routes")
    context = {
        "nav": "routes",
        "upstream": upstream,
        "credential_set": bool(upstream.credential_env and os.environ.get(upstream.credential_env)),
        "version_label": version[0] if version else "",
        "version_hint": version[1] if version else "",
        "aws_signed": upstream.kind in (Upstream.Kind.BEDROCK, Upstream.Kind.BEDROCK_ANTHROPIC),
        "form": form,
        "errors": errors,
        "cache_note": _cache_note(),
    }
    return render(request, "metering/upstream_form.html", context, status=400 if errors else 200)


# --- price overrides --------------------------------------------------------------------------

PRICE_AMOUNTS = (
    "input_per_mtok",
    "output_per_mtok",
    "cached_input_per_mtok",
    "cache_write_per_mtok",
    "energy_wh_per_1k_input",
    "energy_wh_per_1k_output",
)
PRICE_REQUIRED = ("input_per_mtok", "output_per_mtok")
LOCAL_MINUTE = "%Y-%m-%dT%H:%M"


def _price_data(post: Any) -> tuple[PriceData, dict[str, Any], dict[str, str]]:
    form = {n: post.get(n, "").strip() for n in ("model", "effective_from", *PRICE_AMOUNTS)}
    errors: dict[str, str] = {}
    data: PriceData = {"model": form["model"]}
    for name in PRICE_AMOUNTS:
        if not form[name] and name not in PRICE_REQUIRED:
            data[name] = None  # type: ignore[literal-required]
            continue
        value = form_decimal(form[name])
        if value is None:
            errors[name] = (
                "A number, e.g. 2.50." if name in PRICE_REQUIRED else "A number, or empty."
            )
        else:
            data[name] = value  # type: ignore[literal-required]
    try:
        start = dt.datetime.strptime(form["effective_from"], LOCAL_MINUTE)
    except ValueError:
        errors["effective_from"] = "A date and time, e.g. 2026-01-01T00:00."
    else:
        data["effective_from"] = timezone.make_aware(start, timezone.get_current_timezone())
    return data, form, errors


@login_required
def price_new(request: HttpRequest) -> HttpResponse:
    """Add a price override (a negotiated price). Rows are appended, never edited, so calls
    already recorded keep the price they were charged at."""
    require_admin(request.user)
    now = timezone.localtime().replace(second=0, microsecond=0)
    form: dict[str, Any] = {"model": request.GET.get("model", "")[:200]}
    form["effective_from"] = now.strftime(LOCAL_MINUTE)
    errors: dict[str, str] = {}
    if request.method == "POST":
        data, form, errors = _price_data(request.POST)
        if not errors:
            try:
                made = price_override_create(actor=request.user, data=data, source="admin")
            except ValidationError as exc:
                errors = _field_errors(exc, form)
            else:
                messages.success(
                    request,
                    f"Price override for {made.model} from "
                    f"{timezone.localtime(made.effective_from):%Y-%m-%d %H:%M} added.",
                )
                return redirect("pages:routes")
    context = {
        "nav": "routes",
        "form": form,
        "errors": errors,
        "models": page_selectors.upstream_model_names(),
        "time_zone": timezone.get_current_timezone_name(),
        "cache_note": _cache_note(),
    }
    return render(request, "metering/price_form.html", context, status=400 if errors else 200)
