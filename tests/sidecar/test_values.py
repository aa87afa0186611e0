"""OpenMeter-compatible reads over real HTTP, on SQLite and PostgreSQL: values, resolution, errors."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from allotment.ledger.core.model import EntitlementType, ExpirationUnit
from tests.sidecar.conftest import Clock, StartSidecar
from tests.sidecar.seed import T0, Seeder


def seed_catalogue(seeder: Seeder) -> None:
    """customer-1 (subjects sub-a, sub-b): metered gpt_4_tokens (1000/month), static, boolean."""
    seeder.meter("tokens")
    seeder.feature("gpt_4_tokens", "tokens")
    seeder.feature("integrations")
    seeder.feature("sso")
    seeder.customer("customer-1", ["sub-a", "sub-b"])
    seeder.customer("customer-2")
    metered = seeder.entitlement("customer-1", "gpt_4_tokens", EntitlementType.METERED)
    seeder.grant(metered, "1000", recurrence="MONTH")
    seeder.entitlement(
        "customer-1", "integrations", EntitlementType.STATIC, config='{"integrations":["github"]}'
    )
    seeder.entitlement("customer-1", "sso", EntitlementType.BOOLEAN, interval=None)
    seeder.events(
        "sub-a",
        (T0 + timedelta(hours=1), {"tokens": 120}),
        (T0 + timedelta(hours=2), {"tokens": 30}),
    )
    seeder.events("customer-1", (T0 + timedelta(hours=3), {"tokens": 50}))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param(
            "/api/v1/subjects/customer-1/entitlements/gpt_4_tokens/value",
            {
                "hasAccess": True,
                "balance": 800,
                "usage": 200,
                "overage": 0,
                "totalAvailableGrantAmount": 1000,
            },
            id="metered-v1-by-customer-key-as-subject",
        ),
        pytest.param(
            "/api/v1/subjects/sub-b/entitlements/gpt_4_tokens/value",
            {
                "hasAccess": True,
                "balance": 800,
                "usage": 200,
                "overage": 0,
                "totalAvailableGrantAmount": 1000,
            },
            id="metered-v1-by-subject-key",
        ),
        pytest.param(
            "/api/v1/customers/customer-1/entitlements/gpt_4_tokens/value",
            {
                "hasAccess": True,
                "balance": 800,
                "usage": 200,
                "overage": 0,
                "totalAvailableGrantAmount": 1000,
            },
            id="metered-customer-v1",
        ),
        pytest.param(
            "/api/v1/subjects/sub-a/entitlements/integrations/value",
            {"hasAccess": True, "config": '{"integrations":["github"]}'},
            id="static",
        ),
        pytest.param(
            "/api/v1/subjects/sub-a/entitlements/sso/value", {"hasAccess": True}, id="boolean"
        ),
        pytest.param(
            "/api/v1/subjects/sub-a/entitlements/gpt_4_tokens/value?time=2026-11-01T01:30:00Z",
            {
                "hasAccess": True,
                "balance": 880,
                "usage": 120,
                "overage": 0,
                "totalAvailableGrantAmount": 1000,
            },
            id="metered-at-a-past-time",
        ),
    ],
)
async def test_value_shapes_and_numbers(
    seeder: Seeder, start_sidecar: StartSidecar, path: str, expected: dict[str, object]
) -> None:
    seed_catalogue(seeder)
    sidecar = await start_sidecar()
    status, body, headers = await sidecar.get(path)
    assert (status, body) == (200, expected)
    assert int(headers["Allotment-Ledger-Version"]) == seeder.head()
    assert float(headers["Allotment-Ledger-Age"]) >= 0


async def test_v2_value_carries_grant_balances(seeder: Seeder, start_sidecar: StartSidecar) -> None:
    seed_catalogue(seeder)
    sidecar = await start_sidecar()
    entitlement = sidecar.view.active_entitlement("customer-1", "gpt_4_tokens", T0)
    assert entitlement is not None
    grant_id = sidecar.view.grants_of(entitlement.id)[0].id
    for ref in ("gpt_4_tokens", entitlement.id):
        status, body, _ = await sidecar.get(
            f"/api/v2/customers/customer-1/entitlements/{ref}/value"
        )
        assert status == 200
        assert body["grantBalances"] == {grant_id: 800}
        assert body["balance"] == 800


async def test_access_lists_every_active_entitlement(
    seeder: Seeder, start_sidecar: StartSidecar
) -> None:
    seed_catalogue(seeder)
    sidecar = await start_sidecar()
    status, body, _ = await sidecar.get("/api/v1/customers/customer-1/access")
    assert status == 200
    assert set(body["entitlements"]) == {"gpt_4_tokens", "integrations", "sso"}
    assert body["entitlements"]["gpt_4_tokens"]["balance"] == 800
    assert body["entitlements"]["sso"] == {"hasAccess": True}


async def test_subject_entitlements_list_resolves_to_the_customer(
    seeder: Seeder, start_sidecar: StartSidecar
) -> None:
    seed_catalogue(seeder)
    sidecar = await start_sidecar()
    status, body, _ = await sidecar.get("/api/v1/subjects/sub-b/entitlements")
    assert status == 200
    by_feature = {e["featureKey"]: e for e in body}
    assert set(by_feature) == {"gpt_4_tokens", "integrations", "sso"}
    metered = by_feature["gpt_4_tokens"]
    assert metered["type"] == "metered"
    assert metered["subjectKey"] == "sub-a"
    assert metered["usagePeriod"] == {
        "interval": "MONTH",
        "intervalISO": "P1M",
        "anchor": "2026-11-01T00:00:00Z",
    }
    assert metered["currentUsagePeriod"] == {
        "from": "2026-11-01T00:00:00Z",
        "to": "2026-12-01T00:00:00Z",
    }
    assert by_feature["integrations"]["config"] == '{"integrations":["github"]}'
    status, body, _ = await sidecar.get("/api/v1/subjects/customer-2/entitlements")
    assert (status, body) == (200, [])


async def test_one_entitlement_by_id_or_feature_key(
    seeder: Seeder, start_sidecar: StartSidecar
) -> None:
    seed_catalogue(seeder)
    sidecar = await start_sidecar()
    entitlement = sidecar.view.active_entitlement("customer-1", "integrations", T0)
    assert entitlement is not None
    for ref in (entitlement.id, "integrations"):
        status, body, _ = await sidecar.get(f"/api/v1/subjects/sub-b/entitlements/{ref}")
        assert status == 200
        assert (body["id"], body["type"], body["config"]) == (
            entitlement.id,
            "static",
            '{"integrations":["github"]}',
        )


async def test_history_windows_and_burndown(seeder: Seeder, start_sidecar: StartSidecar) -> None:
    seed_catalogue(seeder)
    sidecar = await start_sidecar()
    entitlement = sidecar.view.active_entitlement("customer-1", "gpt_4_tokens", T0)
    assert entitlement is not None
    status, body, _ = await sidecar.get(
        f"/api/v1/subjects/sub-a/entitlements/{entitlement.id}/history"
        "?windowSize=HOUR&from=2026-11-01T00:00:00Z&to=2026-11-01T04:00:00Z"
    )
    assert status == 200
    assert [w["usage"] for w in body["windowedHistory"]] == [0, 120, 30, 50]
    assert body["windowedHistory"][0]["period"] == {
        "from": "2026-11-01T00:00:00Z",
        "to": "2026-11-01T01:00:00Z",
    }
    assert body["burndownHistory"][-1]["balanceAtEnd"] == 800


@pytest.mark.parametrize(
    ("method", "path", "status", "detail_has"),
    [
        pytest.param(
            "GET",
            "/api/v1/subjects/nobody/entitlements/gpt_4_tokens/value",
            404,
            "subject 'nobody'",
            id="unknown-subject",
        ),
        pytest.param(
            "GET",
            "/api/v1/customers/nobody/access",
            404,
            "customer 'nobody'",
            id="unknown-customer",
        ),
        pytest.param(
            "GET",
            "/api/v1/subjects/sub-a/entitlements/unknown_feature/value",
            404,
            "entitlement not found",
            id="unknown-feature",
        ),
        pytest.param(
            "GET",
            "/api/v2/customers/customer-2/entitlements/gpt_4_tokens/value",
            404,
            "entitlement not found",
            id="no-entitlement",
        ),
        pytest.param(
            "GET",
            "/api/v1/subjects/sub-a/entitlements/gpt_4_tokens/value?time=yesterday",
            400,
            "time",
            id="bad-time",
        ),
        pytest.param(
            "GET",
            "/api/v1/subjects/sub-a/entitlements/gpt_4_tokens/history",
            400,
            "windowSize",
            id="history-needs-window",
        ),
        pytest.param(
            "GET",
            "/api/v1/subjects/sub-a/entitlements/gpt_4_tokens/history?windowSize=DAY&windowTimeZone=Mars/Base",
            400,
            "time zone",
            id="history-bad-zone",
        ),
        pytest.param(
            "GET",
            "/api/v1/subjects/sub-a/entitlements/sso/history?windowSize=DAY",
            400,
            "metered",
            id="history-not-metered",
        ),
        pytest.param(
            "POST",
            "/api/v1/subjects/sub-a/entitlements",
            405,
            "Entitlement",
            id="create-entitlement",
        ),
        pytest.param(
            "POST",
            "/api/v1/subjects/sub-a/entitlements/gpt_4_tokens/grants",
            405,
            "Grant",
            id="create-grant",
        ),
        pytest.param(
            "POST",
            "/api/v1/subjects/sub-a/entitlements/gpt_4_tokens/reset",
            405,
            "EntitlementReset",
            id="reset",
        ),
        pytest.param(
            "PUT",
            "/api/v1/subjects/sub-a/entitlements/gpt_4_tokens/override",
            405,
            "Entitlement",
            id="override",
        ),
        pytest.param(
            "DELETE",
            "/api/v1/subjects/sub-a/entitlements/01JAAAAAAAAAAAAAAAAAAAAAAA",
            405,
            "Entitlement",
            id="delete-entitlement",
        ),
        pytest.param(
            "DELETE", "/api/v1/grants/01JAAAAAAAAAAAAAAAAAAAAAAA", 405, "Grant", id="void-grant"
        ),
        pytest.param("POST", "/api/v1/features", 405, "Feature", id="create-feature"),
        pytest.param("POST", "/api/v1/meters", 405, "Meter", id="create-meter"),
        pytest.param(
            "POST",
            "/api/v2/customers/customer-1/entitlements/gpt_4_tokens/grants",
            405,
            "Grant",
            id="v2-create-grant",
        ),
        pytest.param("GET", "/api/v1/nothing-here", 404, "not served", id="unknown-path"),
    ],
)
async def test_errors_are_problem_json(
    seeder: Seeder,
    start_sidecar: StartSidecar,
    method: str,
    path: str,
    status: int,
    detail_has: str,
) -> None:
    seed_catalogue(seeder)
    sidecar = await start_sidecar()
    response = await sidecar.client.request(method, path)
    assert response.status == status
    assert response.content_type == "application/problem+json"
    body = await response.json(content_type=None)
    assert body["status"] == status
    assert body["title"]
    assert body["instance"].startswith("urn:request:")
    assert detail_has in body["detail"]
    if status == 405 and "resourceKind" in body.get("extensions", {}):
        assert body["extensions"]["resourceKind"] in body["detail"]


async def test_grant_recorded_later_reaches_the_answer(
    seeder: Seeder, start_sidecar: StartSidecar
) -> None:
    seed_catalogue(seeder)
    sidecar = await start_sidecar()
    entitlement = sidecar.view.active_entitlement("customer-1", "gpt_4_tokens", T0)
    assert entitlement is not None
    position = seeder.grant(entitlement, "500", priority=1) and seeder.head()
    await sidecar.caught_up(position)
    _, body, _ = await sidecar.get("/api/v1/subjects/sub-a/entitlements/gpt_4_tokens/value")
    assert body["balance"] == 1300
    position = seeder.events("sub-b", (T0 + timedelta(hours=5), {"tokens": Decimal("0.5")}))
    await sidecar.caught_up(position)
    _, body, _ = await sidecar.get("/api/v1/subjects/sub-a/entitlements/gpt_4_tokens/value")
    assert body["usage"] == 200.5
    assert body["balance"] == 1299.5


async def test_expiring_grant_changes_the_value_without_a_ledger_write(
    seeder: Seeder, start_sidecar: StartSidecar, clock: Clock
) -> None:
    seeder.meter("tokens")
    seeder.feature("gpt_4_tokens", "tokens")
    seeder.customer("customer-1")
    entitlement = seeder.entitlement("customer-1", "gpt_4_tokens", EntitlementType.METERED)
    seeder.grant(entitlement, "100", expiration=(ExpirationUnit.DAY, 3))
    seeder.grant(entitlement, "10", recurrence="WEEK", priority=1)
    sidecar = await start_sidecar()
    path = "/api/v1/customers/customer-1/entitlements/gpt_4_tokens/value"
    position = seeder.head()

    clock.now = T0 + timedelta(days=2, hours=23, minutes=59)
    _, before, _ = await sidecar.get(path)
    clock.now = T0 + timedelta(days=3, seconds=1)
    _, after, _ = await sidecar.get(path)
    assert (before["balance"], after["balance"]) == (110, 10)

    seeder.events("customer-1", (T0 + timedelta(days=4), {"tokens": 10}))
    position = seeder.head()
    await sidecar.caught_up(position)
    clock.now = T0 + timedelta(days=5)
    _, spent, _ = await sidecar.get(path)
    clock.now = T0 + timedelta(days=7, minutes=1)
    _, refilled, _ = await sidecar.get(path)
    assert (spent["hasAccess"], spent["balance"]) == (False, 0)
    assert (refilled["hasAccess"], refilled["balance"]) == (True, 10)
    assert sidecar.view.position == position


async def test_period_boundary_resets_usage_without_a_ledger_write(
    seeder: Seeder, start_sidecar: StartSidecar, clock: Clock
) -> None:
    seeder.meter("tokens")
    seeder.feature("gpt_4_tokens", "tokens")
    seeder.customer("customer-1")
    entitlement = seeder.entitlement(
        "customer-1", "gpt_4_tokens", EntitlementType.METERED, interval="DAY", issue=Decimal(100)
    )
    seeder.events("customer-1", (T0 + timedelta(hours=5), {"tokens": 70}))
    sidecar = await start_sidecar()
    position = seeder.head()
    path = "/api/v1/customers/customer-1/entitlements/gpt_4_tokens/value"
    clock.now = T0 + timedelta(hours=23, minutes=58, seconds=30)
    _, before, _ = await sidecar.get(path)
    clock.now = T0 + timedelta(days=1, seconds=1)
    _, after, _ = await sidecar.get(path)
    assert (before["usage"], before["balance"]) == (70, 30)
    assert (after["usage"], after["balance"]) == (0, 100)
    assert sidecar.view.position == position
    assert (
        entitlement.id
        == sidecar.view.active_entitlement("customer-1", "gpt_4_tokens", clock.now).id
    )  # type: ignore[union-attr]


async def test_ended_entitlement_has_no_access_after_active_to(
    seeder: Seeder, start_sidecar: StartSidecar, clock: Clock
) -> None:
    seeder.feature("sso")
    seeder.customer("customer-1")
    entitlement = seeder.entitlement(
        "customer-1",
        "sso",
        EntitlementType.BOOLEAN,
        interval=None,
        active_to=T0 + timedelta(days=2),
    )
    sidecar = await start_sidecar()
    path = f"/api/v2/customers/customer-1/entitlements/{entitlement.id}/value"
    clock.now = T0 + timedelta(days=1, hours=23)
    _, before, _ = await sidecar.get(path)
    clock.now = T0 + timedelta(days=2)
    _, after, _ = await sidecar.get(path)
    assert (before, after) == ({"hasAccess": True}, {"hasAccess": False})
