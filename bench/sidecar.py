"""Benchmark of the sidecar's read path against a real ledger, at DESIGN's load; prints JSON.

One command per load point (``--entitlements``: 10^4, 10^5, 10^6) and database::

    python -m bench.sidecar --entitlements 10000 \\
        [--db sqlite:////tmp/bench-1e4.db --reuse | --postgres] [--background-rate 1000]

(Go on PATH: the bench builds its generator, ``bench/attack``, vegeta's attacker with its own
pacer; wrk: Debian's ``wrk``.) The
``summary`` block holds the headline numbers, each next to DESIGN's goal; the other blocks the
details. What it does, in one run:

- seeds the ledger (``bench.seed``, rows in bulk: ``n`` customers, each with one metered
  entitlement, one grant and ``--buckets`` usage buckets): a temporary SQLite file by default;
  ``--db URL --reuse`` takes a ledger already seeded with ``n`` as it is (another ``n`` is
  refused); ``--postgres`` starts a throwaway PostgreSQL server the way the tests do
  (``bench.postgres``: the tests' harness; 127.0.0.1, stopped afterwards), pins it to the
  generator's core and seeds it with ``COPY``;
- starts the production sidecar app (``StorageSource``: the normal paged load, then the feed,
  polled) in a server process pinned to core 0, alone, with a bare aiohttp app returning a
  constant on another port of the same event loop (no middleware: the strict baseline);
  reports the load time, one seeded customer's answer, memory per entitlement (RSS; up to
  2x10^4 also tracemalloc), a cold value's cost (a warm pass computing every value), the worst
  cyclic-GC pause (the collector's CPU time, as ``/metrics`` measures it; and, apart, the worst
  before the attacks, the load's and the warm pass's, and the worst so far once the attacks are
  over, before propagation: larger than the first only if an attack met a longer one);
- background usage, DESIGN's load: ``bench.background``, another process, commits
  ``--background-rate`` events/s (default 1,000; 0 disables), 50 per commit, through storage's
  ``usage.ingest`` to the same ledger, for subjects drawn uniformly; the sidecar sees them only
  through the feed. Its rate is reported for each attack (from its progress file), and
  afterwards 20 subjects it used must answer exactly the usage the ledger holds;
- throughput at saturation (16 connections) with wrk (one thread) pinned to core 1: a bare
  warm-up attack (not counted) and one pass of value reads, then ``--rounds`` (5) rounds of a
  bare attack then a value attack of ``--round-seconds`` (4) each: this box's speed drifts by
  10-40% within a minute (a VM: a bare endpoint measured 6,700 to 11,300 requests/s in one
  run), so each ratio compares attacks seconds apart, and ``value_over_bare`` is the median of
  the rounds' ratios (each round and the pooled ratio are in the JSON); latency at a fixed
  rate of half the bare saturated rate with ``bench/attack`` (open loop, 16 connections, what
  is due sent at multiples of ``--pace-quantum-us``, 500 us; see its ``main.go``) pinned to
  core 1: p50/p99/p99.9, the rate achieved and the generator's pacing (``start_gap_p99_ms``),
  for the floor, the bare endpoint and then the value reads. The floor is what no server on
  this machine answers faster: an asyncio protocol writing a constant answer for each request
  it sees end (no HTTP parsing), in its own process on core 0 while the server process is
  paused (``SIGSTOP``; its ``server_*`` numbers are that process's; the server then catches up
  on the feed, ``server_caught_up_seconds``), the writer running as for the other attacks.
  The generator does the value attack's work: the floor gets the same requests for as long,
  measured after the same pass, and answers each with a value read's whole answer recorded from
  the server (a single URL answered in 85 bytes cost the generator less per request, and at
  10^6 hid its own p99.9 of ~10 ms after the 75 s pass over 10^6 targets);
  ``value_p99_over_floor_ms`` in the summary is what the sidecar adds to the
  machine's tail. Subjects go round robin over every loaded customer. For each attack: the
  server's CPU per request (``/proc``: the number that does not depend on the generator), the
  server's, the writer's and the generator's share of their cores, each core's busy share
  (everyone's processes: the box is shared), and the share of checks the server computed cold
  with, for value attacks, its steady-state expectation ``1 - exp(-events per s / checks per s)``;
- propagation: a grant written to the ledger until the sidecar's answer changes;
- the load average before and after.

Why this setup (measured on the 2-core box, 2026-11-24; details in the JSON of each run):

- vegeta costs its core about as much CPU per request (~58 us at saturation, 70-100 us at a
  fixed rate) as the bare aiohttp endpoint costs the server (~60 us), and the writer takes
  13-25% of a core at 1,000 events/s (130-250 us per event: Python and SQLite, 50 per commit).
  With both on core 1 the generator's core saturated before the server's: bare "saturated" at
  9,483 req/s with background and 17,400 without, i.e. the bare rate, the ratio and the fixed
  rate (half of it) measured the generator. wrk costs ~22 us per request at low rates and less
  when busy, so at saturation the server's core is the limit. ``--saturate-with attack``
  saturates with ``bench/attack`` instead. At the fixed rate (half the bare rate wrk finds) the
  generator needs half of core 1 or more: its share is in the JSON, and the rate it achieved
  next to the rate asked.
- ``vegeta attack`` itself paced in bursts (2026-11-25): Go's runtime rounds a sleep under
  1 ms up to 1 ms when the process is idle, so at 13,600/s it sent a dozen requests at once
  every 1.1 ms (start gaps p99 1.15 ms) and the floor's own p99 was 1.05-1.37 ms; paced by
  ``bench/attack`` at 500 us quanta, 0.29-0.88 ms at the same CPU (47-57% of core 1).
- The writer runs under ``SCHED_IDLE`` on core 1 (``--background-sched``): it commits in
  bursts of 7-12 ms of CPU every 50 ms, and at normal priority a woken commit can hold the
  generator off its core for milliseconds, which it would count as server latency (on the
  shared box of 2026-11-24, load 6-8, the difference could not be separated from the other
  load: compare ``--background-sched normal`` on an idle box). Idle-scheduled, it yields at
  once and still committed 980-1,230 events/s per attack there (the rate per attack is in the
  JSON: a lower one means the run did not carry DESIGN's load). After the attacks it returns
  to normal priority: at 10^6 on the loaded box, idle-scheduled, it fell 25 s behind during
  propagation and caught up in a burst (propagation p50 3.5 s, max 13 s, likely from that).
  Putting it on core 0 instead (``--background-cpu 0``) takes its ~20% from the server. The
  server still pays for following the feed (``idle``: its core share with the writer running
  and no requests: 2-3%, i.e. 20-30 us per event), as DESIGN's load requires.
- Value attacks are measured after one full pass over every target (``--no-steady``: from the
  first request): a check then finds its cached answer dropped when an event touched its
  entitlement since the previous pass, as in a long-running sidecar. Measured from the first
  request, the checks follow the warm pass by however long the earlier attacks took: colder
  than steady state at 10^4 (0.67 vs 0.36 at 2,255 checks/s), far warmer at 10^6 (1.8%).

``--profile-server FILE`` writes the server's cProfile stats (it slows the server: a diagnosis,
not a measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import csv
import gc
import itertools
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any, cast

from aiohttp import web
from sqlalchemy import Table, select

from allotment.ledger.core.model import (
    Aggregation,
    Entitlement,
    EntitlementValue,
    Grant,
    UsageQuery,
)
from allotment.ledger.storage import catalogue, feed, records
from allotment.ledger.storage.engine import open_ledger
from allotment.ledger.storage.schema import UsageBucketRow
from allotment.sidecar import wire
from allotment.sidecar.app import create_app
from allotment.sidecar.compute import CoreValueEngine
from allotment.sidecar.keys import METRICS
from allotment.sidecar.ledger_source import StorageSource
from allotment.sidecar.settings import SidecarSettings
from allotment.sidecar.view import View

from .background import SCHEDULING
from .cpu import Interval, Reading, Snapshot
from .cpu import rusage_seconds as cpu_seconds_of
from .seed import FEATURE, NS, T0, Seeded, customer_records, expected_balance, seed, seeded_count


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _profile_until_terminated(path: str) -> None:
    """Profile this process with cProfile; write the stats to ``path`` on SIGTERM and exit."""
    profiler = cProfile.Profile()

    def dump(_signum: int, _frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(path)
        os._exit(0)

    signal.signal(signal.SIGTERM, dump)
    profiler.enable()


class _CountingEngine(CoreValueEngine):
    """The production engine, counting the values it computes (each a cold read's cost)."""

    computed = 0

    def value(
        self,
        entitlement: Entitlement,
        grants: Sequence[Grant],
        aggregation: Aggregation | None,
        usage: UsageQuery,
        at: datetime,
    ) -> EntitlementValue:
        """Count, then compute as the production engine does."""
        _CountingEngine.computed += 1
        return super().value(entitlement, grants, aggregation, usage, at)


class _FloorProtocol(asyncio.Protocol):
    """The machine's floor: a constant answer to each request, no HTTP parsing, no framework.

    It counts the blank lines that end requests (the generators send bodiless GETs) and writes
    as many answers: what the loop, the kernel and the generator cost, and nothing of ours.
    """

    def __init__(self, answer: bytes) -> None:
        self._answer = answer
        self._transport: asyncio.WriteTransport | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.WriteTransport, transport)  # uvloop's: no subclass

    def data_received(self, data: bytes) -> None:
        data = self._tail + data
        ended = data.count(b"\r\n\r\n")
        self._tail = data[data.rfind(b"\r\n\r\n") + 4 :] if ended else data
        if ended and self._transport is not None:
            self._transport.write(self._answer * ended)


async def _until_orphaned() -> None:
    """Return once this process's parent has gone: a killed bench leaves no server behind."""
    parent = os.getppid()
    while True:
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            return


def floor(port: int, answer: bytes) -> None:
    """Serve the floor alone (its own process on the server's core, the server paused)."""
    _on_core_zero()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _FloorProtocol(answer), "127.0.0.1", port)
        try:
            await _until_orphaned()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(run())


def _on_core_zero() -> None:
    """Pin this process to core 0 and run asyncio on uvloop (as ``allotment sidecar`` does)."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {0})
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


def serve(port: int, bare_port: int, url: str, profile: str | None = None) -> None:
    """Run the sidecar app and a bare app on one event loop (the server process)."""
    if profile:
        _profile_until_terminated(profile)
    _on_core_zero()
    gc.collect()
    rss_before = _rss_bytes()
    view = View(NS, _CountingEngine())
    settings = SidecarSettings(url, NS, probe_port=None)
    app = create_app(settings, view, open_source=StorageSource.open)
    loaded: dict[str, Any] = {}
    tasks: list[asyncio.Task[None]] = []

    async def warm() -> None:
        """Compute and cache every value once, as first reads would (the cold path's cost)."""
        started = time.perf_counter()
        now = datetime.now(UTC)
        for i in range(view.counts().customers):
            customer = view.customer_by_subject(Seeded.subject(i))
            entitlement = (
                view.active_entitlement(customer.customer.key, FEATURE, now) if customer else None
            )
            if entitlement is not None:
                view.body(entitlement, now, v2=False)
            if i % 1000 == 999:
                await asyncio.sleep(0)
        loaded["warm_seconds"] = time.perf_counter() - started
        loaded["rss_values_cached"] = _rss_bytes()

    async def bench_status(_request: web.Request) -> web.Response:
        if view.ready and "rss_after_load" not in loaded:
            loaded["rss_after_load"] = _rss_bytes()
            tasks.append(asyncio.create_task(warm()))
        metrics = app[METRICS]
        body = {
            "ready": view.ready,
            "entitlements": view.counts().entitlements if view.ready else 0,
            "rss_before": rss_before,
            **loaded,
            "gc_pause_max_seconds": metrics.gc_pause_max,
            "values_computed": _CountingEngine.computed,
        }
        return web.json_response(body)

    app.router.add_get("/bench/status", bench_status)

    async def constant(_request: web.Request) -> web.Response:
        return web.Response(body=b'{"hasAccess":true}', content_type="application/json")

    bare = web.Application()
    bare.router.add_get("/bench/bare", constant)

    async def run() -> None:
        # The sidecar as `allotment sidecar` serves it (with the fast lane); the bare app plain.
        runners = [await wire.serve(app, "127.0.0.1", port)]
        runners.append(web.AppRunner(bare, access_log=None))
        await runners[1].setup()
        await web.TCPSite(runners[1], "127.0.0.1", bare_port).start()
        try:
            await _until_orphaned()
        finally:
            for runner in runners:
                await runner.cleanup()

    asyncio.run(run())


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _gc_pause_max_ms(base: str) -> float:
    """The server's longest cyclic-GC pause so far, in ms."""
    return round(_get_json(f"{base}/bench/status")["gc_pause_max_seconds"] * 1000, 3)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    """Return once ``127.0.0.1:port`` accepts connections; raise if ``process`` exits first."""
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        if process.poll() is not None:
            raise RuntimeError(f"the process for port {port} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {seconds} s")


def _percentile(ordered: list[int], fraction: float) -> float:
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return round(ordered[index] / 1e6, 3)


@dataclass(frozen=True)
class _Result:
    """One request of an attack: when it started (wall clock, ns), its status and latency."""

    start_ns: int
    code: str
    latency_ns: int


#: vegeta's attacker with a pacer of our own, its results written after the attack (its main.go).
ATTACK_SOURCE = Path(__file__).resolve().parent / "attack"


def build_attack(folder: Path) -> str:
    """Build bench/attack into ``folder`` with the Go toolchain on PATH; return the binary.

    Go's build cache makes this a second or so after the first build (which fetches vegeta's
    module from the Go proxy).
    """
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("`go` is not on PATH: the bench builds its generator, bench/attack")
    binary = folder / "attack"
    env = {**os.environ, "GOFLAGS": "-buildvcs=false", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=ATTACK_SOURCE, env=env, check=True)
    return str(binary)


def _attack(
    binary: str, targets: Path, pace: tuple[int, int], seconds: float, cpu: int
) -> tuple[list[_Result], float]:
    """Attack with bench/attack pinned to core ``cpu``, 16 connections, at ``pace``: a rate
    per second (0: as fast as they go) and a quantum in us; return its results in start order
    and its CPU seconds (``os.wait4``)."""
    results = targets.with_suffix(".csv")
    rate, quantum_us = pace
    flags = [f"-targets={targets}", f"-rate={rate}", f"-quantum={quantum_us}us"]
    flags += [f"-duration={seconds:.3f}s"]
    flags += ["-connections=16", f"-output={results}"]
    attack = subprocess.Popen(
        [binary, *flags],
        preexec_fn=lambda: (
            os.sched_setaffinity(0, {cpu}) if hasattr(os, "sched_setaffinity") else None
        ),
    )
    _, status, rusage = os.wait4(attack.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"bench/attack failed on {targets}")
    with results.open() as lines:  # start (ns), status code, latency (ns)
        rows = [_Result(int(r[0]), r[1], int(r[2])) for r in csv.reader(lines)]
    results.unlink()
    rows.sort(key=lambda r: r.start_ns)
    return rows, cpu_seconds_of(rusage)


def _latencies(rows: Sequence[_Result]) -> dict[str, Any]:
    """Throughput (200s over the span of starts), latency percentiles of ``rows`` and the
    generator's pacing (``start_gap_p99_ms``: 1/rate when paced evenly)."""
    starts = [r.start_ns for r in rows]  # in start order
    latencies = sorted(r.latency_ns for r in rows)
    gaps = sorted(later - earlier for earlier, later in itertools.pairwise(starts))
    codes: dict[str, int] = {}
    for r in rows:
        codes[r.code] = codes.get(r.code, 0) + 1
    span = (max(starts) - min(starts)) / 1e9 if len(starts) > 1 else 0.0
    return {
        "requests": len(rows),
        "seconds": round(span, 1),
        "throughput_per_s": round(codes.get("200", 0) / span, 1) if span else 0.0,
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "p99_9_ms": _percentile(latencies, 0.999),
        "max_ms": _percentile(latencies, 1.0),
        "start_gap_p99_ms": _percentile(gaps, 0.99) if gaps else None,
        "status_codes": codes,
    }


@dataclass(frozen=True)
class _Sample:
    """One reading during an attack: ``/proc``, the server's values computed, events committed."""

    proc: Snapshot
    computed: int
    events: int | None


class _Sampler:
    """The server's count of computed values, the writer's count of events committed and
    ``/proc`` readings, every ``period`` seconds.

    Run around an attack, it lets the measurement cover any window of the attack (the part
    after the first pass over the targets), not just the whole of it.
    """

    def __init__(
        self,
        base: str | None,
        pids: dict[str, int | None],
        progress: Path | None,
        period: float = 0.25,
    ) -> None:
        """Sample ``pids``, ``base``'s ``/bench/status`` (None: no server) and the writer's
        ``progress`` file."""
        self._base, self._pids, self._progress, self._period = base, pids, progress, period
        self.samples: list[_Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _events(self) -> int | None:
        if self._progress is None:
            return None
        with contextlib.suppress(OSError, ValueError, IndexError):  # not written yet: None
            return int(self._progress.read_text().split()[0])
        return None

    def _sample(self) -> None:
        computed: int = (
            _get_json(f"{self._base}/bench/status")["values_computed"] if self._base else 0
        )
        self.samples.append(_Sample(Snapshot.take(self._pids), computed, self._events()))

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self._sample()

    def __enter__(self) -> _Sampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def window(self, first_ns: int, last_ns: int) -> tuple[_Sample, _Sample]:
        """The samples just around ``[first_ns, last_ns]``: the last before, the first after."""
        before = [s for s in self.samples if s.proc.at_ns <= first_ns] or self.samples[:1]
        after = [s for s in self.samples if s.proc.at_ns >= last_ns] or self.samples[-1:]
        return before[-1], after[0]


_WRK_SCRIPT = """
local first, count, i, form = 0, 0, 0, nil
function init(args)
  form = args[1]; first = tonumber(args[2] or "0"); count = tonumber(args[3] or "0"); i = first
end
function request()
  if count == 0 then return wrk.format(nil) end
  local path = string.format(form, i)
  i = (i + 1) % count
  return wrk.format("GET", path)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "p99_9_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""


def _wrk(
    binary: str, script: Path, url: str, seconds: int, cpu: int, targets: tuple[str, int, int]
) -> tuple[dict[str, Any], float]:
    """Saturate with wrk (one thread, 16 connections) pinned to core ``cpu``.

    ``targets``: a path format with one ``%d``, the first index and the count, for a round
    robin over every loaded subject (count 0: ``url`` itself). Returns its numbers and CPU.
    """
    targets_args = [str(part) for part in targets]
    attack = subprocess.Popen(
        [binary, "-t1", "-c16", f"-d{seconds}s", "-s", str(script), url, "--", *targets_args],
        stdout=subprocess.PIPE,
        preexec_fn=lambda: (
            os.sched_setaffinity(0, {cpu}) if hasattr(os, "sched_setaffinity") else None
        ),
    )
    assert attack.stdout is not None
    out = attack.stdout.read().decode()
    _, status, rusage = os.wait4(attack.pid, 0)
    attack.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if attack.returncode != 0 or not lines:
        raise RuntimeError(f"wrk exited {attack.returncode}: {out[-500:]}")
    done = json.loads(lines[-1])
    span = done["duration_us"] / 1e6
    ok = done["requests"] - done["non_2xx"]
    return {
        "requests": done["requests"],
        "seconds": round(span, 1),
        "throughput_per_s": round(ok / span, 1) if span else 0.0,
        "p50_ms": round(done["p50_us"] / 1000, 3),
        "p99_ms": round(done["p99_us"] / 1000, 3),
        "p99_9_ms": round(done["p99_9_us"] / 1000, 3),
        "max_ms": round(done["max_us"] / 1000, 3),
        "non_2xx": done["non_2xx"],
        "socket_errors": done["socket_errors"],
    }, cpu_seconds_of(rusage)


def _balance(base: str, subject: str) -> Decimal:
    body = _get_json(f"{base}/api/v1/subjects/{subject}/entitlements/{FEATURE}/value")
    return Decimal(str(body["balance"]))


def _usage(base: str, subject: str) -> Decimal:
    body = _get_json(f"{base}/api/v1/subjects/{subject}/entitlements/{FEATURE}/value")
    return Decimal(str(body["usage"]))


def recorded_answer(port: int, path: str) -> bytes:
    """Return the whole HTTP response (status line, fields, body) the server gives ``path``."""
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536) or _closed()
        head, _, body = received.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += sock.recv(65536) or _closed()
    return head + b"\r\n\r\n" + body


def _closed() -> bytes:
    raise ConnectionError("the server closed the connection before its whole answer")


def caught_up(url: str, base: str, seconds: float = 600) -> float:
    """Wait until the sidecar at ``base`` has followed the ledger's feed to where it is now."""
    started = time.perf_counter()
    ledger = open_ledger(url, reader_pool_size=1)
    try:
        with ledger.read() as conn:
            head = feed.feed_head(conn)
    finally:
        ledger.dispose()
    while time.perf_counter() - started < seconds:
        with contextlib.suppress(OSError, ValueError):
            if (_get_json(f"{base}/status")["ledger"]["version"] or 0) >= head:
                return round(time.perf_counter() - started, 1)
        time.sleep(0.2)
    raise TimeoutError(f"the sidecar did not reach feed position {head} in {seconds} s")


def usage_followed(url: str, base: str, sample: int) -> dict[str, Any]:
    """Compare the sidecar's usage with the ledger's buckets for subjects the background used.

    Run after the background stopped: within 10 s every sampled answer must show exactly the
    usage the ledger holds for the subject this month (seeded buckets and background events).
    """
    ledger = open_ledger(url, reader_pool_size=1)
    buckets: Table = UsageBucketRow.__table__  # type: ignore[assignment]
    try:
        with ledger.read() as conn:
            touched = conn.execute(
                select(buckets.c.subject)
                .where(buckets.c.namespace == NS, buckets.c.minute >= T0 + timedelta(days=1))
                .distinct()
                .limit(sample)
            ).scalars()
            subjects = sorted(touched)
            rows = conn.execute(
                select(buckets.c.subject, buckets.c.minute, buckets.c.value_sum).where(
                    buckets.c.namespace == NS, buckets.c.subject.in_(subjects)
                )
            ).all()
    finally:
        ledger.dispose()
    month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    wanted = {subject: Decimal(0) for subject in subjects}
    for row in rows:
        if row.minute >= month:
            wanted[row.subject] += row.value_sum
    started = time.perf_counter()
    differing = dict(wanted)
    while differing and time.perf_counter() - started < 10:
        differing = {s: u for s, u in differing.items() if _usage(base, s) != u}
        if differing:
            time.sleep(0.05)
    return {
        "subjects": len(subjects),
        "agree": len(subjects) - len(differing),
        "seconds_to_agree": round(time.perf_counter() - started, 2),
    }


def propagation(url: str, base: str, times: int) -> dict[str, Any]:
    """Write a grant to the ledger and time until the sidecar's answer changes, ``times`` times."""
    ledger = open_ledger(url, reader_pool_size=1)
    seconds: list[float] = []
    try:
        for k in range(times):
            subject = Seeded.subject(k)
            before = _balance(base, subject)
            now = datetime.now(UTC).replace(second=0, microsecond=0)
            entitlement = customer_records(k)[1]  # as seeded: grants never change its id
            started = time.perf_counter()
            with ledger.write() as conn:
                name = f"propagation-{k}-{time.time_ns()}"
                grant_id = records.create_identity(conn, NS, "Grant", name, created_at=now).id
                grant = Grant(grant_id, NS, name, entitlement.id, Decimal(1000), now, now)
                catalogue.record_versions(conn, NS, [grant], recorded_at=now)
            while _balance(base, subject) == before:
                if time.perf_counter() - started > 30:
                    raise TimeoutError("the sidecar did not see a new grant within 30 s")
                time.sleep(0.002)
            seconds.append(time.perf_counter() - started)
    finally:
        ledger.dispose()
    seconds.sort()
    return {
        "writes": times,
        "p50_ms": round(seconds[len(seconds) // 2] * 1000, 1),
        "max_ms": round(seconds[-1] * 1000, 1),
    }


def retained_bytes(url: str) -> dict[str, Any]:
    """Load the seeded namespace in this process under tracemalloc; return what the view keeps."""
    source = StorageSource(open_ledger(url, reader_pool_size=1))
    try:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        view = View(NS, CoreValueEngine(), freeze_gc=False)
        view.load(source.load(NS), datetime.now(UTC))
        gc.collect()
        loaded = tracemalloc.get_traced_memory()[0] - before
        now = datetime.now(UTC)
        count = view.counts().customers
        for i in range(count):
            customer = view.customer_by_subject(Seeded.subject(i))
            entitlement = (
                view.active_entitlement(customer.customer.key, FEATURE, now) if customer else None
            )
            if entitlement is not None:
                view.body(entitlement, now, v2=False)
        gc.collect()
        cached = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
    finally:
        source.close()
    return {
        "tracemalloc_bytes_per_entitlement_loaded": round(loaded / max(1, count)),
        "tracemalloc_bytes_per_entitlement_values_cached": round(cached / max(1, count)),
    }


def _prepare(args: argparse.Namespace, url: str) -> float | None:
    """Seed ``url`` (None when ``--reuse`` finds it seeded already); return the seconds taken."""
    found = seeded_count(url) if args.reuse else 0
    if found == args.entitlements:
        return None
    if found:
        raise SystemExit(f"{url} holds {found} seeded entitlements, not {args.entitlements}")
    return seed(url, args.entitlements, args.buckets).seconds


def _check(base: str, n: int, buckets: int) -> dict[str, Any]:
    """Ask the sidecar for the last seeded customer's value: no run writes usage for it."""
    subject = Seeded.subject(n - 1)
    balance = _balance(base, subject)
    expected = expected_balance(buckets)
    if balance != expected:
        print(f"bench: {subject}'s balance is {balance}, seeded {expected}", file=sys.stderr)
    return {"subject": subject, "balance": str(balance), "seeded": str(expected)}


def _background(
    url: str, args: argparse.Namespace, progress: Path | None
) -> subprocess.Popen[bytes] | None:
    """Start bench.background on core 1 for every subject but the propagation's and the check's."""
    if args.background_rate <= 0:
        return None
    command = [sys.executable, "-m", "bench.background", "--db", url, "--progress", str(progress)]
    command += ["--rate", str(args.background_rate), "--first", str(args.propagations)]
    command += ["--subjects", str(args.entitlements - 1)]
    command += ["--cpu", str(args.background_cpu), "--sched", args.background_sched]
    return subprocess.Popen(command, stdout=subprocess.PIPE)


def _cpu_shares(reading: Reading, requests: int, seconds: float) -> dict[str, Any]:
    """The server's CPU per request and the server's and writer's shares of their cores."""
    server, background = reading.cpu_seconds["server"], reading.cpu_seconds["background"]
    return {
        "server_cpu_us_per_request": (
            round(server * 1e6 / requests, 1) if server is not None and requests else None
        ),
        "server_core_share": None if server is None else round(server / seconds, 3),
        "background_core_share": None if background is None else round(background / seconds, 3),
        "core_busy": reading.core_busy,
    }


def _idle(pids: dict[str, int | None], seconds: float) -> dict[str, Any]:
    """The server's and the writer's core shares with no requests: following the feed alone."""
    interval = Interval(pids)
    time.sleep(seconds)
    used = interval.end()
    shares = {
        f"{name}_core_share": None if cpu is None else round(cpu / seconds, 3)
        for name, cpu in used.cpu_seconds.items()
    }
    return {"seconds": seconds, **shares, "core_busy": used.core_busy}


def _stop_background(process: subprocess.Popen[bytes] | None) -> dict[str, Any]:
    if process is None:
        return {"events_per_s": 0, "disabled": True}
    process.terminate()
    out, _ = process.communicate(timeout=60)
    lines = out.decode().strip().splitlines()
    if process.returncode != 0 or not lines:
        return {"error": f"bench.background exited {process.returncode}"}
    summary: dict[str, Any] = json.loads(lines[-1])
    return summary


def _pooled(runs: Sequence[dict[str, Any]], background_rate: float) -> dict[str, Any]:
    """Several attacks as one: sums, rates over their seconds, shares averaged, medians.

    Latency percentiles are the median of the attacks' (wrk reports no histogram).
    """
    requests = sum(r["requests"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    answered = sum(r["throughput_per_s"] * r["seconds"] for r in runs)
    pooled: dict[str, Any] = {
        "attacks": len(runs),
        "requests": requests,
        "seconds": round(seconds, 1),
        "throughput_per_s": round(answered / seconds, 1) if seconds else 0.0,
        "throughput_per_s_each": [r["throughput_per_s"] for r in runs],
    }
    for key in ("p50_ms", "p99_ms", "p99_9_ms"):
        pooled[key] = statistics.median(r[key] for r in runs)
    pooled["max_ms"] = max(r["max_ms"] for r in runs)
    for key in ("non_2xx", "socket_errors", "values_computed_cold"):
        pooled[key] = sum(r.get(key) or 0 for r in runs)
    cpu = [r["server_cpu_us_per_request"] for r in runs]
    if None not in cpu:
        spent = sum(c * r["requests"] for c, r in zip(cpu, runs, strict=True))
        pooled["server_cpu_us_per_request"] = round(spent / max(1, requests), 1)
    else:
        pooled["server_cpu_us_per_request"] = None
    pooled["server_cpu_us_per_request_each"] = cpu
    for key in ("server_core_share", "background_core_share", "generator_core_share"):
        shares = [r[key] for r in runs if r.get(key) is not None]
        pooled[key] = round(statistics.fmean(shares), 3) if shares else None
    events = [r["background_events_per_s"] for r in runs if "background_events_per_s" in r]
    if events:
        pooled["background_events_per_s"] = round(statistics.fmean(events), 1)
    pooled["core_busy"] = {
        core: round(statistics.fmean(r["core_busy"][core] for r in runs), 3)
        for core in runs[0]["core_busy"]
    }
    pooled["generator"] = runs[0]["generator"]
    pooled["cold_fraction"] = round(pooled["values_computed_cold"] / max(1, requests), 3)
    if any("cold_fraction_steady_state_expected" in r for r in runs) and pooled["throughput_per_s"]:
        expected = 1 - math.exp(-background_rate / pooled["throughput_per_s"])
        pooled["cold_fraction_steady_state_expected"] = round(expected, 3)
    return pooled


def _rounds(
    bares: Sequence[dict[str, Any]], values: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each round's bare and value throughput and their ratio."""
    return [
        {
            "bare_per_s": b["throughput_per_s"],
            "value_per_s": v["throughput_per_s"],
            "value_over_bare": round(v["throughput_per_s"] / max(1.0, b["throughput_per_s"]), 3),
            "server_cpu_us_per_request": {
                "bare": b["server_cpu_us_per_request"],
                "value": v["server_cpu_us_per_request"],
            },
        }
        for b, v in zip(bares, values, strict=True)
    ]


def _median_ratio(rounds: Sequence[dict[str, Any]]) -> float:
    """The headline value-over-bare ratio: the median of the rounds' ratios."""
    return round(statistics.median(r["value_over_bare"] for r in rounds), 3)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if not numerator or not denominator else round(numerator / denominator, 3)


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers DESIGN asks for, labelled, each next to its goal."""
    fixed, saturation, memory = (
        result["fixed_rate"],
        result["saturation_16_connections"],
        result["memory"],
    )
    return {
        "fixed_rate_per_s": fixed["rate_per_s"],
        "value_p50_ms": fixed["value"]["p50_ms"],
        "value_p99_ms": fixed["value"]["p99_ms"],
        "value_p99_9_ms": fixed["value"]["p99_9_ms"],
        "bare_p50_ms": fixed["bare"]["p50_ms"],
        "bare_p99_ms": fixed["bare"]["p99_ms"],
        "bare_p99_9_ms": fixed["bare"]["p99_9_ms"],
        "floor_p50_ms": fixed["floor"]["p50_ms"],
        "floor_p99_ms": fixed["floor"]["p99_ms"],
        "floor_p99_9_ms": fixed["floor"]["p99_9_ms"],
        "value_p99_over_floor_ms": round(fixed["value"]["p99_ms"] - fixed["floor"]["p99_ms"], 3),
        "goal_value_p99_ms": 1.0,
        "value_fixed_achieved_per_s": fixed["value"]["throughput_per_s"],
        "value_fixed_cold_fraction": fixed["value"]["cold_fraction"],
        "value_fixed_cold_fraction_steady_state_expected": fixed["value"].get(
            "cold_fraction_steady_state_expected"
        ),
        "value_saturated_per_s": saturation["value"]["throughput_per_s"],
        "value_saturated_cold_fraction": saturation["value"]["cold_fraction"],
        "value_saturated_cold_fraction_steady_state_expected": saturation["value"].get(
            "cold_fraction_steady_state_expected"
        ),
        "value_measured_after_one_pass": {
            "saturated": saturation["value"]["measured_after_one_pass"],
            "fixed": fixed["value"]["measured_after_one_pass"],
        },
        "bare_saturated_per_s": saturation["bare"]["throughput_per_s"],
        "server_cpu_us_per_request": {
            "value_saturated": saturation["value"]["server_cpu_us_per_request"],
            "bare_saturated": saturation["bare"]["server_cpu_us_per_request"],
            "value_fixed": fixed["value"]["server_cpu_us_per_request"],
            "bare_fixed": fixed["bare"]["server_cpu_us_per_request"],
        },
        "value_over_bare_by_server_cpu": _ratio(
            saturation["bare"]["server_cpu_us_per_request"],
            saturation["value"]["server_cpu_us_per_request"],
        ),
        "server_core_share_without_requests": result["idle"].get("server_core_share"),
        "background_events_per_s_in_attacks": {
            "bare_saturated": saturation["bare"].get("background_events_per_s"),
            "value_saturated": saturation["value"].get("background_events_per_s"),
            "bare_fixed": fixed["bare"].get("background_events_per_s"),
            "value_fixed": fixed["value"].get("background_events_per_s"),
        },
        "core_shares_bare_saturated": {
            "server": saturation["bare"]["server_core_share"],
            "generator": saturation["bare"]["generator_core_share"],
            "background": saturation["bare"]["background_core_share"],
            "core_busy": saturation["bare"]["core_busy"],
        },
        "value_over_bare": saturation["value_over_bare"],
        "goal_value_over_bare": 0.8,
        "bytes_per_entitlement_loaded": memory["bytes_per_entitlement_loaded"],
        "bytes_per_entitlement_values_cached": memory["bytes_per_entitlement_values_cached"],
        "goal_bytes_per_entitlement": 1024,
        "gc_pause_max_ms": result["gc_pause_max_ms"],
        "gc_pause_max_ms_before_attacks": result["gc_pause_max_ms_before_attacks"],
        "gc_pause_max_ms_after_attacks": result["gc_pause_max_ms_after_attacks"],
        "propagation_p50_ms": result["propagation"]["p50_ms"],
        "propagation_max_ms": result["propagation"]["max_ms"],
        "background_events_per_s": result["background"].get("events_per_s"),
        "background_usage_agrees": result.get("usage_followed"),
        "goal_background_events_per_s": result["background_rate"],
        "load_seconds_to_ready": result["load_seconds_to_ready"],
        "cold_value_ms": result["cold_value_ms"],
        "load_average_before": result["load_average_before"],
        "load_average_after": result["load_average_after"],
    }


def _subject_path_format() -> str:
    """The value path of customer i's subject as a format with one ``%d`` (for wrk's Lua)."""
    mark = 987_654_321  # stands for i
    path = f"/api/v1/subjects/{Seeded.subject(mark)}/entitlements/{FEATURE}/value"
    if path.count(str(mark)) != 1 or "%" in path:
        raise ValueError(f"cannot make a format of {path}")
    return path.replace(str(mark), "%d")


def run(args: argparse.Namespace, url: str, generator: str, wrk: str | None) -> dict[str, Any]:
    """Seed, serve, attack and measure; return the JSON result."""
    load_before = os.getloadavg()
    seed_seconds = _prepare(args, url)
    result: dict[str, Any] = {
        "entitlements": args.entitlements,
        "buckets_each": args.buckets,
        "database": url.split(":", 1)[0],
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "seed_seconds": None if seed_seconds is None else round(seed_seconds, 1),
        "reused": seed_seconds is None,
        "background_rate": args.background_rate,
        "background_placement": {
            "cpu": args.background_cpu,
            "sched": args.background_sched,
            "generator_cpu": args.generator_cpu,
        },
        "steady": args.steady,
    }
    port, bare_port, floor_port = _free_port(), _free_port(), _free_port()
    command = [sys.executable, "-m", "bench.sidecar", "--serve", str(port)]
    command += ["--bare-port", str(bare_port), "--db", url]
    if args.profile_server:
        command += ["--profile-server", args.profile_server]
    started = time.perf_counter()
    server = subprocess.Popen(command)
    base = f"http://127.0.0.1:{port}"
    background: subprocess.Popen[bytes] | None = None
    try:
        status: dict[str, Any] = {}
        while time.perf_counter() - started < 3600:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with {server.returncode} before it was ready")
            with contextlib.suppress(OSError, ValueError):
                status = _get_json(f"{base}/bench/status")
                if status["ready"]:
                    break
            time.sleep(0.2)
        result["load_seconds_to_ready"] = round(time.perf_counter() - started, 1)
        result["check"] = _check(base, args.entitlements, args.buckets)
        while "warm_seconds" not in status:
            time.sleep(0.5)
            status = _get_json(f"{base}/bench/status")
        count = max(1, status["entitlements"])
        result["cold_value_ms"] = round(status["warm_seconds"] * 1000 / count, 3)
        result["memory"] = {
            "rss_delta_mib": round((status["rss_values_cached"] - status["rss_before"]) / 2**20, 1),
            "bytes_per_entitlement_loaded": round(
                (status["rss_after_load"] - status["rss_before"]) / count
            ),
            "bytes_per_entitlement_values_cached": round(
                (status["rss_values_cached"] - status["rss_before"]) / count
            ),
            "includes": "RSS: records, indexes, usage buckets, allocator slack; then every value",
        }
        with tempfile.TemporaryDirectory(prefix="allotment-bench-") as tmp:
            progress = Path(tmp) / "background-events" if args.background_rate > 0 else None
            background = _background(url, args, progress)
            bare = Path(tmp) / "bare.txt"
            bare.write_text(f"GET http://127.0.0.1:{bare_port}/bench/bare\n")
            value, floor = Path(tmp) / "value.txt", Path(tmp) / "floor.txt"
            for targets, at in ((value, base), (floor, f"http://127.0.0.1:{floor_port}")):
                targets.write_text(  # the floor: the same requests, to the floor's port
                    "".join(
                        f"GET {at}/api/v1/subjects/{Seeded.subject(i)}/entitlements/{FEATURE}/value\n"
                        for i in range(args.entitlements)
                    )
                )
            answer = Path(tmp) / "floor-answer.http"
            script = Path(tmp) / "round-robin.lua"
            script.write_text(_WRK_SCRIPT)
            form = _subject_path_format()

            pids = {"server": server.pid, "background": background.pid if background else None}

            def finish(
                attacked: dict[str, Any],
                window: tuple[_Sample, _Sample],
                requests: int,
                generator: tuple[str, float, float],
                prime_at: float,
            ) -> dict[str, Any]:
                """Add the server's CPU, the core shares and the cold share over ``window``."""
                first, last = window
                seconds = (last.proc.at_ns - first.proc.at_ns) / 1e9
                attacked.update(_cpu_shares(first.proc.until(last.proc), requests, seconds))
                name, cpu, ran = generator
                attacked["generator"] = name
                attacked["generator_core_share"] = round(cpu / ran, 3)
                cold = last.computed - first.computed
                attacked["values_computed_cold"] = cold
                attacked["cold_fraction"] = round(cold / max(1, requests), 3)
                if first.events is not None and last.events is not None and seconds > 0:
                    events = (last.events - first.events) / seconds
                    attacked["background_events_per_s"] = round(events, 1)
                if args.background_rate > 0 and prime_at and attacked["throughput_per_s"]:
                    # each check finds its entitlement touched since its last check (one pass,
                    # N / rate seconds ago) with this probability, whatever N
                    expected = 1 - math.exp(-args.background_rate / attacked["throughput_per_s"])
                    attacked["cold_fraction_steady_state_expected"] = round(expected, 3)
                return attacked

            def attack(
                targets: Path,
                rate: int,
                prime_at: float = 0,
                sampled: tuple[str | None, dict[str, int | None]] = (base, pids),
            ) -> dict[str, Any]:
                """Attack at ``rate``/s (0: saturate); measure after one pass over every target
                (at ``prime_at``/s) if asked.

                ``sampled``: the server's base URL (None: not the sidecar) and the processes
                whose CPU is read.
                """
                skip = args.entitlements if prime_at and args.steady else 0
                ran = args.seconds + (skip / prime_at if skip else 0.0)
                with _Sampler(*sampled, progress) as sampler:
                    pace = (rate, args.pace_quantum_us)
                    rows, cpu = _attack(generator, targets, pace, ran, args.generator_cpu)
                measured = rows[skip:] or rows
                window = sampler.window(measured[0].start_ns, measured[-1].start_ns)
                at = (window[0].proc.at_ns, window[1].proc.at_ns)
                requests = sum(1 for r in rows if at[0] <= r.start_ns <= at[1])
                attacked = _latencies(measured)
                attacked["requests_before_measuring"] = len(rows) - len(measured)
                attacked["measured_after_one_pass"] = len(rows) > skip > 0
                computes = prime_at if sampled[0] is not None else 0  # the floor computes none
                return finish(attacked, window, requests, ("bench/attack", cpu, ran), computes)

            def prime_wrk(wrk: str, pace: float) -> tuple[int, int]:
                """One pass over every target (``--steady``): the next target and requests made."""
                count, first, primed = args.entitlements, 0, 0
                while args.steady and primed < count:  # in as many runs as it takes
                    seconds = max(1, math.ceil((count - primed) / max(pace, 1.0)))
                    primer, _ = _wrk(
                        wrk, script, base, seconds, args.generator_cpu, (form, first, count)
                    )
                    if not primer["requests"]:
                        raise RuntimeError("wrk got no answer while priming")
                    primed += primer["requests"]
                    first = primed % count
                    pace = primer["requests"] / max(primer["seconds"], 0.1)
                return first, primed

            def saturate_wrk(
                wrk: str, url: str, targets: tuple[str, int, int], prime_at: float = 0
            ) -> dict[str, Any]:
                """Saturate with wrk for ``--round-seconds`` (``targets``: as ``_wrk``)."""
                with _Sampler(base, pids, progress) as sampler:
                    attacked, cpu = _wrk(
                        wrk, script, url, args.round_seconds, args.generator_cpu, targets
                    )
                window = (sampler.samples[0], sampler.samples[-1])
                generator = ("wrk", cpu, attacked["seconds"])
                return finish(attacked, window, attacked["requests"], generator, prime_at)

            def saturate_rounds(wrk: str, bare_url: str) -> tuple[dict[str, Any], ...]:
                """Bare then value, ``--rounds`` times: each pair sees the same box.

                First a bare attack (not counted: it sets the pace of the pass) and one pass of
                value reads over every target, so every round's bare attack follows value
                reads (the first bare attack straight after the load was twice 35% slow at
                10^6); the value attacks continue that round robin.
                """
                warm_up = saturate_wrk(wrk, bare_url, ("", 0, 0))
                first, primed = prime_wrk(wrk, warm_up["throughput_per_s"] / 2)
                bares: list[dict[str, Any]] = []
                values: list[dict[str, Any]] = []
                for _ in range(args.rounds):
                    bares.append(saturate_wrk(wrk, bare_url, ("", 0, 0)))
                    targets = (form, first, args.entitlements)
                    values.append(saturate_wrk(wrk, base, targets, prime_at=1.0))
                    first = (first + values[-1]["requests"]) % args.entitlements
                bare = _pooled(bares, args.background_rate)
                bare["warm_up_per_s"] = warm_up["throughput_per_s"]
                value = _pooled(values, args.background_rate)
                value["requests_before_measuring"] = primed
                value["measured_after_one_pass"] = primed >= args.entitlements
                return bare, value, _rounds(bares, values)

            def attack_floor(rate: int, prime_at: float) -> dict[str, Any]:
                """Attack the floor in its own process on the server's core, the server paused.

                The floor gets the value attack's requests, as long and measured alike, and
                answers each with a value read's recorded answer: the generator's work is the
                value attack's. Nothing of the sidecar runs meanwhile (SIGSTOP): the writer and
                the machine are as for the other attacks. The server then catches up on the
                feed before the next attack.
                """
                path = f"/api/v1/subjects/{Seeded.subject(0)}/entitlements/{FEATURE}/value"
                answer.write_bytes(recorded_answer(port, path))
                command = [sys.executable, "-m", "bench.sidecar", "--floor", str(floor_port)]
                command += ["--floor-answer", str(answer)]
                os.kill(server.pid, signal.SIGSTOP)
                alone = subprocess.Popen(command)
                try:
                    _wait_for_port(floor_port, alone)
                    measured = {"server": alone.pid, "background": pids["background"]}
                    attacked = attack(floor, rate, prime_at, sampled=(None, measured))
                finally:
                    alone.terminate()
                    alone.wait(timeout=30)
                    os.kill(server.pid, signal.SIGCONT)
                attacked["server_caught_up_seconds"] = caught_up(url, base)
                time.sleep(2.0)  # and recomputed the answers the usage meanwhile dropped
                return attacked

            time.sleep(2.0 if background else 0.0)  # the writer's start-up is not its load
            result["idle"] = _idle(pids, args.idle_seconds)
            # the load's and the warm pass's worst, to tell it from the attacks'
            result["gc_pause_max_ms_before_attacks"] = _gc_pause_max_ms(base)

            bare_url = f"http://127.0.0.1:{bare_port}/bench/bare"
            if wrk:
                bare_sat, value_sat, rounds = saturate_rounds(wrk, bare_url)
            else:
                bare_sat = attack(bare, 0)
                value_sat = attack(value, 0, prime_at=bare_sat["throughput_per_s"] / 2)
                rounds = _rounds([bare_sat], [value_sat])
            rate = max(1, int(bare_sat["throughput_per_s"] / 2))
            # the pass before measuring goes at the rate the server can answer, if lower
            prime_at = max(1.0, min(rate, 0.9 * value_sat["throughput_per_s"]))
            floor_fixed = attack_floor(rate, prime_at)
            bare_fixed = attack(bare, rate)
            value_fixed = attack(value, rate, prime_at=prime_at)
            result["gc_pause_max_ms_after_attacks"] = _gc_pause_max_ms(base)
        result["saturation_16_connections"] = {
            "bare": bare_sat,
            "value": value_sat,
            "value_over_bare": _median_ratio(rounds),
            "value_over_bare_pooled": round(
                value_sat["throughput_per_s"] / max(1.0, bare_sat["throughput_per_s"]), 3
            ),
            "rounds": rounds,
        }
        result["fixed_rate"] = {
            "rate_per_s": rate,
            "pace_quantum_us": args.pace_quantum_us,
            "bare": bare_fixed,
            "floor": floor_fixed,
            "value": value_fixed,
        }
        if background is not None and hasattr(os, "sched_setscheduler"):
            # no generator from here on: an idle-scheduled writer would only lag behind other
            # processes on a shared box, then catch up in a burst that holds the ledger's lock
            with contextlib.suppress(OSError):
                os.sched_setscheduler(background.pid, os.SCHED_OTHER, os.sched_param(0))
        result["propagation"] = propagation(url, base, args.propagations)
        result["background"] = _stop_background(background)
        background = None
        if args.background_rate > 0:
            result["usage_followed"] = usage_followed(url, base, 20)
        if args.entitlements <= 20_000:  # tracemalloc slows a load tenfold: small runs only
            result["memory"].update(retained_bytes(url))
        result["gc_pause_max_ms"] = _gc_pause_max_ms(base)
        result["load_average_after"] = os.getloadavg()
        result["summary"] = _summary(result)
    finally:
        if background is not None:
            background.kill()
            background.wait()
        server.terminate()
        server.wait(timeout=30)
    return result


def main() -> int:
    """Run the benchmark and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entitlements", type=int, default=10_000)
    parser.add_argument(
        "--seconds", type=int, default=10, help="each fixed-rate attack (and attack saturating)"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="bare-then-value pairs at saturation (wrk)"
    )
    parser.add_argument("--round-seconds", type=int, default=4, help="each attack of a round")
    parser.add_argument("--buckets", type=int, default=4, help="usage buckets per entitlement")
    parser.add_argument("--propagations", type=int, default=5)
    parser.add_argument("--db", help="an empty ledger URL (default: a temporary SQLite file)")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="seed a throwaway PostgreSQL (the tests' harness; its server on the generator's core)",
    )
    parser.add_argument(
        "--reuse", action="store_true", help="use --db as it is when it holds n seeded already"
    )
    parser.add_argument(
        "--background-rate", type=float, default=1000.0, help="usage events/s; 0 disables"
    )
    parser.add_argument(
        "--background-cpu", type=int, default=1, help="the core the background writer runs on"
    )
    parser.add_argument(
        "--background-sched",
        choices=SCHEDULING,
        default="idle",
        help="the writer's priority: normal, nice (19) or idle (SCHED_IDLE)",
    )
    parser.add_argument(
        "--no-steady",
        dest="steady",
        action="store_false",
        help="measure value attacks from their first request (not after one pass: warmer)",
    )
    parser.add_argument(
        "--saturate-with",
        choices=("wrk", "attack"),
        default="wrk",
        help="the closed-loop generator for throughput at saturation (fixed rate: bench/attack)",
    )
    parser.add_argument(
        "--pace-quantum-us",
        type=int,
        default=500,
        help="bench/attack sends what is due at multiples of this (0: each request when due)",
    )
    parser.add_argument(
        "--generator-cpu", type=int, default=1, help="the core wrk and bench/attack run on"
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=3.0, help="server CPU measured without requests"
    )
    parser.add_argument(
        "--profile-server", help="write the server's cProfile stats here (slows it: not a number)"
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bare-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--floor", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--floor-answer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.bare_port, args.db, args.profile_server)
        return 0
    if args.floor:
        floor(args.floor, Path(args.floor_answer).read_bytes())
        return 0
    wrk = shutil.which("wrk") if args.saturate_with == "wrk" else None
    if args.saturate_with == "wrk" and wrk is None:
        print(
            json.dumps({"error": "wrk not found: apt-get install wrk, or --saturate-with attack"})
        )
        return 1
    with tempfile.TemporaryDirectory(prefix="allotment-bench-") as folder:
        try:
            generator = build_attack(Path(folder))
        except (RuntimeError, subprocess.CalledProcessError) as error:
            print(json.dumps({"error": f"cannot build bench/attack: {error}"}))
            return 1
        if args.postgres:
            from .postgres import throwaway_database  # imports the tests' harness: repo root only

            with throwaway_database(pin=args.generator_cpu) as url:
                result = run(args, url, generator, wrk)
        else:
            url = args.db or f"sqlite:///{Path(folder) / 'ledger.db'}"
            result = run(args, url, generator, wrk)
    if "summary" in result:  # the headline first
        result = {"summary": result.pop("summary"), **result}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
