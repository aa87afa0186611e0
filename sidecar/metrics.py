"""The sidecar's Prometheus metrics: one registry per app, no module-level collectors.

Role: check latency (a histogram with sub-millisecond buckets, per route), sync lag, ledger
version, reloads, feed errors, loaded counts and cyclic-GC pauses (measured through
``gc.callbacks`` while the app runs), rendered in the text exposition format.

It must not register anything in prometheus-client's global default registry.
"""

from __future__ import annotations

import gc
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

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


class RouteLatency(Collector):
    """A latency histogram by route, observed on the event loop without a lock or label lookup.

    prometheus-client's ``Histogram.observe`` takes a lock and walks its buckets per request
    (about two microseconds); this keeps one list of bucket counts per route, found by a
    bisection, and renders the same ``_bucket``/``_sum``/``_count`` series at scrape time.
    Observe it from the event loop's thread only.
    """

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self._routes: dict[str, list[float]] = {}  # bucket counts..., then +Inf, then the sum

    def observe(self, route: str, seconds: float) -> None:
        """Count one observation of ``seconds`` for ``route``."""
        self.observer(route)(seconds)

    def observer(self, route: str) -> Callable[[float], None]:
        """Return the function counting observations for ``route`` (its series starts at 0)."""
        counts = self._routes.get(route)
        if counts is None:
            counts = self._routes[route] = [0.0] * (len(LATENCY_BUCKETS) + 2)

        def observe(seconds: float) -> None:
            counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            counts[-1] += seconds

        return observe

    def collect(self) -> Iterator[Metric]:
        """Yield the histogram family (cumulative buckets, sum, count per route)."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=["route"])
        for route, counts in sorted(self._routes.items()):
            cumulative: list[tuple[str, float]] = []
            running = 0.0
            for bound, count in zip((*LATENCY_BUCKETS, math.inf), counts, strict=False):
                running += count
                cumulative.append(("+Inf" if bound == math.inf else repr(bound), running))
            family.add_metric([route], cumulative, counts[-1])
        yield family

    def describe(self) -> Iterator[Metric]:
        """Yield the family without samples (for the registry's name check)."""
        yield HistogramMetricFamily(self.name, self.documentation, labels=["route"])


class SidecarMetrics:
    """Every collector of one sidecar app, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.check_seconds = RouteLatency(
            "allotment_sidecar_request_seconds", "Time spent answering a request, by route"
        )
        self.registry.register(self.check_seconds)
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
        self.gc_pause_longest = Gauge(
            "allotment_sidecar_gc_pause_max_seconds",
            "The longest cyclic garbage collector pause since the sidecar started",
            registry=self.registry,
        )
        #: The longest GC pause so far, in seconds.
        self.gc_pause_max = 0.0
        self._gc_started: float | None = None
        self._stale_children: dict[str, Any] = {}

    def count_stale_answer(self, policy: str) -> None:
        """Count one answer given past the staleness budget under ``policy``."""
        child = self._stale_children.get(policy)
        if child is None:
            child = self._stale_children[policy] = self.stale_answers.labels(policy)
        child.inc()

    def gc_callback(self, phase: str, info: dict[str, Any]) -> None:
        """Measure a collection (installed in ``gc.callbacks`` while the app runs).

        A pause is the collecting thread's CPU time from the start to the end of the collection:
        the collector's own work. Wall time also counted what the thread waited for meanwhile:
        the GIL, which another thread may take between two bytecodes of a callback, and the
        core (at 10^6, young collections of 0.2 to 0.3 ms of CPU measured 8 to 20 ms of wall
        time, and the longest "pause" reported was 476 ms while no collection took over 2.3 ms
        of CPU). What answers waited, whatever the cause, is the check latency histogram's.
        """
        if phase == "start":
            self._gc_started = time.thread_time()
        elif self._gc_started is not None:
            pause = time.thread_time() - self._gc_started
            self.gc_pause.labels(str(info.get("generation", "?"))).observe(pause)
            if pause > self.gc_pause_max:
                self.gc_pause_max = pause
                self.gc_pause_longest.set(pause)
            self._gc_started = None

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
