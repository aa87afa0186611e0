"""The sidecar's write path: ``POST /api/v1/events`` committed to the ledger, then to the view.

Role: read the body (at most ``max_body_bytes``: 413 past it), parse it once
(``ingest_events``: 400 problem+json naming the first invalid event's index), commit the whole
batch through storage's ``usage.ingest`` in one write transaction on the sidecar's own
connection to the ledger (the database URL it reads from; the blocking driver runs in a small
thread pool of its own), and answer 204 only after the commit (DESIGN D9). Concurrent requests
are committed together (``ingest_group``: one transaction for what is queued, every request
answered after it commits). A duplicate
(namespace, source, id) inside the horizon is acknowledged and not counted (storage's unique
key decides, so concurrent copies through several pods count once). While the ledger cannot be
reached, opened or written the answer is 503 with ``Retry-After``, never a 2xx: the client
keeps the events and sends them again, and dedup makes that safe.

Read your writes: the usage feed entry the commit appended carries the *absolute* states of the
buckets it touched; they are read back in the same transaction and applied to the view at once
(``View.apply_usage``), so this pod's next answer shows the usage. Bucket states only grow, so
the same states arriving later through the feed change nothing (never counted twice).

Counters (events stored, duplicates, not counted by any meter, refusals, 503s) go to the app's
metrics registry, and ``ingest_status`` summarises them for ``/status``.

It must not compute balances, decide access, or write anything but usage (D12).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from aiohttp import web
from prometheus_client import Counter, Histogram
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from allotment.ledger.core.timeutil import format_rfc3339
from allotment.ledger.storage import feed, usage
from allotment.ledger.storage.engine import Ledger, SchemaMismatchError, open_ledger
from allotment.ledger.storage.usage import (
    DEFAULT_HORIZON,
    BucketState,
    EventRefusedError,
    IncomingEvent,
    IngestOutcome,
)

from .ingest_events import InvalidBodyError, InvalidEventError, parse_events
from .ingest_group import GroupCommitter, ShuttingDownError
from .keys import CLOCK, METRICS, SETTINGS, VIEW
from .leases import LEASES, LeaseConfig, install_leases
from .problems import ProblemError

__all__ = [
    "INGESTION",
    "Committed",
    "IngestConfig",
    "Ingestion",
    "LedgerUnavailableError",
    "LedgerWriter",
    "UsageWriter",
    "ingest_status",
    "install_ingestion",
    "post_events",
]

log = logging.getLogger("allotment.sidecar.ingest")
R = TypeVar("R")

#: aiohttp's default request size, and the largest batch a client should send at once.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
#: Events committed in one transaction by group commit (a larger single batch still goes alone).
DEFAULT_GROUP_EVENTS = 2000
RECENT_UNCOUNTED = 20


@dataclass(frozen=True)
class IngestConfig:
    """Limits of the write path."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: How far back an event's ``time`` may lie; also the dedup horizon (D9).
    horizon: timedelta = DEFAULT_HORIZON
    #: Threads committing batches (None: 1 on SQLite, one writer per process; 4 on PostgreSQL).
    writers: int | None = None
    retry_after_seconds: int = 1
    group_events: int = DEFAULT_GROUP_EVENTS
    #: How long a group commit waits for requests like the ones its last commit answered.
    linger: timedelta = timedelta(milliseconds=2)
    #: Strict-mode leases (``consistency: Strict``), kept on the same ledger connection.
    leases: LeaseConfig = field(default_factory=LeaseConfig)


@dataclass(frozen=True)
class Committed:
    """What a committed batch did, and the absolute states of the buckets it touched."""

    outcome: IngestOutcome
    buckets: tuple[BucketState, ...]
    #: The events of the transaction (strict-mode leases settle approvals by them).
    events: Sequence[IncomingEvent] = ()


class LedgerUnavailableError(RuntimeError):
    """The ledger cannot be reached, opened or written just now: answer 503, retry later."""


class UsageWriter(Protocol):
    """Commits batches of events to the ledger (blocking; called from worker threads)."""

    def commit(
        self,
        namespace: str,
        events: Sequence[IncomingEvent],
        *,
        received_at: datetime,
        horizon: timedelta,
    ) -> Committed:
        """Store the batch in one transaction; raise ``LedgerUnavailableError`` if it cannot."""
        ...

    def transact(self, work: Callable[[Connection], R]) -> R:
        """Run ``work`` in one write transaction; raise ``LedgerUnavailableError`` if it cannot."""
        ...

    def close(self) -> None:
        """Release the connections."""
        ...


class LedgerWriter:
    """The sidecar's own write connection to the ledger, opened on first use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._ledger: Ledger | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _open(self) -> Ledger:
        with self._lock:
            if self._closed:
                raise LedgerUnavailableError("the sidecar is shutting down")
            if self._ledger is None:
                try:
                    self._ledger = open_ledger(self.url, reader_pool_size=1)
                except SchemaMismatchError as error:
                    raise LedgerUnavailableError(str(error)) from error
                except (SQLAlchemyError, OSError) as error:
                    raise LedgerUnavailableError(_describe(error)) from error
            return self._ledger

    def commit(
        self,
        namespace: str,
        events: Sequence[IncomingEvent],
        *,
        received_at: datetime,
        horizon: timedelta,
    ) -> Committed:
        """Ingest the batch in one write transaction and read back the buckets it produced."""
        ledger = self._open()
        try:
            with ledger.write() as connection:
                outcome = usage.ingest(
                    connection, namespace, events, received_at=received_at, horizon=horizon
                )
                buckets: tuple[BucketState, ...] = ()
                if outcome.feed_position is not None:
                    entries = feed.read_feed_texts(
                        connection, namespace, after=outcome.feed_position - 1, limit=1
                    )
                    decoder = usage.UsageDecoder()  # as the follower reads the same entries
                    buckets = tuple(
                        state
                        for entry in entries
                        if entry.kind == usage.USAGE_CHANGE
                        for state in decoder.decode(entry.payload)
                    )
        except (DBAPIError, PoolTimeoutError) as error:
            raise LedgerUnavailableError(_describe(error)) from error
        return Committed(outcome, buckets, events)

    def transact(self, work: Callable[[Connection], R]) -> R:
        """Run ``work`` in one write transaction (strict-mode leases use it; D12, D14)."""
        ledger = self._open()
        try:
            with ledger.write() as connection:
                return work(connection)
        except (DBAPIError, PoolTimeoutError) as error:
            raise LedgerUnavailableError(_describe(error)) from error

    def close(self) -> None:
        """Dispose of the connections; later commits answer 503."""
        with self._lock:
            self._closed = True
            if self._ledger is not None:
                self._ledger.dispose()
                self._ledger = None


def _describe(error: BaseException) -> str:
    cause = getattr(error, "orig", None) or error
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return f"{type(cause).__name__}: {text}"


@dataclass
class _Meters:
    events: Counter
    uncounted: Counter
    requests: Counter
    seconds: Histogram


@dataclass
class Ingestion:
    """The write path's state in one app: its writer, thread pool, limits and counters."""

    writer: UsageWriter
    config: IngestConfig = field(default_factory=IngestConfig)
    executor: ThreadPoolExecutor | None = None
    committer: GroupCommitter[Committed] | None = None
    meters: _Meters | None = None
    stored: int = 0
    duplicates: int = 0
    uncounted: int = 0
    refused: int = 0
    unavailable: int = 0
    last_error: str | None = None
    recent_uncounted: deque[dict[str, str]] = field(
        default_factory=lambda: deque(maxlen=RECENT_UNCOUNTED)
    )
    workers: int = 1


INGESTION = web.AppKey("ingestion", Ingestion)


def install_ingestion(
    app: web.Application,
    *,
    writer: UsageWriter | None = None,
    config: IngestConfig | None = None,
) -> Ingestion:
    """Give ``app`` the write path: a writer on its settings' ledger URL, closed at cleanup."""
    url = app[SETTINGS].database_url
    config = config or IngestConfig()
    ingestion = Ingestion(
        writer=writer or LedgerWriter(url),
        config=config,
        workers=config.writers or (1 if url.startswith("sqlite") else 4),
    )
    registry = app[METRICS].registry
    ingestion.meters = _Meters(
        events=Counter(
            "allotment_sidecar_events",
            "Usage events received, by outcome (stored, duplicate)",
            ["outcome"],
            registry=registry,
        ),
        uncounted=Counter(
            "allotment_sidecar_events_uncounted",
            "Events stored that no recorded meter could evaluate (not counted)",
            registry=registry,
        ),
        requests=Counter(
            "allotment_sidecar_ingest_requests",
            "POST /api/v1/events requests, by HTTP status",
            ["status"],
            registry=registry,
        ),
        seconds=Histogram(
            "allotment_sidecar_ingest_commit_seconds",
            "Time to commit a batch to the ledger",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=registry,
        ),
    )
    app[INGESTION] = ingestion
    app.cleanup_ctx.append(_run_writer)
    install_leases(app, ingestion.writer, config.leases)
    return ingestion


async def _run_writer(app: web.Application) -> AsyncIterator[None]:
    ingestion = app[INGESTION]
    namespace = app[SETTINGS].namespace
    horizon = ingestion.config.horizon
    executor = ThreadPoolExecutor(
        max_workers=ingestion.workers, thread_name_prefix="allotment-ingest"
    )

    def commit(events: Sequence[IncomingEvent], received_at: datetime) -> Committed:
        return ingestion.writer.commit(namespace, events, received_at=received_at, horizon=horizon)

    def committed(result: Committed, seconds: float) -> None:
        _record(ingestion, result, seconds, app[CLOCK]())
        view = app[VIEW]
        if result.buckets and view.ready:
            view.apply_usage(result.buckets)
            book = app.get(LEASES)
            if book is not None and book.held and not result.outcome.duplicates:
                book.settle_committed(result.events)  # consistency: Strict only

    committer = GroupCommitter(
        commit,
        executor,
        workers=ingestion.workers,
        max_events=ingestion.config.group_events,
        linger=ingestion.config.linger.total_seconds(),
        on_commit=committed,
    )
    committer.start()
    ingestion.executor, ingestion.committer = executor, committer
    try:
        yield
    finally:
        ingestion.committer = None
        await committer.stop()
        executor.shutdown(wait=True)
        ingestion.executor = None
        await asyncio.get_running_loop().run_in_executor(None, ingestion.writer.close)


async def _read_body(request: web.Request, limit: int) -> bytes:
    too_large = ProblemError(
        413,
        f"the request body exceeds {limit} bytes: send the events in smaller batches",
        extensions={"maxBodyBytes": limit},
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _unavailable(ingestion: Ingestion, detail: str) -> ProblemError:
    ingestion.unavailable += 1
    ingestion.last_error = detail
    seconds = ingestion.config.retry_after_seconds
    return ProblemError(
        503,
        f"the ledger cannot take usage just now ({detail}); nothing was stored: send the same "
        f"events again after {seconds}s (duplicates are acknowledged once stored)",
        headers={"Retry-After": str(seconds)},
    )


async def post_events(request: web.Request) -> web.Response:
    """POST /api/v1/events: commit CloudEvents to the ledger, then answer 204."""
    ingestion = request.app[INGESTION]
    meters = ingestion.meters
    status = 500
    try:
        response = await _post_events(request, ingestion)
        status = response.status
        return response
    except ProblemError as error:
        status = error.status
        raise
    finally:
        if meters is not None:
            meters.requests.labels(str(status)).inc()


async def _post_events(request: web.Request, ingestion: Ingestion) -> web.Response:
    config = ingestion.config
    body = await _read_body(request, config.max_body_bytes)
    received_at = request.app[CLOCK]()
    try:
        events = parse_events(
            body,
            request.headers.get("Content-Type", ""),
            now=received_at,
            horizon=config.horizon,
        )
    except InvalidEventError as error:
        ingestion.refused += 1
        raise ProblemError(
            400,
            f"validation error: {error}; nothing in this request was stored",
            extensions={"index": error.index, "field": error.field},
        ) from None
    except InvalidBodyError as error:
        ingestion.refused += 1
        raise ProblemError(400, f"validation error: {error}") from None
    if not events:
        return web.Response(status=204)
    committer = ingestion.committer
    if committer is None:
        raise _unavailable(ingestion, "the write path is not running")
    try:
        await committer.submit(events, received_at)
    except (LedgerUnavailableError, ShuttingDownError) as error:
        log.warning("Could not commit %d usage events: %s", len(events), error)
        raise _unavailable(ingestion, str(error)) from None
    except EventRefusedError as error:
        ingestion.refused += 1
        raise ProblemError(
            400,
            f"validation error: {error}; nothing in this request was stored",
            extensions={"index": error.index, "field": "time"},
        ) from None
    return web.Response(status=204)


def _record(ingestion: Ingestion, committed: Committed, seconds: float, at: datetime) -> None:
    outcome = committed.outcome
    ingestion.stored += outcome.stored
    ingestion.duplicates += outcome.duplicates
    ingestion.uncounted += len(outcome.uncounted)
    ingestion.last_error = None
    for item in outcome.uncounted:
        ingestion.recent_uncounted.append(
            {
                "source": item.source,
                "id": item.id,
                "reason": item.reason,
                "receivedAt": format_rfc3339(at),
            }
        )
    meters = ingestion.meters
    if meters is not None:
        meters.events.labels("stored").inc(outcome.stored)
        meters.events.labels("duplicate").inc(outcome.duplicates)
        meters.uncounted.inc(len(outcome.uncounted))
        meters.seconds.observe(seconds)


def ingest_status(app: web.Application) -> dict[str, Any] | None:
    """Summarise the write path for ``/status`` (None when the app has none)."""
    ingestion = app.get(INGESTION)
    if ingestion is None:
        return None
    return {
        "eventsStored": ingestion.stored,
        "duplicatesAcknowledged": ingestion.duplicates,
        "eventsNotCounted": ingestion.uncounted,
        "recentNotCounted": list(ingestion.recent_uncounted),
        "requestsRefused": ingestion.refused,
        "ledgerUnavailable": ingestion.unavailable,
        "lastError": ingestion.last_error,
        "maxBodyBytes": ingestion.config.max_body_bytes,
        "horizonDays": ingestion.config.horizon.days,
        "strictLeases": app[LEASES].status() if LEASES in app else None,
    }
