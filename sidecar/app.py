"""The sidecar's aiohttp application factory.

Role: ``create_app(settings, view, ...)`` builds the API app from objects (never argv or the
environment): typed state under ``web.AppKey``, the routes from ``routes.ROUTES`` installed by
``dispatch`` (each handler inside the boundary: problem+json translation, the latency histogram,
the freshness headers ``Allotment-Ledger-Version`` and ``Allotment-Ledger-Age``; no middleware),
and cleanup contexts that open the
ledger source, run the feed follower, measure GC pauses and shorten the interpreter's thread
switch interval while the app runs (``GIL_SWITCH_SECONDS``: the follower reads and decodes the
feed in a worker thread, and at Python's default of 5 ms every poll could hold an access check
back for milliseconds waiting for the GIL).
``create_probe_app(app)`` serves ``/livez``, ``/readyz`` and ``/metrics`` from the same state on
the probe port.

It must not bind sockets (the CLI does, on 127.0.0.1) or compute values.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from . import dispatch
from .ingest import install_ingestion
from .keys import CLOCK, FOLLOWER, METRICS, SETTINGS, VIEW, Clock, wall_clock
from .metrics import SidecarMetrics
from .routes import PROBE_ROUTES, ROUTES
from .settings import SidecarSettings
from .source import LedgerSource
from .sync import Follower
from .view import View

__all__ = ["create_app", "create_probe_app", "wall_clock"]

log = logging.getLogger("allotment.sidecar")

SourceOpener = Callable[[SidecarSettings], LedgerSource]

#: How long the event loop waits at most for the GIL held by a worker thread (Python: 5 ms).
GIL_SWITCH_SECONDS = 0.0002


def create_app(
    settings: SidecarSettings,
    view: View,
    *,
    open_source: SourceOpener | None = None,
    clock: Clock = wall_clock,
    metrics: SidecarMetrics | None = None,
) -> web.Application:
    """Build the sidecar API app; with ``open_source`` it loads and follows the ledger."""
    app = web.Application()
    app[SETTINGS] = settings
    app[VIEW] = view
    app[CLOCK] = clock
    app[METRICS] = metrics or SidecarMetrics()
    dispatch.install(app, ROUTES)
    install_ingestion(app)
    app.cleanup_ctx.append(_tune_runtime)
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
    app = web.Application()
    app[SETTINGS] = main[SETTINGS]
    app[VIEW] = main[VIEW]
    app[CLOCK] = main[CLOCK]
    app[METRICS] = main[METRICS]
    dispatch.install(app, PROBE_ROUTES)
    return app


async def _tune_runtime(app: web.Application) -> AsyncIterator[None]:
    if app[VIEW].freeze_gc:
        # Before serving: collect once, then keep what start-up made (modules, the app) out of
        # every later collection, as the loaded state is (a full walk of it took ~50 ms).
        gc.collect()
        gc.freeze()
    metrics = app[METRICS]
    metrics.install_gc_callback()
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(min(switch_interval, GIL_SWITCH_SECONDS))
    yield
    sys.setswitchinterval(switch_interval)
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
