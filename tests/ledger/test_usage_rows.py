"""The ledger rows ingestion writes for a varied sequence of batches, row for row, on both databases.

Every aggregation, group-by values present and missing, duplicates inside a batch and across
batches, the same id from another source, an event no meter counts, one some meters cannot
evaluate, a late event inside the horizon and a refused batch: the raw events, the buckets, the
distinct values and the feed's bucket states must be exactly these, whatever ingestion's
implementation.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allotment.ledger.core.model import Aggregation, Meter
from allotment.ledger.storage import feed, usage
from allotment.ledger.storage.engine import Ledger

NS = "team-rows"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)
METERS = (
    Meter("tokens", "prompt", Aggregation.SUM, "$.tokens", {"model": "$.model"}),
    Meter("prompts", "prompt", Aggregation.COUNT),
    Meter("last_tokens", "prompt", Aggregation.LATEST, "$.tokens"),
    Meter("users", "prompt", Aggregation.UNIQUE_COUNT, "$.user", {"model": "$.model"}),
)


def ev(
    event_id: str, at: timedelta, data: dict[str, Any], *, source: str = "app", kind: str = "prompt"
) -> usage.IncomingEvent:
    subject = data.pop("subject", "customer-1")
    return usage.IncomingEvent(event_id, source, kind, subject, T0 + at, data)


S = timedelta(seconds=1)
BATCH_1 = (
    ev("e1", 5 * S, {"tokens": 10, "model": "gpt-4", "user": "u1"}),
    ev("e2", 30 * S, {"tokens": Decimal("1.5"), "model": "gpt-3", "user": "u2"}),
    ev("e1", 6 * S, {"tokens": 999, "model": "gpt-4", "user": "u9"}),  # duplicate in the batch
    ev("e3", 61 * S, {"tokens": "7", "model": "gpt-4", "user": "u1", "subject": "customer-2"}),
    ev("e4", 10 * S, {"tokens": 1}, kind="other"),  # no meter has its type
    ev("e5", 20 * S, {"tokens": "many", "model": "gpt-4", "user": "u3"}),  # not a number
    ev("e6", 40 * S, {"tokens": 2, "user": 7}),  # no model: the empty group
)
BATCH_2 = (
    ev("e2", 31 * S, {"tokens": 500, "model": "gpt-3", "user": "u2"}),  # resent
    ev("e7", -timedelta(days=10), {"tokens": 4, "model": "gpt-4", "user": "u1"}),  # late
    ev("e8", 50 * S, {"tokens": 3, "model": "gpt-4", "user": "u1"}),
    ev("e1", 55 * S, {"tokens": Decimal("0.25"), "model": "gpt-4", "user": "u4"}, source="app2"),
    ev("e9", 15 * S, {"model": "gpt-4"}),  # no tokens, no user: counted by prompts only
)
REFUSED = (
    ev("e10", 0 * S, {"tokens": 1, "model": "gpt-4", "user": "u5"}),
    ev("e11", -timedelta(days=40), {"tokens": 1, "model": "gpt-4", "user": "u5"}),
)

# fmt: off
EVENTS = [
    # source, id, type, subject, time, data, counted (in the order they are stored)
    ("app", "e1", "prompt", "customer-1", "12:00:05", '{"model": "gpt-4", "tokens": 10, "user": "u1"}', True),
    ("app", "e2", "prompt", "customer-1", "12:00:30", '{"model": "gpt-3", "tokens": 1.5, "user": "u2"}', True),
    ("app", "e3", "prompt", "customer-2", "12:01:01", '{"model": "gpt-4", "tokens": "7", "user": "u1"}', True),
    ("app", "e4", "other", "customer-1", "12:00:10", '{"tokens": 1}', False),
    ("app", "e5", "prompt", "customer-1", "12:00:20", '{"model": "gpt-4", "tokens": "many", "user": "u3"}', True),
    ("app", "e6", "prompt", "customer-1", "12:00:40", '{"tokens": 2, "user": 7}', True),
    ("app", "e7", "prompt", "customer-1", "10-22 12:00:00", '{"model": "gpt-4", "tokens": 4, "user": "u1"}', True),
    ("app", "e8", "prompt", "customer-1", "12:00:50", '{"model": "gpt-4", "tokens": 3, "user": "u1"}', True),
    ("app", "e9", "prompt", "customer-1", "12:00:15", '{"model": "gpt-4"}', True),
    ("app2", "e1", "prompt", "customer-1", "12:00:55", '{"model": "gpt-4", "tokens": 0.25, "user": "u4"}', True),
]
BUCKETS = [
    # meter, subject, group key, minute, count, sum, latest time, latest value, distinct values
    ("last_tokens", "customer-1", "{}", "10-22 12:00", 1, "4", "10-22 12:00:00", "4", ()),
    ("last_tokens", "customer-1", "{}", "12:00", 5, "16.75", "12:00:55", "0.25", ()),
    ("last_tokens", "customer-2", "{}", "12:01", 1, "7", "12:01:01", "7", ()),
    ("prompts", "customer-1", "{}", "10-22 12:00", 1, "0", None, None, ()),
    ("prompts", "customer-1", "{}", "12:00", 7, "0", None, None, ()),
    ("prompts", "customer-2", "{}", "12:01", 1, "0", None, None, ()),
    ("tokens", "customer-1", '{"model":""}', "12:00", 1, "2", "12:00:40", "2", ()),
    ("tokens", "customer-1", '{"model":"gpt-3"}', "12:00", 1, "1.5", "12:00:30", "1.5", ()),
    ("tokens", "customer-1", '{"model":"gpt-4"}', "10-22 12:00", 1, "4", "10-22 12:00:00", "4", ()),
    ("tokens", "customer-1", '{"model":"gpt-4"}', "12:00", 3, "13.25", "12:00:55", "0.25", ()),
    ("tokens", "customer-2", '{"model":"gpt-4"}', "12:01", 1, "7", "12:01:01", "7", ()),
    ("users", "customer-1", '{"model":""}', "12:00", 1, "0", None, None, ("7",)),
    ("users", "customer-1", '{"model":"gpt-3"}', "12:00", 1, "0", None, None, ("u2",)),
    ("users", "customer-1", '{"model":"gpt-4"}', "10-22 12:00", 1, "0", None, None, ("u1",)),
    ("users", "customer-1", '{"model":"gpt-4"}', "12:00", 4, "0", None, None, ("u1", "u3", "u4")),
    ("users", "customer-2", '{"model":"gpt-4"}', "12:01", 1, "0", None, None, ("u1",)),
]
# fmt: on


def instant(text: str | None) -> datetime | None:
    """Read ``12:00:05`` (on T0's day) or ``10-22 12:00`` (a day of 2026) as an instant."""
    if text is None:
        return None
    day, _, clock = text.rpartition(" ")
    month, day_of_month = (int(part) for part in day.split("-")) if day else (T0.month, T0.day)
    hour, minute, *second = (int(part) for part in clock.split(":"))
    return datetime(2026, month, day_of_month, hour, minute, *second, tzinfo=UTC)


def amount(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def expected_buckets() -> list[tuple[Any, ...]]:
    return [
        (
            meter,
            subject,
            groups,
            instant(minute),
            count,
            Decimal(total),
            instant(latest_time),
            amount(latest_value),
            tuple(values),
        )
        for meter, subject, groups, minute, count, total, latest_time, latest_value, values in (
            BUCKETS
        )
    ]


def stored_events(conn: sa.Connection) -> list[tuple[Any, ...]]:
    table = sa.table(
        "usage_events",
        *(sa.column(name) for name in ("id", "namespace", "source", "event_id", "event_type")),
        *(sa.column(name) for name in ("subject", "data", "counted")),
        sa.column("time", usage._EVENTS.c.time.type),
        sa.column("received_at", usage._EVENTS.c.received_at.type),
    )
    rows = conn.execute(sa.select(table).where(table.c.namespace == NS).order_by(table.c.id)).all()
    assert {r.received_at for r in rows} == {NOW}
    return [
        (r.source, r.event_id, r.event_type, r.subject, r.time, r.data, r.counted) for r in rows
    ]


def stored_buckets(conn: sa.Connection) -> list[tuple[Any, ...]]:
    buckets, meters, values = usage._BUCKETS, usage._METERS, usage._VALUES
    distinct: dict[int, list[str]] = {}
    for row in conn.execute(sa.select(values).order_by(values.c.bucket_id, values.c.value)):
        distinct.setdefault(row.bucket_id, []).append(row.value)
    rows = conn.execute(
        sa.select(buckets, meters.c.slug)
        .join(meters, meters.c.id == buckets.c.meter_id)
        .where(buckets.c.namespace == NS)
    ).all()
    return sorted(
        (
            r.slug,
            r.subject,
            r.group_key,
            r.minute,
            r.event_count,
            r.value_sum,
            r.latest_time,
            r.latest_value,
            tuple(distinct.get(r.id, ())),
        )
        for r in rows
    )


@pytest.fixture
def recorded(ledger: Ledger) -> Ledger:
    with ledger.write() as conn:
        for number, meter in enumerate(METERS):
            usage.record_meter(
                conn, NS, meter.slug, meter, uid=f"u{number}", generation=1, acted_at=T0, now=NOW
            )
    return ledger


def ingest(ledger: Ledger, events: tuple[usage.IncomingEvent, ...]) -> usage.IngestOutcome:
    with ledger.write() as conn:
        return usage.ingest(conn, NS, events, received_at=NOW)


def test_the_ledger_holds_exactly_these_rows_after_varied_batches(recorded: Ledger) -> None:
    first = ingest(recorded, BATCH_1)
    second = ingest(recorded, BATCH_2)
    with pytest.raises(usage.EventRefusedError, match="event 1: "):
        ingest(recorded, REFUSED)

    assert (first.stored, first.duplicates) == (6, 1)
    assert [(u.index, u.id) for u in first.uncounted] == [(4, "e4")]
    assert (second.stored, second.duplicates, second.uncounted) == (4, 1, ())
    with recorded.read() as conn:
        events = stored_events(conn)
        buckets = stored_buckets(conn)
        entries = feed.read_feed(conn, NS, after=0)
    assert events == [
        (source, event_id, kind, subject, instant(at), data, counted)
        for source, event_id, kind, subject, at, data, counted in EVENTS
    ]
    assert buckets == expected_buckets()
    usage_entries = [e for e in entries if e.kind == usage.USAGE_CHANGE]
    assert [e.position for e in usage_entries] == [first.feed_position, second.feed_position]
    # The feed's last state of every bucket is the bucket as stored.
    latest: dict[tuple[Any, ...], usage.BucketState] = {}
    for entry in usage_entries:
        for payload in entry.payload["buckets"]:
            state = usage.BucketState.from_payload(payload)
            latest[(state.meter_slug, state.subject, state.groups, state.minute)] = state
    assert (
        sorted(
            (
                key[0],
                key[1],
                usage.group_key(dict(key[2])),
                key[3],
                s.event_count,
                s.value_sum,
                s.latest_time,
                s.latest_value,
                tuple(sorted(s.distinct)),
            )
            for key, s in latest.items()
        )
        == expected_buckets()
    )
    # The second batch's entry carries exactly the buckets it touched, in key order.
    touched = [(b["meter"], b["subject"], b["minute"]) for b in usage_entries[1].payload["buckets"]]
    assert len(touched) == 8


@pytest.mark.parametrize(
    ("slug", "filters", "expected"),
    [
        pytest.param("tokens", None, Decimal("16.75"), id="sum-all-groups"),
        pytest.param("tokens", {"model": "gpt-4"}, Decimal("13.25"), id="sum-filtered"),
        pytest.param("prompts", None, Decimal(7), id="count"),
        pytest.param("last_tokens", None, Decimal("0.25"), id="latest"),
    ],
)
def test_usage_read_back_after_varied_batches(
    recorded: Ledger, slug: str, filters: dict[str, str] | None, expected: Decimal
) -> None:
    ingest(recorded, BATCH_1)
    ingest(recorded, BATCH_2)
    with recorded.read() as conn:
        buckets = usage.read_buckets(
            conn, NS, slug, subjects=["customer-1"], filters=filters, start=T0, end=NOW
        )
    amounts = [b.amount for b in buckets]
    assert (amounts[-1] if slug == "last_tokens" else sum(amounts, Decimal(0))) == expected


@pytest.mark.parametrize(
    ("amounts", "expected"),
    [
        pytest.param(["0.1"] * 10, "1.0", id="tenths-add-exactly"),
        pytest.param(
            ["123456789012345678901234.5", "0.5"], "123456789012345678901235.0", id="large"
        ),
        pytest.param(["0.000000001", "-0.000000001", "2"], "2.000000000", id="tiny-and-negative"),
    ],
)
def test_a_bucket_adds_amounts_committed_one_by_one_exactly(
    recorded: Ledger, amounts: list[str], expected: str
) -> None:
    for number, value in enumerate(amounts):
        ingest(recorded, (ev(f"x{number}", S, {"tokens": Decimal(value), "model": "gpt-4"}),))
    with recorded.read() as conn:
        (bucket,) = usage.read_buckets(
            conn, NS, "tokens", subjects=["customer-1"], start=T0, end=NOW
        )
        entries = feed.read_feed(conn, NS, after=0)
    assert str(bucket.amount) == expected
    last = [b for b in entries[-1].payload["buckets"] if b["meter"] == "tokens"]
    assert [(b["valueSum"], b["eventCount"]) for b in last] == [(expected, len(amounts))]


_EVENT = st.tuples(
    st.sampled_from(["a", "b"]),  # source
    st.integers(0, 5),  # id
    st.sampled_from(["customer-1", "customer-2"]),
    st.integers(0, 179),  # second after T0
    st.sampled_from([Decimal("1"), Decimal("0.5"), Decimal("2.25"), "x"]),  # tokens
    st.sampled_from(["gpt-4", "gpt-3", None]),  # model
)
_NAMESPACES = iter(range(10**9))


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(st.lists(_EVENT, max_size=8), min_size=1, max_size=3))
def test_buckets_hold_what_the_first_copy_of_every_event_adds(
    ledger: Ledger, batches: list[list[tuple[Any, ...]]]
) -> None:
    namespace = f"prop-{next(_NAMESPACES)}"
    with ledger.write() as conn:
        for number, meter in enumerate(METERS[:2]):
            usage.record_meter(
                conn, namespace, meter.slug, meter, uid=f"{namespace}-{number}", generation=1,
                acted_at=T0, now=NOW,
            )  # fmt: skip
    seen: set[tuple[str, str]] = set()
    sums: dict[tuple[str, str, datetime], Decimal] = {}
    counts: dict[tuple[str, datetime], int] = {}
    for batch in batches:
        events = []
        for source, number, subject, second, tokens, model in batch:
            data: dict[str, Any] = {"tokens": tokens} | ({} if model is None else {"model": model})
            at = T0 + timedelta(seconds=second)
            events.append(usage.IncomingEvent(f"e{number}", source, "prompt", subject, at, data))
        with ledger.write() as conn:
            outcome = usage.ingest(conn, namespace, events, received_at=NOW)
        new = {(e.source, e.id) for e in events} - seen
        assert (outcome.stored, outcome.duplicates) == (len(new), len(events) - len(new))
        for event in events:
            if (event.source, event.id) in seen:
                continue
            seen.add((event.source, event.id))
            minute = event.time.replace(second=0)
            counts[(event.subject, minute)] = counts.get((event.subject, minute), 0) + 1
            if isinstance(event.data["tokens"], Decimal):
                key = (event.subject, event.data.get("model", ""), minute)
                sums[key] = sums.get(key, Decimal(0)) + event.data["tokens"]
    with ledger.read() as conn:
        states = usage.load_bucket_states(conn, namespace)
    assert {
        (s.subject, dict(s.groups)["model"], s.minute): s.value_sum
        for s in states
        if s.meter_slug == "tokens"
    } == sums
    assert {
        (s.subject, s.minute): s.event_count for s in states if s.meter_slug == "prompts"
    } == counts
