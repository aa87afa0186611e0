"""POST /api/v1/events over real HTTP, on SQLite and PostgreSQL: validation, atomic batches,
dedup, the body limit, 503 while the ledger is unreachable, and read-your-writes."""

from __future__ import annotations

import json
import socket
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from allotment.ledger.core.model import EntitlementType
from allotment.ledger.core.timeutil import format_rfc3339
from allotment.ledger.storage import feed
from allotment.ledger.storage.engine import Ledger
from allotment.ledger.storage.schema import UsageEventRow
from allotment.sidecar.ingest import INGESTION, LedgerUnavailableError
from allotment.sidecar.keys import FOLLOWER
from tests.sidecar.conftest import Clock, Sidecar, StartSidecar
from tests.sidecar.seed import Seeder

VALUE = "/api/v1/subjects/customer-1/entitlements/gpt_4_tokens/value"
SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"


@pytest.fixture(autouse=True)
def _mid_minute(clock: Clock) -> None:
    """Read at 00:00:30: a value read at an instant counts usage up to its next minute."""
    clock.advance(timedelta(seconds=30))


def seed(seeder: Seeder) -> None:
    """customer-1 (subject sub-a) with 1000 gpt_4_tokens a month: tokens of gpt-4 prompts."""
    seeder.meter("tokens", group_by={"model": "$.model"})
    seeder.feature("gpt_4_tokens", "tokens", filters={"model": "gpt-4"})
    seeder.customer("customer-1", ["sub-a"])
    metered = seeder.entitlement("customer-1", "gpt_4_tokens", EntitlementType.METERED)
    seeder.grant(metered, "1000", recurrence="MONTH")


def event(n: int, tokens: Any = 10, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"e-{n}",
        "source": "tests",
        "type": "prompt",
        "subject": "sub-a",
        "data": {"tokens": tokens, "model": "gpt-4"},
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not DROP}


DROP = object()


def stored_events(ledger: Ledger) -> list[tuple[str, str]]:
    with ledger.read() as conn:
        rows = conn.execute(select(UsageEventRow.source, UsageEventRow.event_id)).all()
    return sorted((row.source, row.event_id) for row in rows)


async def post(sidecar: Sidecar, body: Any, content_type: str) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await sidecar.post("/api/v1/events", data=data, headers={"Content-Type": content_type})


async def usage_of(sidecar: Sidecar) -> Decimal:
    status, body, _ = await sidecar.get(VALUE)
    assert status == 200, body
    return Decimal(str(body["usage"]))


@pytest.mark.parametrize(
    ("content_type", "body", "usage"),
    [
        pytest.param(SINGLE, event(1, 7), 7, id="cloudevents-single"),
        pytest.param(BATCH, [event(1, 7), event(2, 5)], 12, id="cloudevents-batch"),
        pytest.param("application/json", event(1, 7), 7, id="json-single"),
        pytest.param("application/json", [event(1, 7), event(2, 5)], 12, id="json-array"),
        pytest.param(f"{SINGLE}; charset=utf-8", event(1, 7), 7, id="with-charset"),
        pytest.param(BATCH, [event(1, 2.5), event(2, "0.25")], Decimal("2.75"), id="decimals"),
        pytest.param(BATCH, [event(1, 7), event(2, 9, data={"tokens": 9})], 7, id="filtered-out"),
        pytest.param(BATCH, [], 0, id="empty-batch"),
    ],
)
async def test_accepted_bodies_are_committed_and_counted(
    seeder: Seeder,
    start_sidecar: StartSidecar,
    ledger: Ledger,
    content_type: str,
    body: Any,
    usage: Any,
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    status, answer, _ = await post(sidecar, body, content_type)
    assert (status, answer) == (204, None)
    sent = body if isinstance(body, list) else [body]
    assert stored_events(ledger) == sorted(("tests", e["id"]) for e in sent)
    assert await usage_of(sidecar) == Decimal(str(usage))


@pytest.mark.parametrize(
    ("body", "index", "field", "words"),
    [
        pytest.param([event(1), event(2, id=DROP)], 1, "id", "id is required", id="no-id"),
        pytest.param([event(1, source="")], 0, "source", "non-empty", id="empty-source"),
        pytest.param([event(1, type=7)], 0, "type", "non-empty string", id="type-not-string"),
        pytest.param(
            [event(1, subject=DROP)], 0, "subject", "subject is required", id="no-subject"
        ),
        pytest.param([event(1, specversion="0.3")], 0, "specversion", '"1.0"', id="specversion"),
        pytest.param([event(1, specversion=DROP)], 0, "specversion", '"1.0"', id="no-specversion"),
        pytest.param([event(1, time="yesterday")], 0, "time", "RFC 3339", id="time-not-rfc3339"),
        pytest.param(
            [event(1, time="2026-11-02T10:00:00")], 0, "time", "RFC 3339", id="time-without-zone"
        ),
        pytest.param(
            [event(1), event(2), event(3, time="2026-09-01T00:00:00Z")],
            2,
            "time",
            "older than the 32-day horizon",
            id="time-older-than-horizon",
        ),
        pytest.param([event(1, data="tokens=5")], 0, "data", "JSON object", id="data-string"),
        pytest.param([event(1, data=[1, 2])], 0, "data", "JSON object", id="data-array"),
        pytest.param(
            [event(1, datacontenttype="text/plain")],
            0,
            "datacontenttype",
            "application/json",
            id="datacontenttype",
        ),
        pytest.param([event(1), "not an event"], 1, "", "JSON object", id="not-an-object"),
    ],
)
async def test_an_invalid_event_refuses_the_whole_batch_naming_its_index(
    seeder: Seeder,
    start_sidecar: StartSidecar,
    ledger: Ledger,
    body: list[Any],
    index: int,
    field: str,
    words: str,
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    status, problem, headers = await post(sidecar, body, BATCH)
    assert status == 400
    assert headers["Content-Type"].startswith("application/problem+json")
    assert problem["extensions"] == {"index": index, "field": field}
    assert f"event {index}: " in problem["detail"]
    assert words in problem["detail"]
    assert stored_events(ledger) == []
    assert await usage_of(sidecar) == 0


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        pytest.param(event(1), "text/plain", "content type text/plain is not accepted", id="type"),
        pytest.param(event(1), "", "content type none is not accepted", id="no-type"),
        pytest.param(b"{not json", SINGLE, "not JSON", id="not-json"),
        pytest.param(b'{"tokens": NaN}', SINGLE, "NaN is not a JSON number", id="nan"),
        pytest.param([event(1)], SINGLE, "must be one CloudEvent", id="array-as-single"),
        pytest.param(event(1), BATCH, "must be a JSON array", id="object-as-batch"),
        pytest.param(b"42", "application/json", "CloudEvent object or an array", id="number"),
    ],
)
async def test_a_body_that_is_no_event_is_refused(
    seeder: Seeder,
    start_sidecar: StartSidecar,
    ledger: Ledger,
    body: Any,
    content_type: str,
    words: str,
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    status, problem, _ = await post(sidecar, body, content_type)
    assert status == 400
    assert words in problem["detail"]
    assert stored_events(ledger) == []


async def test_time_is_stamped_with_the_app_clock_when_absent(
    seeder: Seeder, start_sidecar: StartSidecar, ledger: Ledger, clock: Clock
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    at = "2026-11-01T12:34:56Z"
    status, _, _ = await post(sidecar, [event(1), event(2, time=at)], BATCH)
    assert status == 204
    with ledger.read() as conn:
        rows = dict(conn.execute(select(UsageEventRow.event_id, UsageEventRow.time)).all())
    assert format_rfc3339(rows["e-1"]) == format_rfc3339(clock.now)
    assert format_rfc3339(rows["e-2"]) == at


async def test_duplicates_are_acknowledged_and_counted_once(
    seeder: Seeder, start_sidecar: StartSidecar, ledger: Ledger
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    batch = [event(1, 100), event(2, 20)]
    assert (await post(sidecar, batch, BATCH))[0] == 204
    again = [event(1, 999), event(2, 20), event(3, 3), event(3, 5000)]
    assert (await post(sidecar, again, BATCH))[0] == 204
    assert (await post(sidecar, event(3, 3), SINGLE))[0] == 204
    assert stored_events(ledger) == [("tests", "e-1"), ("tests", "e-2"), ("tests", "e-3")]
    assert await usage_of(sidecar) == 123
    metrics = (await (await sidecar.client.get("/metrics")).text()).splitlines()
    assert 'allotment_sidecar_events_total{outcome="stored"} 3.0' in metrics
    assert 'allotment_sidecar_events_total{outcome="duplicate"} 4.0' in metrics


async def test_an_event_no_meter_evaluates_is_stored_not_counted(
    seeder: Seeder, start_sidecar: StartSidecar, ledger: Ledger
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    body = [event(1, type="unknown-type"), event(2, data={"model": "gpt-4"})]
    assert (await post(sidecar, body, BATCH))[0] == 204
    assert stored_events(ledger) == [("tests", "e-1"), ("tests", "e-2")]
    assert await usage_of(sidecar) == 0
    metrics = (await (await sidecar.client.get("/metrics")).text()).splitlines()
    assert "allotment_sidecar_events_uncounted_total 2.0" in metrics
    _, status, _ = await sidecar.get("/status")
    assert status["ingestion"]["eventsNotCounted"] == 2
    reasons = {item["id"]: item["reason"] for item in status["ingestion"]["recentNotCounted"]}
    assert reasons == {
        "e-1": "no meter has event type 'unknown-type'",
        "e-2": "meter tokens: $.tokens is missing or not a number",
    }


async def test_a_body_over_the_limit_is_413_and_stores_nothing(
    seeder: Seeder, start_sidecar: StartSidecar, ledger: Ledger
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    limit = sidecar.app[INGESTION].config.max_body_bytes
    padding = "x" * 200
    batch = [event(n, data={"tokens": 1, "model": "gpt-4", "pad": padding}) for n in range(6000)]
    data = json.dumps(batch).encode()
    assert len(data) > limit
    status, problem, _ = await post(sidecar, data, BATCH)
    assert status == 413
    assert "smaller batches" in problem["detail"]
    assert stored_events(ledger) == []


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_unreachable_ledger_is_503_with_retry_after(
    ledger_url: str, start_sidecar: StartSidecar, tmp_path: Any
) -> None:
    if ledger_url.startswith("sqlite"):
        unreachable = f"sqlite:///{tmp_path}/no/such/folder/ledger.db"
    else:
        head, _, tail = ledger_url.rpartition("@")
        database = tail.split("/", 1)[1]
        unreachable = f"{head}@127.0.0.1:{_closed_port()}/{database}"
    sidecar = await start_sidecar(wait_ready=False, database_url=unreachable)
    status, problem, headers = await post(sidecar, [event(1)], BATCH)
    assert status == 503
    assert headers["Retry-After"] == "1"
    assert "nothing was stored" in problem["detail"]


class _FailingWriter:
    def commit(self, *args: Any, **kwargs: Any) -> Any:
        raise LedgerUnavailableError("OperationalError: the connection was closed")

    def transact(self, *args: Any, **kwargs: Any) -> Any:
        raise LedgerUnavailableError("OperationalError: the connection was closed")

    def close(self) -> None:
        pass


async def test_a_failed_commit_is_503_and_the_retry_counts_once(
    seeder: Seeder, start_sidecar: StartSidecar, ledger: Ledger
) -> None:
    seed(seeder)
    sidecar = await start_sidecar()
    ingestion = sidecar.app[INGESTION]
    real = ingestion.writer
    ingestion.writer = _FailingWriter()
    status, _, headers = await post(sidecar, [event(1, 40)], BATCH)
    assert (status, headers["Retry-After"]) == (503, "1")
    assert stored_events(ledger) == []
    ingestion.writer = real
    assert (await post(sidecar, [event(1, 40)], BATCH))[0] == 204
    assert (await post(sidecar, [event(1, 40)], BATCH))[0] == 204
    assert await usage_of(sidecar) == 40


async def test_read_your_writes_and_the_feed_does_not_count_twice(
    seeder: Seeder, start_sidecar: StartSidecar, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(seeder)
    sidecar = await start_sidecar(poll_interval=timedelta(hours=1))
    await sidecar.caught_up(seeder.head())
    before = sidecar.view.position
    assert before is not None
    # Hold the feed back (PostgreSQL's NOTIFY would otherwise wake the follower at once).
    follower = sidecar.app[FOLLOWER]

    async def held_back() -> bool:
        return False

    monkeypatch.setattr(follower, "poll_once", held_back)
    status, _, _ = await post(sidecar, [event(1, 300), event(2, 5)], BATCH)
    assert status == 204
    # The next answer shows the usage although the view has not read the feed yet.
    with ledger.read() as conn:
        head = feed.feed_head(conn)
    assert sidecar.view.position == before < head
    assert await usage_of(sidecar) == 305
    monkeypatch.undo()
    # The feed brings the same bucket states back: nothing changes.
    await sidecar.caught_up(head)
    assert await usage_of(sidecar) == 305
    # A later event in the same minute bucket still adds (the state grew).
    assert (await post(sidecar, [event(3, 1)], BATCH))[0] == 204
    assert await usage_of(sidecar) == 306
    await sidecar.caught_up(head + 1)
    assert await usage_of(sidecar) == 306
