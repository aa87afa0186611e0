"""Following the ledger: the first load, then the change feed by cursor, reloading on a new epoch.

Role: one asyncio task per sidecar. It opens the ledger (retrying while it is unreachable or
at a schema this sidecar does not read, reported in /status, never crashing the app), loads the namespace in pages and builds the view's indexes
(in a worker thread: the ledger driver is blocking, and the loop keeps answering), then polls ``changes_since(position)`` every ``poll_interval`` and
applies each batch to the view on the event loop, so lookups need no lock. The polls run on a
thread of their own that the operating system runs only when its core has nothing else to run
(Linux ``SCHED_IDLE``, ``_yield_to_checks``): a poll (0.3 to 1.5 ms of CPU) never keeps the
loop's thread waiting for the core, which a woken thread of equal priority may do for a whole
time slice; its Python parts still take the GIL, for at most the switch interval at a time
(``app.GIL_SWITCH_SECONDS``). The first load and reloads keep normal priority (a load is
minutes of CPU at 10^6 entitlements and must not wait for idle time). The loop is never
held for more than a turn's budget (``TURN_BUDGET_NS``, 0.2 ms) at a time: a batch is applied
change by change with the loop free whenever a turn's budget is spent (an access check waits for
one turn, not for thousands of changes); a turn ends only between two usage bucket states, so a
lookup never sees part of a catalogue change (an entitlement edited but not its grants), only
usage that has reached some buckets and not yet others for a moment (each bucket state is
absolute: it is counted once either way). Between polls, the answers the batches' usage dropped
are recomputed, a turn at a time, so the checks that follow find them cached instead of
computing them (``View.refresh_dropped``); a check that comes first computes its own. The
recomputation never delays the next poll: how fresh the view is depends only on polling.
A NOTIFY (or local ingestion) only sets ``wake`` to poll sooner; polling alone is
correct (DESIGN D10). A batch from another ``ledger_epoch`` (a restore) triggers a full reload.
A failing poll keeps the last state and lets its age grow: staleness is handled by policy, never
by crashing the app (D7, D11).

It must not compute values or touch the HTTP layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from .settings import SidecarSettings
from .source import (
    Change,
    FeedBatch,
    LedgerSource,
    LoadedNamespace,
    UsageBucketState,
    decoded,
)
from .view import PreparedLoad, View

__all__ = ["Follower"]

log = logging.getLogger("allotment.sidecar.sync")

FEED_BATCH_LIMIT = 5000
#: The follower's work between two turns of the event loop, in nanoseconds: at most one usage
#: change (~10-45 us) or recomputed answer (~100-250 us) past it.
TURN_BUDGET_NS = 200_000
MAX_BACKOFF_SECONDS = 5.0


class Follower:
    """Loads the view, then keeps it current from the feed."""

    def __init__(
        self,
        settings: SidecarSettings,
        view: View,
        clock: Callable[[], datetime],
        open_source: Callable[[SidecarSettings], LedgerSource],
        *,
        on_reload: Callable[[float], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.settings = settings
        self.view = view
        self.open_source = open_source
        self.source: LedgerSource | None = None
        self.clock = clock
        self.wake = asyncio.Event()
        self.last_error: str | None = None
        self._stop_listening: Callable[[], None] | None = None
        self._on_reload = on_reload
        self._on_error = on_error
        #: Nanoseconds of work between two turns of the loop (tests set 0: a turn per step).
        self.turn_budget_ns = TURN_BUDGET_NS
        #: The polls' thread (started at the first poll), run only when its core is idle.
        self.polls = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="allotment-feed", initializer=_yield_to_checks
        )

    async def run(self) -> None:
        """Load, then follow until cancelled."""
        backoff = self.settings.poll_interval.total_seconds()
        while True:
            try:
                if self.source is None:
                    loop = asyncio.get_running_loop()
                    self.source = await loop.run_in_executor(None, self.open_source, self.settings)
                    self._stop_listening = self.source.listen(self.view.namespace, self._waker())
                if not self.view.ready:
                    await self.reload()
                more = await self.poll_once()
                self.last_error = None
                backoff = self.settings.poll_interval.total_seconds()
                if more:
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.last_error = f"{type(error).__name__}: {error}"
                log.warning("Could not follow the ledger feed: %s", self.last_error)
                if self._on_error is not None:
                    self._on_error(error)
                backoff = min(max(backoff * 2, 0.05), MAX_BACKOFF_SECONDS)
            await self._sleep(backoff)

    def _waker(self) -> Callable[[], None]:
        loop = asyncio.get_running_loop()

        def wake() -> None:
            loop.call_soon_threadsafe(self.wake.set)

        return wake

    @property
    def listening(self) -> bool:
        """Tell whether ledger notifications wake the follower (else it only polls)."""
        return self._stop_listening is not None

    async def close(self) -> None:
        """Stop listening, end the polls' thread and release the source's connections."""
        self.polls.shutdown(wait=False, cancel_futures=True)
        if self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None
        if self.source is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.source.close)
            self.source = None

    def _source(self) -> LedgerSource:
        if self.source is None:
            raise RuntimeError("the follower has no ledger source attached")
        return self.source

    async def reload(self) -> None:
        """Load the whole namespace (one bulk query per table) and replace the view."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        source, view = self._source(), self.view

        def load_and_prepare() -> tuple[LoadedNamespace, PreparedLoad]:
            # No cyclic collection while the records are decoded and indexed: each would walk
            # every record made so far (seconds at 10^5, holding the GIL); ``prepare`` freezes
            # them before collections resume.
            collecting = gc.isenabled()
            gc.disable()
            try:
                loaded = source.load(view.namespace)
                return loaded, view.prepare(loaded)
            finally:
                if collecting:
                    gc.enable()

        # Read and index in a worker thread: the loop keeps answering (/livez, the old state).
        loaded, prepared = await loop.run_in_executor(None, load_and_prepare)
        self.view.install(prepared, self.clock())
        elapsed = loop.time() - started
        counts = self.view.counts()
        log.info(
            "Loaded namespace %s at ledger version %s (epoch %s): %d entitlements in %.3fs",
            self.view.namespace,
            loaded.position,
            loaded.epoch,
            counts.entitlements,
            elapsed,
        )
        if self._on_reload is not None:
            self._on_reload(elapsed)

    async def poll_once(self) -> bool:
        """Apply the next feed batch; return True when more changes may be waiting."""
        position = self.view.position
        if position is None:
            return False
        loop = asyncio.get_running_loop()
        started = self.clock()
        batch = await loop.run_in_executor(
            self.polls,
            self._source().changes_since,
            self.view.namespace,
            position,
            FEED_BATCH_LIMIT,
        )
        if not await self._apply(batch, started):
            log.info("Ledger epoch changed from %s to %s: reloading", self.view.epoch, batch.epoch)
            await self.reload()
            return False
        return len(batch.changes) >= FEED_BATCH_LIMIT

    async def _apply(self, batch: FeedBatch, now: datetime) -> bool:
        """Apply ``batch`` a turn at a time (see the module docstring); False: reload instead.

        Usage entries are decoded a state at a time as they are reached (``decoded``), so the
        batch never holds more than a few decoded states, and a turn may end inside an entry.
        """
        view = self.view
        held = view.position or 0  # the position moves after the last change only
        deadline = time.perf_counter_ns() + self.turn_budget_ns
        # the shortest runs a turn may end after
        for number, changes in enumerate(_slices(decoded(batch.changes), 1)):
            if number and time.perf_counter_ns() >= deadline:
                await asyncio.sleep(0)
                deadline = time.perf_counter_ns() + self.turn_budget_ns
            part = FeedBatch(batch.epoch, held, batch.contract_version, changes)
            if not view.apply(part, now, whole=False):
                return False  # only the first change can meet a new epoch: nothing applied
        # in the turn of the last change: no check sees the position before its change
        return view.apply(FeedBatch(batch.epoch, batch.position, batch.contract_version), now)

    async def catch_up(self, until: float | None = None) -> None:
        """Recompute the answers usage dropped, a turn at a time, until none is left.

        Stops early when woken (a poll is due) or at the loop time ``until``: what is left
        waits for the next pause between polls, or for a check to compute it.
        """
        loop = asyncio.get_running_loop()
        view = self.view
        while not self.wake.is_set() and (until is None or loop.time() < until):
            now = self.clock()
            deadline = time.perf_counter_ns() + self.turn_budget_ns
            while view.refresh_dropped(now, 1):
                if time.perf_counter_ns() >= deadline:
                    break
            else:
                return
            await asyncio.sleep(0)  # a turn of the loop for the checks waiting

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds`` or until woken, recomputing dropped answers meanwhile."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        await self.catch_up(until)
        seconds = until - loop.time()
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that arrives as the wake-up does (gh-86296), and shutdown then waits forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.wake.wait()
        self.wake.clear()


def _yield_to_checks() -> None:
    """Run the calling thread only when its core has nothing else to run (Linux ``SCHED_IDLE``).

    A normal thread woken on that core (the event loop's, a request arrived) then preempts it at
    once. Where the policy does not exist (not Linux) the thread keeps its priority.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _slices(changes: Iterable[Change], size: int) -> Iterator[list[Change]]:
    """Cut ``changes`` into runs of about ``size``, only between two usage bucket states."""
    run: list[Change] = []
    previous: Change | None = None
    for change in changes:
        if (
            len(run) >= size
            and isinstance(change, UsageBucketState)
            and isinstance(previous, UsageBucketState)
        ):
            yield run
            run = []
        run.append(change)
        previous = change
    if run:
        yield run
