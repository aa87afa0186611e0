"""Operations over real HTTP: probes, /status, /metrics, reloads on a new epoch, /openapi.json."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from allotment.ledger.core.model import EntitlementType
from allotment.ledger.storage import feed, migrate
from allotment.sidecar.app import GIL_SWITCH_SECONDS, create_app, create_probe_app
from allotment.sidecar.compute import CoreValueEngine
from allotment.sidecar.keys import FOLLOWER
from allotment.sidecar.ledger_source import StorageSource
from allotment.sidecar.metrics import SidecarMetrics
from allotment.sidecar.settings import SidecarSettings
from allotment.sidecar.view import View
from tests.sidecar.conftest import Clock, StartSidecar, wait_until
from tests.sidecar.seed import NS, T0, Seeder

Client = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


def seed(seeder: Seeder) -> str:
    """Seed customer-1 (subject sub-a): metered gpt_4_tokens (100, 40 used), boolean sso."""
    seeder.meter("tokens")
    seeder.feature("gpt_4_tokens", "tokens")
    seeder.feature("sso")
    seeder.customer("customer-1", ["sub-a"])
    metered = seeder.entitlement("customer-1", "gpt_4_tokens", EntitlementType.METERED)
    seeder.grant(metered, "100")
    seeder.entitlement("customer-1", "sso", EntitlementType.BOOLEAN, interval=None)
    seeder.events("sub-a", (T0 + timedelta(hours=1), {"tokens": 40}))
    return metered.id


async def test_readyz_waits_for_the_first_load(
    ledger_url: str, aiohttp_client: Client, clock: Clock
) -> None:
    """An unmigrated ledger: live, not ready, the reason in /status; ready once migrated."""
    settings = SidecarSettings(
        ledger_url, NS, poll_interval=timedelta(milliseconds=20), probe_host="127.0.0.1"
    )
    view = View(NS, CoreValueEngine(), freeze_gc=False)
    app = create_app(settings, view, open_source=StorageSource.open, clock=clock)
    client = await aiohttp_client(app)
    assert (await client.get("/livez")).status == 200
    response = await client.get("/readyz")
    assert response.status == 503
    assert response.content_type == "application/problem+json"
    value = await client.get("/api/v1/subjects/sub-a/entitlements/sso/value")
    assert value.status == 503
    await wait_until(lambda: app[FOLLOWER].last_error is not None, "the load fails")
    status = await (await client.get("/status")).json()
    assert status["ready"] is False
    assert "allotment migrate" in status["ledger"]["lastError"]

    migrate.upgrade(ledger_url)
    await wait_until(lambda: view.ready, "the view is loaded")
    assert (await client.get("/readyz")).status == 200


async def test_status_reports_version_epoch_lag_and_counts(
    seeder: Seeder, start_sidecar: StartSidecar
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    status, body, _ = await sidecar.get("/status")
    assert status == 200
    with seeder.ledger.read() as conn:
        epoch = feed.ledger_epoch(conn)
    ledger = body["ledger"]
    assert ledger["version"] == seeder.head()
    assert ledger["epoch"] == epoch
    assert ledger["contractVersion"] == feed.CONTRACT_VERSION
    assert ledger["stale"] is False
    assert ledger["lagSeconds"] >= 0
    assert ledger["lastSync"] is not None
    assert ledger["details"]["schemaRevision"]
    assert body["loaded"] == {
        "customers": 1,
        "features": 2,
        "meters": 1,
        "entitlements": 2,
        "grants": 1,
        "usage_buckets": 1,
    }


async def test_metrics_on_both_ports(
    seeder: Seeder, start_sidecar: StartSidecar, aiohttp_client: Client
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    await sidecar.get("/api/v1/subjects/sub-a/entitlements/gpt_4_tokens/value")
    probe = await aiohttp_client(create_probe_app(sidecar.app))
    for client in (sidecar.client, probe):
        response = await client.get("/metrics")
        assert response.status == 200
        text = await response.text()
        assert (
            'allotment_sidecar_request_seconds_bucket{le="0.0001",route="/api/v1/subjects/{subject}/entitlements/{entitlement}/value"}'
            in text
        )
        assert "allotment_sidecar_sync_lag_seconds" in text
        assert "allotment_sidecar_reloads_total 1.0" in text
        assert 'allotment_sidecar_loaded_records{kind="entitlements"} 2.0' in text
        assert "allotment_sidecar_gc_pause_seconds" in text
    assert (await probe.get("/readyz")).status == 200
    assert (await probe.get("/livez")).status == 200
    assert (await probe.get("/api/v1/subjects/sub-a/entitlements/sso/value")).status == 404


async def test_a_new_ledger_epoch_reloads_the_view(
    seeder: Seeder, start_sidecar: StartSidecar
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    with seeder.ledger.write() as conn:
        epoch = feed.rotate_epoch(conn)
    seeder.feature("extra")
    seeder.entitlement("customer-1", "extra", EntitlementType.BOOLEAN, interval=None)
    await sidecar.caught_up(seeder.head())
    await wait_until(lambda: sidecar.view.epoch == epoch, "the view reloads")
    assert sidecar.view.epoch == epoch
    assert sidecar.view.reloads == 1
    status, body, _ = await sidecar.get("/api/v1/subjects/sub-a/entitlements/extra/value")
    assert (status, body) == (200, {"hasAccess": True})


async def test_subject_keys_edit_moves_resolution(
    seeder: Seeder, start_sidecar: StartSidecar
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    customer = sidecar.view.customer("customer-1")
    assert customer is not None
    edited = replace(customer, customer=replace(customer.customer, subject_keys=("sub-z",)))
    await sidecar.caught_up(seeder.put(edited))
    assert (await sidecar.get("/api/v1/subjects/sub-a/entitlements/sso/value"))[0] == 404
    status, body, _ = await sidecar.get("/api/v1/subjects/sub-z/entitlements/gpt_4_tokens/value")
    assert (status, body["usage"]) == (200, 0)  # usage was attributed to sub-a, no longer a key


# --- the OpenAPI document against the reference shapes (openmeter-api.md §2, §6, §7) ---------

_VALUE = {"hasAccess", "balance", "usage", "overage", "totalAvailableGrantAmount", "config"}
_COMMON = {
    "type",
    "id",
    "featureId",
    "featureKey",
    "subjectKey",
    "metadata",
    "annotations",
    "activeFrom",
    "activeTo",
    "createdAt",
    "updatedAt",
    "deletedAt",
    "currentUsagePeriod",
    "usagePeriod",
}
_COMMON_REQUIRED = {
    "type",
    "id",
    "featureId",
    "featureKey",
    "subjectKey",
    "activeFrom",
    "createdAt",
    "updatedAt",
}
_SEGMENT = {
    "period",
    "usage",
    "overage",
    "balanceAtStart",
    "grantBalancesAtStart",
    "balanceAtEnd",
    "grantBalancesAtEnd",
    "grantUsages",
}
REFERENCE: dict[str, tuple[set[str], set[str]]] = {
    "EntitlementValue": (_VALUE, {"hasAccess"}),
    "EntitlementValueV2": (_VALUE | {"grantBalances"}, {"hasAccess"}),
    "EntitlementMetered": (
        _COMMON
        | {
            "isSoftLimit",
            "isUnlimited",
            "issueAfterReset",
            "issueAfterResetPriority",
            "preserveOverageAtReset",
            "measureUsageFrom",
            "lastReset",
        },
        _COMMON_REQUIRED
        | {"isSoftLimit", "measureUsageFrom", "lastReset", "currentUsagePeriod", "usagePeriod"},
    ),
    "EntitlementStatic": (_COMMON | {"config"}, _COMMON_REQUIRED | {"config"}),
    "EntitlementBoolean": (_COMMON, _COMMON_REQUIRED),
    "WindowedBalanceHistory": (
        {"windowedHistory", "burndownHistory"},
        {"windowedHistory", "burndownHistory"},
    ),
    "BalanceHistoryWindow": (
        {"period", "usage", "balanceAtStart"},
        {"period", "usage", "balanceAtStart"},
    ),
    "GrantBurnDownHistorySegment": (_SEGMENT, _SEGMENT),
    "Period": ({"from", "to"}, {"from", "to"}),
    "RecurringPeriod": (
        {"interval", "intervalISO", "anchor"},
        {"interval", "intervalISO", "anchor"},
    ),
    "CustomerAccess": ({"entitlements"}, {"entitlements"}),
    "Problem": (
        {"type", "title", "status", "detail", "instance", "extensions"},
        {"type", "title", "status", "detail", "instance"},
    ),
}
OPERATIONS = {
    "/api/v1/subjects/{subjectIdOrKey}/entitlements": "#/components/schemas/Entitlement",
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/value": "#/components/schemas/EntitlementValue",
    "/api/v1/subjects/{subjectIdOrKey}/entitlements/{entitlementId}/history": "#/components/schemas/WindowedBalanceHistory",
    "/api/v1/customers/{customerIdOrKey}/entitlements/{featureKey}/value": "#/components/schemas/EntitlementValue",
    "/api/v1/customers/{customerIdOrKey}/access": "#/components/schemas/CustomerAccess",
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/value": "#/components/schemas/EntitlementValueV2",
    "/api/v2/customers/{customerIdOrKey}/entitlements/{entitlementIdOrFeatureKey}/history": "#/components/schemas/WindowedBalanceHistory",
}


async def test_openapi_matches_the_reference_shapes(
    seeder: Seeder, start_sidecar: StartSidecar
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    status, document, _ = await sidecar.get("/openapi.json")
    assert status == 200
    schemas = document["components"]["schemas"]
    for name, (fields, required) in REFERENCE.items():
        assert set(schemas[name]["properties"]) == fields, name
        assert set(schemas[name]["required"]) == required, name
    for path, ref in OPERATIONS.items():
        ok = document["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        schema = ok["schema"]
        assert ref in (schema.get("$ref"), schema.get("items", {}).get("$ref")), path


@pytest.mark.parametrize(
    ("path", "schema"),
    [
        pytest.param("/api/v1/subjects/sub-a/entitlements", "Entitlement", id="list"),
        pytest.param(
            "/api/v1/subjects/sub-a/entitlements/gpt_4_tokens/value",
            "EntitlementValue",
            id="value-v1",
        ),
        pytest.param(
            "/api/v2/customers/customer-1/entitlements/gpt_4_tokens/value",
            "EntitlementValueV2",
            id="value-v2",
        ),
        pytest.param("/api/v1/customers/customer-1/access", "CustomerAccess", id="access"),
        pytest.param(
            "/api/v2/customers/customer-1/entitlements/gpt_4_tokens/history?windowSize=DAY",
            "WindowedBalanceHistory",
            id="history",
        ),
        pytest.param("/api/v1/subjects/nobody/entitlements", "Problem", id="problem"),
    ],
)
async def test_responses_validate_against_the_openapi_schemas(
    seeder: Seeder, start_sidecar: StartSidecar, path: str, schema: str
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    _, document, _ = await sidecar.get("/openapi.json")
    _, body, _ = await sidecar.get(path)
    ref = {"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
    instances = body if isinstance(body, list) else [body]
    assert instances
    for instance in instances:
        jsonschema.validate(instance, ref)


async def test_notifications_wake_the_follower_on_postgresql(
    seeder: Seeder, start_sidecar: StartSidecar
) -> None:
    """Polling once an hour: on PostgreSQL a NOTIFY brings a new grant; SQLite only polls."""
    seed(seeder)
    sidecar = await start_sidecar(poll_interval=timedelta(hours=1))
    _, status, _ = await sidecar.get("/status")
    postgresql = seeder.ledger.dialect == "postgresql"
    assert status["ledger"]["notifications"] is postgresql
    if not postgresql:
        return
    entitlement = sidecar.view.active_entitlement("customer-1", "gpt_4_tokens", T0)
    assert entitlement is not None
    await wait_until(lambda: sidecar.app[FOLLOWER].listening, "the listener runs")
    await asyncio.sleep(0.5)  # let the listener's own first wake-up poll pass
    position = seeder.grant(entitlement, "50") and seeder.head()
    await wait_until(
        lambda: (sidecar.view.position or 0) >= position, "the NOTIFY wakes the follower"
    )
    _, body, _ = await sidecar.get("/api/v1/subjects/sub-a/entitlements/gpt_4_tokens/value")
    assert body["balance"] == 110


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        pytest.param("GET", "/api/v1/nothing/here", 404, None, id="unknown-path"),
        pytest.param("GET", "/", 404, None, id="root"),
        pytest.param(
            "PATCH",
            "/api/v1/subjects/sub-a/entitlements/gpt_4_tokens/value",
            405,
            {"GET", "HEAD"},
            id="method-not-served-on-value",
        ),
        pytest.param("PUT", "/status", 405, {"GET", "HEAD"}, id="method-not-served-on-status"),
    ],
)
async def test_what_is_not_served_is_a_problem_naming_the_document(
    seeder: Seeder,
    start_sidecar: StartSidecar,
    method: str,
    path: str,
    status: int,
    allow: set[str] | None,
) -> None:
    """404 or 405 (with Allow) as problem+json, pointing at /openapi.json, with freshness."""
    seed(seeder)
    sidecar = await start_sidecar()
    response = await sidecar.client.request(method, path)
    assert response.status == status
    assert response.content_type == "application/problem+json"
    body = await response.json(content_type=None)
    assert body["status"] == status
    assert body["detail"] == f"{method} {path} is not served by this sidecar; see /openapi.json"
    if allow is None:
        assert "Allow" not in response.headers
    else:
        assert set(response.headers["Allow"].split(",")) == allow
    if path.startswith("/api/"):
        assert response.headers["Allotment-Ledger-Version"] == str(seeder.head())


async def test_the_loop_waits_briefly_for_the_gil_while_serving(
    aiohttp_client: Client,
) -> None:
    """The follower decodes in a worker thread: while the app runs, the GIL switches fast."""
    before = 0.005  # Python's default (an app left running by another test may have lowered it)
    sys.setswitchinterval(before)
    app = create_app(SidecarSettings("sqlite://", NS), View(NS, CoreValueEngine(), freeze_gc=False))
    client = await aiohttp_client(app)
    assert sys.getswitchinterval() <= GIL_SWITCH_SECONDS < before
    await client.close()
    assert sys.getswitchinterval() == before


def test_a_gc_pause_is_the_collectors_cpu_time_not_the_threads_waiting() -> None:
    metrics = SidecarMetrics()
    metrics.gc_callback("start", {"generation": 0})
    time.sleep(0.05)  # waiting (for the GIL, for the core) is not the collector's work
    metrics.gc_callback("stop", {"generation": 0, "collected": 0})
    assert metrics.gc_pause_max < 0.01

    metrics.gc_callback("start", {"generation": 2})
    started = time.thread_time()
    while time.thread_time() - started < 0.02:  # the collector's own work
        pass
    metrics.gc_callback("stop", {"generation": 2, "collected": 0})
    assert 0.02 <= metrics.gc_pause_max < 1.0
    text = metrics.render().decode()
    assert 'allotment_sidecar_gc_pause_seconds_count{generation="2"} 1.0' in text
    assert 'allotment_sidecar_gc_pause_seconds_count{generation="0"} 1.0' in text
