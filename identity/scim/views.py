"""/scim/v2/: the SCIM 2.0 server (RFC 7644) the identity provider provisions through.

Authenticated by a dedicated bearer token (`manage.py scim_token`; only its hash is stored).
Users are employees: POST is a joiner, PUT/PATCH a change or a mover (a new cost center is a
move, so history stays), DELETE or `active: false` a leaver (deactivated, never deleted).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from budgets.models import Employee
from identity import services
from identity.models import ScimGroup, ScimUser
from identity.scim import query, resources, schemas
from identity.scim.resources import ScimError

CONTENT_TYPE = "application/scim+json"


class ScimRequest(HttpRequest):
    """A request past `scim_view`'s token check: the actor its changes are recorded under."""

    scim_actor: str


def _json(data: Any, status: int = 200, location: str | None = None) -> HttpResponse:
    response = HttpResponse(json.dumps(data), status=status, content_type=CONTENT_TYPE)
    if location:
        response["Location"] = location
    return response


def _error(status: int, detail: str, scim_type: str | None = None) -> HttpResponse:
    body: dict[str, Any] = {"schemas": [schemas.ERROR], "status": str(status), "detail": detail}
    if scim_type:
        body["scimType"] = scim_type
    return _json(body, status)


def _base(request: HttpRequest) -> str:
    return request.build_absolute_uri("/scim/v2").rstrip("/")


def _body(request: HttpRequest) -> Any:
    try:
        return json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScimError(400, "The body is not JSON.", "invalidSyntax") from exc


def scim_view(*methods: str) -> Callable:
    """Token check, method check and SCIM-shaped errors around a handler."""

    def wrap(handler: Callable) -> Callable:
        @csrf_exempt
        # Typed as what the handler receives: the actor is set before the handler runs.
        def view(request: ScimRequest, **kwargs: Any) -> HttpResponse:
            header = request.headers.get("Authorization", "")
            scheme, _, raw = header.partition(" ")
            token = services.scim_token_check(raw.strip()) if scheme.lower() == "bearer" else None
            if token is None:
                response = _error(401, "A valid SCIM bearer token is required.")
                response["WWW-Authenticate"] = 'Bearer realm="scim"'
                return response
            if request.method not in methods:
                return _error(405, f"{request.method} is not supported here.")
            request.scim_actor = f"scim:{token.name}"
            try:
                return handler(request, **kwargs)
            except ScimError as exc:
                return _error(exc.status, exc.detail, exc.scim_type)
            except ValidationError as exc:
                detail = "; ".join(
                    f"{field}: {' '.join(messages)}"
                    for field, messages in getattr(exc, "message_dict", {"": exc.messages}).items()
                )
                unique = "already exists" in detail
                return _error(
                    409 if unique else 400, detail, "uniqueness" if unique else "invalidValue"
                )
            except IntegrityError:
                return _error(409, "A resource with these unique values exists.", "uniqueness")

        return view

    return wrap


def _names(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value or "").split(",") if v.strip()]


def _projection(params: Any) -> tuple[list[str], list[str]]:
    return _names(params.get("attributes")), _names(params.get("excludedAttributes"))


def _one(request: HttpRequest, document: dict[str, Any], status: int = 200) -> HttpResponse:
    attributes, excluded = _projection(request.GET)
    location = document["meta"]["location"] if status == 201 else None
    return _json(query.project(document, attributes, excluded), status, location)


@dataclass(frozen=True)
class _Resource:
    """A resource type as a listing needs it: its rows' documents and its filter attributes."""

    render: Callable[[Any, str], dict[str, Any]]  # (row, base URL) -> SCIM document
    filters: query.AttrMap


def _page(request: HttpRequest, queryset: Any, resource: _Resource, params: Any) -> HttpResponse:
    """A ListResponse (RFC 7644 3.4.2): `params` are the query string, or a .search body."""
    expression = params.get("filter")
    if expression:
        queryset = query.filter_apply(queryset, str(expression), resource.filters)
    try:
        start = max(int(params.get("startIndex", 1)), 1)
        count = int(params.get("count", settings.TB_SCIM_MAX_RESULTS))
    except (TypeError, ValueError) as exc:
        raise ScimError(400, "startIndex and count are integers.", "invalidValue") from exc
    count = min(max(count, 0), settings.TB_SCIM_MAX_RESULTS)
    total = queryset.count()
    rows = list(queryset[start - 1 : start - 1 + count]) if count else []
    base = _base(request)
    attributes, excluded = _projection(params)
    return _json(
        {
            "schemas": [schemas.LIST],
            "totalResults": total,
            "startIndex": start,
            "itemsPerPage": len(rows),
            "Resources": [
                query.project(resource.render(row, base), attributes, excluded) for row in rows
            ],
        }
    )


def _search(request: HttpRequest, queryset: Any, resource: _Resource) -> HttpResponse:
    body = _body(request)
    if not isinstance(body, dict):
        raise ScimError(400, "A SearchRequest is a JSON object.", "invalidSyntax")
    return _page(request, queryset, resource, body)


# --- discovery ----------------------------------------------------------------------------------


@scim_view("GET")
def service_provider_config(request: HttpRequest) -> HttpResponse:
    return _json(schemas.service_provider_config(_base(request), settings.TB_SCIM_MAX_RESULTS))


def _schema(schema_id: str) -> dict[str, Any]:
    if schema_id == schemas.ENTERPRISE:
        return schemas.enterprise_schema(
            settings.TB_SCIM_COST_CENTER_ATTRIBUTE, resources.cost_center_values()
        )
    return schemas.SCHEMAS[schema_id]


@scim_view("GET")
def schema_list(request: HttpRequest) -> HttpResponse:
    base = _base(request)
    return _json(_listing([schemas.schema_document(_schema(i), base) for i in schemas.SCHEMA_IDS]))


@scim_view("GET")
def schema_detail(request: HttpRequest, schema_id: str) -> HttpResponse:
    if schema_id not in schemas.SCHEMA_IDS:
        raise ScimError(404, f"No schema {schema_id}.")
    return _json(schemas.schema_document(_schema(schema_id), _base(request)))


@scim_view("POST")
def root_search(request: HttpRequest) -> HttpResponse:
    """/.search (RFC 7644 3.4.3): Users, then Groups, each narrowed by the filter where it
    names that type's attributes."""
    body = _body(request)
    if not isinstance(body, dict):
        raise ScimError(400, "A SearchRequest is a JSON object.", "invalidSyntax")
    base = _base(request)
    found: list[dict[str, Any]] = []
    parsed = False
    for queryset, resource in ((_employees(), _USERS), (_groups(), _GROUPS)):
        if body.get("filter"):
            try:
                queryset = query.filter_apply(queryset, str(body["filter"]), resource.filters)
            except ScimError:
                continue
            parsed = True
        found.extend(resource.render(row, base) for row in queryset[: settings.TB_SCIM_MAX_RESULTS])
    if body.get("filter") and not parsed:
        raise ScimError(
            400, "The filter names no attribute this server filters on.", "invalidFilter"
        )
    try:
        start = max(int(body.get("startIndex", 1)), 1)
        count = min(
            max(int(body.get("count", settings.TB_SCIM_MAX_RESULTS)), 0),
            settings.TB_SCIM_MAX_RESULTS,
        )
    except (TypeError, ValueError) as exc:
        raise ScimError(400, "startIndex and count are integers.", "invalidValue") from exc
    attributes, excluded = _projection(body)
    page = [query.project(d, attributes, excluded) for d in found[start - 1 : start - 1 + count]]
    return _json(
        {
            "schemas": [schemas.LIST],
            "totalResults": len(found),
            "startIndex": start,
            "itemsPerPage": len(page),
            "Resources": page,
        }
    )


@scim_view("GET", "POST", "PUT", "PATCH", "DELETE")
def not_found(request: HttpRequest, rest: str) -> HttpResponse:
    raise ScimError(404, f"No SCIM endpoint /{rest}.")


@scim_view("GET")
def resource_type_list(request: HttpRequest) -> HttpResponse:
    items = [schemas.resource_type_document(n, _base(request)) for n in schemas.RESOURCE_TYPES]
    return _json(_listing(items))


@scim_view("GET")
def resource_type_detail(request: HttpRequest, name: str) -> HttpResponse:
    if name not in schemas.RESOURCE_TYPES:
        raise ScimError(404, f"No resource type {name}.")
    return _json(schemas.resource_type_document(name, _base(request)))


def _listing(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schemas": [schemas.LIST],
        "totalResults": len(items),
        "startIndex": 1,
        "itemsPerPage": len(items),
        "Resources": items,
    }


# --- users --------------------------------------------------------------------------------------


def _employees() -> Any:
    """Employees as SCIM shows them: all but those a SCIM DELETE took out."""
    return (
        Employee.objects.exclude(scim__deleted=True)
        .select_related("scim", "cost_center")
        .prefetch_related("scim_groups")
        .order_by("pk")
    )


def _employee(pk: str) -> Employee:
    employee = _employees().filter(pk=int(pk)).first() if pk.isdigit() else None
    if employee is None:
        raise ScimError(404, f"No User {pk}.")
    return employee


def _render_user(employee: Employee, base: str) -> dict[str, Any]:
    return resources.user_document(employee, base)


_USERS = _Resource(_render_user, query.USER_FILTERS)


def _user_name_free(user_name: str, employee: Employee | None) -> None:
    taken = ScimUser.objects.filter(user_name__iexact=user_name)
    if employee is not None:
        taken = taken.exclude(employee=employee)
    if taken.exists():
        raise ScimError(409, f"userName {user_name!r} is taken.", "uniqueness")


@scim_view("GET", "POST")
def users(request: ScimRequest) -> HttpResponse:
    if request.method == "GET":
        return _page(request, _employees(), _USERS, request.GET)
    data = resources.user_data(_body(request), None)
    returning = Employee.objects.filter(employee_id=data.employee_id, scim__deleted=True).first()
    _user_name_free(data.user_name, returning)
    if returning is None and Employee.objects.filter(employee_id=data.employee_id).exists():
        raise ScimError(409, f"Employee {data.employee_id} exists.", "uniqueness")
    taken = Employee.objects.filter(email=data.email)
    if returning is not None:
        taken = taken.exclude(pk=returning.pk)
    if taken.exists():
        raise ScimError(409, f"The email {data.email} is taken.", "uniqueness")
    if returning is not None:
        # A rehire the IdP deleted before: the same employee comes back, history and all.
        employee = services.scim_user_update(
            actor=request.scim_actor, employee=returning, data=data
        )
    else:
        employee = services.scim_user_create(actor=request.scim_actor, data=data)
    return _one(request, resources.user_document(_employee(str(employee.pk)), _base(request)), 201)


@scim_view("POST")
def users_search(request: HttpRequest) -> HttpResponse:
    return _search(request, _employees(), _USERS)


@scim_view("GET", "PUT", "PATCH", "DELETE")
def user_detail(request: ScimRequest, pk: str) -> HttpResponse:
    employee = _employee(pk)
    base = _base(request)
    if request.method == "GET":
        return _one(request, resources.user_document(employee, base))
    if request.method == "DELETE":
        services.scim_user_deactivate(actor=request.scim_actor, employee=employee)
        return HttpResponse(status=204)
    if request.method == "PUT":
        document = _body(request)
    else:
        document = resources.patch_apply(resources.user_document(employee, base), _body(request))
    data = resources.user_data(document, employee)
    _user_name_free(data.user_name, employee)
    services.scim_user_update(actor=request.scim_actor, employee=employee, data=data)
    return _one(request, resources.user_document(_employee(pk), base))


# --- groups -------------------------------------------------------------------------------------


def _groups() -> Any:
    return ScimGroup.objects.prefetch_related("members").order_by("pk")


def _group(pk: str) -> ScimGroup:
    group = _groups().filter(pk=int(pk)).first() if pk.isdigit() else None
    if group is None:
        raise ScimError(404, f"No Group {pk}.")
    return group


def _render_group(group: ScimGroup, base: str) -> dict[str, Any]:
    return resources.group_document(group, base)


_GROUPS = _Resource(_render_group, query.GROUP_FILTERS)


def _group_name_free(display_name: str, group: ScimGroup | None) -> None:
    taken = ScimGroup.objects.filter(display_name__iexact=display_name)
    if group is not None:
        taken = taken.exclude(pk=group.pk)
    if taken.exists():
        raise ScimError(409, f"displayName {display_name!r} is taken.", "uniqueness")


@scim_view("GET", "POST")
def groups(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _page(request, _groups(), _GROUPS, request.GET)
    display_name, external_id, members = resources.group_data(_body(request))
    _group_name_free(display_name, None)
    group = services.scim_group_save(
        group=None, display_name=display_name, external_id=external_id, members=members
    )
    return _one(request, resources.group_document(_group(str(group.pk)), _base(request)), 201)


@scim_view("POST")
def groups_search(request: HttpRequest) -> HttpResponse:
    return _search(request, _groups(), _GROUPS)


@scim_view("GET", "PUT", "PATCH", "DELETE")
def group_detail(request: HttpRequest, pk: str) -> HttpResponse:
    group = _group(pk)
    base = _base(request)
    if request.method == "GET":
        return _one(request, resources.group_document(group, base))
    if request.method == "DELETE":
        services.scim_group_delete(group=group)
        return HttpResponse(status=204)
    if request.method == "PUT":
        document = _body(request)
    else:
        document = resources.patch_apply(resources.group_document(group, base), _body(request))
    display_name, external_id, members = resources.group_data(document)
    _group_name_free(display_name, group)
    services.scim_group_save(
        group=group, display_name=display_name, external_id=external_id, members=members
    )
    return _one(request, resources.group_document(_group(pk), base))
