"""The SCIM discovery documents (RFC 7643 sections 5-7): what this server supports."""

from __future__ import annotations

from typing import Any

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
LIST = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
SPC = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
RESOURCE_TYPE = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"


def _attr(
    name: str,
    kind: str = "string",
    *,
    required: bool = False,
    multi: bool = False,
    mutability: str = "readWrite",
    uniqueness: str = "none",
    returned: str = "default",
    sub: list[dict[str, Any]] | None = None,
    description: str = "",
    canonical: list[str] | None = None,
    references: list[str] | None = None,
) -> dict[str, Any]:
    attribute: dict[str, Any] = {
        "name": name,
        "type": kind,
        "multiValued": multi,
        "description": description or name,
        "required": required,
        "mutability": mutability,
        "returned": returned,
        "uniqueness": uniqueness,
    }
    if kind == "string":
        attribute["caseExact"] = False
    if canonical is not None:
        attribute["canonicalValues"] = canonical
    if references is not None:
        attribute["referenceTypes"] = references
    if sub is not None:
        attribute["subAttributes"] = sub
    return attribute


def _member_attrs() -> list[dict[str, Any]]:
    return [
        _attr("value", mutability="immutable"),
        _attr("$ref", "reference", mutability="immutable", references=["User"]),
        _attr("type", mutability="immutable", canonical=["User"]),
    ]


SCHEMAS: dict[str, dict[str, Any]] = {
    USER: {
        "id": USER,
        "name": "User",
        "description": "An employee",
        "attributes": [
            _attr("userName", required=True, uniqueness="server"),
            _attr("displayName", description="The employee's name"),
            _attr(
                "emails",
                "complex",
                required=True,
                multi=True,
                description="The work address, unique among employees",
                sub=[
                    _attr("value", required=True),
                    _attr("type", canonical=["work"]),
                    _attr("primary", "boolean"),
                ],
            ),
            # Always has a value (a joiner sent without it is active): never removed.
            _attr("active", "boolean", required=True),
            _attr(
                "groups",
                "complex",
                multi=True,
                mutability="readOnly",
                sub=_member_attrs(),
            ),
        ],
    },
    GROUP: {
        "id": GROUP,
        "name": "Group",
        "description": "A group of employees",
        "attributes": [
            _attr("displayName", required=True, uniqueness="server"),
            _attr("members", "complex", multi=True, sub=_member_attrs()),
        ],
    },
}

RESOURCE_TYPES: dict[str, dict[str, Any]] = {
    "User": {
        "id": "User",
        "name": "User",
        "endpoint": "/Users",
        "description": "Employees",
        "schema": USER,
        "schemaExtensions": [{"schema": ENTERPRISE, "required": True}],
    },
    "Group": {
        "id": "Group",
        "name": "Group",
        "endpoint": "/Groups",
        "description": "Groups",
        "schema": GROUP,
        "schemaExtensions": [],
    },
}


def service_provider_config(base: str, max_results: int) -> dict[str, Any]:
    return {
        "schemas": [SPC],
        "documentationUri": "https://github.com/tokenbudget/tokenbudget#enterprise-identity",
        "patch": {"supported": True},
        "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": True, "maxResults": max_results},
        "changePassword": {"supported": False},
        "sort": {"supported": False},
        "etag": {"supported": False},
        "authenticationSchemes": [
            {
                "type": "oauthbearertoken",
                "name": "Bearer token",
                "description": "A token made by `manage.py scim_token`",
                "primary": True,
            }
        ],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": f"{base}/ServiceProviderConfig",
        },
    }


def enterprise_schema(cost_center_attribute: str, cost_centers: list[str]) -> dict[str, Any]:
    """The enterprise extension as this server keeps it: the HR id, and the one attribute
    (TB_SCIM_COST_CENTER_ATTRIBUTE) that names the cost center, whose known values are listed
    as canonical values."""
    return {
        "id": ENTERPRISE,
        "name": "EnterpriseUser",
        "description": "Enterprise User: the HR id and the cost center",
        "attributes": [
            # The roster's key: taken at creation (else externalId, else userName), ignored
            # afterwards like any read-only attribute.
            _attr(
                "employeeNumber",
                mutability="readOnly",
                returned="request",
                description="The HR employee id",
            ),
            _attr(
                cost_center_attribute,
                required=True,
                description="The cost center (mapped by TB_SCIM_COST_CENTER_MAP)",
                canonical=cost_centers,
            ),
        ],
    }


SCHEMA_IDS = (USER, GROUP, ENTERPRISE)


def schema_document(schema: dict[str, Any], base: str) -> dict[str, Any]:
    return {
        **schema,
        "schemas": [SCHEMA],
        "meta": {"resourceType": "Schema", "location": f"{base}/Schemas/{schema['id']}"},
    }


def resource_type_document(name: str, base: str) -> dict[str, Any]:
    return {
        **RESOURCE_TYPES[name],
        "schemas": [RESOURCE_TYPE],
        "meta": {"resourceType": "ResourceType", "location": f"{base}/ResourceTypes/{name}"},
    }
