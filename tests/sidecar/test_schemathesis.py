"""Schemathesis against /openapi.json, on SQLite and PostgreSQL: no 5xx, no contradiction.

A sidecar serves a seeded ledger over real HTTP from its own thread and event loop (schemathesis
calls are blocking); for every operation the document describes, schemathesis generates
requests from the schemas (fixed seed) and checks each response: no server error, a status
code, content type and body the document allows.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

from allotment.ledger.storage.engine import Ledger
from allotment.sidecar.app import create_app
from allotment.sidecar.compute import CoreValueEngine
from allotment.sidecar.ledger_source import StorageSource
from allotment.sidecar.settings import SidecarSettings
from allotment.sidecar.view import View
from tests.sidecar.conftest import Clock
from tests.sidecar.seed import NS, Seeder
from tests.sidecar.test_values import seed_catalogue

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class Served:
    """A sidecar answering on ``base`` from its own thread."""

    base: str
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def served(ledger_url: str, ledger: Ledger, seeder: Seeder, clock: Clock) -> Iterator[Served]:
    """Serve a seeded sidecar on a loopback port from a thread; stop it afterwards."""
    seed_catalogue(seeder)
    port = _free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    settings_ = SidecarSettings(database_url=ledger_url, namespace=NS, probe_port=None)
    view = View(NS, CoreValueEngine(), freeze_gc=False)

    async def main() -> None:
        app = create_app(settings_, view, open_source=StorageSource.open, clock=clock)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (ready.is_set() and view.ready):
        if time.monotonic() > deadline:
            raise AssertionError("the sidecar did not load the seeded ledger within 30 s")
        time.sleep(0.01)
    try:
        yield Served(f"http://127.0.0.1:{port}", loop, thread)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


def test_no_operation_answers_a_server_error_or_contradicts_the_document(served: Served) -> None:
    schema = schemathesis.openapi.from_url(f"{served.base}/openapi.json")
    failures: list[str] = []
    operations = 0
    calls: list[int] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            calls.append(1)
            try:
                case.call_and_validate(base_url=served.base, checks=CHECKS)
            except (AssertionError, FailureGroup) as error:  # report every operation's failure
                failures.append(f"{case.method} {case.formatted_path}: {error!r}")
                raise

        try:
            check()
        except (AssertionError, FailureGroup):
            continue
    assert operations >= 30
    assert len(calls) > 5 * operations
    assert not failures, "\n\n".join(failures)
