"""What every handler reaches through Kopf's ``memo``: settings, the ledger, the registries.

Role: one ``Runtime`` built by the startup hook and stored in ``memo``; it runs the ledger's
synchronous transactions off the event loop with a timeout and translates a stuck or unreachable
database into ``LedgerUnavailableError``. Also the registry of recorded Entitlements whose
``status.value`` the refresh loop keeps current.

Must not: hold module-level state; everything lives on the instance built at startup.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from allotment.operator.parsing import ObjectRef
from allotment.operator.ports import KubeApi, LedgerGateway, LedgerUnavailableError, Outcome
from allotment.operator.settings import OperatorSettings
from allotment.operator.waiting import WaitingRegistry

MEMO_KEY = "runtime"


class EventSink(Protocol):
    """Where Kubernetes Events go (Kopf's poster in production, a list in tests)."""

    def info(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        """Post a Normal event about ``body``."""

    def warn(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        """Post a Warning event about ``body``."""


@dataclass
class EntitlementIndex:
    """Recorded Entitlements and the value loop's fields last written for each.

    The fields are ``status.value`` and ``status.currentUsagePeriod`` (``status.refreshed_fields``).
    """

    values: dict[tuple[str, str], Mapping[str, Any] | None] = field(default_factory=dict)

    def track(self, ref: ObjectRef, current: Mapping[str, Any] | None) -> None:
        """Keep ``ref`` refreshed, remembering its current value unless already known."""
        key = (ref.namespace, ref.name)
        if key not in self.values or self.values[key] is None:
            self.values[key] = current

    def drop(self, ref: ObjectRef) -> None:
        """Stop refreshing ``ref``."""
        self.values.pop((ref.namespace, ref.name), None)


@dataclass(frozen=True)
class Runtime:
    """The operator's resources, acquired at startup and released at cleanup."""

    settings: OperatorSettings
    ledger: LedgerGateway
    kube: KubeApi
    events: EventSink
    clock: Callable[[], datetime]
    waiting: WaitingRegistry = field(default_factory=WaitingRegistry)
    entitlements: EntitlementIndex = field(default_factory=EntitlementIndex)
    writers: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    # Deleted objects the ledger could not be told about; retried as Orphan markers (D3).
    pending_orphans: list[Mapping[str, Any]] = field(default_factory=list)
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, holding a reference until it is done."""
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def apply(
        self, obj: Mapping[str, Any], now: datetime, *, orphan: bool = False
    ) -> Outcome:
        """Reconcile ``obj`` in the ledger without blocking the event loop.

        At most ``writers`` transactions run at once (one on SQLite, D14), so a burst of objects
        (a resume of thousands) queues here instead of timing out in the pool; the timeout
        covers the transaction itself.
        """
        async with self.writers:
            try:
                async with asyncio.timeout(self.settings.ledger_timeout_seconds):
                    return await asyncio.to_thread(
                        functools.partial(self.ledger.apply, orphan=orphan), obj, now
                    )
            except TimeoutError as error:
                raise LedgerUnavailableError(
                    f"the ledger did not answer within {self.settings.ledger_timeout_seconds:g}s"
                ) from error


def runtime_of(memo: Mapping[str, Any]) -> Runtime:
    """Return the runtime the startup hook put into ``memo``."""
    runtime = memo.get(MEMO_KEY)
    if not isinstance(runtime, Runtime):
        raise RuntimeError("the operator's startup hook has not run: no runtime in memo")
    return runtime
