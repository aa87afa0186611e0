"""``consistency: Strict``: access answers gated by leases reserved in the ledger.

Role: for a Strict feature's metered hard-limit entitlement (SUM or COUNT meter), a check that
carries ``requestedUsage`` N answers ``hasAccess: true`` only when this sidecar's lease on the
entitlement's current usage period still covers N; it then approves N from the lease locally.
When the lease is short the sidecar asks the ledger for more (storage's ``leases.take_lease``,
a conditional update: committed usage plus every live lease stays within the budget) and
answers no access when the ledger has none to give.

An approval stays claimed until its usage is committed through this sidecar (each commit
settles the oldest approvals by what its own events add, evaluated as ingestion does), or at most ``settle`` after
it was answered (the time usage sent elsewhere has to reach the ledger); then it is *settled*:
recorded as ``spent`` so it no longer claims. A background task records settled approvals and
renews leases every ``sync_interval``; leases idle for a ``ttl`` are returned. On shutdown
every lease is returned, keeping unsettled approvals claimed until they settle. A sidecar that
dies leaves its lease to expire at ``expires_at`` (``ttl`` after its last renewal).

Leases never change a balance: usage events are the truth, and the ledger's balance is grants
minus usage. Without ``requestedUsage``, and for Eventual, soft-limit, boolean and static
entitlements, nothing here runs. When the ledger cannot answer, a Strict check is a 503:
never a silent allow.

It must not compute balances (the view does), write usage, or touch the Eventual path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from aiohttp import web
from sqlalchemy import Connection

from allotment.ledger.core.model import (
    Consistency,
    Entitlement,
    EntitlementType,
    EntitlementValue,
)
from allotment.ledger.core.periods import last_reset_at
from allotment.ledger.storage import leases
from allotment.ledger.storage.leases import ADDITIVE, Lease, UsageScope
from allotment.ledger.storage.usage import IncomingEvent, RecordedMeter

from .keys import CLOCK, SETTINGS, VIEW
from .problems import ProblemError
from .view import View

__all__ = [
    "LEASES",
    "LeaseBook",
    "LeaseConfig",
    "gate",
    "gate_flag",
    "install_leases",
]

log = logging.getLogger("allotment.sidecar.leases")
R = TypeVar("R")
ZERO = Decimal(0)


@dataclass(frozen=True)
class LeaseConfig:
    """How strict-mode leases are sized and kept."""

    #: A lease lapses this long after its last renewal (a dead sidecar's slice returns then).
    ttl: timedelta = timedelta(seconds=15)
    #: An approval stays claimed this long: its usage should be committed within it.
    settle: timedelta = timedelta(seconds=5)
    #: How often settled approvals are recorded and leases renewed.
    sync_interval: timedelta = timedelta(seconds=1)
    #: A lease is used only while it outlives ``now + settle + margin`` (clock skew).
    margin: timedelta = timedelta(seconds=1)
    #: Each acquisition asks for this share of the balance, at least ``min_requests`` checks.
    slice_fraction: Decimal = Decimal("0.1")
    min_requests: int = 4


class Transactor(Protocol):
    """Runs work in one write transaction on the ledger (blocking; from a worker thread)."""

    def transact(self, work: Callable[[Connection], R]) -> R:
        """Run ``work`` and commit; raise ``LedgerUnavailableError`` when the ledger cannot."""
        ...


@dataclass
class _Held:
    """This sidecar's lease on one entitlement's period, and the approvals made from it."""

    entitlement_id: str
    period_start: datetime
    scope: UsageScope
    reserved: Decimal = ZERO
    recorded_spent: Decimal = ZERO
    expires_at: datetime | None = None
    approved: Decimal = ZERO
    settled: Decimal = ZERO
    pending: deque[tuple[datetime, Decimal]] = field(default_factory=deque)
    meter: RecordedMeter | None = None
    last_used: datetime | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def remaining(self) -> Decimal:
        return self.reserved - self.approved

    def settle(self, now: datetime, after: timedelta) -> None:
        """Move approvals older than ``after`` from claimed to settled."""
        while self.pending and self.pending[0][0] + after <= now:
            self.settled += self.pending.popleft()[1]

    def settle_amount(self, amount: Decimal) -> None:
        """Settle the oldest approvals, up to ``amount`` of usage just committed for them."""
        while amount > 0 and self.pending:
            at, approved = self.pending[0]
            if approved <= amount:
                self.pending.popleft()
                self.settled += approved
                amount -= approved
            else:
                self.pending[0] = (at, approved - amount)
                self.settled += amount
                amount = ZERO

    def covers(self, amount: Decimal, now: datetime, config: LeaseConfig) -> bool:
        """Whether the lease can approve ``amount`` now and stay live until it settles."""
        return (
            self.expires_at is not None
            and self.expires_at - config.margin >= now + config.settle
            and self.remaining >= amount
        )

    def approve(self, amount: Decimal, now: datetime) -> None:
        self.approved += amount
        self.pending.append((now, amount))
        self.last_used = now

    def record(self, lease: Lease) -> None:
        self.reserved = lease.reserved
        self.recorded_spent = lease.spent
        self.expires_at = lease.expires_at


@dataclass
class LeaseBook:
    """Every lease this sidecar holds, its ledger access and its counters."""

    namespace: str
    store: Transactor
    config: LeaseConfig = field(default_factory=LeaseConfig)
    holder: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    )
    held: dict[tuple[str, datetime], _Held] = field(default_factory=dict)
    executor: ThreadPoolExecutor | None = None
    approvals: int = 0
    denials: int = 0
    round_trips: int = 0
    last_error: str | None = None

    async def _call(self, work: Callable[[Connection], R]) -> R:
        loop = asyncio.get_running_loop()
        self.round_trips += 1
        return await loop.run_in_executor(self.executor, self.store.transact, work)

    async def _take(
        self, held: _Held, *, budget: Decimal, want: Decimal, minimum: Decimal, now: datetime
    ) -> Lease:
        def take(conn: Connection) -> tuple[Lease, RecordedMeter | None]:
            meter = held.meter or leases.recorded_meter(conn, self.namespace, held.scope)
            return leases.take_lease(
                conn,
                self.namespace,
                held.entitlement_id,
                held.period_start,
                self.holder,
                scope=held.scope,
                budget=budget,
                want=want,
                minimum=minimum,
                spent=held.settled,
                now=now,
                ttl=self.config.ttl,
            ), meter

        lease, held.meter = await self._call(take)
        held.record(lease)
        return lease

    async def _give_back(self, held: _Held, now: datetime) -> None:
        hold_until = held.pending[-1][0] + self.config.settle if held.pending else now
        await self._call(
            lambda conn: leases.return_lease(
                conn,
                self.namespace,
                held.entitlement_id,
                held.period_start,
                self.holder,
                keep=held.approved,
                spent=held.settled,
                hold_until=hold_until,
            )
        )

    async def decide(
        self,
        scope: UsageScope,
        entitlement: Entitlement,
        value: EntitlementValue,
        requested: Decimal,
        now: datetime,
    ) -> bool:
        """Approve ``requested`` from the lease (taking more when short); False when none."""
        period_start = last_reset_at(entitlement, now)
        key = (entitlement.id, period_start)
        held = self.held.get(key)
        if held is None:
            held = self.held.setdefault(key, _Held(entitlement.id, period_start, scope))
        config = self.config
        if held.covers(requested, now, config):
            held.approve(requested, now)
            self.approvals += 1
            return True
        async with held.lock:
            held.settle(now, config.settle)
            if not held.covers(requested, now, config):
                balance = value.balance or ZERO
                want = max(requested * config.min_requests, balance * config.slice_fraction)
                budget = balance + (value.usage or ZERO)
                await self._take(
                    held,
                    budget=budget,
                    want=want,
                    minimum=max(ZERO, requested - max(held.remaining, ZERO)),
                    now=now,
                )
            if held.covers(requested, now, config):
                held.approve(requested, now)
                self.approvals += 1
                return True
        held.last_used = now
        self.denials += 1
        return False

    def settle_committed(self, events: Sequence[IncomingEvent]) -> None:
        """Settle the oldest approvals by the usage of ``events`` this sidecar just committed.

        Usage posted through the sidecar that approved it is in the ledger now: its approval
        need not stay claimed until ``settle`` (it would count twice and deny early). Only the
        events' own amounts count (a bucket's new total may hold other sidecars' usage too).
        """
        for held in self.held.values():
            if held.pending and held.meter is not None:
                held.settle_amount(
                    leases.usage_of_events(held.meter, held.scope, events, since=held.period_start)
                )

    async def sync(self, now: datetime) -> None:
        """Record settled approvals, renew leases in use, return idle ones."""
        config = self.config
        for key, held in list(self.held.items()):
            if held.lock.locked():
                continue
            async with held.lock:
                held.settle(now, config.settle)
                idle = held.last_used is None or held.last_used + config.ttl <= now
                if idle and not held.pending:
                    del self.held[key]
                    if held.expires_at is not None and held.expires_at > now:
                        await self._give_back(held, now)
                    continue
                renew_by = now + config.settle + config.margin + config.sync_interval * 2
                if held.settled > held.recorded_spent or (
                    held.expires_at is not None and held.expires_at <= renew_by
                ):
                    await self._take(held, budget=ZERO, want=ZERO, minimum=ZERO, now=now)

    async def return_all(self, now: datetime) -> None:
        """Give every lease back (shutdown): unsettled approvals stay claimed until they settle."""
        for key, held in list(self.held.items()):
            del self.held[key]
            held.settle(now, self.config.settle)
            if held.expires_at is None or held.expires_at <= now:
                continue
            try:
                await self._give_back(held, now)
            except Exception as error:  # the lease lapses at expires_at anyway
                log.warning("Could not return the lease on %s: %s", held.entitlement_id, error)

    def status(self) -> dict[str, Any]:
        """Summarise the leases for ``/status``."""
        return {
            "holder": self.holder,
            "held": len(self.held),
            "reservedRemaining": sum((h.remaining for h in self.held.values()), ZERO),
            "approvals": self.approvals,
            "denials": self.denials,
            "ledgerRoundTrips": self.round_trips,
            "lastError": self.last_error,
        }


LEASES = web.AppKey("leases", LeaseBook)


def install_leases(
    app: web.Application, store: Transactor, config: LeaseConfig | None = None
) -> LeaseBook:
    """Give ``app`` strict-mode leases on ``store``; returned to the ledger at cleanup."""
    book = LeaseBook(app[SETTINGS].namespace, store, config or LeaseConfig())
    app[LEASES] = book
    app.cleanup_ctx.append(_run_leases)
    return book


async def _run_leases(app: web.Application) -> AsyncIterator[None]:
    book = app[LEASES]
    book.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="allotment-leases")
    task = asyncio.create_task(_keep(app, book), name="allotment-leases")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await book.return_all(app[CLOCK]())
        book.executor.shutdown(wait=True)


async def _keep(app: web.Application, book: LeaseBook) -> None:
    interval = book.config.sync_interval.total_seconds()
    while True:
        await asyncio.sleep(interval)
        try:
            await book.sync(app[CLOCK]())
        except asyncio.CancelledError:
            raise
        except Exception as error:
            book.last_error = str(error)
            log.warning("Could not renew strict-mode leases: %s", error)


def _scope(view: View, entitlement: Entitlement, value: EntitlementValue) -> UsageScope | None:
    """Return the usage scope when ``entitlement`` is gated by leases, else None."""
    if entitlement.type is not EntitlementType.METERED or value.balance is None:
        return None
    feature = view.feature(entitlement.feature_key)
    if feature is None or feature.feature.consistency is not Consistency.STRICT:
        return None
    if feature.feature.meter_slug is None or entitlement.soft_limit_at(value.at):
        return None
    aggregation, _ = view.usage_inputs(entitlement)
    if aggregation not in ADDITIVE:
        return None
    customer = view.customer_of(entitlement)
    subjects = customer.customer.all_subject_keys if customer else (entitlement.customer_key,)
    return UsageScope(
        feature.feature.meter_slug, tuple(subjects), dict(feature.feature.meter_group_by_filters)
    )


async def gate(
    app: web.Application,
    entitlement: Entitlement,
    value: EntitlementValue,
    requested: Decimal,
    now: datetime,
) -> EntitlementValue:
    """Decide a ``requestedUsage`` check of a Strict feature by lease; others pass unchanged."""
    book = app.get(LEASES)
    scope = _scope(app[VIEW], entitlement, value) if book is not None else None
    if book is None or scope is None:
        return value
    try:
        allowed = await book.decide(scope, entitlement, value, requested, now)
    except (RuntimeError, LookupError, ValueError) as error:  # LedgerUnavailableError is one
        book.last_error = str(error)
        raise ProblemError(
            503,
            f"feature {entitlement.feature_key!r} is consistency: Strict and the ledger cannot "
            f"reserve {requested} just now ({error}); nothing was approved: retry shortly",
            headers={"Retry-After": "1"},
        ) from None
    return value if allowed else dataclasses.replace(value, has_access=False)


async def gate_flag(
    app: web.Application, flag: dict[str, Any], requested: Decimal, now: datetime
) -> dict[str, Any]:
    """Decide an OFREP evaluation answered ``true`` with ``requestedUsage`` (see ``gate``)."""
    metadata = flag.get("metadata", {})
    entitlement = app[VIEW].entitlement(str(metadata.get("entitlementId", "")))
    if entitlement is None:
        return flag
    value = app[VIEW].value(entitlement, now)
    decided = await gate(app, entitlement, value, requested, now)
    if decided.has_access:
        return flag
    return {**flag, "value": False, "variant": "off"}
