"""Benchmark: what following the change feed costs the sidecar per bucket state (issue #6).

Role: measure ``StorageSource.changes_since`` and ``source.decoded`` (read the feed entries,
decode each entry's payload into ``BucketState``s and other changes) in the sidecar's pages
(``sync.FEED_BATCH_LIMIT`` = 5,000 entries per call), as process CPU time per bucket state:
the best and the median of ``--repeat`` passes over the same feed. The feed is real: the last
``--entries`` entries of a ledger that has background usage in its feed (``bench.background``
against a ``bench.seed`` ledger), copied row for row (text payloads as stored, positions, the
epoch) into a new ledger: a temporary SQLite file and, with ``--postgres``, a new database on a
throwaway PostgreSQL server (the tests' harness). Prints one JSON object per database, with the
load average next to the numbers (the box is shared: rerun on an idle one). ``--plain`` also
times, interleaved with it, the decoding the source used before (``feed.read_feed``: one
``json.loads`` per entry, then ``BucketState.from_payload`` per bucket) over the same feed.

It must not write to the source ledger: it is opened read-only (``mode=ro``).

Usage::

    python -m bench.feed_decode --source /tmp/bench-s3-10000.db [--entries 600] [--postgres] [--plain]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Table, insert, update

from allotment.ledger.storage import feed, migrate
from allotment.ledger.storage.engine import open_ledger
from allotment.ledger.storage.schema import FeedEntryRow, LedgerStateRow
from allotment.ledger.storage.usage import BucketState
from allotment.sidecar.ledger_source import StorageSource
from allotment.sidecar.source import Change, FeedBatch, decoded
from allotment.sidecar.sync import FEED_BATCH_LIMIT

_FEED: Table = FeedEntryRow.__table__  # type: ignore[assignment]
_STATE: Table = LedgerStateRow.__table__  # type: ignore[assignment]


def read_source(path: str, entries: int) -> tuple[str, str, list[dict[str, Any]]]:
    """Return the source's namespace, epoch and last ``entries`` feed rows (read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as source:
        epoch = source.execute("SELECT epoch FROM ledger_state").fetchone()[0]
        rows = source.execute(
            "SELECT position, namespace, contract_version, kind, payload, recorded_at FROM feed "
            "ORDER BY position DESC LIMIT ?",
            (entries,),
        ).fetchall()
    rows.reverse()
    namespaces = {row[1] for row in rows}
    if len(namespaces) != 1:
        raise SystemExit(f"expected one namespace in the feed's last entries, got {namespaces}")
    copied = [
        {
            "position": position,
            "namespace": namespace,
            "contract_version": version,
            "kind": kind,
            "payload": payload,
            "recorded_at": datetime.fromisoformat(recorded_at),
        }
        for position, namespace, version, kind, payload, recorded_at in rows
    ]
    return rows[0][1], epoch, copied


def fill(url: str, epoch: str, rows: list[dict[str, Any]]) -> None:
    """Create a ledger at ``url`` holding ``rows`` as its feed."""
    migrate.upgrade(url)
    ledger = open_ledger(url)
    try:
        with ledger.write() as connection:
            for start in range(0, len(rows), 500):
                connection.execute(insert(_FEED), rows[start : start + 500])
            connection.execute(
                update(_STATE).values(epoch=epoch, feed_position=rows[-1]["position"])
            )
    finally:
        ledger.dispose()


def plain_states(source: StorageSource, namespace: str, after: int, limit: int) -> FeedBatch:
    """Read usage entries as the source did before issue #6: ``json.loads`` + ``from_payload``."""
    with source.ledger.read() as connection:
        head = feed.feed_head(connection)
        entries = feed.read_feed(connection, namespace, after=after, limit=limit)
    changes: list[Change] = [
        BucketState.from_payload(b) for e in entries for b in e.payload.get("buckets", ())
    ]
    last = entries[-1].position if len(entries) >= limit else max(head, after)
    return FeedBatch(epoch="", position=last, contract_version=1, changes=changes)


@dataclass(frozen=True)
class Pass:
    """One pass over the feed."""

    seconds: float
    calls: int
    changes: int
    states: int


def one_pass(read: Callable[[str, int, int], FeedBatch], namespace: str, after: int) -> Pass:
    """Follow the feed from ``after`` to its head; return CPU seconds, calls, changes, states."""
    calls = changes = states = 0
    position = after
    started = time.process_time()
    while True:
        batch = read(namespace, position, FEED_BATCH_LIMIT)
        calls += 1
        decoded_changes = list(decoded(batch.changes))  # usage entries decode here
        changes += len(decoded_changes)
        states += sum(isinstance(change, BucketState) for change in decoded_changes)
        if batch.position == position:
            return Pass(time.process_time() - started, calls, changes, states)
        position = batch.position


def summary(passes: list[Pass]) -> dict[str, Any]:
    """Return the best and median CPU per bucket state of ``passes`` (all over the same feed)."""
    states = passes[-1].states
    seconds = [p.seconds for p in passes]
    return {
        "us_per_bucket_state_best": round(min(seconds) / states * 1e6, 2),
        "us_per_bucket_state_median": round(statistics.median(seconds) / states * 1e6, 2),
        "process_s_per_pass": [round(s, 3) for s in seconds],
    }


def measure(url: str, namespace: str, after: int, repeat: int, plain: bool) -> dict[str, Any]:
    """Follow the feed ``repeat`` times (and the plain way, interleaved, if ``plain``)."""
    source = StorageSource(open_ledger(url, reader_pool_size=2))
    try:
        source.changes_since(namespace, after, 1)  # connect and warm the statement caches
        passes: list[Pass] = []
        plain_passes: list[Pass] = []
        for _ in range(repeat):
            passes.append(one_pass(source.changes_since, namespace, after))
            if plain:
                reader = functools.partial(plain_states, source)
                plain_passes.append(one_pass(reader, namespace, after))
    finally:
        source.close()
    result: dict[str, Any] = {
        "calls_per_pass": passes[-1].calls,
        "changes": passes[-1].changes,
        "bucket_states": passes[-1].states,
        **summary(passes),
    }
    if plain:
        result["plain_json_from_payload"] = summary(plain_passes)
    return result


@contextlib.contextmanager
def sqlite_url() -> Iterator[str]:
    """Yield the URL of a new SQLite file, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="feed-s4-") as folder:
        yield f"sqlite:///{Path(folder) / 'feed.db'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="/tmp/bench-s3-10000.db", help="SQLite ledger file")
    parser.add_argument("--entries", type=int, default=600, help="last feed entries to follow")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL")
    parser.add_argument(
        "--plain", action="store_true", help="also time json.loads + from_payload, interleaved"
    )
    args = parser.parse_args()
    namespace, epoch, rows = read_source(args.source, args.entries)
    after = rows[0]["position"] - 1
    targets: list[tuple[str, contextlib.AbstractContextManager[str]]] = [("sqlite", sqlite_url())]
    if args.postgres:
        from bench.postgres import throwaway_database  # the tests' harness: not installed

        targets.append(("postgresql", throwaway_database()))
    for dialect, target in targets:
        with target as url:
            fill(url, epoch, rows)
            result = measure(url, namespace, after, args.repeat, args.plain)
        print(
            json.dumps(
                {
                    "bench": "feed_decode",
                    "dialect": dialect,
                    "entries": len(rows),
                    **result,
                    "loadavg": [round(x, 2) for x in os.getloadavg()],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
