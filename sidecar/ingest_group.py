"""Group commit: the batches of concurrent requests committed together, each answered after.

Role: ``GroupCommitter`` queues each request's batch with a future; ``workers`` consumer tasks
each take everything queued at that moment (up to ``max_events``, at least one batch), commit it
as one list through the blocking ``commit`` function in the thread pool, call ``on_commit`` once
(read-your-writes, counters) and only then resolve every future of the group. A request is
answered 204 only after the transaction holding its events committed; when the transaction
fails every request of the group gets the error (nothing of it was stored). Events of one
request stay together and in order, so batches stay atomic and the first copy of a duplicate
still counts. Should storage refuse an event of a group (``EventRefusedError``), each batch of
the group is committed alone, so the refusal names the index inside its own request and other
requests are not refused with it.

Why: a commit costs a round of locks and a WAL append whatever its size; one event per request
(the legacy SDK's ``events.ingest(event)``) would otherwise pay that per event. For the same
reason a consumer lingers (at most ``linger``, 2 ms by default) while fewer requests are queued
than its last group held: the clients that group answered are usually about to send again.

It must not parse, validate or answer requests, nor touch the view itself (``on_commit`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from allotment.ledger.storage.usage import EventRefusedError, IncomingEvent

__all__ = ["GroupCommitter", "ShuttingDownError"]

T = TypeVar("T")


class ShuttingDownError(RuntimeError):
    """The sidecar stops: the batch was not committed by this process."""


@dataclass
class _Pending(Generic[T]):
    events: Sequence[IncomingEvent]
    received_at: datetime
    done: asyncio.Future[T]


def _resolve(pending: _Pending[T], result: T) -> None:
    if not pending.done.done():
        pending.done.set_result(result)


def _fail(pending: _Pending[T], error: BaseException) -> None:
    if not pending.done.done():
        pending.done.set_exception(error)


class GroupCommitter(Generic[T]):
    """Commits queued batches in groups, on ``workers`` concurrent transactions."""

    def __init__(
        self,
        commit: Callable[[Sequence[IncomingEvent], datetime], T],
        executor: Executor,
        *,
        workers: int,
        max_events: int,
        on_commit: Callable[[T, float], None],
        linger: float = 0.0,
    ) -> None:
        self.commit = commit
        self.executor = executor
        self.workers = workers
        self.max_events = max_events
        self.on_commit = on_commit
        self.linger = linger
        self._arrived = asyncio.Event()
        self._last_group = 1
        self._queue: asyncio.Queue[_Pending[T]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the consumer tasks (inside the running loop)."""
        self._tasks = [
            asyncio.create_task(self._consume(), name=f"allotment-ingest-{n}")
            for n in range(self.workers)
        ]

    async def stop(self) -> None:
        """Stop consuming; batches still queued fail with ``ShuttingDownError``."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        while not self._queue.empty():
            _fail(self._queue.get_nowait(), ShuttingDownError("the sidecar is shutting down"))

    async def submit(self, events: Sequence[IncomingEvent], received_at: datetime) -> T:
        """Queue a batch and return what its group's commit returned (or raise its error)."""
        if not self._tasks:
            raise ShuttingDownError("the write path is not running")
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(events, received_at, done))
        self._arrived.set()
        return await done

    async def _consume(self) -> None:
        while True:
            group = [await self._queue.get()]
            count = len(group[0].events)
            await self._await_stragglers()
            while count < self.max_events and not self._queue.empty():
                pending = self._queue.get_nowait()
                group.append(pending)
                count += len(pending.events)
            self._last_group = max(len(group), self._last_group - 1)
            try:
                await self._commit(group)
            except asyncio.CancelledError:
                for pending in group:
                    _fail(pending, ShuttingDownError("the sidecar is shutting down"))
                raise

    async def _await_stragglers(self) -> None:
        """Wait up to ``linger`` while fewer requests wait than the last group held.

        Clients answered by the last commit usually send their next request at once; waiting
        a moment for them lets one transaction carry them all. A lone client never waits.
        """
        if not self.linger:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.linger):
                while self._queue.qsize() + 1 < self._last_group:
                    self._arrived.clear()
                    await self._arrived.wait()

    async def _commit(self, group: list[_Pending[T]]) -> None:
        loop = asyncio.get_running_loop()
        events = [event for pending in group for event in pending.events]
        received_at = min(pending.received_at for pending in group)
        started = time.perf_counter()
        try:
            result = await loop.run_in_executor(self.executor, self.commit, events, received_at)
        except EventRefusedError as error:
            if len(group) == 1:
                _fail(group[0], error)
                return
            for pending in group:
                await self._commit([pending])
            return
        except Exception as error:
            for pending in group:
                _fail(pending, error)
            return
        self.on_commit(result, time.perf_counter() - started)
        for pending in group:
            _resolve(pending, result)
