"""Loss trials of the write path, on SQLite and PostgreSQL, with real sidecar processes.

- kill -9: a sidecar process (``allotment.cli.sidecar.serve``, forked from the test so a trial
  costs no interpreter start) takes batches from concurrent clients and is killed with SIGKILL
  right after the k-th 204. Every acknowledged (source, id) must be in the ledger, every batch is
  there whole or not at all, and the buckets hold exactly the stored events.
- replays: the same batches are sent again and again, concurrently, by several clients through
  several sidecar processes on one ledger (several pods). Exactly one copy of each event is
  stored and the bucket totals equal the sum of the distinct events.

Each trial draws its sizes from ``random.Random(seed)`` with a fixed seed per trial.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from allotment.ledger.core.model import Aggregation
from allotment.ledger.core.timeutil import format_rfc3339
from allotment.ledger.storage.engine import Ledger
from allotment.ledger.storage.schema import UsageBucketRow, UsageEventRow
from allotment.sidecar.settings import SidecarSettings
from tests.sidecar.seed import NS, Seeder

KILL_TRIALS = 20
REPLAY_TRIALS = 20
START_LIMIT_SECONDS = 30.0
BATCH = "application/cloudevents-batch+json"

Key = tuple[str, str]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _serve(url: str, port: int) -> None:
    """Run a production sidecar (the CLI's ``serve``) in this forked child until killed."""
    from allotment.cli.sidecar import serve

    settings = SidecarSettings(
        database_url=url,
        namespace=NS,
        listen_port=port,
        probe_port=None,
        poll_interval=timedelta(milliseconds=100),
    )
    asyncio.run(serve(settings))


@dataclass
class SidecarProcess:
    """A forked sidecar process and its address."""

    process: Any
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.process.is_alive() and self.process.pid is not None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(timeout=15)


def start_sidecar_process(url: str) -> SidecarProcess:
    port = _free_port()
    process = multiprocessing.get_context("fork").Process(target=_serve, args=(url, port))
    process.start()
    sidecar = SidecarProcess(process, port)
    deadline = time.monotonic() + START_LIMIT_SECONDS
    while time.monotonic() < deadline:
        if not process.is_alive():
            raise AssertionError(f"the sidecar process exited with {process.exitcode}")
        try:
            with urllib.request.urlopen(sidecar.url + "/livez", timeout=1) as response:
                if response.status == 200:
                    return sidecar
        except OSError:
            time.sleep(0.02)
    sidecar.kill()
    raise AssertionError("the sidecar process did not answer /livez")


@pytest.fixture
def sidecars(ledger_url: str, ledger: Ledger) -> Iterator[list[SidecarProcess]]:
    """Record the ``tokens`` meter; yield a list the test fills; kill what is left after it."""
    Seeder(ledger).meter("tokens", Aggregation.SUM)
    started: list[SidecarProcess] = []
    try:
        yield started
    finally:
        for sidecar in started:
            sidecar.kill()


@dataclass
class Workload:
    """Batches of events of one trial, with each event's value."""

    source: str
    subject: str
    batches: list[list[dict[str, Any]]]
    values: dict[Key, Decimal] = field(default_factory=dict)


def workload(rng: random.Random, trial: str) -> Workload:
    """Draw 4 to 12 batches of 1 to 20 events with values of 0.001 to 1000."""
    source, subject = f"loss/{trial}", f"subject-{trial}"
    work = Workload(source, subject, [])
    at = format_rfc3339(datetime.now(UTC) - timedelta(hours=1))
    serial = 0
    for _ in range(rng.randint(4, 12)):
        batch = []
        for _ in range(rng.randint(1, 20)):
            serial += 1
            value = Decimal(rng.randint(1, 1_000_000)) / 1000
            event_id = f"{trial}-{serial}"
            work.values[(source, event_id)] = value
            batch.append(
                {
                    "specversion": "1.0",
                    "id": event_id,
                    "source": source,
                    "type": "prompt",
                    "subject": subject,
                    "time": at,
                    "data": {"tokens": str(value)},
                }
            )
        work.batches.append(batch)
    return work


def keys_of(batch: Sequence[dict[str, Any]]) -> set[Key]:
    return {(event["source"], event["id"]) for event in batch}


def ledger_state(ledger: Ledger, work: Workload) -> tuple[list[Key], Decimal, int]:
    """Return the stored (source, id) rows (with repeats), the bucket sum and bucket count."""
    with ledger.read() as conn:
        rows = conn.execute(
            select(UsageEventRow.source, UsageEventRow.event_id).where(
                UsageEventRow.namespace == NS, UsageEventRow.source == work.source
            )
        ).all()
        sums = conn.execute(
            select(UsageBucketRow.value_sum, UsageBucketRow.event_count).where(
                UsageBucketRow.namespace == NS, UsageBucketRow.subject == work.subject
            )
        ).all()
    bucket_sum = sum((Decimal(row.value_sum) for row in sums), Decimal(0))
    events_in_buckets = sum(int(row.event_count) for row in sums)
    return [(row.source, row.event_id) for row in rows], bucket_sum, events_in_buckets


async def _post(session: aiohttp.ClientSession, url: str, batch: list[dict[str, Any]]) -> int:
    async with session.post(
        url + "/api/v1/events", data=json.dumps(batch), headers={"Content-Type": BATCH}
    ) as response:
        await response.read()
        return response.status


async def send_until_killed(
    sidecar: SidecarProcess, work: Workload, clients: int, kill_after: int
) -> set[Key]:
    """Send the batches from ``clients`` concurrent clients; SIGKILL after ``kill_after`` 204s."""
    acknowledged: set[Key] = set()
    pending = list(work.batches)
    acks = 0
    killed = asyncio.Event()

    async def client() -> None:
        nonlocal acks
        async with aiohttp.ClientSession() as session:
            while pending and not killed.is_set():
                batch = pending.pop(0)
                try:
                    status = await _post(session, sidecar.url, batch)
                except aiohttp.ClientError:
                    return
                if status == 204:
                    acknowledged.update(keys_of(batch))
                    acks += 1
                    if acks >= kill_after and not killed.is_set():
                        killed.set()
                        os.kill(sidecar.process.pid, signal.SIGKILL)
                        return
                else:
                    raise AssertionError(f"unexpected status {status}")

    await asyncio.gather(*(client() for _ in range(clients)))
    return acknowledged


def test_kill_9_after_acknowledgements_loses_nothing(
    ledger_url: str, ledger: Ledger, sidecars: list[SidecarProcess]
) -> None:
    for trial in range(KILL_TRIALS):
        rng = random.Random(7000 + trial)
        work = workload(rng, f"kill-{trial}")
        sidecar = start_sidecar_process(ledger_url)
        sidecars.append(sidecar)
        clients = rng.randint(1, 4)
        kill_after = rng.randint(1, len(work.batches) // 2)
        acknowledged = asyncio.run(send_until_killed(sidecar, work, clients, kill_after))
        sidecar.kill()
        assert len(acknowledged) >= 1
        rows, bucket_sum, bucket_events = ledger_state(ledger, work)
        stored = set(rows)
        assert len(rows) == len(stored), f"trial {trial}: an event stored twice"
        lost = acknowledged - stored
        assert not lost, f"trial {trial}: acknowledged but not in the ledger: {sorted(lost)[:5]}"
        for index, batch in enumerate(work.batches):
            part = keys_of(batch) & stored
            assert part in (set(), keys_of(batch)), f"trial {trial}: batch {index} is partial"
        assert bucket_events == len(stored), f"trial {trial}"
        assert bucket_sum == sum((work.values[k] for k in stored), Decimal(0)), f"trial {trial}"


async def replay(sidecars: Sequence[SidecarProcess], work: Workload, rng: random.Random) -> None:
    """Send every batch from 3 clients, each in its own order, each to a random sidecar."""
    orders = []
    for _ in range(3):
        order = list(work.batches)
        rng.shuffle(order)
        orders.append([(rng.choice(sidecars), batch) for batch in order])

    async def client(sends: list[tuple[SidecarProcess, list[dict[str, Any]]]]) -> None:
        async with aiohttp.ClientSession() as session:
            for sidecar, batch in sends:
                status = await _post(session, sidecar.url, batch)
                assert status == 204, status

    await asyncio.gather(*(client(sends) for sends in orders))


def test_replayed_batches_from_several_clients_and_sidecars_count_once(
    ledger_url: str, ledger: Ledger, sidecars: list[SidecarProcess]
) -> None:
    for _ in range(3):
        sidecars.append(start_sidecar_process(ledger_url))
    for trial in range(REPLAY_TRIALS):
        rng = random.Random(9000 + trial)
        work = workload(rng, f"replay-{trial}")
        asyncio.run(replay(sidecars, work, rng))
        rows, bucket_sum, bucket_events = ledger_state(ledger, work)
        assert sorted(rows) == sorted(work.values), f"trial {trial}: not exactly one copy each"
        assert bucket_events == len(work.values), f"trial {trial}"
        assert bucket_sum == sum(work.values.values(), Decimal(0)), f"trial {trial}"
