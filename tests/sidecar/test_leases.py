"""``consistency: Strict`` across three sidecars on one ledger, on SQLite and PostgreSQL:
``requestedUsage`` checks are approved only from leases, so together the sidecars never
approve more than the balance; Eventual features are unaffected."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from allotment.ledger.core.model import Consistency, EntitlementType, Feature
from allotment.ledger.storage import leases, records
from allotment.ledger.storage.codec import FeatureRecord
from allotment.ledger.storage.engine import Ledger
from allotment.sidecar.ingest import INGESTION
from allotment.sidecar.keys import FOLLOWER
from allotment.sidecar.leases import LEASES
from tests.sidecar.conftest import Clock, Sidecar, StartSidecar
from tests.sidecar.seed import NS, Seeder

VALUE = "/api/v1/subjects/customer-1/entitlements/gpt_4_tokens/value"
SOFT = "/api/v1/subjects/customer-1/entitlements/soft_tokens/value"
EVENTS = "/api/v1/events"


@pytest.fixture(autouse=True)
def an_hour_into_the_day(clock: Clock) -> None:
    """Usage sent a minute ago lies in the current daily period."""
    clock.advance(timedelta(hours=1))


def seed(seeder: Seeder, consistency: Consistency = Consistency.STRICT) -> str:
    """customer-1: gpt_4_tokens (hard limit, 1000 tokens a day) and soft_tokens (soft limit)."""
    seeder.meter("tokens")
    for key in ("gpt_4_tokens", "soft_tokens"):
        with seeder.ledger.write() as conn:
            identity = records.create_identity(
                conn, NS, "Feature", key.replace("_", "-"), created_at=seeder.now
            ).id
        feature = Feature(key, key, meter_slug="tokens", consistency=consistency)
        seeder.put(FeatureRecord(identity, feature, seeder.now))
    seeder.customer("customer-1")
    hard = seeder.entitlement("customer-1", "gpt_4_tokens", EntitlementType.METERED, interval="DAY")
    seeder.grant(hard, "1000")
    soft = seeder.entitlement(
        "customer-1", "soft_tokens", EntitlementType.METERED, interval="DAY", soft_limit=True
    )
    seeder.grant(soft, "1000")
    return hard.id


async def approvals(sidecar: Sidecar, count: int, path: str = VALUE, n: int = 100) -> int:
    """Ask ``count`` times for ``n`` tokens; return how many answers had access."""
    approved = 0
    for _ in range(count):
        status, body, _ = await sidecar.get(f"{path}?requestedUsage={n}")
        assert status == 200, body
        approved += body["hasAccess"] is True
    return approved


async def use(sidecar: Sidecar, clock: Clock, tokens: int) -> None:
    event = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "app",
        "type": "prompt",
        "subject": "customer-1",
        "time": (clock.now - timedelta(minutes=1)).isoformat(),
        "data": {"tokens": tokens},
    }
    status, body, _ = await sidecar.post(EVENTS, json=[event])
    assert status == 204, body


@pytest.mark.parametrize(
    ("consistency", "approved"),
    [
        pytest.param(Consistency.EVENTUAL, 36, id="eventual-every-check-sees-the-whole-balance"),
        pytest.param(Consistency.STRICT, 10, id="strict-the-three-approve-the-balance-once"),
    ],
)
async def test_three_sidecars_approve_requested_usage(
    seeder: Seeder, start_sidecar: StartSidecar, consistency: Consistency, approved: int
) -> None:
    seed(seeder, consistency)
    sidecars = [await start_sidecar() for _ in range(3)]
    total = 0
    for _ in range(4):
        for sidecar in sidecars:
            total += await approvals(sidecar, 3)
    assert total == approved


async def test_strict_usage_never_exceeds_the_balance_when_clients_check_then_post(
    seeder: Seeder, start_sidecar: StartSidecar, clock: Clock, ledger: Ledger
) -> None:
    seed(seeder)
    sidecars = [await start_sidecar() for _ in range(3)]
    for _ in range(8):
        for sidecar in sidecars:
            if await approvals(sidecar, 1, n=70):
                await use(sidecar, clock, 70)
        clock.advance(timedelta(seconds=2))
        for sidecar in sidecars:
            await sidecar.app[LEASES].sync(clock.now)
    await sidecars[0].caught_up(seeder.head())
    status, body, _ = await sidecars[0].get(VALUE)
    assert status == 200
    assert body["usage"] <= 1000
    assert body["usage"] >= 1000 - 3 * 70 - 3 * 70  # near the limit, not far below it


async def test_a_returned_lease_frees_what_its_sidecar_did_not_approve(
    seeder: Seeder, start_sidecar: StartSidecar, clock: Clock
) -> None:
    seed(seeder)
    first, second = await start_sidecar(), await start_sidecar()
    assert await approvals(first, 1) == 1
    await first.client.close()  # SIGTERM: the app's cleanup returns its lease
    # The approval still in flight stays claimed until it settles; the rest is free.
    approved = 0
    for _ in range(12):
        if await approvals(second, 1):
            approved += 1
            await use(second, clock, 100)
    assert approved == 9
    # Its usage never came: once settled, the first sidecar's approval frees its 100.
    clock.advance(timedelta(seconds=6))
    assert await approvals(second, 3) == 1


async def test_a_lease_belongs_to_its_usage_period(
    seeder: Seeder, start_sidecar: StartSidecar, clock: Clock
) -> None:
    seed(seeder)
    first, second = await start_sidecar(), await start_sidecar()
    assert await approvals(first, 12) == 10
    assert await approvals(second, 2) == 0
    clock.advance(timedelta(days=1))  # the next daily period: nothing used, leases of before lapse
    assert await approvals(second, 12) == 10


async def test_a_dead_sidecars_lease_returns_when_it_expires(
    seeder: Seeder, start_sidecar: StartSidecar, clock: Clock, ledger: Ledger
) -> None:
    entitlement_id = seed(seeder)
    first, second = await start_sidecar(), await start_sidecar()
    assert await approvals(first, 10) == 10
    first.app[LEASES].held.clear()  # it forgets everything, as kill -9 would, and never returns
    assert await approvals(second, 2) == 0
    clock.advance(timedelta(seconds=16))
    assert await approvals(second, 12) == 10
    period_start = clock.now.replace(hour=0, minute=0, second=0, microsecond=0)
    with ledger.read() as conn:
        claimed = leases.outstanding(conn, NS, entitlement_id, period_start, now=clock.now)
    assert claimed == 1000  # the second sidecar's leases only


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(VALUE, id="no-requested-usage"),
        pytest.param(SOFT + "?requestedUsage=100", id="soft-limit"),
        pytest.param(VALUE + "?requestedUsage=100&time=2026-11-01T12:00:00Z", id="past-time"),
    ],
)
async def test_checks_outside_strict_take_no_lease(
    seeder: Seeder, start_sidecar: StartSidecar, path: str
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    for _ in range(15):
        status, body, _ = await sidecar.get(path)
        assert (status, body["hasAccess"]) == (200, True)
    assert sidecar.app[LEASES].round_trips == 0


async def test_strict_ofrep_evaluation_is_gated_by_leases(
    seeder: Seeder, start_sidecar: StartSidecar
) -> None:
    seed(seeder)
    first, second = await start_sidecar(), await start_sidecar()
    answers = []
    for sidecar in (first, second) * 6:
        status, body, _ = await sidecar.post(
            "/ofrep/v1/evaluate/flags/gpt_4_tokens",
            json={"context": {"targetingKey": "customer-1", "requestedUsage": 200}},
        )
        assert status == 200, body
        answers.append(body["value"])
    assert answers.count(True) == 5


async def test_a_strict_check_is_503_while_the_ledger_cannot_reserve(
    seeder: Seeder, start_sidecar: StartSidecar
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    sidecar.app[INGESTION].writer.close()
    status, problem, headers = await sidecar.get(f"{VALUE}?requestedUsage=100")
    assert (status, headers["Retry-After"]) == (503, "1")
    assert "consistency: Strict" in problem["detail"]
    status, body, _ = await sidecar.get(VALUE)
    assert (status, body["hasAccess"]) == (200, True)


async def test_leases_never_change_the_balance(seeder: Seeder, start_sidecar: StartSidecar) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    assert await approvals(sidecar, 3) == 3
    status, body, _ = await sidecar.get(VALUE)
    assert (status, body["balance"], body["usage"]) == (200, 1000, 0)
    assert sidecar.app[LEASES].status()["reservedRemaining"] == Decimal(100)


async def test_only_a_sidecars_own_events_settle_its_approvals(
    seeder: Seeder, start_sidecar: StartSidecar, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(seeder)
    first, second, third = await start_sidecar(), await start_sidecar(), await start_sidecar()
    assert await approvals(first, 3) == 3  # a lease of 400, 300 of it approved

    async def held_back() -> bool:
        return False

    # The first sidecar has not read the second's usage when it commits its own, in the same
    # minute bucket: the bucket's new total holds both.
    monkeypatch.setattr(first.app[FOLLOWER], "poll_once", held_back)
    await use(second, clock, 500)  # not checked (ungated)
    await use(first, clock, 100)  # the usage of one approval
    await first.app[LEASES].sync(clock.now)
    # 1000 - 600 used - 200 still approved in flight - 100 unapproved in the first's lease.
    await third.caught_up(seeder.head())
    assert await approvals(third, 3) == 1
