"""The access check's fast lane: a cached value read answered before aiohttp's router.

Role: ``install(runner)`` puts the lane in front of the application's own request handler (the
public ``request_handler`` of the runner's ``web.Server``, read by each connection it accepts);
``wire.serve`` does it for every app it serves. It answers the plain value reads the wire lane in
front of it leaves to aiohttp (``wire``: a connection aiohttp has already handled a request on, a
request that came in pieces). A ``GET`` of one of OpenMeter's three value paths, without a query, whose
segments need no decoding, on a fresh view that finds the customer and the entitlement, is
answered at once from the cached body (``cached_value``), with the freshness headers, and its
latency is observed under the route's template. Nothing else is decided here: any other request,
a query, a percent-encoded, empty or dot segment, a stale or unloaded view, an unknown customer
or entitlement goes to the application unchanged, whose value handlers call the same
``cached_value`` first and answer everything else in full (``routes._value``).

Why: a value read through the application pays the router's walk and regular expression, the
match info and the handler chain, a fifth of the request's cost with OpenMeter's long paths
(measured: see the README, "The sidecar API").

The lane reads the clock as whole microseconds (``micros``): from ``time.time_ns`` when the
app's clock is the wall clock (no datetime is built for a check), else from the app's clock.

It must not decide access itself, read the environment, or answer what the application would
answer differently.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from multidict import CIMultiDict

from .keys import CLOCK, METRICS, SETTINGS, VIEW, Clock, wall_clock
from .view import MICROSECOND, View, micros

__all__ = [
    "VALUE_ROUTES",
    "FastLane",
    "JsonHeaders",
    "cached_value",
    "install",
    "micros_clock",
    "value_lanes",
]

#: The value paths: /api/v1/subjects/{subject}/..., /api/v1/customers/{customer}/...,
#: /api/v2/customers/{customer}/...; a variable is one segment the router would pass unchanged.
_VALUE_PATH = re.compile(
    r"/api/(v1/subjects|v1/customers|v2/customers)/([^/%{}?#]+)/entitlements/([^/%{}?#]+)/value"
)
#: The route templates (latency labels) and how each resolves its first variable.
VALUE_ROUTES = {
    "v1/subjects": ("/api/v1/subjects/{subject}/entitlements/{entitlement}/value", True, False),
    "v1/customers": ("/api/v1/customers/{customer}/entitlements/{entitlement}/value", False, False),
    "v2/customers": ("/api/v2/customers/{customer}/entitlements/{entitlement}/value", False, True),
}
_DOTS = (".", "..")
#: Exactly this (no charset): the legacy Node SDK compares it.
_CONTENT_TYPE = {"Content-Type": "application/json"}

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def value_lanes(app: web.Application) -> dict[str, tuple[Callable[[float], None], bool, bool]]:
    """Return each value lane's latency observer, whether it reads a subject, and whether v2."""
    latency = app[METRICS].check_seconds
    return {
        key: (latency.observer(template), by_subject, v2)
        for key, (template, by_subject, v2) in VALUE_ROUTES.items()
    }


def micros_clock(clock: Clock) -> Callable[[], int]:
    """Return a function reading ``clock`` as ``micros`` (the wall clock without a datetime)."""
    if clock is wall_clock:
        return _wall_micros
    return lambda: micros(clock())


def _wall_micros() -> int:
    return time.time_ns() // 1000


class JsonHeaders:
    """A cached answer's headers (freshness, ``Content-Type``), made once per version and ms.

    ``web.Response`` copies the headers it is given, so one object serves every answer made
    while the view's freshness texts (``View.freshness``) stay the same.
    """

    __slots__ = ("_headers", "_texts")

    def __init__(self) -> None:
        self._texts: tuple[str, str] | None = None
        self._headers: CIMultiDict[str] = CIMultiDict(_CONTENT_TYPE)

    def at(self, view: View, now: int) -> CIMultiDict[str]:
        """Return the headers of an answer read from ``view`` at ``now`` (``micros``)."""
        texts = view.freshness(now)
        if texts is not self._texts:
            self._texts = texts
            self._headers = CIMultiDict(view.freshness_headers(now), **_CONTENT_TYPE)
        return self._headers


def cached_value(
    view: View,
    now: int,
    budget: int,
    who: str,
    entitlement_ref: str,
    *,
    by_subject: bool,
    v2: bool,
    headers: JsonHeaders | None = None,
) -> web.Response | None:
    """Answer a current value read from the view's cache, or None when it must be decided in full.

    ``now`` and ``budget`` are microseconds (``now`` as ``micros``); ``headers`` keeps the
    headers between calls (the lane's; without it they are made for this answer). None when the
    view is stale (or not loaded) at ``now`` or does not find the customer or the
    entitlement: the caller then decides it in full (staleness policy, 404, 503).
    """
    if view.stale(now, budget):
        return None
    body = view.hot_body(who, entitlement_ref, now, by_subject=by_subject, v2=v2)
    if body is None:
        return None
    return web.Response(body=body, headers=(headers or JsonHeaders()).at(view, now))


class FastLane:
    """A request handler answering cached value reads, handing everything else to ``fallback``."""

    def __init__(self, app: web.Application, fallback: Handler) -> None:
        self.fallback = fallback
        self.view = app[VIEW]
        self.clock = micros_clock(app[CLOCK])
        self.budget = app[SETTINGS].staleness_budget // MICROSECOND
        self.headers = JsonHeaders()
        self.lanes = value_lanes(app)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer ``request`` from the cache when it is a plain value read, else fall back."""
        if request.method == "GET":
            started = time.perf_counter()
            matched = _VALUE_PATH.fullmatch(request.raw_path)
            if matched is not None:
                lane, who, ref = matched.groups()
                if who not in _DOTS and ref not in _DOTS:
                    observe, by_subject, v2 = self.lanes[lane]
                    response = cached_value(
                        self.view,
                        self.clock(),
                        self.budget,
                        who,
                        ref,
                        by_subject=by_subject,
                        v2=v2,
                        headers=self.headers,
                    )
                    if response is not None:
                        observe(time.perf_counter() - started)
                        return response
        return await self.fallback(request)


def install(runner: web.AppRunner) -> None:
    """Put the fast lane in front of a set-up runner's application (before it accepts)."""
    server = runner.server
    if server is None:
        raise RuntimeError("set the app runner up before installing the fast lane")
    server.request_handler = FastLane(runner.app, server.request_handler)
