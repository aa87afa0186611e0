"""Benchmark: how far three sidecars overspend a hard limit, Eventual against Strict.

Three ``allotment sidecar`` processes (the production entry point) follow one ledger. For each
consistency mode a customer has a hard-limit entitlement funded with ``--grant`` tokens;
``--clients`` concurrent clients per sidecar each loop: check with ``?requestedUsage=U``, and
when it answers ``hasAccess: true`` spend ``--work-ms`` (the in-flight call) and post U tokens
of usage to the same sidecar. A client stops after ``--give-up`` denials in a row. Then the
ledger's committed usage is read: ``overspend = usage - grant`` (negative: left unused).

Also reported per mode: the checks' latency (p50, p99, ms), the strict-mode ledger round trips
(lease takes and renewals, per second), approvals and denials, and the load average.

Usage::

    python -m bench.overspend                         # SQLite file and a throwaway PostgreSQL
    python -m bench.overspend --db postgresql://USER@127.0.0.1:5432/EMPTY_DB
    python -m bench.overspend --clients 8 --work-ms 50 --requested 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp

from allotment.ledger.core.model import Consistency, EntitlementType, Feature
from allotment.ledger.core.timeutil import format_rfc3339
from allotment.ledger.storage import leases, migrate, records
from allotment.ledger.storage.codec import FeatureRecord
from allotment.ledger.storage.engine import open_ledger
from bench.ingest import default_databases, sidecar_process
from bench.ledger import NS
from tests.sidecar.seed import Seeder

SIDECARS = 3


def seed(url: str, grant: int, started: datetime) -> None:
    """Record the tokens meter and, per mode, a feature, a customer and a funded entitlement."""
    migrate.upgrade(url)
    ledger = open_ledger(url)
    try:
        seeder = Seeder(ledger, namespace=NS, now=started)
        seeder.meter("tokens")
        for mode in Consistency:
            key = f"{mode.value.lower()}_tokens"
            with ledger.write() as conn:
                identity = records.create_identity(
                    conn, NS, "Feature", key.replace("_", "-"), created_at=started
                ).id
            feature = Feature(key, key, meter_slug="tokens", consistency=mode)
            seeder.put(FeatureRecord(identity, feature, started))
            customer = f"customer-{mode.value.lower()}"
            seeder.customer(customer)
            entitlement = seeder.entitlement(customer, key, EntitlementType.METERED)
            seeder.grant(entitlement, str(grant))
    finally:
        ledger.dispose()


def committed(url: str, customer: str, since: datetime) -> Decimal:
    """Return the tokens committed in the ledger for ``customer`` since ``since``."""
    ledger = open_ledger(url)
    try:
        with ledger.read() as conn:
            scope = leases.UsageScope("tokens", (customer,))
            return leases.committed_usage(conn, NS, scope, since=since)
    finally:
        ledger.dispose()


async def consume(
    session: aiohttp.ClientSession,
    base: str,
    mode: Consistency,
    args: argparse.Namespace,
    tally: dict[str, Any],
) -> None:
    """One client: check, spend, post usage; stop after ``give_up`` denials in a row."""
    lower = mode.value.lower()
    check = (
        f"{base}/api/v1/subjects/customer-{lower}/entitlements/{lower}_tokens/value"
        f"?requestedUsage={args.requested}"
    )
    denied_in_a_row = 0
    while denied_in_a_row < args.give_up:
        started = time.perf_counter()
        async with session.get(check) as response:
            body = await response.json(content_type=None)
        tally["latencies"].append(time.perf_counter() - started)
        if response.status != 200 or not body.get("hasAccess"):
            tally["denials"] += 1
            denied_in_a_row += 1
            await asyncio.sleep(args.retry_ms / 1000)
            continue
        denied_in_a_row = 0
        tally["approvals"] += 1
        await asyncio.sleep(args.work_ms / 1000)
        event = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "bench-overspend",
            "type": "prompt",
            "subject": f"customer-{lower}",
            "time": format_rfc3339(datetime.now(UTC)),
            "data": {"tokens": args.requested},
        }
        async with session.post(f"{base}/api/v1/events", json=[event]) as response:
            if response.status != 204:
                raise RuntimeError(f"usage refused: {response.status} {await response.text()}")


async def lease_round_trips(session: aiohttp.ClientSession, bases: list[str]) -> int:
    """Return the sidecars' strict-mode ledger round trips so far."""
    total = 0
    for base in bases:
        async with session.get(f"{base}/status") as response:
            status = await response.json()
        total += int((status["ingestion"].get("strictLeases") or {}).get("ledgerRoundTrips", 0))
    return total


async def run_mode(bases: list[str], mode: Consistency, args: argparse.Namespace) -> dict[str, Any]:
    """Let every client consume against ``mode``'s entitlement; return the tallies."""
    tally: dict[str, Any] = {"latencies": [], "approvals": 0, "denials": 0}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        trips_before = await lease_round_trips(session, bases)
        started = time.perf_counter()
        await asyncio.gather(
            *(
                consume(session, base, mode, args, tally)
                for base in bases
                for _ in range(args.clients)
            )
        )
        seconds = time.perf_counter() - started
        trips = await lease_round_trips(session, bases) - trips_before
    latencies = sorted(tally["latencies"])
    return {
        "seconds": round(seconds, 3),
        "approvals": tally["approvals"],
        "denials": tally["denials"],
        "check_p50_ms": round(statistics.median(latencies) * 1000, 3),
        "check_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
        "lease_round_trips": trips,
        "lease_round_trips_per_s": round(trips / seconds, 1),
    }


def measure(url: str, folder: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Seed ``url``, start three sidecars on it, and measure both modes in turn."""
    started = datetime.now(UTC) - timedelta(hours=1)
    seed(url, args.grant, started)
    results = []
    with ExitStack() as stack:
        bases = [stack.enter_context(sidecar_process(url, folder)) for _ in range(SIDECARS)]
        for mode in (Consistency.EVENTUAL, Consistency.STRICT):
            outcome = asyncio.run(run_mode(bases, mode, args))
            time.sleep(1)  # let the last usage reach the ledger (it is committed before 204)
            used = committed(url, f"customer-{mode.value.lower()}", started)
            in_flight = SIDECARS * args.clients * args.requested
            results.append(
                {
                    "bench": "overspend",
                    "database": url.split(":", 1)[0].split("+", 1)[0],
                    "consistency": mode.value,
                    "sidecars": SIDECARS,
                    "clients_per_sidecar": args.clients,
                    "requested_usage": args.requested,
                    "work_ms": args.work_ms,
                    "grant": args.grant,
                    "usage": float(used),
                    "overspend": float(used - args.grant),
                    "overspend_requests": float((used - args.grant) / args.requested),
                    "in_flight_term": in_flight,
                    **outcome,
                    "load_average": [round(x, 2) for x in os.getloadavg()],
                }
            )
    return results


def main() -> None:
    """Run the benchmark and print JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="one empty ledger URL instead of SQLite + PostgreSQL")
    parser.add_argument("--grant", type=int, default=1_000_000, help="tokens granted")
    parser.add_argument("--requested", type=int, default=1000, help="tokens per request (U)")
    parser.add_argument("--clients", type=int, default=4, help="clients per sidecar (C)")
    parser.add_argument("--work-ms", type=float, default=20, help="time between check and post")
    parser.add_argument("--retry-ms", type=float, default=100, help="wait after a denial")
    parser.add_argument("--give-up", type=int, default=10, help="denials in a row to stop")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="allotment-bench-overspend-") as scratch:
        folder = Path(scratch)
        if args.db:
            for result in measure(args.db, folder, args):
                print(json.dumps(result), flush=True)
            return
        with default_databases(folder) as urls:
            for url in urls:
                for result in measure(url, folder, args):
                    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
