"""Background usage for the sidecar benchmark: events committed to the ledger at a steady rate.

Role: DESIGN's load for the access-check target includes "background usage of 1,000 events/s
committed to the ledger by another process and followed through the feed". This process is that
other process: it commits ``--rate`` events per second, ``--batch`` per transaction (as a
group-committing sidecar would: 50 per commit at 20 commits/s by default), through the
function the sidecar's ``POST /api/v1/events`` commits with (storage's ``usage.ingest``, in one
write transaction of its own), for subjects drawn uniformly (fixed seed) from the first
seeded customers ``--first`` to ``--subjects`` - 1 (``bench.seed``'s ``sub-i``), each event ``{"tokens": 1}`` at
the current instant. The benched sidecar sees them only through the feed.

It stops when the process that started it is gone (a killed bench leaves no writer behind).
It paces by schedule (commit k starts at ``k * batch / rate`` seconds), never skips a late
commit, and on SIGTERM/SIGINT or after ``--seconds`` prints what it achieved as JSON: events
committed, commits, events per second over the time it ran, commit latency p50/p99, how late
the last commit started, and the CPU seconds it used; with ``--progress FILE`` it keeps the
count of events committed so far in FILE. Pin it with ``os.sched_setaffinity``
(``--cpu``); ``--sched nice`` runs it at nice 19 and ``--sched idle`` under ``SCHED_IDLE`` (it
then runs only when its core has nothing else to run; the summary's ``events_per_s`` says
whether it still achieved its rate).

It must not be pointed at a ledger that serves anything: it writes usage for bench subjects.

Usage: ``python -m bench.background --db URL --subjects N [--rate 1000] [--batch 50]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from allotment.ledger.storage import usage
from allotment.ledger.storage.engine import open_ledger

from .seed import NS, Seeded

SOURCE = "bench-background"
EVENT_TYPE = "prompt"  # bench.seed's meter counts this type's $.tokens


_STOP = threading.Event()  # set by SIGTERM/SIGINT: the loop ends after the commit in progress


def _request_stop(_signum: int, _frame: FrameType | None) -> None:
    _STOP.set()


SCHEDULING = ("normal", "nice", "idle")


def schedule(policy: str) -> None:
    """Lower this process's CPU priority: ``nice`` (nice 19) or ``idle`` (SCHED_IDLE)."""
    if policy == "nice":
        os.nice(19)
    elif policy == "idle":
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return round(ordered[index] * 1000, 2)


def run(
    url: str,
    subjects: range,
    rate: float,
    batch: int,
    seconds: float,
    progress: str | None = None,
) -> dict[str, Any]:
    """Commit usage at ``rate`` events/s until stopped or ``seconds`` pass; return the summary.

    With ``progress`` (a file name) the count of events committed so far is written over the
    file's first line after every commit, so an observer can tell the rate of any window.
    """
    counter = os.open(progress, os.O_WRONLY | os.O_CREAT, 0o644) if progress else None
    draw = random.Random(20261124)
    run_id = f"{os.getpid()}-{time.time_ns()}"  # a reused ledger keeps earlier runs' ids
    ledger = open_ledger(url, reader_pool_size=1)
    interval = batch / rate
    commits: list[float] = []
    events = duplicates = 0
    late = 0.0
    started = time.perf_counter()
    try:
        parent = os.getppid()
        while not _STOP.is_set() and time.perf_counter() - started < seconds:
            if os.getppid() != parent:  # the bench that started it is gone: stop writing
                break
            due = started + len(commits) * interval
            if _STOP.wait(max(0.0, due - time.perf_counter())):
                break
            late = max(0.0, time.perf_counter() - due)
            now = datetime.now(UTC)
            batch_events = [
                usage.IncomingEvent(
                    id=f"{run_id}-{events + j}",
                    source=SOURCE,
                    type=EVENT_TYPE,
                    subject=Seeded.subject(draw.choice(subjects)),
                    time=now,
                    data={"tokens": 1},
                )
                for j in range(batch)
            ]
            began = time.perf_counter()
            with ledger.write() as connection:
                outcome = usage.ingest(connection, NS, batch_events, received_at=now)
            commits.append(time.perf_counter() - began)
            events += outcome.stored
            duplicates += outcome.duplicates
            if counter is not None:
                os.pwrite(counter, f"{events:>20}\n".encode(), 0)
    finally:
        ledger.dispose()
        if counter is not None:
            os.close(counter)
    elapsed = time.perf_counter() - started
    ordered = sorted(commits)
    return {
        "target_events_per_s": rate,
        "batch": batch,
        "events_committed": events,
        "duplicates": duplicates,
        "commits": len(commits),
        "seconds": round(elapsed, 1),
        "events_per_s": round(events / elapsed, 1) if elapsed > 0 else 0.0,
        "commit_p50_ms": _percentile(ordered, 0.5),
        "commit_p99_ms": _percentile(ordered, 0.99),
        "last_commit_late_ms": round(late * 1000, 1),
        "cpu_seconds": round(sum(os.times()[:2]), 2),
        "cpu_share_of_a_core": round(sum(os.times()[:2]) / elapsed, 3) if elapsed > 0 else 0.0,
    }


def main() -> int:
    """Parse the arguments, commit usage until stopped, print the summary as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a ledger seeded by bench.seed")
    parser.add_argument("--subjects", type=int, required=True, help="draw below sub-N")
    parser.add_argument("--first", type=int, default=0, help="draw from sub-FIRST up")
    parser.add_argument("--rate", type=float, default=1000.0, help="events per second")
    parser.add_argument("--batch", type=int, default=50, help="events per commit")
    parser.add_argument("--seconds", type=float, default=3600.0, help="stop after this long")
    parser.add_argument("--cpu", type=int, help="pin this process to one core")
    parser.add_argument("--progress", help="keep the count of events committed in this file")
    parser.add_argument(
        "--sched", choices=SCHEDULING, default="normal", help="nice: nice 19; idle: SCHED_IDLE"
    )
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    schedule(args.sched)
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    subjects = range(args.first, args.subjects)
    summary = run(args.db, subjects, args.rate, args.batch, args.seconds, args.progress)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
