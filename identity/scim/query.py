"""What a SCIM read returns: filters (RFC 7644 3.4.2.2) and the `attributes` /
`excludedAttributes` projection (3.9)."""

from __future__ import annotations

import copy
import re
from typing import Any

from django.db.models import QuerySet
from scim2_filter_parser.lexer import SCIMLexer
from scim2_filter_parser.parser import SCIMParser
from scim2_filter_parser.transpilers.sql import Transpiler

from identity.scim.resources import ScimError, attr_key, path_split
from identity.scim.schemas import ENTERPRISE

# --- filters (RFC 7644 3.4.2.2) ---------------------------------------------------------------

# (attribute, sub-attribute, schema URN) -> column: the attribute map scim2-filter-parser reads.
type AttrMap = dict[tuple[str, str | None, str | None], str]

USER_FILTERS: AttrMap = {
    ("userName", None, None): "identity_scimuser.user_name",
    ("externalId", None, None): "identity_scimuser.external_id",
    ("id", None, None): "budgets_employee.id",
    ("meta", "created", None): "budgets_employee.created_at",
    ("meta", "lastModified", None): "budgets_employee.updated_at",
    ("displayName", None, None): "budgets_employee.name",
    ("name", "formatted", None): "budgets_employee.name",
    ("emails", None, None): "budgets_employee.email",
    ("emails", "value", None): "budgets_employee.email",
    ("active", None, None): "budgets_employee.active",
    ("employeeNumber", None, ENTERPRISE): "budgets_employee.employee_id",
}
GROUP_FILTERS: AttrMap = {
    ("displayName", None, None): "identity_scimgroup.display_name",
    ("externalId", None, None): "identity_scimgroup.external_id",
    ("id", None, None): "identity_scimgroup.id",
    ("meta", "created", None): "identity_scimgroup.created_at",
    ("meta", "lastModified", None): "identity_scimgroup.updated_at",
}

ALWAYS = {"id", "schemas"}  # returned whatever `attributes` / `excludedAttributes` ask


def project(document: dict[str, Any], attributes: list[str], excluded: list[str]) -> dict[str, Any]:
    """`document` cut to what the `attributes` / `excludedAttributes` parameters ask for
    (RFC 7644 3.9): dotted sub-attributes and extension URNs included."""
    if attributes:
        kept: dict[str, Any] = {k: v for k, v in document.items() if k in ALWAYS}
        for attribute in attributes:
            _copy_path(document, kept, attribute)
        return kept
    result = copy.deepcopy(document)
    if isinstance(result.get(ENTERPRISE), dict):
        result[ENTERPRISE].pop("employeeNumber", None)  # returned only on request
    for attribute in excluded:
        _, _rest, parts = path_split(attribute)
        target: Any = (
            result.get(ENTERPRISE) if attribute.lower().startswith(ENTERPRISE.lower()) else result
        )
        if not parts or not isinstance(target, dict) or (target is result and parts[0] in ALWAYS):
            continue
        for part in parts[:-1]:
            target = target.get(attr_key(target, part)) if isinstance(target, dict) else None
        if isinstance(target, dict):
            target.pop(attr_key(target, parts[-1]), None)
    return result


def _copy_path(source: dict[str, Any], into: dict[str, Any], attribute: str) -> None:
    if attribute.lower().startswith(ENTERPRISE.lower()):
        _, _rest, parts = path_split(attribute)
        if ENTERPRISE not in source:
            return
        if not parts:
            into[ENTERPRISE] = source[ENTERPRISE]
            return
        source, into = source[ENTERPRISE], into.setdefault(ENTERPRISE, {})
    else:
        _, _rest, parts = path_split(attribute)
    head = attr_key(source, parts[0])
    if head not in source:
        return
    if len(parts) == 1:
        into[head] = source[head]
    elif isinstance(source[head], dict):
        sub = attr_key(source[head], parts[1])
        if sub in source[head]:
            into.setdefault(head, {})[sub] = source[head][sub]
    elif isinstance(source[head], list):
        into[head] = [
            {parts[1]: item[parts[1]]}
            for item in source[head]
            if isinstance(item, dict) and parts[1] in item
        ]


def filter_apply(queryset: QuerySet, expression: str, attr_map: AttrMap) -> QuerySet:
    """The queryset narrowed by a SCIM filter, through scim2-filter-parser's SQL transpiler
    (bound parameters only). An attribute this server cannot filter on is a 400."""
    try:
        ast = SCIMParser().parse(SCIMLexer().tokenize(expression))
        where, params = Transpiler(attr_map).transpile(ast)
    except Exception as exc:  # the parser raises several kinds on bad input
        raise ScimError(400, f"Invalid filter: {exc}", "invalidFilter") from exc
    if not where:
        raise ScimError(
            400, "The filter names no attribute this server filters on.", "invalidFilter"
        )
    ordered: list[Any] = []

    def placeholder(match: re.Match) -> str:
        value = params[match.group(1)]
        # The transpiler spells the literals true/false as SQL words; bind them as booleans.
        ordered.append({"TRUE": True, "FALSE": False}.get(value, value))
        return "%s"

    where = re.sub(r"\{(\w+)\}", placeholder, where)
    return queryset.extra(where=[where], params=ordered)
