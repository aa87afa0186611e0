"""The fast lane: plain value reads answered before the router, the same bytes as the app's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request

from allotment.ledger.core.model import EntitlementType
from allotment.sidecar.app import create_app
from allotment.sidecar.compute import CoreValueEngine
from allotment.sidecar.fastlane import FastLane
from allotment.sidecar.ledger_source import StorageSource
from allotment.sidecar.settings import SidecarSettings
from allotment.sidecar.view import View
from tests.sidecar import test_operations as operations
from tests.sidecar.conftest import Clock, StartSidecar, wait_until
from tests.sidecar.seed import NS, T0, Seeder

Client = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


def seed(seeder: Seeder) -> str:
    """Seed test_operations' customer, and two whose subjects tell raw from percent-decoded."""
    metered = operations.seed(seeder)
    # A subject key that reads as a percent-encoding of another customer's: "a%41" is "aA"
    seeder.customer("customer-2", ["a%41"])
    seeder.entitlement("customer-2", "sso", EntitlementType.BOOLEAN, interval=None)
    seeder.customer("customer-3", ["aA"])
    return metered


#: (path, whether the lane answers it itself)
READS = [
    pytest.param("/api/v1/subjects/sub-a/entitlements/gpt_4_tokens/value", True, id="subject"),
    pytest.param("/api/v1/subjects/customer-1/entitlements/sso/value", True, id="customer-key"),
    pytest.param("/api/v1/customers/customer-1/entitlements/gpt_4_tokens/value", True, id="v1"),
    pytest.param("/api/v2/customers/customer-1/entitlements/gpt_4_tokens/value", True, id="v2"),
    pytest.param("/api/v2/customers/customer-1/entitlements/{id}/value", True, id="by-id"),
    pytest.param("/api/v1/subjects/sub%2Da/entitlements/sso/value", False, id="percent"),
    pytest.param("/api/v1/subjects/a%41/entitlements/sso/value", False, id="percent-other-key"),
    pytest.param("/api/v1/subjects/a%2541/entitlements/sso/value", False, id="percent-escaped"),
    pytest.param("/api/v1/subjects/./entitlements/sso/value", False, id="dot"),
    pytest.param("/api/v1/subjects/sub-a/entitlements/sso/value?time=" + T0.isoformat(), False),
    pytest.param("/api/v1/subjects/nobody/entitlements/sso/value", False, id="unknown-subject"),
    pytest.param("/api/v1/subjects/sub-a/entitlements/nothing/value", False, id="unknown-feature"),
    pytest.param("/api/v1/customers/sub-a/entitlements/sso/value", False, id="subject-as-customer"),
    pytest.param("/api/v1/subjects/sub-a/entitlements/sso", False, id="not-a-value"),
    pytest.param("/api/v1/subjects/sub-a/entitlements/sso/value/", False, id="trailing-slash"),
]


async def test_the_lane_answers_what_the_app_answers(
    seeder: Seeder,
    start_sidecar: StartSidecar,
    ledger_url: str,
    clock: Clock,
    aiohttp_client: Client,
) -> None:
    """Every read, through the lane (as served) and through the app alone: the same answer."""
    metered = seed(seeder)
    served = await start_sidecar()
    settings = SidecarSettings(ledger_url, NS, poll_interval=timedelta(milliseconds=20))
    view = View(NS, CoreValueEngine(), freeze_gc=False)
    plain = await aiohttp_client(
        create_app(settings, view, open_source=StorageSource.open, clock=clock)
    )
    await wait_until(lambda: view.ready, "the plain app is loaded")
    for param in READS:
        path = param.values[0].replace("{id}", metered)  # type: ignore[union-attr]
        for method in ("GET", "HEAD"):
            lane = await served.client.request(method, path)
            app = await plain.request(method, path)
            assert (lane.status, lane.content_type) == (app.status, app.content_type), path
            lane_body, app_body = await lane.read(), await app.read()
            if method == "HEAD" or lane.content_type == "application/json":
                assert lane_body == app_body, path
            else:  # problems: the same but for the request's own instance urn
                lane_problem, app_problem = (
                    await lane.json(content_type=None),
                    await app.json(content_type=None),
                )
                lane_problem.pop("instance"), app_problem.pop("instance")
                assert lane_problem == app_problem, path
            assert (
                lane.headers["Allotment-Ledger-Version"] == app.headers["Allotment-Ledger-Version"]
            )


@pytest.mark.parametrize(("path", "answered"), READS)
async def test_the_lane_answers_only_plain_cached_reads(
    seeder: Seeder, start_sidecar: StartSidecar, clock: Clock, path: str, answered: bool
) -> None:
    """A plain read of something found is answered in the lane; anything else reaches the app."""
    metered = seed(seeder)
    served = await start_sidecar()
    reached: list[str] = []

    async def app(request: web.BaseRequest) -> web.StreamResponse:
        reached.append(request.path)
        return web.Response(status=599)

    lane = FastLane(served.app, app)
    path = path.replace("{id}", metered)
    response = await lane(make_mocked_request("GET", path))
    assert (reached == []) is answered
    if answered:
        assert response.status == 200
        assert response.headers["Allotment-Ledger-Version"] == str(seeder.head())
    head = await lane(make_mocked_request("HEAD", path))
    assert head.status == 599  # HEAD is the app's: it sends the headers without the body


async def test_a_view_not_loaded_sends_every_read_to_the_app(ledger_url: str) -> None:
    """Before the first load (or past the staleness budget) the app decides: 503, whenStale."""
    app = create_app(SidecarSettings(ledger_url, NS), View(NS, CoreValueEngine(), freeze_gc=False))
    reached: list[str] = []

    async def fallback(request: web.BaseRequest) -> web.StreamResponse:
        reached.append(request.path)
        return web.Response(status=599)

    path = "/api/v1/subjects/sub-a/entitlements/sso/value"
    assert (await FastLane(app, fallback)(make_mocked_request("GET", path))).status == 599
    assert reached == [path]
