"""The reconcile and delete handlers as plain coroutines, against fakes of the ledger and API."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import kopf
import pytest

from allotment.operator import handlers
from allotment.operator.kinds import CUSTOMER, ENTITLEMENT, FEATURE, GRANT, METER
from allotment.operator.runtime import MEMO_KEY, Runtime
from tests.operator.fakes import NOW, FakeKube, FakeLedger, FakeOutcome, body, make_runtime


def conditions_of(patch: kopf.Patch) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in patch["status"]["conditions"]}


async def run_reconcile(runtime: Runtime, kind: Any, obj: dict[str, Any]) -> kopf.Patch:
    patch = kopf.Patch()
    await handlers.reconcile(body=obj, patch=patch, memo={MEMO_KEY: runtime}, param=kind)
    return patch


async def test_recording_a_grant_makes_it_ready_and_posts_an_event() -> None:
    ledger = FakeLedger(
        lambda obj: FakeOutcome("Record", "Recorded", status={"id": "01J", "priority": 0})
    )
    runtime = make_runtime(ledger)
    obj = body("Grant", "customer-1-bonus", {"entitlement": "e", "amount": 100}, generation=3)

    patch = await run_reconcile(runtime, GRANT, obj)

    conditions = conditions_of(patch)
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Ready"]["reason"] == "Recorded"
    assert conditions["Reconciling"]["status"] == "False"
    assert conditions["Stalled"]["status"] == "False"
    assert patch["status"]["observedGeneration"] == 3
    assert patch["status"]["id"] == "01J"
    assert patch["status"]["priority"] == 0
    assert ("Normal", "Recorded", "Recorded Grant default/customer-1-bonus") in [
        (t, r, m.split(":")[0])
        for t, r, m in runtime.events.posted  # type: ignore[attr-defined]
    ]


async def test_a_reconcile_that_changes_nothing_writes_no_status() -> None:
    outcome = FakeOutcome("Unchanged", "Recorded", "recorded as written", status={"id": "01J"})
    runtime = make_runtime(FakeLedger(lambda obj: outcome))
    first = await run_reconcile(runtime, GRANT, body("Grant", "g", {"amount": 1}))
    written = dict(first["status"])

    again = await run_reconcile(runtime, GRANT, body("Grant", "g", {"amount": 1}, status=written))

    assert "status" not in again or not again["status"]
    moved = await run_reconcile(
        runtime, GRANT, body("Grant", "g", {"amount": 1}, generation=2, status=written)
    )
    assert moved["status"]["observedGeneration"] == 2
    assert "id" not in moved["status"]  # unchanged fields are left as they are


async def test_the_ledger_gets_the_object_without_kopf_bookkeeping() -> None:
    ledger = FakeLedger(lambda obj: FakeOutcome("Record", "Recorded"))
    runtime = make_runtime(ledger)

    await run_reconcile(runtime, METER, body("Meter", "tokens", {"eventType": "prompt"}))

    (given,) = ledger.applied
    assert given["kind"] == "Meter"
    assert given["spec"] == {"eventType": "prompt"}
    assert given["metadata"]["uid"] == "uid-tokens"
    assert given["metadata"]["creationTimestamp"] == "2026-03-01T11:00:00Z"
    assert "managedFields" not in given["metadata"]
    assert "annotations" not in given["metadata"]


async def test_a_missing_feature_waits_then_recording_the_feature_nudges_it() -> None:
    waiting = FakeOutcome("Wait", "FeatureNotFound", "no Feature gpt_4_tokens in default")
    ledger = FakeLedger(
        lambda obj: waiting if obj["kind"] == "Entitlement" else FakeOutcome("Record", "Recorded")
    )
    kube = FakeKube()
    runtime = make_runtime(ledger, kube)
    entitlement = body("Entitlement", "customer-1-gpt", {"featureKey": "gpt_4_tokens"})

    with pytest.raises(kopf.TemporaryError) as raised:
        await run_reconcile(runtime, ENTITLEMENT, entitlement)
    assert raised.value.delay == runtime.settings.wait_retry_seconds

    await run_reconcile(runtime, FEATURE, body("Feature", "gpt-4-tokens", {}))

    nudged = ("entitlements", "default", "customer-1-gpt", "reconcile-entitlement")
    assert kube.nudged == [nudged]
    await asyncio.gather(*runtime.background)  # once more, past Kopf's own retry-delay patch
    assert kube.nudged == [nudged, nudged]


async def test_waiting_status_says_reconciling_with_the_reason() -> None:
    ledger = FakeLedger(lambda obj: FakeOutcome("Wait", "FeatureNotFound", "no Feature x"))
    runtime = make_runtime(ledger)
    patch = kopf.Patch()

    with pytest.raises(kopf.TemporaryError):
        await handlers.reconcile(
            body=body("Entitlement", "e", {}), patch=patch, memo={MEMO_KEY: runtime},
            param=ENTITLEMENT,
        )  # fmt: skip

    conditions = conditions_of(patch)
    assert conditions["Ready"] | {"lastTransitionTime": None} == {
        "type": "Ready",
        "status": "False",
        "reason": "FeatureNotFound",
        "message": "no Feature x",
        "observedGeneration": 1,
        "lastTransitionTime": None,
    }
    assert conditions["Reconciling"]["status"] == "True"
    assert conditions["Stalled"]["status"] == "False"


async def test_a_recorded_customer_does_not_nudge_resources_waiting_on_a_feature() -> None:
    ledger = FakeLedger(
        lambda obj: (
            FakeOutcome("Wait", "FeatureNotFound")
            if obj["kind"] == "Feature"
            else FakeOutcome("Record", "Recorded")
        )
    )
    kube = FakeKube()
    runtime = make_runtime(ledger, kube)
    with pytest.raises(kopf.TemporaryError):
        await run_reconcile(runtime, FEATURE, body("Feature", "f", {"meterSlug": "m"}))

    await run_reconcile(runtime, CUSTOMER, body("Customer", "customer-1", {}))
    assert kube.nudged == []
    await run_reconcile(runtime, METER, body("Meter", "m", {}))
    assert kube.nudged == [("features", "default", "f", "reconcile-feature")]


async def test_a_scheduled_reset_retries_at_its_instant_and_is_not_nudged() -> None:
    ledger = FakeLedger(
        lambda obj: FakeOutcome("Wait", "Scheduled", retry_at=NOW + timedelta(minutes=5))
    )
    runtime = make_runtime(ledger)
    with pytest.raises(kopf.TemporaryError) as raised:
        await run_reconcile(runtime, GRANT, body("Grant", "g", {}))
    assert raised.value.delay == 300.0


@pytest.mark.parametrize(
    ("action", "reason", "error"),
    [
        pytest.param("Conflict", "IdentityConflict", kopf.TemporaryError, id="identity-conflict"),
        pytest.param("Conflict", "EntitlementConflict", kopf.TemporaryError, id="entitlement"),
        pytest.param("Refuse", "InvalidSpec", kopf.PermanentError, id="refused"),
    ],
)
async def test_conflicts_and_refusals_stall_with_a_warning_event(
    action: str, reason: str, error: type[Exception]
) -> None:
    ledger = FakeLedger(lambda obj: FakeOutcome(action, reason, "a different spec was recorded"))
    runtime = make_runtime(ledger)
    patch = kopf.Patch()
    with pytest.raises(error):
        await handlers.reconcile(
            body=body("Grant", "g", {}), patch=patch, memo={MEMO_KEY: runtime}, param=GRANT
        )
    conditions = conditions_of(patch)
    assert (conditions["Ready"]["status"], conditions["Stalled"]["status"]) == ("False", "True")
    assert conditions["Stalled"]["reason"] == reason
    assert runtime.events.posted[0][:2] == ("Warning", reason)  # type: ignore[attr-defined]


async def test_an_unreachable_ledger_is_a_temporary_error_and_says_so() -> None:
    ledger = FakeLedger(lambda obj: FakeOutcome("Record", "Recorded"), reachable=False)
    runtime = make_runtime(ledger)
    patch = kopf.Patch()
    with pytest.raises(kopf.TemporaryError):
        await handlers.reconcile(
            body=body("Meter", "m", {}), patch=patch, memo={MEMO_KEY: runtime}, param=METER
        )
    assert conditions_of(patch)["Ready"]["reason"] == "LedgerUnavailable"
    assert conditions_of(patch)["Reconciling"]["status"] == "True"


async def test_a_lost_race_retries_soon_without_touching_status() -> None:
    ledger = FakeLedger(lambda obj: FakeOutcome("Record", "Recorded"), racing=True)
    runtime = make_runtime(ledger)
    patch = kopf.Patch()
    with pytest.raises(kopf.TemporaryError) as raised:
        await handlers.reconcile(
            body=body("Customer", "c", {}), patch=patch, memo={MEMO_KEY: runtime},
            param=CUSTOMER, retry=3,
        )  # fmt: skip
    assert raised.value.delay == 8
    assert "status" not in patch


async def test_ready_keeps_its_transition_time_when_nothing_flips() -> None:
    ledger = FakeLedger(lambda obj: FakeOutcome("Unchanged", "Recorded"))
    runtime = make_runtime(ledger)
    earlier = {
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ]
    }
    patch = await run_reconcile(runtime, METER, body("Meter", "m", {}, status=earlier))
    assert conditions_of(patch)["Ready"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert conditions_of(patch)["Stalled"]["lastTransitionTime"] == "2026-03-01T12:00:00Z"


# --- deletion ------------------------------------------------------------------------------


async def run_delete(runtime: Runtime, kind: Any, obj: dict[str, Any]) -> None:
    await handlers.delete(body=obj, memo={MEMO_KEY: runtime}, param=kind)


@pytest.mark.parametrize(
    ("policy", "terminating", "broken", "forced"),
    [
        pytest.param("Apply", False, False, False, id="apply-voids"),
        pytest.param(None, False, False, False, id="default-orphans-in-the-ledger"),
        pytest.param("Apply", True, False, True, id="namespace-deletion-orphans"),
        pytest.param("Apply", False, True, True, id="unknown-namespace-state-orphans"),
    ],
)
async def test_deleting_a_grant_follows_its_deletion_policy(
    policy: str | None, terminating: bool, broken: bool, forced: bool
) -> None:
    ledger = FakeLedger(lambda obj: FakeOutcome("Void", "Voided"))
    runtime = make_runtime(ledger, FakeKube(terminating=terminating, broken=broken))
    spec = {"entitlement": "e", "amount": 5} | ({"deletionPolicy": policy} if policy else {})

    await run_delete(runtime, GRANT, body("Grant", "g", spec, deleting=True))

    (given,) = ledger.applied
    assert given["metadata"]["deletionTimestamp"] == "2026-03-01T11:59:00Z"
    assert given["spec"].get("deletionPolicy") == policy
    assert ledger.orphaned == [forced]


async def test_deleting_never_waits_for_an_unreachable_ledger() -> None:
    ledger = FakeLedger(lambda obj: FakeOutcome("Void", "Voided"), reachable=False)
    runtime = make_runtime(ledger)
    spec = {"entitlement": "e", "amount": 5, "deletionPolicy": "Apply"}

    await run_delete(runtime, GRANT, body("Grant", "g", spec, deleting=True))  # does not raise

    kind, reason, message = runtime.events.posted[0]  # type: ignore[attr-defined]
    assert (kind, reason) == ("Warning", "LedgerUnavailable")
    assert "Left Grant default/g in the ledger as it was" in message

    assert await handlers.record_pending_orphans(runtime) == 1  # still down: kept
    ledger.reachable = True
    assert await handlers.record_pending_orphans(runtime) == 0
    assert ledger.orphaned == [True]  # an Orphan marker, never a late void
    assert ledger.applied[0]["spec"]["deletionPolicy"] == "Apply"


async def test_deleting_a_feature_never_touches_the_ledger() -> None:
    ledger = FakeLedger(lambda obj: FakeOutcome("Record", "Recorded"))
    runtime = make_runtime(ledger)
    await run_delete(runtime, FEATURE, body("Feature", "f", {}, deleting=True))
    assert ledger.applied == []


def test_every_kind_has_one_stable_reconcile_id_on_create_update_and_resume() -> None:
    from allotment.operator.startup import build_registry

    registry = build_registry()
    ids = sorted({h.id for h in registry._changing.get_all_handlers()})
    assert [i for i in ids if i.startswith("reconcile-")] == [
        "reconcile-customer",
        "reconcile-entitlement",
        "reconcile-entitlementreset",
        "reconcile-feature",
        "reconcile-grant",
        "reconcile-meter",
        "reconcile-plan",
        "reconcile-subscription",
    ]


@dataclass(frozen=True)
class Void:
    pass


@dataclass(frozen=True)
class Orphan:
    pass


@dataclass(frozen=True)
class OutcomeWithActions(FakeOutcome):
    actions: tuple[object, ...] = ()


async def test_an_applied_deletion_announces_the_void_not_the_orphan_marker() -> None:
    outcome = OutcomeWithActions("Orphan", "Orphaned", actions=(Void(), Orphan()))
    runtime = make_runtime(FakeLedger(lambda obj: outcome))
    spec = {"entitlement": "e", "amount": 5, "deletionPolicy": "Apply"}

    await run_delete(runtime, GRANT, body("Grant", "g", spec, deleting=True))

    assert runtime.events.posted == [("Normal", "Voided", "Voided Grant default/g")]  # type: ignore[attr-defined]
