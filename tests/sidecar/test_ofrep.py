"""OFREP over real HTTP: flag key = feature key, targeting key = customer or subject key."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from allotment.ledger.core.model import EntitlementType, WhenStale
from tests.sidecar.conftest import Clock, StartSidecar, ledger_outage
from tests.sidecar.seed import T0, Seeder


def seed(seeder: Seeder) -> None:
    seeder.meter("tokens")
    seeder.feature("gpt_4_tokens", "tokens", when_stale=WhenStale.ALLOW)
    seeder.feature("integrations", when_stale=WhenStale.DENY)
    seeder.feature("sso")
    seeder.customer("customer-1", ["sub-a"])
    seeder.customer("customer-2")
    metered = seeder.entitlement("customer-1", "gpt_4_tokens", EntitlementType.METERED)
    seeder.grant(metered, "100")
    seeder.events("sub-a", (T0 + timedelta(hours=1), {"tokens": 40}))
    seeder.entitlement("customer-1", "integrations", EntitlementType.STATIC, config='{"a":1}')
    used_up = seeder.entitlement("customer-2", "gpt_4_tokens", EntitlementType.METERED)
    seeder.grant(used_up, "10")
    seeder.events("customer-2", (T0 + timedelta(hours=1), {"tokens": 25}))


def ctx(key: str | None, **extra: Any) -> dict[str, Any]:
    context: dict[str, Any] = dict(extra)
    if key is not None:
        context["targetingKey"] = key
    return {"context": context}


@pytest.mark.parametrize(
    ("flag", "targeting", "value", "reason", "metadata"),
    [
        pytest.param(
            "gpt_4_tokens",
            "sub-a",
            True,
            "TARGETING_MATCH",
            {"balance": 60, "usage": 40, "overage": 0, "type": "metered"},
            id="metered-by-subject",
        ),
        pytest.param(
            "gpt_4_tokens",
            "customer-1",
            True,
            "TARGETING_MATCH",
            {"balance": 60},
            id="metered-by-customer",
        ),
        pytest.param(
            "gpt_4_tokens",
            "customer-2",
            False,
            "TARGETING_MATCH",
            {"balance": 0, "usage": 25, "overage": 15},
            id="no-balance-is-false",
        ),
        pytest.param(
            "integrations",
            "sub-a",
            True,
            "TARGETING_MATCH",
            {"config": '{"a":1}', "type": "static"},
            id="static",
        ),
        pytest.param("sso", "sub-a", False, "DEFAULT", {"entitled": False}, id="no-entitlement"),
        pytest.param(
            "sso", "stranger", False, "DEFAULT", {"entitled": False}, id="unknown-targeting-key"
        ),
    ],
)
async def test_single_flag(
    seeder: Seeder,
    start_sidecar: StartSidecar,
    flag: str,
    targeting: str,
    value: bool,
    reason: str,
    metadata: dict[str, Any],
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    status, body, _ = await sidecar.post(f"/ofrep/v1/evaluate/flags/{flag}", json=ctx(targeting))
    assert status == 200
    assert body["key"] == flag
    assert body["value"] is value
    assert body["variant"] == ("on" if value else "off")
    assert body["reason"] == reason
    assert metadata.items() <= body["metadata"].items()


@pytest.mark.parametrize(
    ("flag", "payload", "status", "code"),
    [
        pytest.param("nope", ctx("sub-a"), 404, "FLAG_NOT_FOUND", id="unknown-feature"),
        pytest.param(
            "sso", ctx(None, plan="pro"), 400, "TARGETING_KEY_MISSING", id="missing-targeting-key"
        ),
        pytest.param("sso", None, 400, "TARGETING_KEY_MISSING", id="empty-body"),
    ],
)
async def test_single_flag_errors(
    seeder: Seeder,
    start_sidecar: StartSidecar,
    flag: str,
    payload: dict[str, Any] | None,
    status: int,
    code: str,
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    got, body, _ = await sidecar.post(f"/ofrep/v1/evaluate/flags/{flag}", json=payload)
    assert got == status
    assert body["errorCode"] == code
    assert body["key"] == flag
    assert body["errorDetails"]


async def test_bulk_evaluates_every_feature_with_an_etag(
    seeder: Seeder, start_sidecar: StartSidecar
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    status, body, headers = await sidecar.post("/ofrep/v1/evaluate/flags", json=ctx("sub-a"))
    assert status == 200
    values = {f["key"]: f["value"] for f in body["flags"]}
    assert values == {"gpt_4_tokens": True, "integrations": True, "sso": False}
    etag = headers["ETag"]

    status, body, _ = await sidecar.post(
        "/ofrep/v1/evaluate/flags", json=ctx("sub-a"), headers={"If-None-Match": etag}
    )
    assert (status, body) == (304, None)
    status, _, other = await sidecar.post(
        "/ofrep/v1/evaluate/flags", json=ctx("sub-a", plan="pro"), headers={"If-None-Match": etag}
    )
    assert status == 200
    assert other["ETag"] != etag
    status, _, _ = await sidecar.post(
        "/ofrep/v1/evaluate/flags", json=ctx("customer-2"), headers={"If-None-Match": etag}
    )
    assert status == 200

    position = seeder.events("sub-a", (T0 + timedelta(hours=2), {"tokens": 60}))
    await sidecar.caught_up(position)
    status, body, changed = await sidecar.post(
        "/ofrep/v1/evaluate/flags", json=ctx("sub-a"), headers={"If-None-Match": etag}
    )
    assert status == 200
    assert changed["ETag"] != etag
    assert {f["key"]: f["value"] for f in body["flags"]}["gpt_4_tokens"] is False


async def test_bulk_without_targeting_key_is_refused(
    seeder: Seeder, start_sidecar: StartSidecar
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    status, body, _ = await sidecar.post("/ofrep/v1/evaluate/flags", json=ctx(None))
    assert status == 400
    assert body["errorCode"] == "TARGETING_KEY_MISSING"


async def test_past_the_staleness_budget_each_feature_decides(
    seeder: Seeder, start_sidecar: StartSidecar, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(seeder)
    sidecar = await start_sidecar(staleness_budget=timedelta(seconds=5))
    ledger_outage(sidecar, monkeypatch)
    clock.advance(timedelta(seconds=6))
    evaluations = {}
    for flag, key in (("gpt_4_tokens", "customer-2"), ("integrations", "sub-a"), ("sso", "sub-a")):
        status, body, _ = await sidecar.post(f"/ofrep/v1/evaluate/flags/{flag}", json=ctx(key))
        assert status == 200
        evaluations[flag] = (body["value"], body["reason"])
    assert evaluations == {
        "gpt_4_tokens": (True, "STALE"),  # Allow: access although the balance is spent
        "integrations": (False, "STALE"),  # Deny: no access although entitled
        "sso": (False, "STALE"),  # LastKnown, and not entitled
    }
    status, body, headers = await sidecar.get(
        "/api/v1/customers/customer-2/entitlements/gpt_4_tokens/value"
    )
    assert (status, body["hasAccess"], body["balance"]) == (200, True, 0)
    assert headers["Allotment-Stale-Policy"] == "Allow"
    assert float(headers["Allotment-Ledger-Age"]) >= 6
    _, body, headers = await sidecar.get("/api/v1/subjects/sub-a/entitlements/integrations/value")
    assert (body["hasAccess"], headers["Allotment-Stale-Policy"]) == (False, "Deny")

    monkeypatch.undo()  # the ledger is back
    await sidecar.polled()  # a successful poll brings the view back within the budget
    status, body, _ = await sidecar.post("/ofrep/v1/evaluate/flags/integrations", json=ctx("sub-a"))
    assert (body["value"], body["reason"]) == (True, "TARGETING_MATCH")
