"""Benchmark of the sidecar's read path; prints JSON.

What it measures, in one run, at ``--entitlements`` loaded metered entitlements (one customer,
one grant and a day of per-minute usage each):

- memory per entitlement retained by the loaded view (tracemalloc, everything it holds: customer,
  entitlement, grant, usage buckets, indexes) and the full-collection GC pause with the loaded
  state frozen (``gc.freeze``) and unfrozen;
- over localhost HTTP with vegeta (an open-loop generator, from the Go module proxy:
  ``go install github.com/tsenart/vegeta/v12@v12.12.0``), server and generator pinned to
  separate cores, the value endpoint (subjects round-robin over every loaded customer) next to a
  bare aiohttp endpoint returning a constant on the same app and event loop:
  throughput at saturation (16 connections) and p50/p99 latency at a fixed rate of half the bare
  endpoint's saturated rate.

Not measured here (see the report): background ingestion of 1,000 events/s, 10^5 and 10^6.
The ledger is replaced by an in-memory source so the run needs no database; the view, the
values (the core's engine) and the HTTP stack are the production ones.

Usage: ``python bench/sidecar.py [--entitlements 10000] [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiohttp import web

from allotment.ledger.core.model import (
    Aggregation,
    CalendarDuration,
    Customer,
    Entitlement,
    EntitlementType,
    Feature,
    Grant,
    Meter,
    Versioned,
)
from allotment.ledger.core.periods import new_usage_period
from allotment.ledger.storage.codec import CustomerRecord, FeatureRecord, MeterRecord
from allotment.ledger.storage.usage import BucketState
from allotment.sidecar.app import create_app
from allotment.sidecar.compute import CoreValueEngine
from allotment.sidecar.settings import SidecarSettings
from allotment.sidecar.source import FeedBatch, LoadedNamespace
from allotment.sidecar.view import View

NS = "bench"
T0 = datetime(2026, 11, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=1, hours=12)
USAGE_MINUTES = 24  # buckets per customer (one an hour for a day)


def _ulid(prefix: str, i: int) -> str:
    return (prefix + f"{i:022d}")[:26].upper().replace("I", "1").replace("L", "1")


def build(n: int) -> LoadedNamespace:
    """Return a namespace with ``n`` customers, each with one metered entitlement."""
    period = new_usage_period(CalendarDuration.parse("MONTH"), T0, T0)
    customers, entitlements, grants, usage = [], [], [], []
    for i in range(n):
        key = f"customer-{i}"
        customers.append(CustomerRecord(_ulid("0C", i), Customer(key, key, (f"sub-{i}",)), T0))
        ent = Entitlement(
            id=_ulid("0E", i),
            namespace=NS,
            name=f"{key}-tokens",
            customer_key=key,
            feature_key="tokens",
            type=EntitlementType.METERED,
            created_at=T0,
            usage_period=period,
            measure_usage_from=T0,
            is_soft_limit=(Versioned(T0, False),),
        )
        entitlements.append(ent)
        grants.append(
            Grant(
                id=_ulid("0G", i),
                namespace=NS,
                name=f"{key}-grant",
                entitlement_id=ent.id,
                amount=Decimal(1_000_000),
                effective_at=T0,
                created_at=T0,
            )
        )
        for h in range(USAGE_MINUTES):
            usage.append(
                BucketState(
                    meter_id=_ulid("0M", 0),
                    meter_slug="tokens",
                    subject=f"sub-{i}",
                    groups=(),
                    minute=T0 + timedelta(hours=h),
                    event_count=1,
                    value_sum=Decimal(h + 1),
                )
            )
    return LoadedNamespace(
        namespace=NS,
        epoch="BENCH",
        position=1,
        contract_version=1,
        customers=customers,
        features=[FeatureRecord(_ulid("0F", 0), Feature("tokens", "Tokens", "tokens"), T0)],
        meters=[MeterRecord(_ulid("0M", 0), Meter("tokens", "prompt", Aggregation.SUM, "$.t"), T0)],
        entitlements=entitlements,
        grants=grants,
        usage=usage,
    )


class MemorySource:
    """A ledger source that serves a prepared namespace and an empty feed."""

    def __init__(self, loaded: LoadedNamespace) -> None:
        self.loaded = loaded

    def load(self, namespace: str) -> LoadedNamespace:
        return self.loaded

    def changes_since(self, namespace: str, position: int, limit: int) -> FeedBatch:
        return FeedBatch(self.loaded.epoch, position, 1)

    def listen(self, namespace: str, wake: Any) -> None:
        return None

    def close(self) -> None:
        pass


def _retained(n: int, buckets: int) -> tuple[int, View]:
    """Return the bytes a loaded, warmed view retains with ``buckets`` usage buckets each."""
    global USAGE_MINUTES
    USAGE_MINUTES = buckets
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    loaded = build(n)
    view = View(NS, CoreValueEngine(), freeze_gc=False)
    view.load(loaded, NOW)
    del loaded
    for i in range(n):  # warm every cached value, as the hot path holds them
        entitlement = view.active_entitlement(f"customer-{i}", "tokens", NOW)
        if entitlement is not None:
            view.value(entitlement, NOW)
    gc.collect()
    retained = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return retained, view


def measure_memory(n: int) -> dict[str, Any]:
    """Return retained bytes per entitlement and GC pauses with the state frozen or not."""
    bare, view = _retained(n, 0)
    del view
    retained, view = _retained(n, 24)
    started = time.perf_counter()
    gc.collect()
    unfrozen = time.perf_counter() - started
    gc.freeze()
    started = time.perf_counter()
    gc.collect()
    frozen = time.perf_counter() - started
    gc.unfreeze()
    del view
    return {
        "bytes_per_entitlement": round(bare / n),
        "includes": "customer, entitlement, grant, indexes and the cached value; no usage",
        "bytes_per_usage_bucket": round((retained - bare) / (24 * n)),
        "gc_full_collection_ms_unfrozen": round(unfrozen * 1000, 2),
        "gc_full_collection_ms_frozen": round(frozen * 1000, 2),
    }


def serve(port: int, n: int) -> None:
    """Run the sidecar app with a bare endpoint on the same loop (the server process)."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {0})
    view = View(NS, CoreValueEngine())
    settings = SidecarSettings("memory://", NS, probe_port=None)
    loaded = build(n)
    now = datetime.now(UTC)
    view.load(loaded, now)
    for i in range(n):  # warm every cached value: the hot path is what is measured
        entitlement = view.active_entitlement(f"customer-{i}", "tokens", now)
        if entitlement is not None:
            view.value(entitlement, now)
    app = create_app(settings, view, open_source=lambda _s: MemorySource(loaded))

    async def bare(_request: web.Request) -> web.Response:
        return web.Response(text='{"hasAccess":true}', content_type="application/json")

    app.router.add_get("/bench/bare", bare)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _vegeta(binary: str, targets: Path, args: list[str], seconds: int) -> dict[str, Any]:
    attack = subprocess.Popen(
        [binary, "attack", f"-targets={targets}", f"-duration={seconds}s", "-keepalive", *args],
        stdout=subprocess.PIPE,
        preexec_fn=lambda: (
            os.sched_setaffinity(0, {1}) if hasattr(os, "sched_setaffinity") else None
        ),
    )
    report = subprocess.run(
        [binary, "report", "-type=json"], stdin=attack.stdout, capture_output=True, check=True
    )
    attack.wait()
    data: dict[str, Any] = json.loads(report.stdout)
    lat = data["latencies"]
    return {
        "requests": data["requests"],
        "throughput_per_s": round(data["throughput"], 1),
        "success": data["success"],
        "p50_ms": round(lat["50th"] / 1e6, 3),
        "p99_ms": round(lat["99th"] / 1e6, 3),
        "max_ms": round(lat["max"] / 1e6, 3),
        "status_codes": data["status_codes"],
    }


def main() -> int:
    """Run the benchmark and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entitlements", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.entitlements)
        return 0
    vegeta = shutil.which("vegeta") or str(Path.home() / "go" / "bin" / "vegeta")
    if not Path(vegeta).exists():
        print(
            json.dumps(
                {"error": "vegeta not found: go install github.com/tsenart/vegeta/v12@v12.12.0"}
            )
        )
        return 1
    result: dict[str, Any] = {
        "entitlements": args.entitlements,
        "cpus": os.cpu_count(),
        "memory": measure_memory(args.entitlements),
    }
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--entitlements", str(args.entitlements)]
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                    conn.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
                    if b" 200 " in conn.recv(100):
                        break
            except OSError:
                pass
            time.sleep(0.2)
        with tempfile.TemporaryDirectory() as tmp:
            bare = Path(tmp) / "bare.txt"
            bare.write_text(f"GET {base}/bench/bare\n")
            value = Path(tmp) / "value.txt"
            value.write_text(
                "".join(
                    f"GET {base}/api/v1/subjects/sub-{i}/entitlements/tokens/value\n"
                    for i in range(args.entitlements)
                )
            )
            saturate = ["-rate=0", "-max-workers=16", "-workers=16", "-connections=16"]
            _vegeta(vegeta, value, saturate, 2)  # warm every cached value
            bare_sat = _vegeta(vegeta, bare, saturate, args.seconds)
            value_sat = _vegeta(vegeta, value, saturate, args.seconds)
            rate = max(1, int(bare_sat["throughput_per_s"] / 2))
            fixed = [f"-rate={rate}/s", "-connections=16"]
            bare_fixed = _vegeta(vegeta, bare, fixed, args.seconds)
            value_fixed = _vegeta(vegeta, value, fixed, args.seconds)
        result["saturation_16_connections"] = {
            "bare": bare_sat,
            "value": value_sat,
            "value_over_bare": round(
                value_sat["throughput_per_s"] / bare_sat["throughput_per_s"], 3
            ),
        }
        result[f"fixed_rate_{rate}_per_s"] = {"bare": bare_fixed, "value": value_fixed}
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    sys.exit(main())
