"""OFREP, the OpenFeature Remote Evaluation Protocol: entitlements as boolean flags.

Role: the flag key is a feature key and the targeting key a customer key or subject key. A
known feature evaluates to ``value: true`` when the customer has access now and ``false`` when
it has none (no entitlement, an unknown customer, no balance): a 200 either way, with ``variant``
(``on``/``off``) and ``reason`` (``TARGETING_MATCH``, ``DEFAULT`` when no entitlement applies,
``STALE`` past the staleness budget, where the feature's ``whenStale`` decides) and metadata
(type, balance, usage, overage, config). An unknown feature is 404 ``FLAG_NOT_FOUND``; a missing
targeting key 400 ``TARGETING_KEY_MISSING``. Bulk evaluation covers every feature and carries an
ETag computed over the request context and the answer, so ``If-None-Match`` gives 304.

It must not compute balances; values come from the view.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from decimal import Decimal
from typing import Any

from aiohttp import web

from .freshness import apply_stale_policy, stale_at
from .ingest_precheck import apply_requested_usage, requested_usage_of_context
from .keys import CLOCK, SETTINGS, VIEW
from .leases import gate_flag
from .parsing import OfrepContext, parse_ofrep_context
from .serialize import dumps
from .source import FeatureRecord
from .view import View

__all__ = ["evaluate_flag", "evaluate_flags"]


def _error(status: int, code: str, details: str, key: str | None = None) -> web.Response:
    body: dict[str, Any] = {"errorCode": code, "errorDetails": details}
    if key is not None:
        body = {"key": key, **body}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _evaluate(
    request: web.Request,
    view: View,
    feature: FeatureRecord,
    targeting_key: str,
    now: datetime,
    requested: Decimal | None = None,
) -> dict[str, Any]:
    key = feature.feature.key
    customer = view.customer_by_subject(targeting_key)
    entitlement = (
        view.active_entitlement(customer.customer.key, key, now) if customer is not None else None
    )
    stale = stale_at(request, now)
    if entitlement is None:
        return {
            "key": key,
            "value": False,
            "variant": "off",
            "reason": "STALE" if stale else "DEFAULT",
            "metadata": {"entitled": False},
        }
    value = view.value(entitlement, now, v2=False)  # no grant balances in OFREP's metadata
    if stale:
        value, _ = apply_stale_policy(request.app, view, entitlement, value)
    value = apply_requested_usage(entitlement, value, requested)
    metadata: dict[str, Any] = {
        "entitled": True,
        "type": entitlement.type.value,
        "entitlementId": entitlement.id,
    }
    if value.balance is not None:
        metadata["balance"] = value.balance
        metadata["usage"] = value.usage
        metadata["overage"] = value.overage
        metadata["totalAvailableGrantAmount"] = value.total_available_grant_amount
    if value.config:
        metadata["config"] = value.config
    return {
        "key": key,
        "value": value.has_access,
        "variant": "on" if value.has_access else "off",
        "reason": "STALE" if stale else "TARGETING_MATCH",
        "metadata": metadata,
    }


async def _context(request: web.Request) -> OfrepContext | str:
    try:
        return parse_ofrep_context(await request.read())
    except ValueError as error:
        return str(error)


def _not_ready(view: View, key: str | None) -> web.Response:
    return _error(
        503,
        "GENERAL",
        f"the sidecar has not loaded namespace {view.namespace!r} from the ledger yet",
        key,
    )


async def evaluate_flag(request: web.Request) -> web.Response:
    """POST /ofrep/v1/evaluate/flags/{key}: evaluate one feature for a targeting key."""
    key = request.match_info["key"]
    view = request.app[VIEW]
    context = await _context(request)
    if isinstance(context, str):
        return _error(400, "PARSE_ERROR", context, key)
    if not view.ready:
        return _not_ready(view, key)
    feature = view.feature(key)
    if feature is None:
        return _error(
            404,
            "FLAG_NOT_FOUND",
            f"no feature with key {key!r} in namespace {view.namespace!r}",
            key,
        )
    if context.targeting_key is None:
        return _error(
            400,
            "TARGETING_KEY_MISSING",
            "context.targetingKey is required: a customer key or subject key",
            key,
        )
    try:
        requested = requested_usage_of_context(context.attributes)
    except ValueError as error:
        return _error(400, "INVALID_CONTEXT", str(error), key)
    now = request.app[CLOCK]()
    body = _evaluate(request, view, feature, context.targeting_key, now, requested)
    if requested is not None and body["value"]:
        body = await gate_flag(request.app, body, requested, now)  # consistency: Strict
    return web.Response(text=dumps(body), content_type="application/json")


async def evaluate_flags(request: web.Request) -> web.StreamResponse:
    """POST /ofrep/v1/evaluate/flags: evaluate every feature; ETag over context and answer."""
    view = request.app[VIEW]
    context = await _context(request)
    if isinstance(context, str):
        return _error(400, "PARSE_ERROR", context)
    if not view.ready:
        return _not_ready(view, None)
    if context.targeting_key is None:
        return _error(
            400,
            "TARGETING_KEY_MISSING",
            "context.targetingKey is required: a customer key or subject key",
        )
    try:
        requested = requested_usage_of_context(context.attributes)
    except ValueError as error:
        return _error(400, "INVALID_CONTEXT", str(error))
    now = request.app[CLOCK]()
    flags = [
        _evaluate(request, view, f, context.targeting_key, now, requested) for f in view.features()
    ]
    text = dumps({"flags": flags})
    digest = hashlib.sha256()
    digest.update(request.app[SETTINGS].namespace.encode())
    digest.update(json.dumps(context.attributes, sort_keys=True, default=str).encode())
    digest.update(text.encode())
    etag = f'"{digest.hexdigest()[:32]}"'
    headers = {"ETag": etag}
    if etag in _if_none_match(request):
        return web.Response(status=304, headers=headers)
    return web.Response(text=text, content_type="application/json", headers=headers)


def _if_none_match(request: web.Request) -> set[str]:
    header = request.headers.get("If-None-Match", "")
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
