"""The view's hot lookup (``View.hot_body``) answers what the routes' slow path answers."""

from __future__ import annotations

import json

import pytest

from allotment.sidecar.keys import CLOCK
from allotment.sidecar.view import micros
from tests.sidecar.conftest import StartSidecar
from tests.sidecar.seed import Seeder
from tests.sidecar.test_values import seed_catalogue


@pytest.mark.parametrize(
    ("who", "ref", "by_subject", "v2", "path"),
    [
        pytest.param(
            "sub-b",
            "gpt_4_tokens",
            True,
            False,
            "/api/v1/subjects/sub-b/entitlements/gpt_4_tokens/value",
            id="subject-key-v1",
        ),
        pytest.param(
            "customer-1",
            "gpt_4_tokens",
            True,
            False,
            "/api/v1/subjects/customer-1/entitlements/gpt_4_tokens/value",
            id="customer-key-as-subject-v1",
        ),
        pytest.param(
            "customer-1",
            "gpt_4_tokens",
            False,
            True,
            "/api/v2/customers/customer-1/entitlements/gpt_4_tokens/value",
            id="customer-key-v2",
        ),
        pytest.param(
            "customer-1",
            "integrations",
            False,
            False,
            "/api/v1/customers/customer-1/entitlements/integrations/value",
            id="static-v1",
        ),
        pytest.param(
            "sub-a",
            "sso",
            True,
            True,
            "/api/v2/customers/customer-1/entitlements/sso/value",
            id="boolean-v2",
        ),
    ],
)
async def test_hot_body_matches_the_route(
    seeder: Seeder,
    start_sidecar: StartSidecar,
    who: str,
    ref: str,
    by_subject: bool,
    v2: bool,
    path: str,
) -> None:
    seed_catalogue(seeder)
    sidecar = await start_sidecar()
    now = sidecar.app[CLOCK]()
    status, expected, _ = await sidecar.get(path)
    assert status == 200
    for _ in range(2):  # cold, then from the cache
        body = sidecar.view.hot_body(who, ref, micros(now), by_subject=by_subject, v2=v2)
        assert body is not None
        assert json.loads(body) == expected


async def test_hot_body_by_ids(seeder: Seeder, start_sidecar: StartSidecar) -> None:
    seed_catalogue(seeder)
    sidecar = await start_sidecar()
    now = sidecar.app[CLOCK]()
    view = sidecar.view
    customer = view.customer("customer-1")
    entitlement = view.active_entitlement("customer-1", "gpt_4_tokens", now)
    assert customer is not None and entitlement is not None
    _, expected, _ = await sidecar.get(
        "/api/v2/customers/customer-1/entitlements/gpt_4_tokens/value"
    )
    body = view.hot_body(customer.id, entitlement.id, micros(now), by_subject=False, v2=True)
    assert body is not None and json.loads(body) == expected


@pytest.mark.parametrize(
    ("who", "ref", "by_subject"),
    [
        pytest.param("nobody", "gpt_4_tokens", True, id="unknown-subject"),
        pytest.param("nobody", "gpt_4_tokens", False, id="unknown-customer"),
        pytest.param("sub-a", "gpt_4_tokens", False, id="subject-key-is-not-a-customer-key"),
        pytest.param("customer-2", "gpt_4_tokens", False, id="customer-without-it"),
        pytest.param("customer-1", "no_such_feature", False, id="unknown-feature"),
        pytest.param("customer-1", "01ARZ3NDEKTSV4RRFFQ69G5FAV", False, id="unknown-id"),
    ],
)
async def test_hot_body_not_found_is_none(
    seeder: Seeder, start_sidecar: StartSidecar, who: str, ref: str, by_subject: bool
) -> None:
    seed_catalogue(seeder)
    sidecar = await start_sidecar()
    now = sidecar.app[CLOCK]()
    assert sidecar.view.hot_body(who, ref, micros(now), by_subject=by_subject, v2=False) is None


async def test_hot_body_other_customers_entitlement_id_is_none(
    seeder: Seeder, start_sidecar: StartSidecar
) -> None:
    seed_catalogue(seeder)
    sidecar = await start_sidecar()
    now = sidecar.app[CLOCK]()
    entitlement = sidecar.view.active_entitlement("customer-1", "gpt_4_tokens", now)
    assert entitlement is not None
    assert (
        sidecar.view.hot_body("customer-2", entitlement.id, micros(now), by_subject=False, v2=True)
        is None
    )
