"""Typed application state: the ``web.AppKey`` of everything a sidecar app holds.

Role: name the objects ``create_app`` puts in the app (settings, view, clock, metrics, follower)
so handlers read them with their types and without module-level singletons; ``wall_clock`` is
the default clock.

It must not create any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from aiohttp import web

from .metrics import SidecarMetrics
from .settings import SidecarSettings
from .sync import Follower
from .view import View

__all__ = ["CLOCK", "FOLLOWER", "METRICS", "SETTINGS", "VIEW", "Clock", "wall_clock"]

Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    """Return the current aware UTC instant."""
    return datetime.now(UTC)


SETTINGS = web.AppKey("settings", SidecarSettings)
VIEW = web.AppKey("view", View)
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
METRICS = web.AppKey("metrics", SidecarMetrics)
FOLLOWER = web.AppKey("follower", Follower)
