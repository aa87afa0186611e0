"""OpenMeter's response shapes (reference/openmeter-api.md §6, §7), and JSON with exact numbers.

Role: turn domain objects into the exact bodies OpenMeter's SDKs parse: ``EntitlementValue``
(v1), ``EntitlementValueV2`` (with ``grantBalances``), the v1 entitlement (metered, static,
boolean), ``WindowedBalanceHistory``, and the customer access map. camelCase appears only here.
``dumps`` writes ``Decimal`` as a JSON number with its exact digits (never through a float) and
instants as RFC 3339 UTC.

It must not compute values or look anything up: callers pass what to render.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from allotment.ledger.core.engine import Segment
from allotment.ledger.core.history import BalanceHistory
from allotment.ledger.core.model import (
    Entitlement,
    EntitlementType,
    EntitlementValue,
)
from allotment.ledger.core.periods import current_period, last_reset
from allotment.ledger.core.timeutil import format_rfc3339

from .source import CustomerRecord, FeatureRecord

__all__ = [
    "dumps",
    "entitlement_v1",
    "entitlement_v2",
    "history_body",
    "number",
    "page_body",
    "value_json",
    "value_v1",
    "value_v2",
]

_encode_string = json.encoder.encode_basestring_ascii
ZERO = Decimal(0)


def number(value: Decimal) -> str:
    """Return the JSON text of an exact amount (``900``, ``12.5``, ``-3``), never rounded."""
    text = str(value)
    if text.isdigit():  # a non-negative integer without exponent: already its JSON text
        return text
    if value == value.to_integral_value():
        return str(int(value))
    return format(value, "f").rstrip("0")


def dumps(value: Any) -> str:
    """Serialise dicts, lists, strings, bools, ints, ``Decimal`` and aware datetimes to JSON."""
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts)


def _write(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(_encode_string(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, Decimal):
        out.append(number(value))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):  # operational figures only (ages, budgets); never money
        out.append(repr(value))
    elif isinstance(value, datetime):
        out.append('"' + format_rfc3339(value) + '"')
    elif isinstance(value, Mapping):
        out.append("{")
        first = True
        for key, item in value.items():
            if not first:
                out.append(",")
            first = False
            out.append(_encode_string(str(key)))
            out.append(":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


# --- values ----------------------------------------------------------------------------------


def value_v1(value: EntitlementValue) -> dict[str, Any]:
    """Return OpenMeter's v1 ``EntitlementValue``."""
    body: dict[str, Any] = {"hasAccess": value.has_access}
    if value.balance is not None:
        body["balance"] = value.balance
        body["usage"] = value.usage
        body["overage"] = value.overage
        body["totalAvailableGrantAmount"] = value.total_available_grant_amount
    if value.config:
        body["config"] = value.config
    return body


def value_json(value: EntitlementValue, *, v2: bool) -> str:
    """Return the JSON text of ``value_v1`` (or ``value_v2``) directly: the hot path's body."""
    access = "true" if value.has_access else "false"
    if value.balance is None:
        if value.config:
            return '{"hasAccess":' + access + ',"config":' + _encode_string(value.config) + "}"
        return '{"hasAccess":' + access + "}"
    text = (
        '{"hasAccess":'
        + access
        + ',"balance":'
        + number(value.balance)
        + ',"usage":'
        + number(value.usage if value.usage is not None else ZERO)
        + ',"overage":'
        + number(value.overage if value.overage is not None else ZERO)
        + ',"totalAvailableGrantAmount":'
        + number(
            value.total_available_grant_amount
            if value.total_available_grant_amount is not None
            else ZERO
        )
    )
    if v2:
        balances = ",".join(
            _encode_string(k) + ":" + number(v) for k, v in (value.grant_balances or {}).items()
        )
        text += ',"grantBalances":{' + balances + "}"
    return text + "}"


def value_v2(value: EntitlementValue) -> dict[str, Any]:
    """Return OpenMeter's ``EntitlementValueV2`` (v1 plus ``grantBalances`` when metered)."""
    body = value_v1(value)
    if value.balance is not None:
        body["grantBalances"] = dict(value.grant_balances or {})
    return body


# --- entitlements ----------------------------------------------------------------------------


def _first_subject_key(customer: CustomerRecord | None, entitlement: Entitlement) -> str:
    if customer is None:
        return entitlement.customer_key
    keys = customer.customer.subject_keys
    return keys[0] if keys else customer.customer.key


def _usage_period(entitlement: Entitlement) -> dict[str, Any]:
    original = entitlement.usage_period[0].recurrence
    body: dict[str, Any] = {
        "interval": original.interval.enum_name() or original.interval.iso(),
        "intervalISO": original.interval.iso(),
        "anchor": original.anchor,
    }
    return body


def entitlement_v1(
    entitlement: Entitlement,
    feature: FeatureRecord | None,
    customer: CustomerRecord | None,
    now: datetime,
) -> dict[str, Any]:
    """Return OpenMeter's v1 entitlement (``EntitlementMetered|Static|Boolean``) at ``now``."""
    body: dict[str, Any] = {
        "type": entitlement.type.value,
        "id": entitlement.id,
        "featureId": feature.id if feature else "",
        "featureKey": entitlement.feature_key,
        "subjectKey": _first_subject_key(customer, entitlement),
        "metadata": dict(entitlement.metadata),
        "activeFrom": entitlement.start,
        "createdAt": entitlement.created_at,
        "updatedAt": entitlement.created_at,
    }
    if entitlement.active_to is not None:
        body["activeTo"] = entitlement.active_to
    if entitlement.usage_period:
        period = current_period(entitlement.usage_period, now)
        body["currentUsagePeriod"] = {"from": period.start, "to": period.end}
        body["usagePeriod"] = _usage_period(entitlement)
    if entitlement.type is EntitlementType.METERED:
        body["isSoftLimit"] = entitlement.soft_limit_at(now)
        body["isUnlimited"] = False
        body["preserveOverageAtReset"] = entitlement.preserve_overage_at(now)
        issue = None
        for version in entitlement.issue_after_reset:
            if version.since <= now:
                issue = version.value
        if issue is not None:
            body["issueAfterReset"] = issue.amount
            body["issueAfterResetPriority"] = issue.priority
        if entitlement.measure_usage_from is not None:
            body["measureUsageFrom"] = entitlement.measure_usage_from
        if entitlement.usage_period:
            body["lastReset"] = last_reset(entitlement)
    elif entitlement.type is EntitlementType.STATIC:
        body["config"] = entitlement.config or "{}"
    return body


def entitlement_v2(
    entitlement: Entitlement, feature: FeatureRecord | None, customer: CustomerRecord, now: datetime
) -> dict[str, Any]:
    """Return OpenMeter's ``EntitlementV2``: v1 without ``subjectKey``/``isUnlimited``, plus the
    customer's id and key and ``issue`` (the default grant's amount and priority)."""
    body = entitlement_v1(entitlement, feature, customer, now)
    del body["subjectKey"]
    body.pop("isUnlimited", None)
    body["customerId"] = customer.id
    body["customerKey"] = customer.customer.key
    if "issueAfterReset" in body:
        body["issue"] = {
            "amount": body["issueAfterReset"],
            "priority": body["issueAfterResetPriority"],
        }
    return body


def page_body(items: list[Any], *, page: int, page_size: int, total: int) -> dict[str, Any]:
    """Return OpenMeter's paginated list: ``{totalCount, page, pageSize, items}``."""
    return {"totalCount": total, "page": page, "pageSize": page_size, "items": items}


# --- history ---------------------------------------------------------------------------------


def _segment(segment: Segment) -> dict[str, Any]:
    return {
        "period": {"from": segment.start, "to": segment.end},
        "usage": segment.usage,
        "overage": segment.overage,
        "balanceAtStart": segment.balance_at_start,
        "grantBalancesAtStart": dict(segment.grant_balances_at_start),
        "balanceAtEnd": segment.balance_at_end,
        "grantBalancesAtEnd": dict(segment.grant_balances_at_end),
        "grantUsages": [{"grantId": u.grant_id, "usage": u.usage} for u in segment.grant_usages],
    }


def history_body(history: BalanceHistory) -> dict[str, Any]:
    """Return OpenMeter's ``WindowedBalanceHistory``."""
    windows: Sequence[dict[str, Any]] = [
        {
            "period": {"from": w.start, "to": w.end},
            "usage": w.usage,
            "balanceAtStart": w.balance_at_start,
        }
        for w in history.windows
    ]
    return {
        "windowedHistory": list(windows),
        "burndownHistory": [_segment(s) for s in history.segments],
    }
