"""Ingestion, dedup and per-minute buckets, read back as a user's usage, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from allotment.ledger.core.model import Aggregation, Meter
from allotment.ledger.storage import feed, records, usage
from allotment.ledger.storage.catalogue import KeyTakenError
from allotment.ledger.storage.engine import Ledger
from allotment.ledger.storage.records import IdentityConflictError

NS = "team-a"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)
TOKENS = Meter(
    slug="gpt_4_tokens",
    event_type="prompt",
    aggregation=Aggregation.SUM,
    value_property="$.tokens",
    group_by={"model": "$.model"},
)


def event(
    number: int, *, tokens: Any = 10, at: datetime = T0, subject: str = "customer-1", **data: Any
) -> usage.IncomingEvent:
    return usage.IncomingEvent(
        id=f"e{number}",
        source="app",
        type="prompt",
        subject=subject,
        time=at,
        data={"tokens": tokens, "model": "gpt-4", **data},
    )


def record(ledger: Ledger, meter: Meter = TOKENS, *, name: str = "tokens", uid: str = "u1") -> None:
    with ledger.write() as conn:
        usage.record_meter(conn, NS, name, meter, uid=uid, generation=1, acted_at=T0, now=NOW)


def ingest(ledger: Ledger, *events: usage.IncomingEvent) -> usage.IngestOutcome:
    with ledger.write() as conn:
        return usage.ingest(conn, NS, events, received_at=NOW)


def total(
    ledger: Ledger,
    slug: str = "gpt_4_tokens",
    *,
    subjects: tuple[str, ...] = ("customer-1",),
    filters: dict[str, str] | None = None,
) -> Decimal:
    with ledger.read() as conn:
        buckets = usage.read_buckets(
            conn, NS, slug, subjects=subjects, filters=filters, start=T0, end=NOW
        )
    return sum((b.amount for b in buckets), Decimal(0))


def test_a_batch_is_stored_and_summed_per_minute(ledger: Ledger) -> None:
    record(ledger)
    outcome = ingest(
        ledger,
        event(1, tokens=Decimal("1.5")),
        event(2, tokens=Decimal("2.25"), at=T0 + timedelta(seconds=59)),
        event(3, tokens=7, at=T0 + timedelta(minutes=1)),
    )
    assert (outcome.stored, outcome.duplicates, outcome.uncounted) == (3, 0, ())
    with ledger.read() as conn:
        buckets = usage.read_buckets(
            conn, NS, "gpt_4_tokens", subjects=["customer-1"], start=T0, end=NOW
        )
    assert [(b.minute, b.amount) for b in buckets] == [
        (T0, Decimal("3.75")),
        (T0 + timedelta(minutes=1), Decimal("7")),
    ]


def test_a_duplicate_is_acknowledged_and_only_the_first_copy_counts(ledger: Ledger) -> None:
    record(ledger)
    ingest(ledger, event(1, tokens=10))
    outcome = ingest(ledger, event(1, tokens=999), event(2, tokens=5), event(2, tokens=500))
    assert (outcome.stored, outcome.duplicates) == (1, 2)
    assert total(ledger) == Decimal(15)


def test_an_event_older_than_the_horizon_refuses_the_whole_batch(ledger: Ledger) -> None:
    record(ledger)
    too_old = event(2, at=NOW - usage.DEFAULT_HORIZON - timedelta(seconds=1))
    with pytest.raises(usage.EventRefusedError, match=r"event 1: .*older than the usage horizon"):
        ingest(ledger, event(1), too_old)
    assert total(ledger) == Decimal(0)
    with ledger.read() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM usage_events")).scalar_one() == 0


def test_a_failing_batch_leaves_nothing_behind(ledger: Ledger) -> None:
    record(ledger)
    with pytest.raises(RuntimeError), ledger.write() as conn:
        usage.ingest(conn, NS, [event(1)], received_at=NOW)
        raise RuntimeError("the caller fails after ingesting")
    assert ingest(ledger, event(1)).stored == 1
    assert total(ledger) == Decimal(10)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param({"tokens": "many"}, "$.tokens is missing or not a number", id="not-a-number"),
        pytest.param({"tokens": None}, "$.tokens is missing or not a number", id="null"),
        pytest.param({"tokens": True}, "$.tokens is missing or not a number", id="boolean"),
    ],
)
def test_an_event_no_meter_can_evaluate_is_stored_reported_and_not_counted(
    ledger: Ledger, data: dict[str, Any], reason: str
) -> None:
    record(ledger)
    outcome = ingest(ledger, event(1, **data), event(2, tokens=3))
    assert outcome.stored == 2
    assert [(u.index, u.id) for u in outcome.uncounted] == [(0, "e1")]
    assert reason in outcome.uncounted[0].reason
    assert total(ledger) == Decimal(3)
    with ledger.read() as conn:
        assert usage.count_uncounted(conn, NS, since=T0) == 1


def test_an_event_of_a_type_no_meter_has_is_reported(ledger: Ledger) -> None:
    record(ledger)
    stray = usage.IncomingEvent("x", "app", "login", "customer-1", T0, {})
    outcome = ingest(ledger, stray)
    assert [u.reason for u in outcome.uncounted] == ["no meter has event type 'login'"]


def test_numeric_strings_count_as_numbers(ledger: Ledger) -> None:
    record(ledger)
    ingest(ledger, event(1, tokens="2.5"), event(2, tokens=0.1))
    assert total(ledger) == Decimal("2.6")


def test_group_by_filters_and_subjects_apply_at_read(ledger: Ledger) -> None:
    record(ledger)
    ingest(
        ledger,
        event(1, tokens=1, model="gpt-4"),
        event(2, tokens=2, model="gpt-3"),
        event(3, tokens=4, subject="customer-1-staging", model="gpt-4"),
        event(4, tokens=8, subject="someone-else"),
    )
    assert total(ledger) == Decimal(3)
    assert total(ledger, filters={"model": "gpt-4"}) == Decimal(1)
    assert total(ledger, subjects=("customer-1", "customer-1-staging")) == Decimal(7)


@pytest.mark.parametrize(
    ("meter", "events", "expected"),
    [
        pytest.param(
            Meter("calls", "prompt", Aggregation.COUNT),
            [event(1), event(2), event(3, at=T0 + timedelta(minutes=5))],
            [Decimal(2), Decimal(1)],
            id="count",
        ),
        pytest.param(
            Meter("level", "prompt", Aggregation.LATEST, "$.tokens"),
            [
                event(1, tokens=5, at=T0 + timedelta(seconds=30)),
                event(2, tokens=9, at=T0 + timedelta(seconds=10)),
                event(3, tokens=1, at=T0 + timedelta(minutes=2)),
            ],
            [Decimal(5), Decimal(1)],
            id="latest-is-by-event-time-not-arrival",
        ),
        pytest.param(
            Meter("level", "prompt", Aggregation.LATEST, "$.tokens"),
            [event(1, tokens=5), event(2, tokens=9)],
            [Decimal(5)],
            id="latest-tie-keeps-the-first-arrival",
        ),
    ],
)
def test_aggregations_per_minute(
    ledger: Ledger, meter: Meter, events: list[usage.IncomingEvent], expected: list[Decimal]
) -> None:
    record(ledger, meter)
    for one in events:  # one batch each: the buckets must merge across commits
        ingest(ledger, one)
    with ledger.read() as conn:
        buckets = usage.read_buckets(
            conn, NS, meter.slug, subjects=["customer-1"], start=T0, end=NOW
        )
    assert [b.amount for b in buckets] == expected


def test_unique_count_buckets_hold_the_minutes_distinct_values(ledger: Ledger) -> None:
    meter = Meter("users", "prompt", Aggregation.UNIQUE_COUNT, "$.user")
    record(ledger, meter)
    ingest(ledger, event(1, user="ann"), event(2, user="bob"))
    outcome = ingest(ledger, event(3, user="ann"), event(4, user=7))
    ingest(ledger, event(5, user="ann", at=T0 + timedelta(minutes=1)))
    with ledger.read() as conn:
        buckets = usage.read_buckets(conn, NS, "users", subjects=["customer-1"], start=T0, end=NOW)
        (entry,) = feed.read_feed(conn, NS, after=outcome.feed_position - 1, limit=1)
    assert [b.distinct for b in buckets] == [frozenset({"ann", "bob", "7"}), frozenset({"ann"})]
    assert entry.payload["buckets"][0]["distinct"] == ["7", "ann", "bob"]


def test_recording_a_meter_builds_its_buckets_from_raw_events_in_the_horizon(
    ledger: Ledger,
) -> None:
    early = ingest(ledger, event(1, tokens=4), event(2, tokens=6))
    assert len(early.uncounted) == 2
    record(ledger)
    assert total(ledger) == Decimal(10)
    with ledger.read() as conn:
        assert usage.count_uncounted(conn, NS, since=T0) == 0


def test_a_recreated_meter_readopts_its_record(ledger: Ledger) -> None:
    record(ledger, uid="first")
    ingest(ledger, event(1))
    record(ledger, uid="second")  # same spec: same record, nothing rebuilt twice
    assert total(ledger) == Decimal(10)


def test_a_recreated_meter_with_another_aggregation_is_an_identity_conflict(
    ledger: Ledger,
) -> None:
    record(ledger)
    changed = Meter("gpt_4_tokens", "prompt", Aggregation.LATEST, "$.tokens", {"model": "$.model"})
    with pytest.raises(IdentityConflictError, match="different aggregation"):
        record(ledger, changed, uid="second")


def test_namespaces_do_not_share_dedup_keys_or_usage(ledger: Ledger) -> None:
    record(ledger)
    with ledger.write() as conn:
        usage.record_meter(
            conn, "team-b", "tokens", TOKENS, uid="b", generation=1, acted_at=T0, now=NOW
        )
        outcome = usage.ingest(conn, "team-b", [event(1, tokens=100)], received_at=NOW)
    assert outcome.stored == 1
    ingest(ledger, event(1, tokens=1))
    assert total(ledger) == Decimal(1)


def test_a_namespace_load_matches_the_feeds_latest_bucket_states(ledger: Ledger) -> None:
    record(ledger, Meter("users", "prompt", Aggregation.UNIQUE_COUNT, "$.user"), name="users")
    record(ledger)
    ingest(ledger, event(1, user="ann"), event(2, user="bob", tokens=5))
    ingest(ledger, event(3, user="ann", at=T0 + timedelta(minutes=3)))
    with ledger.read() as conn:
        loaded = usage.load_bucket_states(conn, NS)
        followed: dict[tuple[str, str, datetime], usage.BucketState] = {}
        for entry in feed.read_feed(conn, NS, after=0):
            if entry.kind == usage.USAGE_CHANGE:
                for payload in entry.payload["buckets"]:
                    state = usage.BucketState.from_payload(payload)
                    followed[(state.meter_slug, state.subject, state.minute)] = state
    assert sorted(loaded, key=lambda s: (s.meter_slug, s.minute)) == sorted(
        followed.values(), key=lambda s: (s.meter_slug, s.minute)
    )
    assert {(s.meter_slug, s.minute, s.distinct, s.value_sum) for s in loaded} == {
        ("users", T0, frozenset({"ann", "bob"}), Decimal(0)),
        ("users", T0 + timedelta(minutes=3), frozenset({"ann"}), Decimal(0)),
        ("gpt_4_tokens", T0, frozenset(), Decimal(15)),
        ("gpt_4_tokens", T0 + timedelta(minutes=3), frozenset(), Decimal(10)),
    }


def test_a_retried_revision_keeps_the_instant_first_recorded(ledger: Ledger) -> None:
    with ledger.write() as conn:
        usage.record_meter(conn, NS, "tokens", TOKENS, uid="u1", generation=1, acted_at=T0, now=NOW)
        later = T0 + timedelta(minutes=5)
        usage.record_meter(
            conn, NS, "tokens", TOKENS, uid="u1", generation=1, acted_at=later, now=NOW
        )
        usage.record_meter(
            conn, NS, "tokens", TOKENS, uid="u2", generation=1, acted_at=later, now=NOW
        )
        identity = records.find_identity(conn, NS, "Meter", "tokens")
        assert identity is not None
        history = records.revisions(conn, identity)
    assert [(r.uid, r.action, r.acted_at) for r in history] == [
        ("u1", "create", T0),
        ("u2", "adopt", later),
    ]
    assert identity.created_at == T0


def test_a_slug_names_one_meter_per_namespace(ledger: Ledger) -> None:
    record(ledger)
    with pytest.raises(KeyTakenError, match="meter key 'gpt_4_tokens' is already used"):
        record(ledger, name="tokens-again", uid="other")
