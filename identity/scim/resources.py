"""SCIM resources <-> Tokenbudget rows (pure but for the lookups), PATCH and filters.

A User is an `Employee` (with its `ScimUser`): `id` is the employee's primary key, the HR id
is the enterprise extension's `employeeNumber` (else `externalId`, else `userName`), and the
cost center comes from the enterprise attribute TB_SCIM_COST_CENTER_ATTRIBUTE through
TB_SCIM_COST_CENTER_MAP. A Group is a `ScimGroup`.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from budgets.models import CostCenter, Employee
from identity.models import ScimGroup
from identity.scim.schemas import ENTERPRISE, GROUP, USER
from identity.services import ScimUserData


class ScimError(Exception):
    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type


def _stamp(value: Any) -> str:
    return value.isoformat().replace("+00:00", "Z")


# --- users ------------------------------------------------------------------------------------


def user_document(employee: Employee, base: str) -> dict[str, Any]:
    scim = getattr(employee, "scim", None)
    enterprise: dict[str, Any] = {"employeeNumber": employee.employee_id}
    enterprise[settings.TB_SCIM_COST_CENTER_ATTRIBUTE] = _external_cost_center(
        employee.cost_center.code
    )
    document: dict[str, Any] = {
        "schemas": [USER, ENTERPRISE],
        "id": str(employee.pk),
        "userName": scim.user_name if scim else employee.email,
        "emails": [
            {
                "value": employee.email,
                "type": "work",
                "primary": scim.email_primary if scim else True,
            }
        ],
        "active": employee.active,
        "groups": [
            {"value": str(g.pk), "$ref": f"{base}/Groups/{g.pk}"}
            for g in employee.scim_groups.all()
        ],
        ENTERPRISE: enterprise,
        "meta": {
            "resourceType": "User",
            "created": _stamp(employee.created_at),
            "lastModified": _stamp(employee.updated_at),
            "location": f"{base}/Users/{employee.pk}",
        },
    }
    if employee.name:
        document["displayName"] = employee.name
    if scim and scim.external_id:
        document["externalId"] = scim.external_id
    return document


def _cost_center_map() -> dict[str, str]:
    mapping = {}
    for item in settings.TB_SCIM_COST_CENTER_MAP:
        if "=" in item:
            value, code = item.split("=", 1)
            mapping[value.strip()] = code.strip()
    return mapping


def cost_center_values() -> list[str]:
    """The values the cost-center attribute may take: the mapped ones, then the codes."""
    mapped = _cost_center_map()
    codes = list(CostCenter.objects.order_by("code").values_list("code", flat=True))
    return [*mapped, *(code for code in codes if code not in mapped.values())]


def _external_cost_center(code: str) -> str:
    for value, mapped in _cost_center_map().items():
        if mapped == code:
            return value
    return code


def _cost_center(value: Any, current: Employee | None) -> CostCenter:
    if value in (None, ""):
        if current is not None:
            return current.cost_center
        value = settings.TB_SCIM_DEFAULT_COST_CENTER
        if not value:
            raise ScimError(
                400,
                f"{ENTERPRISE}:{settings.TB_SCIM_COST_CENTER_ATTRIBUTE} is required "
                "(no TB_SCIM_DEFAULT_COST_CENTER is set).",
                "invalidValue",
            )
    if not isinstance(value, str):
        raise ScimError(400, "The cost center must be a string.", "invalidValue")
    code = _cost_center_map().get(value, value)
    center = CostCenter.objects.filter(code=code).first()
    if center is None:
        raise ScimError(400, f"Unknown cost center {value!r}.", "invalidValue")
    return center


def _text(value: Any, name: str, max_length: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > max_length:
        raise ScimError(
            400, f"{name}: a string of at most {max_length} characters.", "invalidValue"
        )
    return value.strip()


def user_data(document: Any, current: Employee | None) -> ScimUserData:
    """The employee a full User resource (POST, PUT, or a patched copy) describes."""
    if not isinstance(document, dict):
        raise ScimError(400, "The body must be a JSON object.", "invalidSyntax")
    user_name = _text(document.get("userName"), "userName", 254)
    if not user_name:
        raise ScimError(400, "userName is required.", "invalidValue")
    enterprise = document.get(ENTERPRISE) or {}
    if not isinstance(enterprise, dict):
        raise ScimError(400, f"{ENTERPRISE} must be an object.", "invalidSyntax")
    external_id = _text(document.get("externalId"), "externalId", 200)
    employee_id = _text(enterprise.get("employeeNumber"), "employeeNumber", 64)
    if current is not None:
        employee_id = current.employee_id  # read-only once created (RFC 7643 2.2: ignored)
    employee_id = employee_id or external_id[:64] or user_name[:64]
    email, primary = _primary_email(document.get("emails"))
    email = email or user_name
    try:
        validate_email(email)
    except ValidationError as exc:
        raise ScimError(400, f"No valid email address ({email!r}).", "invalidValue") from exc
    raw_name = document.get("name")
    name = raw_name if isinstance(raw_name, dict) else {}
    display = document.get("displayName") or name.get("formatted")
    if not display and (name.get("givenName") or name.get("familyName")):
        display = f"{name.get('givenName') or ''} {name.get('familyName') or ''}".strip()
    active = document.get("active", True)
    if isinstance(active, str) and active.lower() in ("true", "false"):
        active = active.lower() == "true"  # Entra ID sends booleans as strings in PATCH
    if not isinstance(active, bool):
        raise ScimError(400, "active must be a boolean.", "invalidValue")
    return ScimUserData(
        user_name=user_name,
        employee_id=employee_id,
        email=email.lower(),
        name=_text(display, "displayName", 200),
        cost_center=_cost_center(enterprise.get(settings.TB_SCIM_COST_CENTER_ATTRIBUTE), current),
        active=active,
        external_id=external_id,
        email_primary=primary,
    )


def _primary_email(emails: Any) -> tuple[str, bool]:
    """The address Tokenbudget keeps (the primary one, else the work one, else the first), and
    whether the IdP flagged it primary."""
    if not isinstance(emails, list):
        return "", True
    values = [e for e in emails if isinstance(e, dict) and isinstance(e.get("value"), str)]
    primary = [e for e in values if e.get("primary") in (True, "true", "True")]
    chosen = (primary or [e for e in values if e.get("type") == "work"] or values or [{}])[0]
    flag = chosen.get("primary", True) in (True, "true", "True")
    return (chosen.get("value") or "").strip(), flag


# --- groups -----------------------------------------------------------------------------------


def group_document(group: ScimGroup, base: str) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schemas": [GROUP],
        "id": str(group.pk),
        "displayName": group.display_name,
        "members": [
            {
                "value": str(e.pk),
                "$ref": f"{base}/Users/{e.pk}",
                "type": "User",
            }
            for e in group.members.all()
        ],
        "meta": {
            "resourceType": "Group",
            "created": _stamp(group.created_at),
            "lastModified": _stamp(group.updated_at),
            "location": f"{base}/Groups/{group.pk}",
        },
    }
    if group.external_id:
        document["externalId"] = group.external_id
    return document


def group_data(document: Any) -> tuple[str, str, list[Employee]]:
    if not isinstance(document, dict):
        raise ScimError(400, "The body must be a JSON object.", "invalidSyntax")
    display_name = _text(document.get("displayName"), "displayName", 200)
    if not display_name:
        raise ScimError(400, "displayName is required.", "invalidValue")
    external_id = _text(document.get("externalId"), "externalId", 200)
    members = document.get("members") or []  # a full resource: no members is none
    if not isinstance(members, list):
        raise ScimError(400, "members must be a list.", "invalidSyntax")
    ids = set()
    for member in members:
        value = member.get("value") if isinstance(member, dict) else None
        if not isinstance(value, str) or not value.isdigit():
            raise ScimError(400, f"Unknown member {value!r}.", "invalidValue")
        ids.add(int(value))
    found = list(Employee.objects.filter(pk__in=ids))
    if len(found) != len(ids):
        raise ScimError(400, "A member is not a known User.", "invalidValue")
    return display_name, external_id, found


# --- PATCH (RFC 7644 3.5.2) -------------------------------------------------------------------

_VALUE_FILTER = re.compile(r'^(\w+)\[\s*(\w+)\s+eq\s+"([^"]*)"\s*\](?:\.(\w+))?$', re.IGNORECASE)


def patch_apply(document: dict[str, Any], body: Any) -> dict[str, Any]:
    """`document` with the PatchOp `body` applied (add, replace, remove; simple paths, a
    value filter `attr[sub eq "x"]`, and extension URNs)."""
    if not isinstance(body, dict) or not isinstance(body.get("Operations"), list):
        raise ScimError(400, "A PatchOp needs an Operations list.", "invalidSyntax")
    result = copy.deepcopy(document)
    for operation in body["Operations"]:
        if not isinstance(operation, dict):
            raise ScimError(400, "Each operation is an object.", "invalidSyntax")
        op = str(operation.get("op", "")).lower()
        if op not in ("add", "replace", "remove"):
            raise ScimError(400, f"Unknown op {operation.get('op')!r}.", "invalidSyntax")
        path = operation.get("path")
        value = operation.get("value")
        if not path:
            if op == "remove" or not isinstance(value, dict):
                raise ScimError(400, "Without a path the value must be an object.", "noTarget")
            for name, item in value.items():
                _patch_path(result, op, name, item)
            continue
        if not isinstance(path, str):
            raise ScimError(400, "path must be a string.", "invalidPath")
        _patch_path(result, op, path, value)
    return result


def path_split(path: str) -> tuple[dict[str, Any] | None, str, list[str]]:
    for urn in (ENTERPRISE, USER, GROUP):
        if path.lower().startswith(urn.lower()):
            rest = path[len(urn) :].lstrip(":")
            if urn == ENTERPRISE:
                return {"urn": ENTERPRISE}, rest, rest.split(".") if rest else []
            path = rest
    return None, path, path.split(".")


def _patch_path(document: dict[str, Any], op: str, path: str, value: Any) -> None:
    extension, rest, parts = path_split(path)
    if extension is not None:
        target = document.setdefault(ENTERPRISE, {})
        if not parts:  # the whole extension
            if op == "remove":
                document.pop(ENTERPRISE, None)
            elif isinstance(value, dict):
                target.update(value)
            return
        _set(target, op, parts, value)
        return
    match = _VALUE_FILTER.match(rest)
    if match:
        attr, key, wanted, sub = match.groups()
        items = document.get(attr) or []
        chosen = [i for i in items if isinstance(i, dict) and str(i.get(key)) == wanted]
        if op == "remove" and sub is None:
            document[attr] = [i for i in items if i not in chosen]
        elif chosen:
            for item in chosen:
                _set(item, op, [sub or "value"], value)
        elif op != "remove":
            document[attr] = [*items, {key: wanted, (sub or "value"): value}]
        return
    if "[" in rest:
        raise ScimError(400, f"Unsupported path {path!r}.", "invalidPath")
    _set(document, op, parts, value)


def _set(target: dict[str, Any], op: str, parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        target = target.setdefault(attr_key(target, part), {})
        if not isinstance(target, dict):
            raise ScimError(400, f"{part} is not complex.", "invalidPath")
    last = attr_key(target, parts[-1])
    if op == "remove":
        if isinstance(value, list) and isinstance(target.get(last), list):
            drop = {str(v.get("value")) for v in value if isinstance(v, dict)}
            target[last] = [i for i in target[last] if str(i.get("value")) not in drop]
        else:
            target.pop(last, None)
    elif op == "add" and isinstance(target.get(last), list) and isinstance(value, list):
        known = {str(i.get("value")) for i in target[last] if isinstance(i, dict)}
        target[last] = [*target[last], *(v for v in value if str(v.get("value")) not in known)]
    else:
        target[last] = value


def attr_key(target: dict[str, Any], name: str) -> str:
    # Attribute names are case-insensitive (RFC 7643 2.1).
    for existing in target:
        if existing.lower() == name.lower():
            return existing
    return name
