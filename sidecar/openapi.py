"""The sidecar's OpenAPI 3.0 document, served at ``/openapi.json``.

Role: describe every route the sidecar serves. The OpenMeter-compatible response schemas
(``EntitlementValue``, ``EntitlementValueV2``, the v1 and v2 entitlements, the v2 page,
``WindowedBalanceHistory``,
the access map, problems) follow reference/openmeter-api.md §2, §6 and §7 field for field,
required fields included; a test compares them with the reference shapes.

It must not describe anything the sidecar does not serve.
"""

from __future__ import annotations

from functools import cache
from typing import Any

__all__ = ["openapi_document"]

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Schema], required: list[str], **extra: Any) -> Schema:
    return {"type": "object", "properties": properties, "required": required, **extra}


_NUMBER: Schema = {"type": "number"}
_STRING: Schema = {"type": "string"}
_BOOL: Schema = {"type": "boolean"}
_TIME: Schema = {"type": "string", "format": "date-time"}
_ULID: Schema = {"type": "string", "pattern": "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"}
_MAP_STRING: Schema = {"type": "object", "additionalProperties": _STRING}
_MAP_NUMBER: Schema = {"type": "object", "additionalProperties": _NUMBER}

_PERIOD = _object({"from": _TIME, "to": _TIME}, ["from", "to"])
_USAGE_PERIOD = _object(
    {"interval": _STRING, "intervalISO": _STRING, "anchor": _TIME},
    ["interval", "intervalISO", "anchor"],
)
_COMMON: dict[str, Schema] = {
    "id": _ULID,
    "featureId": _ULID,
    "featureKey": _STRING,
    "subjectKey": _STRING,
    "metadata": _MAP_STRING,
    "annotations": _MAP_STRING,
    "activeFrom": _TIME,
    "activeTo": _TIME,
    "createdAt": _TIME,
    "updatedAt": _TIME,
    "deletedAt": _TIME,
    "currentUsagePeriod": _ref("Period"),
    "usagePeriod": _ref("RecurringPeriod"),
}
_COMMON_REQUIRED = [
    "type",
    "id",
    "featureId",
    "featureKey",
    "subjectKey",
    "activeFrom",
    "createdAt",
    "updatedAt",
]


def _entitlement(kind: str, extra: dict[str, Schema], required: list[str]) -> Schema:
    properties = {"type": {"type": "string", "enum": [kind]}, **_COMMON, **extra}
    return _object(properties, [*_COMMON_REQUIRED, *required])


def _entitlement_v2(kind: str, extra: dict[str, Schema], required: list[str]) -> Schema:
    """Return a v2 entitlement: v1 without subjectKey, plus the customer's id and key."""
    common = {k: v for k, v in _COMMON.items() if k != "subjectKey"}
    properties = {
        "type": {"type": "string", "enum": [kind]},
        **common,
        "customerId": _ULID,
        "customerKey": _STRING,
        **extra,
    }
    base = [r for r in _COMMON_REQUIRED if r != "subjectKey"]
    return _object(properties, [*base, "customerId", *required])


SCHEMAS: dict[str, Schema] = {
    "Period": _PERIOD,
    "RecurringPeriod": _USAGE_PERIOD,
    "EntitlementValue": _object(
        {
            "hasAccess": _BOOL,
            "balance": _NUMBER,
            "usage": _NUMBER,
            "overage": _NUMBER,
            "totalAvailableGrantAmount": _NUMBER,
            "config": _STRING,
        },
        ["hasAccess"],
    ),
    "EntitlementValueV2": _object(
        {
            "hasAccess": _BOOL,
            "balance": _NUMBER,
            "usage": _NUMBER,
            "overage": _NUMBER,
            "totalAvailableGrantAmount": _NUMBER,
            "config": _STRING,
            "grantBalances": _MAP_NUMBER,
        },
        ["hasAccess"],
    ),
    "EntitlementMetered": _entitlement(
        "metered",
        {
            "isSoftLimit": _BOOL,
            "isUnlimited": _BOOL,
            "issueAfterReset": _NUMBER,
            "issueAfterResetPriority": {"type": "integer", "minimum": 1, "maximum": 255},
            "preserveOverageAtReset": _BOOL,
            "measureUsageFrom": _TIME,
            "lastReset": _TIME,
        },
        ["isSoftLimit", "measureUsageFrom", "lastReset", "currentUsagePeriod", "usagePeriod"],
    ),
    "EntitlementStatic": _entitlement("static", {"config": _STRING}, ["config"]),
    "EntitlementBoolean": _entitlement("boolean", {}, []),
    "Entitlement": {
        "oneOf": [
            _ref("EntitlementMetered"),
            _ref("EntitlementStatic"),
            _ref("EntitlementBoolean"),
        ],
        "discriminator": {
            "propertyName": "type",
            "mapping": {
                "metered": "#/components/schemas/EntitlementMetered",
                "static": "#/components/schemas/EntitlementStatic",
                "boolean": "#/components/schemas/EntitlementBoolean",
            },
        },
    },
    "EntitlementMeteredV2": _entitlement_v2(
        "metered",
        {
            "isSoftLimit": _BOOL,
            "issueAfterReset": _NUMBER,
            "issueAfterResetPriority": {"type": "integer", "minimum": 1, "maximum": 255},
            "issue": _object(
                {"amount": _NUMBER, "priority": {"type": "integer", "minimum": 1}}, ["amount"]
            ),
            "preserveOverageAtReset": _BOOL,
            "measureUsageFrom": _TIME,
            "lastReset": _TIME,
        },
        ["isSoftLimit", "measureUsageFrom", "lastReset", "currentUsagePeriod", "usagePeriod"],
    ),
    "EntitlementStaticV2": _entitlement_v2("static", {"config": _STRING}, ["config"]),
    "EntitlementBooleanV2": _entitlement_v2("boolean", {}, []),
    "EntitlementV2": {
        "oneOf": [
            _ref("EntitlementMeteredV2"),
            _ref("EntitlementStaticV2"),
            _ref("EntitlementBooleanV2"),
        ],
        "discriminator": {
            "propertyName": "type",
            "mapping": {
                "metered": "#/components/schemas/EntitlementMeteredV2",
                "static": "#/components/schemas/EntitlementStaticV2",
                "boolean": "#/components/schemas/EntitlementBooleanV2",
            },
        },
    },
    "EntitlementV2PaginatedResponse": _object(
        {
            "totalCount": {"type": "integer", "minimum": 0},
            "page": {"type": "integer", "minimum": 1},
            "pageSize": {"type": "integer", "minimum": 1},
            "items": {"type": "array", "items": _ref("EntitlementV2")},
        },
        ["totalCount", "page", "pageSize", "items"],
    ),
    "Event": _object(
        {
            "id": _STRING,
            "source": _STRING,
            "specversion": {"type": "string", "enum": ["1.0"]},
            "type": _STRING,
            "subject": _STRING,
            "time": _TIME,
            "datacontenttype": {"type": "string", "nullable": True},
            "dataschema": {"type": "string", "nullable": True},
            "data": {"type": "object", "additionalProperties": True},
        },
        ["id", "source", "specversion", "type", "subject"],
        additionalProperties=True,
    ),
    "BalanceHistoryWindow": _object(
        {"period": _ref("Period"), "usage": _NUMBER, "balanceAtStart": _NUMBER},
        ["period", "usage", "balanceAtStart"],
    ),
    "GrantUsage": _object({"grantId": _STRING, "usage": _NUMBER}, ["grantId", "usage"]),
    "GrantBurnDownHistorySegment": _object(
        {
            "period": _ref("Period"),
            "usage": _NUMBER,
            "overage": _NUMBER,
            "balanceAtStart": _NUMBER,
            "grantBalancesAtStart": _MAP_NUMBER,
            "balanceAtEnd": _NUMBER,
            "grantBalancesAtEnd": _MAP_NUMBER,
            "grantUsages": {"type": "array", "items": _ref("GrantUsage")},
        },
        [
            "period",
            "usage",
            "overage",
            "balanceAtStart",
            "grantBalancesAtStart",
            "balanceAtEnd",
            "grantBalancesAtEnd",
            "grantUsages",
        ],
    ),
    "WindowedBalanceHistory": _object(
        {
            "windowedHistory": {"type": "array", "items": _ref("BalanceHistoryWindow")},
            "burndownHistory": {"type": "array", "items": _ref("GrantBurnDownHistorySegment")},
        },
        ["windowedHistory", "burndownHistory"],
    ),
    "CustomerAccess": _object(
        {"entitlements": {"type": "object", "additionalProperties": _ref("EntitlementValueV2")}},
        ["entitlements"],
    ),
    "Problem": _object(
        {
            "type": _STRING,
            "title": _STRING,
            "status": {"type": "integer"},
            "detail": _STRING,
            "instance": _STRING,
            "extensions": {"type": "object", "additionalProperties": True},
        },
        ["type", "title", "status", "detail", "instance"],
    ),
    "OfrepEvaluationContext": _object(
        {"context": _object({"targetingKey": _STRING}, [], additionalProperties=True)}, []
    ),
    "OfrepEvaluationSuccess": _object(
        {
            "key": _STRING,
            "value": _BOOL,
            "variant": _STRING,
            "reason": {"type": "string", "enum": ["TARGETING_MATCH", "DEFAULT", "STALE"]},
            "metadata": {
                "type": "object",
                "additionalProperties": {"oneOf": [_STRING, _NUMBER, _BOOL]},
            },
        },
        ["key", "value", "variant", "reason", "metadata"],
    ),
    "OfrepEvaluationFailure": _object(
        {"key": _STRING, "errorCode": _STRING, "errorDetails": _STRING},
        ["errorCode"],
    ),
    "OfrepBulkEvaluationSuccess": _object(
        {"flags": {"type": "array", "items": _ref("OfrepEvaluationSuccess")}}, ["flags"]
    ),
}


def _json(schema: Schema, description: str = "OK") -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problem(description: str) -> Schema:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


def _param(name: str, where: str = "path", schema: Schema | None = None, **extra: Any) -> Schema:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema or _STRING,
        **extra,
    }


_TIME_QUERY = _param("time", "query", _TIME, description="Default: now; rounded up a minute")
_REQUESTED_USAGE = _param(
    "requestedUsage",
    "query",
    {"type": "number", "minimum": 0},
    description="Our extension: hasAccess is false when a hard-limit balance is below this "
    "amount (usage about to be sent); nothing else changes. For a feature with consistency: "
    "Strict, an allow is given only from a lease this sidecar holds in the ledger; when the "
    "ledger cannot be reached the answer is 503 (Retry-After), never an allow",
)
_HISTORY_QUERY = [
    _param("from", "query", _TIME),
    _param("to", "query", _TIME),
    {
        **_param("windowSize", "query", {"enum": ["MINUTE", "HOUR", "DAY", "MONTH"]}),
        "required": True,
    },
    _param("windowTimeZone", "query", {"type": "string", "default": "UTC"}),
]
_ERRORS = {
    "400": _problem("Bad request"),
    "404": _problem("Not found"),
    "503": _problem(
        "Not loaded yet; or, with requestedUsage on a Strict feature, the ledger cannot grant a "
        "lease now (retry after Retry-After)"
    ),
}


def _get(op: str, summary: str, params: list[Schema], ok: Schema) -> Schema:
    return {
        "get": {
            "operationId": op,
            "summary": summary,
            "parameters": params,
            "responses": {"200": ok, **_ERRORS},
        }
    }


def _refused(method: str, kind: str) -> Schema:
    return {
        method: {
            "summary": f"Refused: apply a {kind} resource instead",
            "responses": {"405": _problem(f"Apply an allotment.dev/v1alpha1 {kind}")},
        }
    }


@cache
def openapi_document() -> dict[str, Any]:
    """Return the OpenAPI document."""
    subject = _param("subjectIdOrKey")
    customer = _param("customerIdOrKey")
    ent = _param("entitlementIdOrFeatureKey")
    paths: dict[str, Schema] = {
        "/api/v1/subjects/{subjectIdOrKey}/entitlements": {
            **_get(
                "listSubjectEntitlements",
                "List a subject's entitlements",
                [subject, _param("includeDeleted", "query", _BOOL)],
                _json({"type": "array", "items": _ref("Entitlement")}),
            ),
            **_refused("post", "Entitlement"),
        },
        "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/value": _get(
            "getEntitlementValue",
            "An entitlement's value",
            [subject, ent, _TIME_QUERY, _REQUESTED_USAGE],
            _json(_ref("EntitlementValue")),
        ),
        "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementId}/history": _get(
            "getEntitlementHistory",
            "A metered entitlement's balance history",
            [subject, _param("entitlementId"), *_HISTORY_QUERY],
            _json(_ref("WindowedBalanceHistory")),
        ),
        "/api/v1/customers/{customerIdOrKey}/entitlements/{featureKey}/value": _get(
            "getCustomerEntitlementValue",
            "A customer's entitlement value",
            [customer, _param("featureKey"), _TIME_QUERY, _REQUESTED_USAGE],
            _json(_ref("EntitlementValue")),
        ),
        "/api/v1/customers/{customerIdOrKey}/access": _get(
            "getCustomerAccess",
            "Every entitlement value of a customer",
            [customer],
            _json(_ref("CustomerAccess")),
        ),
        "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/value": _get(
            "getCustomerEntitlementValueV2",
            "A customer's entitlement value with grant balances",
            [customer, ent, _TIME_QUERY, _REQUESTED_USAGE],
            _json(_ref("EntitlementValueV2")),
        ),
        "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/history": _get(
            "getCustomerEntitlementHistoryV2",
            "A metered entitlement's balance history",
            [customer, ent, *_HISTORY_QUERY],
            _json(_ref("WindowedBalanceHistory")),
        ),
        "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementId}": {
            **_get(
                "getEntitlement",
                "One entitlement of a subject",
                [subject, _param("entitlementId")],
                _json(_ref("Entitlement")),
            ),
            **_refused("delete", "Entitlement"),
        },
        "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/override": _refused(
            "put", "Entitlement"
        ),
        "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/grants": _refused(
            "post", "Grant"
        ),
        "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementId}/reset": _refused(
            "post", "EntitlementReset"
        ),
        "/api/v2/customers/{customerIdOrKey}/entitlements": {
            **_get(
                "listCustomerEntitlementsV2",
                "A customer's entitlements, one page",
                [
                    customer,
                    _param("includeDeleted", "query", _BOOL),
                    _param("page", "query", {"type": "integer", "minimum": 1, "default": 1}),
                    _param(
                        "pageSize",
                        "query",
                        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                    ),
                    _param("order", "query", {"enum": ["ASC", "DESC"], "default": "ASC"}),
                    _param("orderBy", "query", {"enum": ["createdAt", "updatedAt"]}),
                ],
                _json(_ref("EntitlementV2PaginatedResponse")),
            ),
            **_refused("post", "Entitlement"),
        },
        "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}": {
            **_get(
                "getCustomerEntitlementV2",
                "One entitlement of a customer, by id or feature key",
                [customer, ent],
                _json(_ref("EntitlementV2")),
            ),
            **_refused("delete", "Entitlement"),
        },
        "/api/v1/events": {
            "post": {
                "operationId": "ingestEvents",
                "summary": "Commit usage events (CloudEvents 1.0) to the ledger",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/cloudevents+json": {"schema": _ref("Event")},
                        "application/cloudevents-batch+json": {
                            "schema": {"type": "array", "items": _ref("Event")}
                        },
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    _ref("Event"),
                                    {"type": "array", "items": _ref("Event")},
                                ]
                            }
                        },
                    },
                },
                "responses": {
                    "204": {"description": "Committed in the ledger (duplicates acknowledged)"},
                    "400": _problem("An invalid event (its index named); nothing stored"),
                    "413": _problem("The body is larger than the limit"),
                    "503": _problem("The ledger cannot take usage now; retry (Retry-After)"),
                },
            }
        },
        "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/override": _refused(
            "put", "Entitlement"
        ),
        "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/grants": _refused(
            "post", "Grant"
        ),
        "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/reset": _refused(
            "post", "EntitlementReset"
        ),
        "/api/v1/grants/{grantId}": _refused("delete", "Grant"),
        "/api/v1/features": _refused("post", "Feature"),
        "/api/v1/features/{featureId}": _refused("delete", "Feature"),
        "/api/v1/meters": _refused("post", "Meter"),
        "/api/v1/meters/{meterIdOrSlug}": {
            **_refused("put", "Meter"),
            **_refused("delete", "Meter"),
        },
        "/ofrep/v1/evaluate/flags/{key}": {
            "post": {
                "operationId": "evaluateFlag",
                "parameters": [_param("key")],
                "requestBody": {
                    "content": {"application/json": {"schema": _ref("OfrepEvaluationContext")}}
                },
                "responses": {
                    "200": _json(_ref("OfrepEvaluationSuccess")),
                    "400": _json(_ref("OfrepEvaluationFailure"), "Bad request"),
                    "404": _json(_ref("OfrepEvaluationFailure"), "Flag not found"),
                },
            }
        },
        "/ofrep/v1/evaluate/flags": {
            "post": {
                "operationId": "evaluateFlags",
                "parameters": [_param("If-None-Match", "header")],
                "requestBody": {
                    "content": {"application/json": {"schema": _ref("OfrepEvaluationContext")}}
                },
                "responses": {
                    "200": _json(_ref("OfrepBulkEvaluationSuccess")),
                    "304": {"description": "Not modified"},
                    "400": _json(_ref("OfrepEvaluationFailure"), "Bad request"),
                },
            }
        },
        "/livez": {"get": {"responses": {"200": {"description": "Serving"}}}},
        "/readyz": {
            "get": {
                "responses": {
                    "200": {"description": "First load done"},
                    "503": _problem("Not loaded"),
                }
            }
        },
        "/status": {
            "get": {
                "responses": {
                    "200": {
                        "description": "Ledger version, epoch, lag, last sync, loaded counts, "
                        "read-contract version; ingestion; strictLeases (holder, leases held, "
                        "reserved remaining, approvals, denials, ledger round trips, last error) or null"
                    }
                }
            }
        },
        "/metrics": {"get": {"responses": {"200": {"description": "Prometheus text"}}}},
        "/openapi.json": {"get": {"responses": {"200": {"description": "This document"}}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "allotment sidecar",
            "version": "v1alpha1",
            "description": "OpenMeter-compatible entitlement reads, OFREP, and operations, "
            "answered from memory on localhost. Freshness travels in the "
            "Allotment-Ledger-Version and Allotment-Ledger-Age headers.",
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }
