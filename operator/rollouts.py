"""A Plan's rollout as the operator drives it: chunks in the ledger, subscribers' status paced.

Role: the ledger rolls a Plan edit out a chunk of subscribers per transaction; until the last
chunk the Plan's outcome waits (``RollingOut``, due at once), the Plan handler writes
``status.rollout`` (one patch per chunk: the progress is coalesced by construction) and Kopf
applies the Plan again, which takes the next chunk. A crash loses at most the chunk in flight;
Kopf's resume applies the Plan again and the ledger continues where its log says.

What this module adds is the subscribers' side: each chunk's outcome lists the Subscriptions it
reached; their ``status`` (the plan generation they follow, their entitlements when one was
added or ended) is owed to the apiserver and written by one background drain per operator, at
most ``per_second`` patches a second, one patch per Subscription whatever number of chunks or
edits reached it meanwhile (the latest wins). A subscriber the rollout could not complete (a
collision) is nudged instead, so its own handler writes its conditions.

Must not: touch the ledger or decide anything about a subscriber; it only carries status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from allotment.operator.kinds import KINDS
from allotment.operator.ports import DONE_ACTIONS, KubeApi, Outcome

logger = logging.getLogger(__name__)

MEMO_KEY = "rollouts"
#: Subscription status patches a second, across every rollout of this operator.
PATCHES_PER_SECOND = 50.0
#: Subscription status patches waiting for the apiserver at once.
IN_FLIGHT = 4

_SUBSCRIPTION = next(kind for kind in KINDS if kind.name == "Subscription")

Key = tuple[str, str]  # namespace, name


@dataclass
class SubscriberStatuses:
    """Status owed to Subscriptions a rollout reached, coalesced per object, drained paced.

    ``pending`` maps (namespace, name) to the status fields to merge, or None to nudge the
    object (its own handler then writes its whole status).
    """

    kube: KubeApi
    per_second: float = PATCHES_PER_SECOND
    in_flight: int = IN_FLIGHT
    pending: dict[Key, Mapping[str, Any] | None] = field(default_factory=dict)
    written: int = 0
    drain_task: asyncio.Task[None] | None = None

    def owe(self, outcome: Outcome) -> int:
        """Owe a status to every Subscription ``outcome`` (a Plan's) reached; return how many."""
        rolled: tuple[tuple[Any, Outcome], ...] = tuple(getattr(outcome, "rolled", ()))
        for ref, reached in rolled:
            key = (str(ref.namespace), str(ref.name))
            self.pending.pop(key, None)  # re-queued at the end: the latest wins, in order
            self.pending[key] = dict(reached.status) if reached.action in DONE_ACTIONS else None
        if rolled and (self.drain_task is None or self.drain_task.done()):
            self.drain_task = asyncio.get_running_loop().create_task(self.drain())
        return len(rolled)

    async def drain(self) -> None:
        """Write what is owed, oldest first, at most ``per_second`` a second (``in_flight`` at
        a time, so a slow apiserver lowers the rate instead of queueing more), then stop."""
        loop = asyncio.get_running_loop()
        pause = 1.0 / self.per_second
        next_at = loop.time()
        slots = asyncio.Semaphore(self.in_flight)
        writing: set[asyncio.Task[None]] = set()
        while self.pending:
            key = next(iter(self.pending))
            fields = self.pending.pop(key)
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at = max(next_at, loop.time() - pause) + pause
            await slots.acquire()
            task = loop.create_task(self._write(key, fields))
            writing.add(task)
            task.add_done_callback(writing.discard)
            task.add_done_callback(lambda _: slots.release())
        if writing:
            await asyncio.gather(*writing)

    async def _write(self, key: Key, fields: Mapping[str, Any] | None) -> None:
        namespace, name = key
        try:
            if fields is None:
                await self.kube.nudge(
                    _SUBSCRIPTION.plural, namespace, name, _SUBSCRIPTION.handler_id
                )
            elif fields:
                await self.kube.patch_status(_SUBSCRIPTION.plural, namespace, name, fields)
            self.written += 1
        except Exception as error:  # deleted meanwhile, or an API blip: its handler catches up
            logger.warning("Could not write the status of Subscription %s/%s: %s", *key, error)


def statuses_of(memo: MutableMapping[str, Any], kube: KubeApi) -> SubscriberStatuses:
    """Return the operator's one ``SubscriberStatuses`` (made on first use, kept in memo)."""
    found = memo.get(MEMO_KEY)
    if not isinstance(found, SubscriberStatuses):
        found = SubscriberStatuses(kube)
        memo[MEMO_KEY] = found
    return found


def publish(memo: MutableMapping[str, Any], kube: KubeApi, outcome: Outcome) -> int:
    """Owe the status of the Subscriptions a Plan's chunk reached; return how many."""
    return statuses_of(memo, kube).owe(outcome)
