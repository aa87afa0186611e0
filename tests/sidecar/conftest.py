"""Fixtures of the sidecar tier: a migrated ledger on SQLite and PostgreSQL, a seeder, a clock
the test moves, and a running sidecar app reached over real HTTP, served as ``allotment sidecar``
serves it: ``Sidecar.get``/``post``/``request`` reach it through the wire lane's site (a plain
value read answered by its connection), ``Sidecar.client`` (``aiohttp_client``) through aiohttp's
own site, where value reads take the fast lane."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from allotment.ledger.storage import migrate
from allotment.ledger.storage.engine import Ledger, open_ledger
from allotment.sidecar import fastlane, wire
from allotment.sidecar.app import create_app
from allotment.sidecar.compute import CoreValueEngine
from allotment.sidecar.keys import CLOCK, FOLLOWER, VIEW
from allotment.sidecar.ledger_source import StorageSource
from allotment.sidecar.settings import SidecarSettings
from allotment.sidecar.source import FeedBatch
from allotment.sidecar.view import View
from tests.sidecar.seed import NS, T0, Seeder

WAIT_LIMIT_SECONDS = 20.0


def ledger_outage(sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every poll of ``sidecar``'s follower fail from now on, as with the ledger unreachable
    (``monkeypatch.undo()`` ends it): its view's age then grows with the clock whatever wakes it
    (a notification listener's first wake, on PostgreSQL, comes at a time of its own)."""

    def unreachable(*_args: object) -> FeedBatch:
        raise OSError("the ledger is unreachable (a test's outage)")

    monkeypatch.setattr(sidecar.app[FOLLOWER].source, "changes_since", unreachable)


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Wait until ``predicate()`` holds (polling the event loop), or fail saying ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT_SECONDS
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """Yield a ledger migrated to head, then close it."""
    migrate.upgrade(ledger_url)
    opened = open_ledger(ledger_url)
    try:
        yield opened
    finally:
        opened.dispose()


@pytest.fixture
def seeder(ledger: Ledger) -> Seeder:
    """Return a seeder writing namespace ``team-a`` at T0."""
    return Seeder(ledger)


@dataclass
class Clock:
    """A clock the test moves by hand."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + timedelta(days=1))


@dataclass
class Sidecar:
    """A running sidecar app and its client."""

    client: TestClient[Any, Any]
    app: web.Application
    #: A client session and the root URL of the app's wire-lane site.
    session: aiohttp.ClientSession
    root: str

    @property
    def view(self) -> View:
        return self.app[VIEW]

    async def caught_up(self, position: int) -> None:
        """Wait until the view has applied the feed up to ``position``."""
        follower = self.app[FOLLOWER]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_LIMIT_SECONDS
        while self.view.position is None or self.view.position < position:
            if loop.time() > deadline:
                raise AssertionError(
                    f"the sidecar did not reach ledger version {position}: at "
                    f"{self.view.position}, last error {follower.last_error}"
                )
            follower.wake.set()
            await asyncio.sleep(0.01)

    async def polled(self) -> None:
        """Wake the follower and wait for a poll that started at or after the clock's now."""
        target = self.app[CLOCK]()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_LIMIT_SECONDS
        while self.view.synced_at is None or self.view.synced_at < target:
            if loop.time() > deadline:
                raise AssertionError(f"no poll succeeded: {self.app[FOLLOWER].last_error}")
            self.app[FOLLOWER].wake.set()
            await asyncio.sleep(0.01)

    async def ready(self) -> None:
        """Wait until the first load is done."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_LIMIT_SECONDS
        while not self.view.ready:
            if loop.time() > deadline:
                raise AssertionError(f"not ready: {self.app[FOLLOWER].last_error}")
            await asyncio.sleep(0.01)

    async def request(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        """Send a request to the wire-lane site, as an application in the pod would."""
        return await self.session.request(method, self.root + path, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        """GET ``path`` and return (status, JSON body, headers)."""
        response = await self.request("GET", path, **kwargs)
        body = await response.json(content_type=None) if await response.read() else None
        return response.status, body, response.headers

    async def post(self, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        """POST ``path`` and return (status, JSON body or None, headers)."""
        response = await self.request("POST", path, **kwargs)
        raw = await response.read()
        body = await response.json(content_type=None) if raw else None
        return response.status, body, response.headers


StartSidecar = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def start_sidecar(
    ledger_url: str,
    ledger: Ledger,
    clock: Clock,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> AsyncIterator[StartSidecar]:
    """Yield a function starting a sidecar for ``team-a`` on this ledger (ready by default)."""
    sessions: list[aiohttp.ClientSession] = []

    async def start(
        *, wait_ready: bool = True, keepalive_timeout: float | None = None, **overrides: Any
    ) -> Sidecar:
        settings = replace(
            SidecarSettings(
                database_url=ledger_url,
                namespace=NS,
                poll_interval=timedelta(milliseconds=20),
                probe_host="127.0.0.1",
            ),
            **overrides,
        )
        view = View(NS, CoreValueEngine(), freeze_gc=False)
        app = create_app(settings, view, open_source=StorageSource.open, clock=clock)
        server = TestServer(app)  # started here: aiohttp_client passes no runner settings
        limits = {} if keepalive_timeout is None else {"keepalive_timeout": keepalive_timeout}
        await server.start_server(**limits)
        client = await aiohttp_client(server)
        runner = client.server.runner
        assert isinstance(runner, web.AppRunner)
        fastlane.install(runner)  # as served (``wire.serve``): both lanes
        site = wire.LaneSite(runner, "127.0.0.1", 0)
        await site.start()
        sessions.append(aiohttp.ClientSession())
        sidecar = Sidecar(client, app, sessions[-1], f"http://127.0.0.1:{site.port}")
        if wait_ready:
            await sidecar.ready()
        return sidecar

    yield start
    for session in sessions:
        await session.close()
