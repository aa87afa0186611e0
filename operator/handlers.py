"""Kopf handlers: one level-based reconcile per kind, and deletion by ``deletionPolicy``.

Role: each handler parses the Kopf body, lets the ledger reconcile the whole desired state at
``now`` (DESIGN D2: the ledger decides which instant acts), writes ``status`` and announces what
happened. Waiting becomes ``kopf.TemporaryError`` with a delay, a spec nothing can make valid a
``kopf.PermanentError`` (STYLE 8). Deletion never waits on the ledger (D3): whatever happens, the
finalizer goes.

Must not: compute balances, compare specs or decide identity; that is the ledger's job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import kopf

from allotment.operator import parsing, rollouts, status
from allotment.operator.kinds import GROUP, KINDS, VERSION, Kind
from allotment.operator.parsing import ObjectRef
from allotment.operator.ports import (
    EVENT_VERBS,
    REFUSE,
    WAIT,
    LedgerConflictError,
    LedgerUnavailableError,
    Outcome,
)
from allotment.operator.runtime import Runtime, runtime_of

logger = logging.getLogger(__name__)


def _kind(param: Any) -> Kind:
    if not isinstance(param, Kind):
        raise TypeError(f"handler registered without its Kind: {param!r}")
    return param


async def reconcile(
    *, body: kopf.Body, patch: kopf.Patch, memo: Any, param: Any = None, retry: int = 0, **_: Any
) -> None:
    """Reconcile one object into the ledger and write its status (create, update, resume)."""
    kind, runtime = _kind(param), runtime_of(memo)
    ref, now = parsing.ref_of(kind, body), runtime.clock()
    try:
        outcome = await runtime.apply(parsing.object_of(kind, body), now)
        if kind.name == "Plan":  # a rollout: the next chunks, each its own transaction
            outcome = await rollouts.drive(runtime, memo, kind, body, outcome)
    except LedgerConflictError as error:  # a lost race: try again soon, status unchanged
        raise kopf.TemporaryError(f"{ref}: {error}", delay=min(60, 2**retry)) from error
    except LedgerUnavailableError as error:
        write_status(patch, body, status.unavailable(f"{error}; retrying"), {}, now)
        delay = runtime.settings.wait_retry_seconds
        raise kopf.TemporaryError(f"{ref}: {error}", delay=delay) from error
    verdict = status.verdict_of(outcome)
    write_status(patch, body, verdict, outcome.status, now)
    await settle(runtime, kind, ref, body, outcome, now)


async def delete(*, body: kopf.Body, memo: Any, param: Any = None, **_: Any) -> None:
    """Apply ``deletionPolicy`` at the deletion instant; never block the object's removal."""
    kind, runtime = _kind(param), runtime_of(memo)
    ref = parsing.ref_of(kind, body)
    runtime.waiting.forget(ref)
    runtime.entitlements.drop(ref)
    if not kind.has_deletion_policy:
        return  # deleting a Meter, Feature, Customer or reset never changes the ledger (D3)
    orphan = await _deletion_orphans(runtime, kind, ref)
    obj = parsing.object_of(kind, body)
    try:
        outcome = await runtime.apply(obj, runtime.clock(), orphan=orphan)
    except Exception as error:  # unreachable or failing: the object goes, the ledger stays as is
        message = f"Left {ref} in the ledger as it was: the ledger did not apply it ({error})"
        runtime.events.warn(body, "LedgerUnavailable", message)
        logger.warning("%s; an Orphan marker will be recorded when it answers", message)
        runtime.pending_orphans.append(obj)
        return
    announce(runtime, ref, body, outcome)


async def record_pending_orphans(runtime: Runtime) -> int:
    """Record Orphan markers for deletions the ledger missed; return how many are left.

    The object is gone, so its policy is no longer applied: voiding or ending it now would
    move money after the fact. A user who still wants that re-creates the object with
    ``voidAt``/``activeTo`` set (it re-adopts its record, D1).
    """
    while runtime.pending_orphans:
        obj = runtime.pending_orphans[0]
        try:
            await runtime.apply(obj, runtime.clock(), orphan=True)
        except Exception as error:
            logger.warning("Still cannot record the Orphan marker of a deleted object: %s", error)
            break
        runtime.pending_orphans.pop(0)
    return len(runtime.pending_orphans)


async def _deletion_orphans(runtime: Runtime, kind: Kind, ref: ObjectRef) -> bool:
    """Return whether this deletion must orphan: its namespace or CRD is going, or unknown."""
    try:
        return await runtime.kube.is_terminating(ref.namespace, kind.plural)
    except Exception as error:  # any doubt keeps the ledger as it is (never destroys value)
        logger.warning("Could not tell whether %s's namespace is terminating: %s", ref, error)
        return True


def write_status(
    patch: Any,
    body: Mapping[str, Any],
    verdict: status.Verdict,
    fields: Mapping[str, Any],
    now: datetime,
) -> None:
    """Put the status for ``verdict`` into Kopf's patch: the fields that differ from the body's.

    A resume or re-apply that changes nothing then costs no PATCH (a restart over 10^4 objects
    would otherwise write every one of them).
    """
    whole = status.status_patch(
        verdict, fields, parsing.generation_of(body), now, parsing.previous_conditions(body)
    )
    current = body.get("status") or {}
    for key, value in whole.items():
        if key not in current or current[key] != value:
            patch.status[key] = value


def announce(runtime: Runtime, ref: ObjectRef, body: Mapping[str, Any], outcome: Outcome) -> None:
    """Post an Event and a log line per thing the ledger did ("Voided Grant ns/name")."""
    for verb in _verbs(outcome):
        message = f"{verb} {ref}"
        runtime.events.info(body, verb, message)
        logger.info("%s (%s)", message, outcome.message or outcome.reason)


def _verbs(outcome: Outcome) -> list[str]:
    """Return the past-tense verbs of every write in ``outcome`` (``actions`` when it has them).

    A deletion that applied its policy also leaves an Orphan marker; the Event names what was
    applied (Voided, Ended), not the marker.
    """
    names = [type(action).__name__ for action in getattr(outcome, "actions", ())]
    verbs = [EVENT_VERBS[name] for name in names if name in EVENT_VERBS]
    if not verbs and outcome.action in EVENT_VERBS:
        verbs = [EVENT_VERBS[outcome.action]]
    if len(verbs) > 1:
        verbs = [verb for verb in verbs if verb != "Orphaned"]
    return list(dict.fromkeys(verbs))


async def settle(
    runtime: Runtime,
    kind: Kind,
    ref: ObjectRef,
    body: Mapping[str, Any],
    outcome: Outcome,
    now: datetime,
) -> None:
    """Announce, wake the resources waiting on ``ref``, and raise for what is not done."""
    settings = runtime.settings
    if outcome.action == WAIT:
        if outcome.retry_at is None:
            runtime.waiting.wait(ref, parsing.REFERENCED_KINDS.get(kind.name, ()))
            delay = settings.wait_retry_seconds
        else:
            delay = (outcome.retry_at - now).total_seconds()
        delay = min(max(delay, 1.0), settings.max_wait_seconds)
        raise kopf.TemporaryError(f"{ref}: {outcome.reason}: {outcome.message}", delay=delay)
    if status.verdict_of(outcome).phase is status.Phase.STALLED:
        runtime.events.warn(body, outcome.reason, f"{ref}: {outcome.message}")
        if outcome.action == REFUSE:
            raise kopf.PermanentError(f"{ref}: {outcome.reason}: {outcome.message}")
        raise kopf.TemporaryError(
            f"{ref}: {outcome.reason}: {outcome.message}", delay=settings.conflict_retry_seconds
        )
    announce(runtime, ref, body, outcome)
    runtime.waiting.forget(ref)
    if kind.name == "Entitlement":
        runtime.entitlements.track(ref, status.refreshed_fields(body.get("status")))
    waiters = runtime.waiting.take(ref)
    await nudge(runtime, ref, waiters)
    if waiters:  # again, past a waiter's own retry-delay patch that may overwrite the first
        runtime.spawn(nudge(runtime, ref, waiters, after=settings.nudge_again_seconds))


async def nudge(
    runtime: Runtime, ref: ObjectRef, waiters: list[ObjectRef], *, after: float = 0.0
) -> None:
    """Re-trigger ``waiters`` now (or ``after`` seconds) because ``ref`` was recorded."""
    if after > 0:
        await asyncio.sleep(after)
    for waiter in waiters:
        try:
            await runtime.kube.nudge(
                _plural(waiter.kind), waiter.namespace, waiter.name, _handler_id(waiter.kind)
            )
        except Exception as error:  # a missed nudge only costs the retry delay
            logger.warning("Could not re-trigger %s after recording %s: %s", waiter, ref, error)


def _plural(kind_name: str) -> str:
    return next(kind.plural for kind in KINDS if kind.name == kind_name)


def _handler_id(kind_name: str) -> str:
    return next(kind.handler_id for kind in KINDS if kind.name == kind_name)


def _applies_on_delete(*, spec: kopf.Spec, **_: Any) -> bool:
    return parsing.deletion_policy(spec) == parsing.APPLY


def _orphans_on_delete(*, spec: kopf.Spec, **_: Any) -> bool:
    return not _applies_on_delete(spec=spec)


def register(registry: Any) -> None:
    """Register every kind's reconcile and delete handlers into ``registry``."""
    for kind in KINDS:
        where: dict[str, Any] = {"registry": registry, "param": kind}
        resource = (GROUP, VERSION, kind.plural)
        kopf.on.resume(*resource, id=kind.handler_id, **where)(reconcile)
        kopf.on.create(*resource, id=kind.handler_id, **where)(reconcile)
        kopf.on.update(*resource, id=kind.handler_id, **where)(reconcile)
        if kind.has_deletion_policy:
            # deletionPolicy: Apply holds our finalizer until the ledger ends/voids, or gives up.
            kopf.on.delete(*resource, id=f"delete-{kind.singular}", when=_applies_on_delete,
                           **where)(delete)  # fmt: skip
            kopf.on.delete(*resource, id=f"orphan-{kind.singular}", when=_orphans_on_delete,
                           optional=True, **where)(delete)  # fmt: skip
        else:
            kopf.on.delete(*resource, id=f"forget-{kind.singular}", optional=True,
                           **where)(delete)  # fmt: skip
