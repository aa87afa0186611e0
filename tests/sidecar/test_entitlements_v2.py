"""OpenMeter v2 customer entitlement reads over real HTTP, on SQLite and PostgreSQL: list and get."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import jsonschema
import pytest

from allotment.ledger.core.model import EntitlementType
from tests.sidecar.conftest import StartSidecar
from tests.sidecar.seed import T0, Seeder

LIST = "/api/v2/customers/customer-1/entitlements"


def seed(seeder: Seeder) -> dict[str, str]:
    """customer-1: metered gpt_4_tokens (issue 500), static integrations, boolean sso."""
    seeder.meter("tokens")
    seeder.feature("gpt_4_tokens", "tokens")
    seeder.feature("integrations")
    seeder.feature("sso")
    customer = seeder.customer("customer-1", ["sub-a"])
    metered = seeder.entitlement(
        "customer-1", "gpt_4_tokens", EntitlementType.METERED, issue=Decimal(500)
    )
    static = seeder.entitlement(
        "customer-1", "integrations", EntitlementType.STATIC, config='{"integrations":["github"]}'
    )
    boolean = seeder.entitlement("customer-1", "sso", EntitlementType.BOOLEAN, interval=None)
    return {
        "customer": customer.id,
        "metered": metered.id,
        "static": static.id,
        "boolean": boolean.id,
    }


def validate(document: dict[str, Any], schema: str, instance: Any) -> None:
    """Validate ``instance`` against one of the document's component schemas."""
    ref = {"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
    jsonschema.validate(instance, ref)


async def test_list_answers_one_page_of_v2_entitlements_with_the_customer(
    seeder: Seeder, start_sidecar: StartSidecar
) -> None:
    ids = seed(seeder)
    sidecar = await start_sidecar()
    status, body, _ = await sidecar.get(LIST)
    assert status == 200
    assert (body["totalCount"], body["page"], body["pageSize"]) == (3, 1, 100)
    assert [item["featureKey"] for item in body["items"]] == ["gpt_4_tokens", "integrations", "sso"]
    for item in body["items"]:
        assert item["customerId"] == ids["customer"]
        assert item["customerKey"] == "customer-1"
        assert "subjectKey" not in item
        assert "isUnlimited" not in item
    metered = body["items"][0]
    assert metered["issue"] == {"amount": 500, "priority": 1}
    assert metered["issueAfterReset"] == 500
    assert metered["currentUsagePeriod"]["from"] == "2026-11-01T00:00:00Z"
    _, document, _ = await sidecar.get("/openapi.json")
    validate(document, "EntitlementV2PaginatedResponse", body)


@pytest.mark.parametrize(
    ("query", "features", "total"),
    [
        pytest.param("?pageSize=2", ["gpt_4_tokens", "integrations"], 3, id="first-page"),
        pytest.param("?pageSize=2&page=2", ["sso"], 3, id="second-page"),
        pytest.param("?page=3&pageSize=2", [], 3, id="past-the-end"),
        pytest.param("?order=DESC", ["sso", "integrations", "gpt_4_tokens"], 3, id="newest-first"),
    ],
)
async def test_list_pages_and_orders(
    seeder: Seeder, start_sidecar: StartSidecar, query: str, features: list[str], total: int
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    status, body, _ = await sidecar.get(LIST + query)
    assert status == 200
    assert [item["featureKey"] for item in body["items"]] == features
    assert body["totalCount"] == total


@pytest.mark.parametrize(
    ("segment", "kind", "extra"),
    [
        pytest.param("gpt_4_tokens", "metered", {"isSoftLimit": False}, id="by-feature-key"),
        pytest.param("metered", "metered", {"lastReset": "2026-11-01T00:00:00Z"}, id="by-id"),
        pytest.param(
            "integrations", "static", {"config": '{"integrations":["github"]}'}, id="static"
        ),
        pytest.param("sso", "boolean", {}, id="boolean"),
    ],
)
async def test_get_answers_one_v2_entitlement(
    seeder: Seeder, start_sidecar: StartSidecar, segment: str, kind: str, extra: dict[str, Any]
) -> None:
    ids = seed(seeder)
    sidecar = await start_sidecar()
    status, body, _ = await sidecar.get(f"{LIST}/{ids.get(segment, segment)}")
    assert status == 200, body
    assert body["type"] == kind
    assert body["customerKey"] == "customer-1"
    for key, value in extra.items():
        assert body[key] == value
    _, document, _ = await sidecar.get("/openapi.json")
    validate(document, "EntitlementV2", body)


@pytest.mark.parametrize(
    ("path", "status", "detail"),
    [
        pytest.param(LIST + "/storage", 404, "entitlement not found storage", id="no-feature"),
        pytest.param(
            "/api/v2/customers/nobody/entitlements", 404, "customer 'nobody'", id="no-customer"
        ),
        pytest.param(LIST + "?pageSize=0", 400, "pageSize must be", id="page-size-zero"),
        pytest.param(LIST + "?pageSize=1001", 400, "at most 1000", id="page-size-too-big"),
        pytest.param(LIST + "?page=x", 400, "page must be", id="page-not-a-number"),
        pytest.param(LIST + "?order=UP", 400, "order is ASC or DESC", id="order-unknown"),
    ],
)
async def test_list_and_get_refuse_what_they_cannot_answer(
    seeder: Seeder, start_sidecar: StartSidecar, path: str, status: int, detail: str
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    got, body, headers = await sidecar.get(path)
    assert got == status
    assert headers["Content-Type"] == "application/problem+json"
    assert detail in body["detail"]


async def test_an_ended_entitlement_is_listed_only_with_include_deleted(
    seeder: Seeder, start_sidecar: StartSidecar
) -> None:
    seeder.meter("tokens")
    seeder.feature("sso")
    seeder.customer("customer-1")
    seeder.entitlement("customer-1", "sso", EntitlementType.BOOLEAN, interval=None, active_to=T0)
    sidecar = await start_sidecar()
    _, current, _ = await sidecar.get(LIST)
    _, everything, _ = await sidecar.get(LIST + "?includeDeleted=true")
    assert current["totalCount"] == 0
    assert [item["featureKey"] for item in everything["items"]] == ["sso"]
