"""Benchmark: the cost of one usage ingestion commit, in process (no HTTP, no sidecar).

Role: measure what ``usage.ingest`` itself costs the writer per commit, the write path both the
sidecar's ``POST /api/v1/events`` and ``bench.background`` go through: commit latency (the
``ledger.write()`` block: begin, ingest, commit), this process's CPU per event (user + system,
``time.process_time``), on PostgreSQL also the server backend's CPU per event (its
``/proc/PID/stat``), and the round trips per commit (cursor executions plus the commit, counted
with SQLAlchemy engine events; a PostgreSQL pool pre-ping is not a cursor execution and is
counted apart when the engine does one). Commits run back to back (closed loop), ``--batch``
events each, for subjects ``sub-FIRST`` .. ``sub-(SUBJECTS-1)`` drawn with a fixed seed, every
event new, at the current instant; ``--duplicates`` resends that share of each batch from the
previous one (acknowledged, never counted twice).

Without ``--db`` it runs on a new temporary SQLite file and a new database on a throwaway
PostgreSQL (the tests' harness), each with ``bench.ledger``'s two meters (a SUM grouped by model
and a COUNT). With ``--db`` it uses that ledger as it is (record the meters first, e.g. a copy
of a ``bench.seed`` ledger, never a ledger that serves anything: it writes usage). Prints one
JSON object per database.

Usage::

    python -m bench.ingest_commit
    python -m bench.ingest_commit --db sqlite:////tmp/copy-of-a-seeded-ledger.db --subjects 10000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event

from allotment.ledger.storage import migrate, usage
from allotment.ledger.storage.engine import Ledger, open_ledger
from bench.ingest import default_databases
from bench.ledger import METERS

EVENT_TYPE = "prompt"
SOURCE = "bench-ingest-commit"
WARMUP = 20


class _Trips:
    """Counts the round trips a writer engine makes: cursor executions, commits, pings."""

    def __init__(self) -> None:
        self.count = 0

    def hit(self, *_args: Any, **_kwargs: Any) -> None:
        self.count += 1


def _percentile(ordered: list[float], fraction: float) -> float:
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return round(ordered[index] * 1000, 2)


def _backend_cpu(pid: int | None) -> float:
    """Return the CPU seconds (user + system) process ``pid`` used so far, 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ensure_meters(ledger: Ledger, namespace: str) -> int:
    """Record ``bench.ledger``'s meters when no meter of the event type exists; return how many."""
    now = datetime.now(UTC)
    with ledger.write() as conn:
        recorded = usage.load_meters(conn, namespace, event_types=[EVENT_TYPE])
        if recorded:
            return len(recorded)
        for number, meter in enumerate(METERS):
            usage.record_meter(
                conn, namespace, meter.slug, meter, uid=str(number), generation=1, acted_at=now,
                now=now,
            )  # fmt: skip
    return len(METERS)


def measure(
    url: str, *, namespace: str, commits: int, batch: int, subjects: range, duplicates: float
) -> dict[str, Any]:
    """Run ``commits`` ingestion commits against ``url``; return the numbers."""
    migrate.upgrade(url)
    ledger = open_ledger(url, reader_pool_size=1)
    trips = _Trips()
    pings = _Trips()
    event.listen(ledger.writer, "before_cursor_execute", trips.hit)
    event.listen(ledger.writer, "commit", trips.hit)
    if getattr(ledger.writer.pool, "_pre_ping", False):
        event.listen(ledger.writer, "checkout", pings.hit)
    try:
        meters = _ensure_meters(ledger, namespace)
        backend: int | None = None
        if ledger.dialect == "postgresql":
            with ledger.write() as conn:
                backend = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        draw = random.Random(20261124)
        run = uuid.uuid4().hex[:8]
        resend = round(batch * duplicates)
        latencies: list[float] = []
        trips_per_commit: list[int] = []
        cpu = server_cpu = 0.0
        stored = acknowledged = 0
        previous: list[usage.IncomingEvent] = []
        for number in range(commits + WARMUP):
            now = datetime.now(UTC)
            fresh = [
                usage.IncomingEvent(
                    id=f"{run}-{number}-{j}",
                    source=SOURCE,
                    type=EVENT_TYPE,
                    subject=f"sub-{draw.choice(subjects)}",
                    time=now,
                    data={"tokens": 1 + j % 7, "model": ("gpt-4", "gpt-3")[j % 2]},
                )
                for j in range(batch - min(resend, len(previous)))
            ]
            events = previous[:resend] + fresh
            trips.count = 0
            cpu_before = time.process_time()
            server_before = _backend_cpu(backend)
            began = time.perf_counter()
            with ledger.write() as conn:
                outcome = usage.ingest(conn, namespace, events, received_at=now)
            elapsed = time.perf_counter() - began
            if number >= WARMUP:
                latencies.append(elapsed)
                cpu += time.process_time() - cpu_before
                server_cpu += _backend_cpu(backend) - server_before
                trips_per_commit.append(trips.count)
                stored += outcome.stored
                acknowledged += len(events)
            previous = fresh
    finally:
        ledger.dispose()
    ordered = sorted(latencies)
    total = sum(latencies)
    return {
        "database": ledger.dialect,
        "meters": meters,
        "batch": batch,
        "commits": commits,
        "duplicates_per_batch": resend,
        "events_stored": stored,
        "events_per_s": round(acknowledged / total),
        "commit_p50_ms": _percentile(ordered, 0.5),
        "commit_p99_ms": _percentile(ordered, 0.99),
        "commit_mean_ms": round(statistics.fmean(ordered) * 1000, 2),
        "client_cpu_us_per_event": round(cpu / acknowledged * 1e6, 1),
        "server_cpu_us_per_event": round(server_cpu / acknowledged * 1e6, 1),
        "round_trips_per_commit": round(statistics.fmean(trips_per_commit), 2),
        "pre_ping_round_trips_per_commit": round(pings.count / (commits + WARMUP + 2), 2),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    """Run the benchmark and print one JSON line per database."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--db", help="one ledger URL instead of new SQLite + PostgreSQL ones")
    parser.add_argument("--namespace", default="bench")
    parser.add_argument("--commits", type=int, default=400)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--subjects", type=int, default=1000, help="draw below sub-N")
    parser.add_argument("--first", type=int, default=10, help="draw from sub-FIRST up")
    parser.add_argument("--duplicates", type=float, default=0.0, help="share resent per batch")
    args = parser.parse_args()
    options: dict[str, Any] = {
        "namespace": args.namespace,
        "commits": args.commits,
        "batch": args.batch,
        "subjects": range(args.first, args.subjects),
        "duplicates": args.duplicates,
    }
    if args.db:
        print(json.dumps(measure(args.db, **options)), flush=True)
        return
    with (
        tempfile.TemporaryDirectory(prefix="allotment-bench-ingest-commit-") as scratch,
        default_databases(Path(scratch)) as urls,
    ):
        for url in urls:
            print(json.dumps(measure(url, **options)), flush=True)


if __name__ == "__main__":
    main()
