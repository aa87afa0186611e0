"""The sidecar view alone: load time, resident memory per entitlement, and the hot lookup's cost.

Role: load a namespace seeded by ``bench.seed`` into a ``View`` the normal way
(``StorageSource.load``, then ``prepare`` and ``install`` as the follower does, in this process,
no HTTP), and report as JSON: seconds to ready (and the process's CPU seconds for it, steadier
on a shared box), the RSS the load added per loaded entitlement, the RSS per entitlement once
every value has been computed and cached (each subject read once through ``View.hot_body``),
the cold pass's seconds, and ``hot_body``'s cost per call from the cache (CPU time per call over
repeated reads of 1,000 subjects, best of 7). The load average is printed next to the numbers:
the box is shared, so treat them as upper bounds.

It must not write to the ledger.

Usage: ``python -m bench.view_memory --db sqlite:////tmp/compact-seed-1e6.db``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
import timeit
from datetime import UTC, datetime
from pathlib import Path

from allotment.ledger.storage.engine import open_ledger
from allotment.sidecar.compute import CoreValueEngine
from allotment.sidecar.ledger_source import StorageSource
from allotment.sidecar.view import View, micros

from .seed import FEATURE, NS, Seeded

__all__ = ["main"]

#: After the seed's buckets (minutes 0..3 hours of T0) and any usage a bench's background
#: writer committed since (stamped with the wall clock): usage stamped after the instant a value
#: is read at is not cached (it counts later), so every read would compute.
NOW = max(datetime(2026, 11, 15, tzinfo=UTC), datetime.now(UTC))


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(url: str) -> dict[str, object]:
    """Load the bench namespace from ``url`` and measure the view."""
    source = StorageSource(open_ledger(url, reader_pool_size=1))
    view = View(NS, CoreValueEngine())
    load_before = os.getloadavg()[0]
    gc.collect()
    before = _rss_bytes()
    started, cpu = time.perf_counter(), time.process_time()
    collecting = gc.isenabled()
    gc.disable()  # as the follower does while it loads
    try:
        view.install(view.prepare(source.load(NS)), NOW)
    finally:
        if collecting:
            gc.enable()
    load_seconds, load_cpu = time.perf_counter() - started, time.process_time() - cpu
    loaded = _rss_bytes()
    n = view.counts().entitlements
    started = time.perf_counter()
    # Subjects made one at a time: a list of 10^6 of them would add ~70 bytes per entitlement
    # to the RSS measured below, which is the view's.
    missing = sum(
        view.hot_body(Seeded.subject(i), FEATURE, micros(NOW), by_subject=True, v2=False) is None
        for i in range(n)
    )
    cold_seconds = time.perf_counter() - started
    cached = _rss_bytes()
    sample = [Seeded.subject(i) for i in range(min(n, 1000))]
    hot_body = view.hot_body

    def reads() -> None:
        for subject in sample:
            hot_body(subject, FEATURE, micros(NOW), by_subject=True, v2=False)

    best = min(timeit.repeat(reads, number=20, repeat=7, timer=time.process_time))
    source.close()
    return {
        "entitlements": n,
        "not_found": missing,
        "load_seconds_to_ready": round(load_seconds, 1),
        "load_cpu_seconds": round(load_cpu, 1),
        "rss_bytes_per_entitlement_loaded": round((loaded - before) / max(1, n)),
        "rss_bytes_per_entitlement_values_cached": round((cached - before) / max(1, n)),
        "cold_pass_seconds": round(cold_seconds, 1),
        "hot_body_ns_per_call": round(best / (20 * len(sample)) * 1e9),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    """Measure and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a ledger seeded by bench.seed")
    args = parser.parse_args()
    print(json.dumps(measure(args.db)))


if __name__ == "__main__":
    main()
