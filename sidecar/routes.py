"""The sidecar's HTTP routes, in one list, with thin handlers: parse, delegate, serialise.

Role: OpenMeter-compatible reads (subject entitlements, the v2 customer entitlement list and
entitlements, values, history, access),
405 problem+json for OpenMeter's write endpoints (naming the resource kind to ``kubectl apply``
instead), OFREP (in ``ofrep``), and the operational endpoints (``/livez``, ``/readyz``,
``/status``, ``/metrics``, ``/openapi.json``). Subjects resolve to customers through subject keys
(DESIGN D5). Past the staleness budget a current read follows the feature's ``whenStale``
(LastKnown, Allow, Deny; D7); a ``?time=`` read is computed from the view's memory as asked.

It must not compute balances, talk to the database, or read the environment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from aiohttp import web

from allotment.ledger.core.history import HistoryError
from allotment.ledger.core.model import Entitlement, EntitlementType, EntitlementValue
from allotment.ledger.core.periods import last_reset

from . import ingest, leases, ofrep
from .compute import HistoryWindow
from .fastlane import cached_value
from .freshness import apply_stale_policy, stale_at
from .ingest_precheck import apply_requested_usage, parse_requested_usage
from .keys import CLOCK, FOLLOWER, METRICS, SETTINGS, VIEW
from .metrics import CONTENT_TYPE_LATEST
from .openapi import openapi_document
from .parsing import parse_bool, parse_instant, parse_window_size, parse_zone
from .problems import ProblemError
from .serialize import (
    dumps,
    entitlement_v1,
    entitlement_v2,
    history_body,
    page_body,
    value_json,
    value_v2,
)
from .source import CONTRACT_VERSIONS, CustomerRecord
from .view import MICROSECOND, View, micros

__all__ = [
    "PROBE_ROUTES",
    "ROUTES",
    "current_value",
    "json_response",
    "now_of",
    "ready_view",
    "value_entitlement",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_NO_QUERY: Mapping[str, str] = {}
RESOURCE_API = "allotment.dev/v1alpha1"
_ORDER_BY = ("createdAt", "updatedAt")  # equal here: a ledger record's version has no update


# --- shared helpers ----------------------------------------------------------------------------


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """Return a JSON response with exact numbers.

    The Content-Type is exactly ``application/json``, without a charset parameter (JSON is
    UTF-8): the legacy OpenMeter Node SDK compares the header with that string.
    """
    return web.Response(
        status=status, body=dumps(body).encode(), content_type="application/json", headers=headers
    )


def now_of(request: web.Request) -> datetime:
    """Return the app clock's current instant."""
    return request.app[CLOCK]()


def ready_view(request: web.Request) -> View:
    """Return the view, or raise 503 while the first load has not finished (DESIGN D7)."""
    view = request.app[VIEW]
    if not view.ready:
        raise ProblemError(
            503,
            f"the sidecar has not loaded namespace {view.namespace!r} from the ledger yet; "
            "retry shortly (see /status for the last error)",
            headers={"Retry-After": "1"},
        )
    return view


def _customer_by_subject(view: View, subject: str) -> CustomerRecord:
    customer = view.customer_by_subject(subject)
    if customer is None:
        raise ProblemError(
            404,
            f"subject {subject!r} is not the key or a subject key of any customer in namespace "
            f"{view.namespace!r}: add it to a Customer's spec.usageAttribution.subjectKeys",
        )
    return customer


def _customer(view: View, id_or_key: str) -> CustomerRecord:
    customer = view.customer(id_or_key)
    if customer is None:
        raise ProblemError(404, f"customer {id_or_key!r} not found in namespace {view.namespace!r}")
    return customer


def _entitlement(view: View, customer: CustomerRecord, id_or_key: str, at: datetime) -> Entitlement:
    entitlement = view.resolve(customer.customer.key, id_or_key, at)
    if entitlement is None:
        raise ProblemError(
            404,
            f"entitlement not found {id_or_key} in namespace {view.namespace}: customer "
            f"{customer.customer.key!r} has no entitlement with that id, nor one to a feature "
            "with that key active at the requested time",
        )
    return entitlement


def value_entitlement(
    view: View, who: str, id_or_key: str, at: datetime, *, by_subject: bool
) -> Entitlement:
    """Return the entitlement a value read of ``who`` (a subject with ``by_subject``, else a
    customer) and ``id_or_key`` reads at ``at``; raise the 404 problem when either is unknown.

    The value routes' own lookups, for the wire lane (``wire.WireLane``): the same problems.
    """
    customer = _customer_by_subject(view, who) if by_subject else _customer(view, who)
    return _entitlement(view, customer, id_or_key, at)


def current_value(
    app: web.Application,
    view: View,
    entitlement: Entitlement,
    now: datetime,
    *,
    v2: bool,
    stale: bool,
) -> tuple[EntitlementValue, dict[str, str] | None]:
    """Return the value a current read answers, and its extra headers: past the staleness
    budget (``stale``) the feature's ``whenStale`` decides and ``Allotment-Stale-Policy`` says so.
    """
    value = view.value(entitlement, now, v2=v2)
    if not stale:
        return value, None
    value, policy = apply_stale_policy(app, view, entitlement, value)
    return value, {"Allotment-Stale-Policy": policy.value}


async def _value(
    request: web.Request, view: View, customer: CustomerRecord, id_or_key: str, *, v2: bool
) -> web.Response:
    """Decide a value read in full: ``?time=``, ``requestedUsage`` (Strict leases), staleness.

    With ``_value_reader``'s cached answer, the only places an access answer is made for
    OpenMeter's paths.
    """
    now = request.app[CLOCK]()
    query: Mapping[str, str] = request.query if request.query_string else _NO_QUERY
    at = parse_instant(query, "time")
    entitlement = _entitlement(view, customer, id_or_key, at or now)
    headers: dict[str, str] | None = None
    if at is None:
        stale = stale_at(request, now)
        value, headers = current_value(request.app, view, entitlement, now, v2=v2, stale=stale)
    else:
        value = view.value_at(entitlement, at)
    requested = parse_requested_usage(query)
    value = apply_requested_usage(entitlement, value, requested)
    if requested is not None and value.has_access and at is None:
        value = await leases.gate(request.app, entitlement, value, requested, now)  # Strict
    return web.Response(
        body=value_json(value, v2=v2).encode(), content_type="application/json", headers=headers
    )


# --- OpenMeter reads ---------------------------------------------------------------------------


async def get_subject_entitlement(request: web.Request) -> web.Response:
    """GET /api/v1/subjects/{subject}/entitlements/{entitlementId}."""
    view = ready_view(request)
    customer = _customer_by_subject(view, request.match_info["subject"])
    now = now_of(request)
    entitlement = _entitlement(view, customer, request.match_info["entitlement"], now)
    feature = view.feature(entitlement.feature_key)
    return json_response(entitlement_v1(entitlement, feature, customer, now))


async def list_subject_entitlements(request: web.Request) -> web.Response:
    """GET /api/v1/subjects/{subject}/entitlements."""
    view = ready_view(request)
    customer = _customer_by_subject(view, request.match_info["subject"])
    include_deleted = parse_bool(request.query, "includeDeleted")
    now = now_of(request)
    body = [
        entitlement_v1(e, view.feature(e.feature_key), customer, now)
        for e in view.entitlements_of(customer.customer.key)
        if include_deleted or e.active_to is None or e.active_to > now
    ]
    return json_response(body)


def _value_reader(variable: str, *, by_subject: bool, v2: bool) -> Handler:
    """Return the handler of a value read: the access check, the sidecar's hot path.

    A current read (no query) of a fresh view answers the cached body ``View.hot_body`` finds,
    with the freshness headers (``fastlane.cached_value``, which the fast lane in front of the
    router answers most of these with). Anything else (a query, a stale view, an unknown customer or entitlement, a view not yet
    loaded) takes ``_value``, which decides it in full or answers the problem.
    """

    async def read(request: web.Request) -> web.Response:
        app = request.app
        info = request.match_info
        if not request.query_string:
            cached = cached_value(
                app[VIEW],
                micros(app[CLOCK]()),
                app[SETTINGS].staleness_budget // MICROSECOND,
                info[variable],
                info["entitlement"],
                by_subject=by_subject,
                v2=v2,
            )
            if cached is not None:
                return cached
        view = ready_view(request)
        who = request.match_info[variable]
        customer = _customer_by_subject(view, who) if by_subject else _customer(view, who)
        return await _value(request, view, customer, info["entitlement"], v2=v2)

    return read


get_subject_entitlement_value = _value_reader("subject", by_subject=True, v2=False)
get_subject_entitlement_value.__doc__ = (
    "GET /api/v1/subjects/{subject}/entitlements/{entitlementIdOrFeatureKey}/value."
)
get_customer_entitlement_value = _value_reader("customer", by_subject=False, v2=False)
get_customer_entitlement_value.__doc__ = (
    "GET /api/v1/customers/{customer}/entitlements/{featureKey}/value."
)
get_customer_entitlement_value_v2 = _value_reader("customer", by_subject=False, v2=True)
get_customer_entitlement_value_v2.__doc__ = (
    "GET /api/v2/customers/{customer}/entitlements/{entitlementIdOrFeatureKey}/value."
)


def _page_number(query: Mapping[str, str], name: str, default: int, most: int | None) -> int:
    text = query.get(name)
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1 or (most is not None and int(text) > most):
        limit = f" and at most {most}" if most is not None else ""
        raise ProblemError(400, f"validation error: {name} must be a whole number from 1{limit}")
    return int(text)


async def list_customer_entitlements_v2(request: web.Request) -> web.Response:
    """GET /api/v2/customers/{customer}/entitlements: one page, oldest first by default."""
    view = ready_view(request)
    customer = _customer(view, request.match_info["customer"])
    query = request.query
    page = _page_number(query, "page", 1, None)
    page_size = _page_number(query, "pageSize", 100, 1000)
    order = query.get("order", "ASC").upper()
    if order not in ("ASC", "DESC") or query.get("orderBy", "createdAt") not in _ORDER_BY:
        raise ProblemError(
            400, "validation error: order is ASC or DESC; orderBy is createdAt or updatedAt"
        )
    include_deleted = parse_bool(query, "includeDeleted")
    now = now_of(request)
    found = sorted(
        (
            e
            for e in view.entitlements_of(customer.customer.key)
            if include_deleted or e.active_to is None or e.active_to > now
        ),
        key=lambda e: (e.created_at, e.id),
        reverse=order == "DESC",
    )
    start = (page - 1) * page_size
    chosen = found[start : start + page_size]
    items = [entitlement_v2(e, view.feature(e.feature_key), customer, now) for e in chosen]
    return json_response(page_body(items, page=page, page_size=page_size, total=len(found)))


async def get_customer_entitlement_v2(request: web.Request) -> web.Response:
    """GET /api/v2/customers/{customer}/entitlements/{entitlementIdOrFeatureKey}."""
    view = ready_view(request)
    customer = _customer(view, request.match_info["customer"])
    now = now_of(request)
    entitlement = _entitlement(view, customer, request.match_info["entitlement"], now)
    return json_response(
        entitlement_v2(entitlement, view.feature(entitlement.feature_key), customer, now)
    )


async def get_customer_access(request: web.Request) -> web.Response:
    """GET /api/v1/customers/{customer}/access: every entitlement active now, by feature key."""
    view = ready_view(request)
    customer = _customer(view, request.match_info["customer"])
    now = now_of(request)
    stale = stale_at(request, now)
    access: dict[str, Any] = {}
    for entitlement in view.entitlements_of(customer.customer.key):
        if not entitlement.is_active_at(now):
            continue
        value = view.value(entitlement, now)
        if stale:
            value, _ = apply_stale_policy(request.app, view, entitlement, value)
        access[entitlement.feature_key] = value_v2(value)
    return json_response({"entitlements": access})


async def _history(request: web.Request, view: View, customer: CustomerRecord) -> web.Response:
    now = now_of(request)
    entitlement = _entitlement(view, customer, request.match_info["entitlement"], now)
    size = parse_window_size(request.query)
    zone = parse_zone(request.query)
    aggregation, _ = view.usage_inputs(entitlement)
    if entitlement.type is not EntitlementType.METERED or aggregation is None:
        raise ProblemError(
            400,
            f"entitlement {entitlement.id} is {entitlement.type.value}: balance history exists "
            "only for metered entitlements with a recorded meter",
        )
    start = parse_instant(request.query, "from")
    end = parse_instant(request.query, "to") or now
    if start is None:
        start = last_reset(entitlement)
    try:
        history = view.history(entitlement, HistoryWindow(start, end, size, zone))
    except HistoryError as error:
        raise ProblemError(400, f"validation error: {error}") from None
    return json_response(history_body(history))


async def get_subject_entitlement_history(request: web.Request) -> web.Response:
    """GET /api/v1/subjects/{subject}/entitlements/{entitlementId}/history."""
    view = ready_view(request)
    customer = _customer_by_subject(view, request.match_info["subject"])
    return await _history(request, view, customer)


async def get_customer_entitlement_history_v2(request: web.Request) -> web.Response:
    """GET /api/v2/customers/{customer}/entitlements/{entitlementIdOrFeatureKey}/history."""
    view = ready_view(request)
    customer = _customer(view, request.match_info["customer"])
    return await _history(request, view, customer)


# --- OpenMeter writes: refused with the resource to apply instead ------------------------------


def refuse(kind: str, operation: str, allow: str) -> Handler:
    """Return a handler answering 405 for an OpenMeter write done with a ``kind`` resource."""

    async def handler(request: web.Request) -> web.Response:
        namespace = request.app[SETTINGS].namespace
        raise ProblemError(
            405,
            f"this sidecar only reads: to {operation}, apply an {RESOURCE_API} {kind} resource "
            f"in namespace {namespace!r} (kubectl apply -f {kind.lower()}.yaml); the operator "
            "records it in the ledger and every sidecar sees it within a second",
            extensions={"resourceKind": kind, "apiVersion": RESOURCE_API, "namespace": namespace},
            headers={"Allow": allow},
        )

    handler.__doc__ = f"Refuse: {operation} (apply a {kind})."
    return handler


# --- operations --------------------------------------------------------------------------------


async def livez(request: web.Request) -> web.Response:
    """GET /livez: the process serves HTTP."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: the first load is done (and, opt-in, the view is fresh)."""
    view = request.app[VIEW]
    if not view.ready:
        raise ProblemError(503, f"namespace {view.namespace!r} is not loaded from the ledger yet")
    if request.app[SETTINGS].ready_requires_fresh and stale_at(request, now_of(request)):
        raise ProblemError(503, "the view is past its staleness budget (see /status)")
    return json_response({"status": "ready"})


async def status(request: web.Request) -> web.Response:
    """GET /status: ledger version, epoch, lag, last sync, counts, read-contract version."""
    view = request.app[VIEW]
    settings = request.app[SETTINGS]
    now = now_of(request)
    age = view.age(now)
    follower = request.app.get(FOLLOWER)
    counts = view.counts()
    body: dict[str, Any] = {
        "namespace": view.namespace,
        "ready": view.ready,
        "ledger": {
            "version": view.position,
            "epoch": view.epoch,
            "contractVersion": view.contract_version,
            "supportedContractVersions": list(CONTRACT_VERSIONS),
            "lastSync": view.synced_at,
            "lastLoad": view.loaded_at,
            "lagSeconds": None if age is None else round(age.total_seconds(), 3),
            "stale": stale_at(request, now),
            "stalenessBudgetSeconds": settings.staleness_budget.total_seconds(),
            "reloads": view.reloads,
            "lastError": follower.last_error if follower else None,
            "notifications": bool(follower and follower.listening),
            "degraded": view.degraded,
            "details": dict(view.details),
        },
        "loaded": dataclasses.asdict(counts),
        "ingestion": ingest.ingest_status(request.app),
    }
    return json_response(body)


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text exposition."""
    registry = request.app[METRICS]
    view = request.app[VIEW]
    age = view.age(now_of(request))
    if age is not None:
        registry.sync_lag.set(age.total_seconds())
    if view.position is not None:
        registry.ledger_version.set(view.position)
    for kind, count in dataclasses.asdict(view.counts()).items():
        registry.loaded.labels(kind).set(count)
    response = web.Response(body=registry.render())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json."""
    return json_response(openapi_document())


# --- the one list ------------------------------------------------------------------------------

_SUBJECT = "/api/v1/subjects/{subject}/entitlements"
_SUBJECT_ONE = _SUBJECT + "/{entitlement}"
_CUSTOMER_V2 = "/api/v2/customers/{customer}/entitlements"
_CUSTOMER_V2_ONE = _CUSTOMER_V2 + "/{entitlement}"

PROBE_ROUTES = [
    web.get("/livez", livez),
    web.get("/readyz", readyz),
    web.get("/metrics", metrics),
]

ROUTES = [
    # OpenMeter reads (reference/openmeter-api.md §6, §7); the value reads first: aiohttp tries
    # the routes sharing a path prefix in this order, one pattern match each.
    web.get(_SUBJECT_ONE + "/value", get_subject_entitlement_value),
    web.get(
        "/api/v1/customers/{customer}/entitlements/{entitlement}/value",
        get_customer_entitlement_value,
    ),
    web.get(_CUSTOMER_V2_ONE + "/value", get_customer_entitlement_value_v2),
    web.get(_SUBJECT, list_subject_entitlements),
    web.get(_SUBJECT_ONE, get_subject_entitlement),
    web.get(_SUBJECT_ONE + "/history", get_subject_entitlement_history),
    web.get("/api/v1/customers/{customer}/access", get_customer_access),
    web.get(_CUSTOMER_V2, list_customer_entitlements_v2),
    web.get(_CUSTOMER_V2_ONE, get_customer_entitlement_v2),
    web.get(_CUSTOMER_V2_ONE + "/history", get_customer_entitlement_history_v2),
    # OpenMeter writes: refused, naming the resource kind to apply
    web.post(_SUBJECT, refuse("Entitlement", "create an entitlement", "GET")),
    web.delete(_SUBJECT_ONE, refuse("Entitlement", "end an entitlement (spec.activeTo)", "")),
    web.put(_SUBJECT_ONE + "/override", refuse("Entitlement", "override an entitlement", "")),
    web.post(_SUBJECT_ONE + "/grants", refuse("Grant", "create a grant", "")),
    web.post(_SUBJECT_ONE + "/reset", refuse("EntitlementReset", "reset usage", "")),
    web.post(_CUSTOMER_V2, refuse("Entitlement", "create an entitlement", "GET")),
    web.delete(
        _CUSTOMER_V2_ONE, refuse("Entitlement", "end an entitlement (spec.activeTo)", "GET")
    ),
    web.put(_CUSTOMER_V2_ONE + "/override", refuse("Entitlement", "override an entitlement", "")),
    web.post(_CUSTOMER_V2_ONE + "/grants", refuse("Grant", "create a grant", "")),
    web.post(_CUSTOMER_V2_ONE + "/reset", refuse("EntitlementReset", "reset usage", "")),
    web.delete("/api/v1/grants/{grant}", refuse("Grant", "void a grant (spec.voidAt)", "")),
    web.post("/api/v1/features", refuse("Feature", "create a feature", "")),
    web.delete("/api/v1/features/{feature}", refuse("Feature", "archive a feature", "")),
    web.post("/api/v1/meters", refuse("Meter", "create a meter", "")),
    web.put("/api/v1/meters/{meter}", refuse("Meter", "update a meter", "")),
    web.delete("/api/v1/meters/{meter}", refuse("Meter", "delete a meter", "")),
    # usage (DESIGN D9): CloudEvents committed to the ledger
    web.post("/api/v1/events", ingest.post_events),
    # OFREP
    web.post("/ofrep/v1/evaluate/flags/{key}", ofrep.evaluate_flag),
    web.post("/ofrep/v1/evaluate/flags", ofrep.evaluate_flags),
    # operations
    *PROBE_ROUTES,
    web.get("/status", status),
    web.get("/openapi.json", openapi),
]
