"""The sidecar's Prometheus metrics: one registry per app, no module-level collectors.

Role: check latency (a histogram with sub-millisecond buckets, per route), sync lag, ledger
version, reloads, feed errors, loaded counts and cyclic-GC pauses (measured through
``gc.callbacks`` while the app runs), rendered in the text exposition format.

It must not register anything in prometheus-client's global default registry.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "SidecarMetrics"]

#: Seconds: 25 µs to 100 ms, dense below one millisecond where the target lies.
LATENCY_BUCKETS = (
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.1,
)
GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class SidecarMetrics:
    """Every collector of one sidecar app, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.check_seconds = Histogram(
            "allotment_sidecar_request_seconds",
            "Time spent answering a request, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.sync_lag = Gauge(
            "allotment_sidecar_sync_lag_seconds",
            "Seconds since the view last knew it had every committed ledger change",
            registry=self.registry,
        )
        self.ledger_version = Gauge(
            "allotment_sidecar_ledger_version",
            "Feed position the view has applied up to",
            registry=self.registry,
        )
        self.reloads = Counter(
            "allotment_sidecar_reloads_total",
            "Full loads of the namespace (the first, and one per new ledger epoch)",
            registry=self.registry,
        )
        self.load_seconds = Histogram(
            "allotment_sidecar_load_seconds",
            "Duration of full loads",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.feed_errors = Counter(
            "allotment_sidecar_feed_errors_total",
            "Failed loads or polls of the ledger",
            registry=self.registry,
        )
        self.loaded = Gauge(
            "allotment_sidecar_loaded_records",
            "Records held in memory, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.stale_answers = Counter(
            "allotment_sidecar_stale_answers_total",
            "Answers given past the staleness budget, by the feature's whenStale policy",
            ["policy"],
            registry=self.registry,
        )
        self.gc_pause = Histogram(
            "allotment_sidecar_gc_pause_seconds",
            "Cyclic garbage collector pauses, by generation",
            ["generation"],
            buckets=GC_BUCKETS,
            registry=self.registry,
        )
        self._gc_started = 0.0
        self._route_children: dict[str, Any] = {}
        self._stale_children: dict[str, Any] = {}

    def observe_request(self, route: str, seconds: float) -> None:
        """Record one request's latency (label children cached: ``labels`` is slow)."""
        child = self._route_children.get(route)
        if child is None:
            child = self._route_children[route] = self.check_seconds.labels(route)
        child.observe(seconds)

    def count_stale_answer(self, policy: str) -> None:
        """Count one answer given past the staleness budget under ``policy``."""
        child = self._stale_children.get(policy)
        if child is None:
            child = self._stale_children[policy] = self.stale_answers.labels(policy)
        child.inc()

    def gc_callback(self, phase: str, info: dict[str, Any]) -> None:
        """Measure a collection (installed in ``gc.callbacks`` while the app runs)."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            pause = time.perf_counter() - self._gc_started
            self.gc_pause.labels(str(info.get("generation", "?"))).observe(pause)
            self._gc_started = 0.0

    def install_gc_callback(self) -> None:
        """Start measuring GC pauses."""
        gc.callbacks.append(self.gc_callback)

    def remove_gc_callback(self) -> None:
        """Stop measuring GC pauses."""
        if self.gc_callback in gc.callbacks:
            gc.callbacks.remove(self.gc_callback)

    def render(self) -> bytes:
        """Return the exposition text."""
        return generate_latest(self.registry)
