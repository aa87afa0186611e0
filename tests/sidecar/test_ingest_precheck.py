"""``requestedUsage`` (our extension) on the value and OFREP paths, on SQLite and PostgreSQL:
a hard-limit balance below the requested amount answers no access; nothing else changes."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from allotment.ledger.core.model import EntitlementType
from tests.sidecar.conftest import StartSidecar
from tests.sidecar.seed import T0, Seeder

HARD = "/api/v1/subjects/customer-1/entitlements/gpt_4_tokens/value"
SOFT = "/api/v1/subjects/customer-1/entitlements/soft_tokens/value"
BOOLEAN = "/api/v1/subjects/customer-1/entitlements/sso/value"
V2 = "/api/v2/customers/customer-1/entitlements/gpt_4_tokens/value"


def seed(seeder: Seeder) -> None:
    """customer-1: gpt_4_tokens (hard, balance 800), soft_tokens (soft, balance 800), sso."""
    seeder.meter("tokens")
    seeder.feature("gpt_4_tokens", "tokens")
    seeder.feature("soft_tokens", "tokens")
    seeder.feature("sso")
    seeder.customer("customer-1")
    hard = seeder.entitlement("customer-1", "gpt_4_tokens", EntitlementType.METERED)
    seeder.grant(hard, "1000")
    soft = seeder.entitlement("customer-1", "soft_tokens", EntitlementType.METERED, soft_limit=True)
    seeder.grant(soft, "1000")
    seeder.entitlement("customer-1", "sso", EntitlementType.BOOLEAN, interval=None)
    seeder.events("customer-1", (T0 + timedelta(hours=1), {"tokens": 200}))


@pytest.mark.parametrize(
    ("path", "has_access"),
    [
        pytest.param(HARD, True, id="absent"),
        pytest.param(HARD + "?requestedUsage=800", True, id="equal-to-balance"),
        pytest.param(HARD + "?requestedUsage=800.5", False, id="just-above-balance"),
        pytest.param(HARD + "?requestedUsage=4000", False, id="above-balance"),
        pytest.param(HARD + "?requestedUsage=0", True, id="zero"),
        pytest.param(V2 + "?requestedUsage=801", False, id="v2"),
        pytest.param(
            HARD + "?requestedUsage=900&time=2026-11-01T00:30:00Z", True, id="at-a-past-time"
        ),
        pytest.param(SOFT + "?requestedUsage=4000", True, id="soft-limit-keeps-access"),
        pytest.param(BOOLEAN + "?requestedUsage=4000", True, id="boolean-has-no-balance"),
    ],
)
async def test_requested_usage_on_the_value_paths(
    seeder: Seeder, start_sidecar: StartSidecar, path: str, has_access: bool
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    status, body, _ = await sidecar.get(path)
    assert status == 200, body
    assert body["hasAccess"] is has_access
    if "gpt_4_tokens" in path and "time=" not in path:
        assert (body["balance"], body["usage"]) == (800, 200)


@pytest.mark.parametrize(
    "value", [pytest.param("-1", id="negative"), pytest.param("lots", id="not-a-number")]
)
async def test_a_malformed_requested_usage_is_400(
    seeder: Seeder, start_sidecar: StartSidecar, value: str
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    status, problem, _ = await sidecar.get(f"{HARD}?requestedUsage={value}")
    assert status == 400
    assert "requestedUsage must be a non-negative number" in problem["detail"]


@pytest.mark.parametrize(
    ("flag", "requested", "expected"),
    [
        pytest.param("gpt_4_tokens", None, True, id="absent"),
        pytest.param("gpt_4_tokens", 800, True, id="equal"),
        pytest.param("gpt_4_tokens", 801, False, id="above"),
        pytest.param("gpt_4_tokens", "801", False, id="as-a-string"),
        pytest.param("soft_tokens", 5000, True, id="soft-limit"),
        pytest.param("sso", 5000, True, id="boolean"),
    ],
)
async def test_requested_usage_in_the_ofrep_context(
    seeder: Seeder, start_sidecar: StartSidecar, flag: str, requested: Any, expected: bool
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    context: dict[str, Any] = {"targetingKey": "customer-1"}
    if requested is not None:
        context["requestedUsage"] = requested
    status, body, _ = await sidecar.post(
        f"/ofrep/v1/evaluate/flags/{flag}", data=json.dumps({"context": context})
    )
    assert status == 200, body
    assert (body["value"], body["variant"]) == (expected, "on" if expected else "off")
    status, bulk, _ = await sidecar.post(
        "/ofrep/v1/evaluate/flags", data=json.dumps({"context": context})
    )
    assert status == 200
    assert {f["key"]: f["value"] for f in bulk["flags"]}[flag] is expected


async def test_a_malformed_requested_usage_in_ofrep_is_invalid_context(
    seeder: Seeder, start_sidecar: StartSidecar
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    context = {"targetingKey": "customer-1", "requestedUsage": True}
    status, body, _ = await sidecar.post(
        "/ofrep/v1/evaluate/flags/gpt_4_tokens", data=json.dumps({"context": context})
    )
    assert status == 400
    assert body["errorCode"] == "INVALID_CONTEXT"
