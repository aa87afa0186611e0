"""The operator-wide value loop patches status.value and currentUsagePeriod only when they move."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from allotment.operator import values
from allotment.operator.gateway import open_gateway
from allotment.operator.parsing import ObjectRef
from tests.operator.fakes import FakeKube, FakeLedger, FakeOutcome, body, make_runtime

VALUE = {"hasAccess": True, "balance": 90, "usage": 10, "overage": 0, "asOf": "t1"}
MARCH = {"from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}


async def test_refresh_patches_moved_values_only() -> None:
    ledger = FakeLedger(lambda obj: FakeOutcome("Record", "Recorded"))
    kube = FakeKube()
    runtime = make_runtime(ledger, kube)
    runtime.entitlements.track(ObjectRef("Entitlement", "default", "same"), {"value": VALUE})
    runtime.entitlements.track(ObjectRef("Entitlement", "default", "burnt"), {"value": VALUE})
    runtime.entitlements.track(ObjectRef("Entitlement", "default", "unrecorded"), None)
    ledger.current_values = {
        ("default", "same"): {"value": {**VALUE, "asOf": "t2"}},
        ("default", "burnt"): {"value": {**VALUE, "balance": 80, "usage": 20, "asOf": "t2"}},
    }

    assert await values.refresh_once(runtime) == 1
    assert kube.patched == [
        ("entitlements", "default", "burnt", {"value": {**VALUE, "balance": 80, "usage": 20,
                                                         "asOf": "t2"}}),
    ]  # fmt: skip
    assert await values.refresh_once(runtime) == 0


async def test_a_new_usage_period_is_patched_even_when_the_value_did_not_move() -> None:
    ledger = FakeLedger(lambda obj: FakeOutcome("Record", "Recorded"))
    kube = FakeKube()
    runtime = make_runtime(ledger, kube)
    ref = ObjectRef("Entitlement", "default", "monthly")
    runtime.entitlements.track(ref, {"value": VALUE, "currentUsagePeriod": MARCH})
    april = {"from": "2026-04-01T00:00:00Z", "to": "2026-05-01T00:00:00Z"}
    ledger.current_values = {("default", "monthly"): {"value": VALUE, "currentUsagePeriod": april}}

    assert await values.refresh_once(runtime) == 1
    assert kube.patched[-1][3] == {"value": VALUE, "currentUsagePeriod": april}


CATALOGUE: list[tuple[str, str, dict[str, Any]]] = [
    ("Meter", "tokens-total", {"eventType": "prompt", "aggregation": "SUM",
                               "valueProperty": "$.tokens"}),
    ("Feature", "gpt-4-tokens", {"meterSlug": "tokens_total"}),
    ("Feature", "support", {}),
    ("Customer", "customer-1", {}),
    ("Entitlement", "customer-1-gpt-4-tokens", {
        "customer": "customer-1", "featureKey": "gpt_4_tokens", "type": "metered",
        "usagePeriod": {"interval": "MONTH", "anchor": "2026-01-01T00:00:00Z"},
        "issueAfterReset": 1000}),
    ("Entitlement", "customer-1-support", {
        "customer": "customer-1", "featureKey": "support", "type": "boolean"}),
]  # fmt: skip


async def test_the_value_loop_writes_the_ledgers_current_usage_period(
    migrated_sqlite_template: Path, tmp_path: Path
) -> None:
    """The period containing asOf comes from the ledger, and moves when a month turns."""
    path = tmp_path / "ledger.db"
    shutil.copyfile(migrated_sqlite_template, path)
    gateway = open_gateway(f"sqlite:///{path}")
    try:
        for kind, name, spec in CATALOGUE:
            outcome = gateway.apply(body(kind, name, spec), datetime(2026, 3, 1, 11, tzinfo=UTC))
            assert outcome.action == "Record", outcome.message
        kube = FakeKube()
        now = [datetime(2026, 3, 15, 12, tzinfo=UTC)]
        runtime = replace(make_runtime(FakeLedger(lambda obj: FakeOutcome("Record", "")), kube),
                          ledger=gateway, clock=lambda: now[0])  # fmt: skip
        for name in ("customer-1-gpt-4-tokens", "customer-1-support"):
            runtime.entitlements.track(ObjectRef("Entitlement", "default", name), None)

        assert await values.refresh_once(runtime) == 2
        patched = {name: fields for _, _, name, fields in kube.patched}
        metered = patched["customer-1-gpt-4-tokens"]
        # the first period starts where usage is measured from: the creation instant (D2)
        assert metered["currentUsagePeriod"] == {**MARCH, "from": "2026-03-01T11:00:00Z"}
        assert (metered["value"]["balance"], metered["value"]["usage"]) == (1000, 0)
        assert "currentUsagePeriod" not in patched["customer-1-support"]  # no usage period

        now[0] = datetime(2026, 3, 20, 12, tzinfo=UTC)
        assert await values.refresh_once(runtime) == 0  # same period, same value

        now[0] = datetime(2026, 4, 2, 12, tzinfo=UTC)
        assert await values.refresh_once(runtime) == 1
        assert kube.patched[-1][2] == "customer-1-gpt-4-tokens"
        assert kube.patched[-1][3]["currentUsagePeriod"] == {
            "from": "2026-04-01T00:00:00Z",
            "to": "2026-05-01T00:00:00Z",
        }
    finally:
        gateway.close()
