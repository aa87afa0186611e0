"""Benchmark: usage events/s through a sidecar process into the ledger, next to a raw bulk load.

For each database (a temporary SQLite file, and a new database on a throwaway PostgreSQL) and
each batch size, an ``allotment sidecar`` process (the production entry point, its own cores)
takes ``POST /api/v1/events`` from ``--connections`` concurrent aiohttp clients in this process:
parsing, validation, one write transaction per request through ``usage.ingest`` (dedup, two
meters evaluated, per-minute buckets, the feed entry) and read-your-writes into its view. In the
same run the same event rows are loaded raw into a scratch copy of ``usage_events`` (PostgreSQL
``COPY``, SQLite ``executemany``) in transactions of the same size. Prints one JSON object per
database and batch size; ``sidecar_over_raw`` is the number to track.

Usage::

    python -m bench.ingest
    python -m bench.ingest --db postgresql://USER@127.0.0.1:5432/DB --connections 16
    python -m bench.ingest --batches 1,100 --events 20000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from allotment.ledger.core.timeutil import format_rfc3339
from allotment.ledger.storage import migrate, usage
from allotment.ledger.storage.engine import Ledger, open_ledger
from bench.ledger import METERS, NS, load_raw
from tests.harness.postgres import PostgresUnavailable, running_postgres, server_url

BATCH = "application/cloudevents-batch+json"


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def make_events(run: str, count: int, subjects: int, start: datetime) -> list[dict[str, Any]]:
    """Return ``count`` distinct CloudEvents over the hour after ``start``."""
    return [
        {
            "specversion": "1.0",
            "id": f"{run}-{i}",
            "source": "bench",
            "type": "prompt",
            "subject": f"customer-{i % subjects}",
            "time": format_rfc3339(start + timedelta(milliseconds=(i * 997) % 3_600_000)),
            "data": {"tokens": i % 1000, "model": ("gpt-4", "gpt-3")[i % 2]},
        }
        for i in range(count)
    ]


def record_meters(ledger: Ledger, now: datetime) -> None:
    """Record the benchmark's meters (a SUM grouped by model and a COUNT)."""
    with ledger.write() as conn:
        for number, meter in enumerate(METERS):
            if any(m.meter.slug == meter.slug for m in usage.load_meters(conn, NS)):
                continue
            usage.record_meter(
                conn, NS, meter.slug, meter, uid=str(number), generation=1, acted_at=now, now=now
            )


@contextlib.contextmanager
def sidecar_process(url: str, folder: Path) -> Iterator[str]:
    """Run ``allotment sidecar`` over ``url``; yield its base URL; stop it (by PID) after."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "allotment"),
        "sidecar",
        "--db",
        url,
        "--namespace",
        NS,
        "--listen",
        f"127.0.0.1:{port}",
        "--probe-listen",
        "off",
    ]
    log = folder / f"sidecar-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the sidecar did not start:\n{log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def post_all(base: str, bodies: list[bytes], connections: int) -> tuple[float, list[float]]:
    """POST every body from ``connections`` clients; return (seconds, request latencies)."""
    queue = list(reversed(bodies))
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            while queue:
                body = queue.pop()
                started = time.perf_counter()
                async with session.post(
                    base + "/api/v1/events", data=body, headers={"Content-Type": BATCH}
                ) as response:
                    await response.read()
                    if response.status != 204:
                        raise RuntimeError(f"status {response.status}: {await response.text()}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(connections)))
        return time.perf_counter() - started, latencies


def raw_rows(events: list[dict[str, Any]], received_at: datetime) -> list[tuple[Any, ...]]:
    """Return the ``usage_events`` rows of ``events`` as a raw load writes them."""
    return [
        (
            NS,
            e["source"],
            "raw-" + e["id"],
            e["type"],
            e["subject"],
            datetime.fromisoformat(e["time"].replace("Z", "+00:00")),
            json.dumps(e["data"], sort_keys=True),
            received_at,
            True,
        )
        for e in events
    ]


def bench_raw(ledger: Ledger, events: list[dict[str, Any]], batch: int) -> float:
    """Load the same rows into a scratch table in ``batch``-sized transactions; rows/s."""
    return load_raw(ledger, raw_rows(events, datetime.now(UTC)), batch)


def measure(
    url: str, folder: Path, *, batches: list[int], events: int, connections: int, subjects: int
) -> list[dict[str, Any]]:
    """Run every batch size through a sidecar over ``url`` and raw; return the numbers."""
    migrate.upgrade(url)
    ledger = open_ledger(url)
    results = []
    try:
        now = datetime.now(UTC)
        record_meters(ledger, now)
        with sidecar_process(url, folder) as base:
            for batch in batches:
                count = events if batch > 1 else max(events // 10, connections)
                run = uuid.uuid4().hex[:8]
                sent = make_events(run, count, subjects, now - timedelta(hours=2))
                bodies = [json.dumps(sent[i : i + batch]).encode() for i in range(0, count, batch)]
                seconds, latencies = asyncio.run(post_all(base, bodies, connections))
                sidecar_rate = count / seconds
                raw_rate = bench_raw(ledger, sent, batch)
                ordered = sorted(latencies)
                results.append(
                    {
                        "database": ledger.dialect,
                        "batch": batch,
                        "connections": connections,
                        "events": count,
                        "meters": len(METERS),
                        "sidecar_events_per_s": round(sidecar_rate),
                        "sidecar_requests_per_s": round(len(bodies) / seconds),
                        "request_p50_ms": round(statistics.median(ordered) * 1000, 2),
                        "request_p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2),
                        "raw_rows_per_s": round(raw_rate),
                        "raw_method": "COPY" if ledger.dialect == "postgresql" else "executemany",
                        "sidecar_over_raw": round(sidecar_rate / raw_rate, 3),
                    }
                )
    finally:
        ledger.dispose()
    return results


@contextlib.contextmanager
def default_databases(folder: Path) -> Iterator[list[str]]:
    """Yield a temporary SQLite URL and, when one can be started, a new PostgreSQL database."""
    urls = [f"sqlite:///{folder / 'ledger.db'}"]
    try:
        with running_postgres() as server:
            name = f"allotment_bench_{uuid.uuid4().hex[:8]}"
            libpq = server.url.replace("+psycopg", "")
            with psycopg.connect(libpq, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            try:
                urls.append(server_url(server.url, name))
                yield urls
            finally:
                with psycopg.connect(libpq, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
    except PostgresUnavailable as error:
        print(json.dumps({"database": "postgresql", "skipped": str(error)}))
    yield urls


def main() -> None:
    """Run the benchmark and print JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="one ledger URL instead of SQLite + a throwaway PostgreSQL")
    parser.add_argument("--events", type=int, default=20_000, help="events per batch size")
    parser.add_argument("--batches", default="1,100", help="batch sizes, comma-separated")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--subjects", type=int, default=100)
    args = parser.parse_args()
    options = {
        "batches": [int(b) for b in args.batches.split(",")],
        "events": args.events,
        "connections": args.connections,
        "subjects": args.subjects,
    }
    with tempfile.TemporaryDirectory(prefix="allotment-bench-ingest-") as scratch:
        folder = Path(scratch)
        if args.db:
            for result in measure(args.db, folder, **options):
                print(json.dumps(result), flush=True)
            return
        with default_databases(folder) as urls:
            for url in urls:
                for result in measure(url, folder, **options):
                    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
