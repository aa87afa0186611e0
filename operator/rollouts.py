"""A Plan's rollout as the operator drives it: chunks in the ledger, statuses paced.

Role: the ledger rolls a Plan edit out a chunk of subscribers per transaction; until the last
chunk the Plan's outcome waits (``RollingOut``, due at once). ``drive`` applies the Plan again
and again from its handler, one chunk per transaction (the writer slot is released between
chunks, so other objects interleave), merge-patches the Plan's ``status`` (conditions and
``status.rollout``) at most every ``PROGRESS_SECONDS``, and returns the last outcome for the
handler to write. A crash or a ledger timeout loses at most the chunk in flight's statuses,
never its ledger writes; Kopf's retry or resume applies the Plan again and the ledger
continues where its log says.

Each chunk's outcome lists the Subscriptions it reached; their ``status`` (the plan generation
they follow, their entitlements when one was added or ended) is owed to the apiserver and
written by one background drain per Plan, at most ``per_second`` patches a second and
``in_flight`` at once, one patch per Subscription whatever number of chunks or edits reached it
meanwhile (the latest wins). A subscriber the rollout could not complete (a collision) is
nudged instead, so its own handler writes its conditions.

Must not: touch the ledger but through ``Runtime.apply``, or decide anything about a
subscriber; it only carries status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from allotment.operator import parsing, status
from allotment.operator.kinds import KINDS, Kind
from allotment.operator.ports import DONE_ACTIONS, WAIT, KubeApi, Outcome
from allotment.operator.runtime import Runtime

logger = logging.getLogger(__name__)

MEMO_KEY = "rollouts"
#: Subscription status patches a second, across every rollout of this operator.
PATCHES_PER_SECOND = 50.0
#: Subscription status patches waiting for the apiserver at once.
IN_FLIGHT = 4
#: Seconds between two patches of a rolling-out Plan's status.
PROGRESS_SECONDS = 2.0
#: The reason of a Plan's outcome while its rollout is not finished (``ledger.apply``).
ROLLING_OUT = "RollingOut"

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


def rolling_out(outcome: Outcome) -> bool:
    """Tell whether ``outcome`` is a Plan's whose rollout has chunks left."""
    return outcome.action == WAIT and outcome.reason == ROLLING_OUT


async def drive(
    runtime: Runtime,
    memo: MutableMapping[str, Any],
    kind: Kind,
    body: Mapping[str, Any],
    outcome: Outcome,
) -> Outcome:
    """Take a Plan's rollout to its end, a chunk per transaction; return the last outcome.

    Raises what ``Runtime.apply`` raises (the handler maps it, and Kopf retries: the ledger
    continues from its log).
    """
    loop = asyncio.get_running_loop()
    publish(memo, runtime.kube, outcome)
    shown = loop.time()
    ref = parsing.ref_of(kind, body)
    while rolling_out(outcome):
        if loop.time() - shown >= PROGRESS_SECONDS:
            shown = loop.time()
            await _show(runtime, kind, body, outcome)
        outcome = await runtime.apply(parsing.object_of(kind, body), runtime.clock())
        publish(memo, runtime.kube, outcome)
    logger.info("Rolled out %s: %s", ref, outcome.message)
    return outcome


async def _show(runtime: Runtime, kind: Kind, body: Mapping[str, Any], outcome: Outcome) -> None:
    """Merge-patch the Plan's status with the rollout's progress (a blip only delays it)."""
    now = runtime.clock()
    whole = status.status_patch(
        status.verdict_of(outcome),
        outcome.status,
        parsing.generation_of(body),
        now,
        parsing.previous_conditions(body),
    )
    ref = parsing.ref_of(kind, body)
    try:
        await runtime.kube.patch_status(kind.plural, ref.namespace, ref.name, whole)
    except Exception as error:
        logger.warning("Could not show the rollout progress of %s: %s", ref, error)
