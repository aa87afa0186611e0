"""Benchmark: the cost of a cold value, the sidecar's work when a cached answer is invalidated.

Role: build metered entitlements with the core's model (one grant, a few usage buckets, as
``bench/seed.py`` writes them) in several shapes and time what the sidecar does for a value it
has no cached body for: ``CoreValueEngine().value(...)`` followed by
``serialize.value_json(..., v2=True)``. Every measured call is a different entitlement read at
its own ``now`` (anchors and query instants differ by whole minutes from one entitlement to the
next), so no call is answered by work an earlier call left behind, except in the
``seed_shared_anchor`` shape, which is bench/seed.py's own population (every anchor at T0, all
read in the same minute) as the sidecar sees it.

Shapes (``now`` is 2026-11-24, mid-period):

- ``seed``: monthly usage period anchored at measureUsageFrom three weeks before ``now``.
- ``seed_shared_anchor``: the same with one anchor and one read minute for all.
- ``monthly_month_end_years``: monthly, anchored on a 31st three years back, measured from
  the current period's start (month-end clamping in every period computation).
- ``daily_anchor_10y``: daily periods anchored ten years back, measured from today's period.
- ``daily_anchor_10y_3_resets``: the same measured from three days back (three resets replayed).
- ``monthly_replay_1y``: the seed's shape a year later (twelve resets replayed).
- ``daily_replay_1y``: daily periods measured from one year back (365 resets replayed; the
  sidecar replays from measureUsageFrom on every cold value).

It must not assert anything: it prints one JSON object per shape (µs per cold value: mean, p50,
p99 over ``--count`` entitlements, each the median of ``--repeat`` passes) and a ``load`` line.

``--view DB`` measures the view's whole cold path instead (what the server does when an access
check finds its cached answer dropped): a ledger seeded by ``bench.seed`` is loaded into a
``View`` through ``StorageSource`` (as bench/view_memory.py does), then each pass drops every
entitlement's cached body and reads it through ``View.hot_body`` (record rebuilt from its
packed form, usage inputs, engine, rendering). It prints µs per cold value (process time per
pass over the entitlements, best of ``--repeat``) and a SHA-256 over every body with the
instants it holds for, to compare two commits' answers byte for byte.

Usage: ``python -m bench.cold_value [--count 2000] [--repeat 5] [--shape seed] [--profile]``
(``--profile`` prints cProfile's top functions for each shape to stderr);
``python -m bench.seed --db sqlite:////tmp/cold-1e4.db --entitlements 10000`` then
``python -m bench.cold_value --view sqlite:////tmp/cold-1e4.db [--repeat 7] [--profile]``. To time another
commit's core with this bench: ``git archive REV ledger sidecar src | tar -x -C DIR`` then
``PYTHONPATH=DIR/src:. python -m bench.cold_value``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import json
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from allotment.ledger.core.model import (
    Aggregation,
    CalendarDuration,
    Entitlement,
    EntitlementType,
    Grant,
    UsageBucket,
    Versioned,
)
from allotment.ledger.core.periods import new_usage_period
from allotment.ledger.core.ulid import derived_ulid
from allotment.ledger.core.usage import MinuteSeries
from allotment.ledger.storage.engine import open_ledger
from allotment.sidecar.compute import CoreValueEngine
from allotment.sidecar.ledger_source import StorageSource
from allotment.sidecar.serialize import value_json
from allotment.sidecar.view import View, micros

from .seed import FEATURE, NS, Seeded

__all__ = ["SHAPES", "Case", "build", "measure"]

NOW = datetime(2026, 11, 24, 9, 0, 30, tzinfo=UTC)
#: The view mode's query instant: mid-period, after bench.seed's buckets (as bench.view_memory).
VIEW_NOW = datetime(2026, 11, 15, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Case:
    """One entitlement with its grants and usage, and the instant it is read at."""

    entitlement: Entitlement
    grants: tuple[Grant, ...]
    usage: MinuteSeries
    now: datetime


@dataclass(frozen=True)
class Shape:
    """How a shape's i-th entitlement is laid out."""

    interval: str
    anchor: Callable[[int], datetime]
    measure_from: Callable[[int], datetime]
    now: Callable[[int], datetime]


def _spread(base: datetime) -> Callable[[int], datetime]:
    return lambda i: base + i * MINUTE


SHAPES: dict[str, Shape] = {
    "seed": Shape(
        "MONTH",
        _spread(datetime(2026, 11, 1, tzinfo=UTC)),
        _spread(datetime(2026, 11, 1, tzinfo=UTC)),
        _spread(NOW),
    ),
    "seed_shared_anchor": Shape(
        "MONTH",
        lambda i: datetime(2026, 11, 1, tzinfo=UTC),
        lambda i: datetime(2026, 11, 1, tzinfo=UTC),
        lambda i: NOW,
    ),
    "monthly_month_end_years": Shape(
        "MONTH",
        _spread(datetime(2023, 1, 31, 12, 0, tzinfo=UTC)),
        lambda i: datetime(2026, 10, 31, 12, 0, tzinfo=UTC) + i * MINUTE,
        _spread(NOW),
    ),
    "daily_anchor_10y": Shape(
        "DAY",
        _spread(datetime(2016, 11, 24, 6, 0, tzinfo=UTC)),
        _spread(datetime(2026, 11, 24, 6, 0, tzinfo=UTC)),
        _spread(NOW),
    ),
    "daily_anchor_10y_3_resets": Shape(
        "DAY",
        _spread(datetime(2016, 11, 24, 6, 0, tzinfo=UTC)),
        _spread(datetime(2026, 11, 21, 6, 0, tzinfo=UTC)),
        _spread(NOW),
    ),
    "monthly_replay_1y": Shape(
        "MONTH",
        _spread(datetime(2025, 11, 1, tzinfo=UTC)),
        _spread(datetime(2025, 11, 1, tzinfo=UTC)),
        _spread(NOW),
    ),
    "daily_replay_1y": Shape(
        "DAY",
        _spread(datetime(2025, 11, 24, 6, 0, tzinfo=UTC)),
        _spread(datetime(2025, 11, 24, 6, 0, tzinfo=UTC)),
        _spread(NOW),
    ),
}


def build(shape: Shape, i: int, buckets: int = 4) -> Case:
    """Return the ``i``-th entitlement of ``shape``: one 10^6 grant, ``buckets`` hourly buckets."""
    anchor = shape.anchor(i)
    measure_from = shape.measure_from(i)
    created = min(anchor, measure_from)
    key = f"customer-{i}"
    entitlement = Entitlement(
        id=derived_ulid(created, f"entitlement/{i}"),
        namespace="bench",
        name=f"{key}-tokens",
        customer_key=key,
        feature_key="tokens",
        type=EntitlementType.METERED,
        created_at=created,
        usage_period=new_usage_period(CalendarDuration.parse(shape.interval), anchor, measure_from),
        measure_usage_from=measure_from,
        is_soft_limit=(Versioned(created, False),),
        preserve_overage_at_reset=(Versioned(created, False),),
    )
    grant = Grant(
        id=derived_ulid(created, f"grant/{i}"),
        namespace="bench",
        name=f"{key}-tokens-grant",
        entitlement_id=entitlement.id,
        amount=Decimal(1_000_000),
        effective_at=created,
        created_at=created,
    )
    now = shape.now(i)
    first = max(measure_from, now - timedelta(hours=buckets + 1)).replace(second=0)
    series = MinuteSeries(
        Aggregation.SUM,
        (UsageBucket(first + timedelta(hours=b), Decimal(b + 1)) for b in range(buckets)),
    )
    return Case(entitlement, (grant,), series, now)


def _cold(engine: CoreValueEngine, case: Case) -> bytes:
    value = engine.value(case.entitlement, case.grants, Aggregation.SUM, case.usage, case.now)
    return value_json(value, v2=True).encode()


def measure(cases: list[Case], repeat: int) -> list[float]:
    """Return µs per cold value: for each case, the median of its ``repeat`` timed calls.

    Each pass computes every case afresh (nothing is cached between calls); the median per
    case keeps a pass that another process preempted from counting.
    """
    engine = CoreValueEngine()
    clock = time.perf_counter_ns
    passes: list[list[float]] = []
    for _ in range(repeat):
        samples = []
        gc.disable()
        try:
            for case in cases:
                started = clock()
                _cold(engine, case)
                samples.append((clock() - started) / 1000)
        finally:
            gc.enable()
        passes.append(samples)
    return [statistics.median(timings) for timings in zip(*passes, strict=True)]


def _profile(cases: list[Case], name: str) -> None:
    engine = CoreValueEngine()
    profiler = cProfile.Profile()
    profiler.enable()
    for case in cases:
        _cold(engine, case)
    profiler.disable()
    print(f"--- profile: {name} ({len(cases)} cold values)", file=sys.stderr)
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(18)


def measure_view(url: str, repeat: int, profile: bool) -> dict[str, object]:
    """Load a seeded ledger into a ``View``; time dropping and re-reading every cached body."""
    source = StorageSource(open_ledger(url, reader_pool_size=1))
    view = View(NS, CoreValueEngine())
    view.install(view.prepare(source.load(NS)), VIEW_NOW)
    source.close()
    slots = list(view._require().entitlements.values())  # the bench drops bodies directly
    subjects = [Seeded.subject(i) for i in range(len(slots))]
    hot_body = view.hot_body

    def cold_pass() -> list[bytes | None]:
        for slot in slots:
            slot.body = None
        return [hot_body(s, FEATURE, micros(VIEW_NOW), by_subject=True, v2=True) for s in subjects]

    bodies = cold_pass()
    digest = hashlib.sha256()
    for slot, body in zip(slots, bodies, strict=True):
        digest.update(b"%s|%s|%s\n" % (str(slot.lo).encode(), str(slot.hi).encode(), body or b""))
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        cold_pass()
        profiler.disable()
        print(f"--- profile: view cold path ({len(slots)} cold values)", file=sys.stderr)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    seconds: list[float] = []
    gc.collect()
    for _ in range(repeat):
        started = time.process_time()
        cold_pass()
        seconds.append(time.process_time() - started)
    return {
        "mode": "view",
        "entitlements": len(slots),
        "not_found": sum(body is None for body in bodies),
        "us_per_cold_value_best": round(min(seconds) / len(slots) * 1e6, 1),
        "us_per_cold_value_median": round(statistics.median(seconds) / len(slots) * 1e6, 1),
        "bodies_sha256": digest.hexdigest(),
        "body": (bodies[0] or b"").decode(),
    }


def main() -> None:
    """Time cold values per shape and print one JSON object per line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="entitlements per shape")
    parser.add_argument("--repeat", type=int, default=5, help="passes; medians are reported")
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES))
    parser.add_argument("--profile", action="store_true", help="cProfile to stderr")
    parser.add_argument("--view", metavar="DB", help="time the view's cold path on this ledger")
    args = parser.parse_args()
    print(json.dumps({"load": os.getloadavg(), "cpus": os.cpu_count()}))
    if args.view:
        print(json.dumps(measure_view(args.view, args.repeat, args.profile)))
        print(json.dumps({"load": os.getloadavg()}))
        return
    for name in args.shape or list(SHAPES):
        shape = SHAPES[name]
        count = args.count if not name.startswith("daily_replay") else max(args.count // 20, 10)
        cases = [build(shape, i) for i in range(count)]
        if args.profile:
            _profile(cases, name)
        samples = sorted(measure(cases, args.repeat))
        sample = _cold(CoreValueEngine(), cases[0]).decode()
        print(
            json.dumps(
                {
                    "shape": name,
                    "count": count,
                    "mean_us": round(statistics.fmean(samples), 1),
                    "p50_us": round(samples[len(samples) // 2], 1),
                    "p99_us": round(samples[min(len(samples) - 1, len(samples) * 99 // 100)], 1),
                    "body": sample,
                }
            )
        )


if __name__ == "__main__":
    main()
