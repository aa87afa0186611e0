"""Loss trials of the write path, on SQLite and PostgreSQL, with real sidecar processes.

- kill -9: a sidecar process (``allotment.cli.sidecar.serve``, forked from the test so a trial
  costs no interpreter start) takes batches from concurrent clients and is killed with SIGKILL
  right after the k-th 204. Every acknowledged (source, id) must be in the ledger, every batch is
  there whole or not at all, and the buckets hold exactly the stored events.
- replays: the same batches are sent again and again, concurrently, by several clients through
  several sidecar processes on one ledger (several pods). Exactly one copy of each event is
  stored and the bucket totals equal the sum of the distinct events.
- restarts (PostgreSQL): in each of 20 seeded runs a server of the test's own is stopped
  (``pg_ctl stop -m fast``) and started again while two clients send; they get 503 and send
  the same batch again until it is acknowledged. Everything acknowledged is stored exactly once.

Each trial draws its sizes from ``random.Random(seed)`` with a fixed seed per trial.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

import tests.harness.postgres as pg
from allotment.ledger.core.model import Aggregation
from allotment.ledger.core.timeutil import format_rfc3339
from allotment.ledger.storage.engine import Ledger
from allotment.ledger.storage.schema import UsageBucketRow, UsageEventRow
from allotment.sidecar.settings import SidecarSettings
from tests.sidecar.seed import NS, Seeder

KILL_TRIALS = 20
REPLAY_TRIALS = 20
RESTART_TRIALS = 20
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


def workload(rng: random.Random, trial: str, batches: tuple[int, int] = (4, 12)) -> Workload:
    """Draw 4 to 12 batches (or ``batches``) of 1 to 20 events with values of 0.001 to 1000."""
    source, subject = f"loss/{trial}", f"subject-{trial}"
    work = Workload(source, subject, [])
    at = format_rfc3339(datetime.now(UTC) - timedelta(hours=1))
    serial = 0
    for _ in range(rng.randint(*batches)):
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


# --- the database stopped and restarted mid-stream (PostgreSQL) -------------------------------


@dataclass
class PrivateServer:
    """A PostgreSQL server of this test alone, so it may be stopped and started again."""

    bin_dir: Any
    data: Any
    options: str
    log: Any
    url: str

    def ctl(self, *args: str) -> None:
        command = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), *args]
        pg._run(pg._as_postgres(*command))

    def start(self) -> None:
        self.ctl("-o", self.options, "-l", str(self.log), "-w", "start")

    def stop(self) -> None:
        self.ctl("-m", "fast", "-w", "stop")


@pytest.fixture
def private_postgres() -> Iterator[PrivateServer]:
    """Start a PostgreSQL server for this test only (skip when the harness cannot)."""
    if os.environ.get(pg.ENV_URL):
        pytest.skip(f"{pg.ENV_URL} names a server this test must not stop")
    bin_dir = pg._binaries_dir()
    if bin_dir is None:
        message = f"PostgreSQL is not installed: {pg.INSTALL_HINT}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    folder = Path(tempfile.mkdtemp(prefix="allotment-pg-restart-"))  # postgres must reach it
    if os.geteuid() == 0:
        shutil.chown(folder, user="postgres", group="postgres")
    data = folder / "data"
    pg._run(
        pg._as_postgres(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--locale=C",
        )
    )
    port = pg._free_port()
    # synchronous_commit stays on: a 204 must survive the restart.
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    server = PrivateServer(
        bin_dir,
        data,
        options,
        folder / "log",
        f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
    )
    try:
        server.start()
        try:
            yield server
        finally:
            with contextlib.suppress(pg.PostgresUnavailable):
                server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def send_through_outages(
    sidecar: SidecarProcess, work: Workload, server: PrivateServer, outages: int
) -> tuple[set[Key], int]:
    """Send every batch until acknowledged, retrying on 503; stop the database mid-stream."""
    acknowledged: set[Key] = set()
    refusals = 0
    done = 0
    progress = asyncio.Event()
    pending = list(work.batches)
    every = max(1, len(pending) // (outages + 1))

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal refusals, done
        while pending:
            batch = pending.pop(0)
            while True:
                status = await _post(session, sidecar.url, batch)
                if status == 204:
                    acknowledged.update(keys_of(batch))
                    done += 1
                    progress.set()
                    break
                assert status == 503, status
                refusals += 1
                await asyncio.sleep(0.2)

    async def outage() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(outages):
            target = done + every
            while done < target and pending:
                progress.clear()
                await progress.wait()
            await loop.run_in_executor(None, server.stop)
            await asyncio.sleep(0.5)
            await loop.run_in_executor(None, server.start)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(client(session), client(session), outage())
    return acknowledged, refusals


def test_database_restarted_mid_stream_loses_nothing(
    private_postgres: PrivateServer,
) -> None:
    from allotment.ledger.storage import migrate
    from allotment.ledger.storage.engine import open_ledger

    url = private_postgres.url
    migrate.upgrade(url)
    ledger = open_ledger(url)
    try:
        Seeder(ledger).meter("tokens", Aggregation.SUM)
        sidecar = start_sidecar_process(url)
        try:
            for trial in range(RESTART_TRIALS):  # one sidecar through every outage, like a pod
                work = workload(random.Random(4242 + trial), f"restart{trial}", batches=(8, 16))
                acknowledged, refusals = asyncio.run(
                    send_through_outages(sidecar, work, private_postgres, outages=1)
                )
                assert refusals > 0, f"trial {trial}: the database was never seen down"
                assert acknowledged == set(work.values), f"trial {trial}"
                rows, bucket_sum, bucket_events = ledger_state(ledger, work)
                assert sorted(rows) == sorted(work.values), f"trial {trial}: not one copy each"
                assert bucket_events == len(work.values), f"trial {trial}"
                assert bucket_sum == sum(work.values.values(), Decimal(0)), f"trial {trial}"
        finally:
            sidecar.kill()
    finally:
        ledger.dispose()
