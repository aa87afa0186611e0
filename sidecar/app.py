"""The sidecar's aiohttp application factory.

Role: ``create_app(settings, view, ...)`` builds the API app from objects (never argv or the
environment): typed state under ``web.AppKey``, the routes from ``routes.ROUTES``, one middleware
(problem+json translation, the latency histogram, the freshness headers
``Allotment-Ledger-Version`` and ``Allotment-Ledger-Age``), and cleanup contexts that open the
ledger source, run the feed follower and measure GC pauses while the app runs.
``create_probe_app(app)`` serves ``/livez``, ``/readyz`` and ``/metrics`` from the same state on
the probe port.

It must not bind sockets (the CLI does, on 127.0.0.1) or compute values.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from aiohttp import web
from aiohttp.typedefs import Handler

from .compute import EngineUnavailableError
from .ingest import install_ingestion
from .keys import CLOCK, FOLLOWER, METRICS, SETTINGS, VIEW, Clock
from .metrics import SidecarMetrics
from .problems import ProblemError, from_error, problem_response
from .routes import PROBE_ROUTES, ROUTES
from .settings import SidecarSettings
from .source import LedgerSource
from .sync import Follower
from .view import View

__all__ = ["create_app", "create_probe_app", "wall_clock"]

log = logging.getLogger("allotment.sidecar")

SourceOpener = Callable[[SidecarSettings], LedgerSource]
_FRESHNESS_PREFIXES = ("/api/", "/ofrep/")
_VERSION = "Allotment-Ledger-Version"  # present: the handler has set the freshness headers


def wall_clock() -> datetime:
    """Return the current aware UTC instant."""
    return datetime.now(UTC)


def _route_name(request: web.Request) -> str:
    info = request.match_info
    route = info.route if info is not None else None
    if route is None or route.resource is None:
        return "unmatched"
    return route.resource.canonical


@web.middleware
async def _boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Translate errors to problem+json, time the request and add freshness headers."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except ProblemError as error:
        response = from_error(error)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        detail = (
            f"{request.method} {request.path} is not served by this sidecar; see /openapi.json"
            if error.status in (404, 405)
            else error.text or error.reason
        )
        headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        response = problem_response(error.status, detail, headers=headers)
    except EngineUnavailableError as error:
        response = problem_response(503, str(error))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("Unexpected error answering %s %s", request.method, request.path)
        response = problem_response(500, "")
    app = request.app
    if request.path.startswith(_FRESHNESS_PREFIXES) and _VERSION not in response.headers:
        response.headers.update(app[VIEW].freshness_headers(app[CLOCK]()))
    app[METRICS].observe_request(_route_name(request), time.perf_counter() - started)
    return response


def create_app(
    settings: SidecarSettings,
    view: View,
    *,
    open_source: SourceOpener | None = None,
    clock: Clock = wall_clock,
    metrics: SidecarMetrics | None = None,
) -> web.Application:
    """Build the sidecar API app; with ``open_source`` it loads and follows the ledger."""
    app = web.Application(middlewares=[_boundary])
    app[SETTINGS] = settings
    app[VIEW] = view
    app[CLOCK] = clock
    app[METRICS] = metrics or SidecarMetrics()
    app.add_routes(ROUTES)
    install_ingestion(app)
    app.cleanup_ctx.append(_measure_gc)
    if open_source is not None:
        app[FOLLOWER] = Follower(
            settings,
            view,
            clock,
            open_source,
            on_reload=_count_reload(app[METRICS]),
            on_error=lambda _error: app[METRICS].feed_errors.inc(),
        )
        app.cleanup_ctx.append(_follow_ledger)
    return app


def _count_reload(metrics: SidecarMetrics) -> Callable[[float], None]:
    def reloaded(seconds: float) -> None:
        metrics.reloads.inc()
        metrics.load_seconds.observe(seconds)

    return reloaded


def create_probe_app(main: web.Application) -> web.Application:
    """Build the probe-port app serving /livez, /readyz and /metrics from ``main``'s state."""
    app = web.Application(middlewares=[_boundary])
    app[SETTINGS] = main[SETTINGS]
    app[VIEW] = main[VIEW]
    app[CLOCK] = main[CLOCK]
    app[METRICS] = main[METRICS]
    app.add_routes(PROBE_ROUTES)
    return app


async def _measure_gc(app: web.Application) -> AsyncIterator[None]:
    metrics = app[METRICS]
    metrics.install_gc_callback()
    yield
    metrics.remove_gc_callback()


async def _follow_ledger(app: web.Application) -> AsyncIterator[None]:
    follower = app[FOLLOWER]
    task = asyncio.create_task(follower.run(), name="allotment-feed-follower")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await follower.close()
