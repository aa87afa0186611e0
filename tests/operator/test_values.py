"""The operator-wide value loop patches status.value only when something a user sees moved."""

from __future__ import annotations

from allotment.operator import values
from allotment.operator.parsing import ObjectRef
from tests.operator.fakes import FakeKube, FakeLedger, FakeOutcome, make_runtime

VALUE = {"hasAccess": True, "balance": 90, "usage": 10, "overage": 0, "asOf": "t1"}


async def test_refresh_patches_moved_values_only() -> None:
    ledger = FakeLedger(lambda obj: FakeOutcome("Record", "Recorded"))
    kube = FakeKube()
    runtime = make_runtime(ledger, kube)
    runtime.entitlements.track(ObjectRef("Entitlement", "default", "same"), VALUE)
    runtime.entitlements.track(ObjectRef("Entitlement", "default", "burnt"), VALUE)
    runtime.entitlements.track(ObjectRef("Entitlement", "default", "unrecorded"), None)
    ledger.current_values = {
        ("default", "same"): {**VALUE, "asOf": "t2"},
        ("default", "burnt"): {**VALUE, "balance": 80, "usage": 20, "asOf": "t2"},
    }

    assert await values.refresh_once(runtime) == 1
    assert kube.patched == [
        ("entitlements", "default", "burnt", {"value": {**VALUE, "balance": 80, "usage": 20,
                                                         "asOf": "t2"}}),
    ]  # fmt: skip
    assert await values.refresh_once(runtime) == 0
