"""``StorageSource.changes_since`` gives the changes the plain decoding of the feed gives.

The source reads payloads as text and decodes usage entries with ``usage.UsageDecoder``; here a
namespace with every kind of entry (catalogue records, a removal, meter records and a meter
edit, usage of SUM, COUNT, UNIQUE_COUNT and LATEST meters with group-by values, fractional and
large amounts) is read both ways, in pages of several sizes, on each database.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest

from allotment.ledger.core.model import Aggregation
from allotment.ledger.storage import feed, usage
from allotment.ledger.storage.codec import MeterRecord, Removed
from allotment.ledger.storage.engine import Ledger
from allotment.ledger.storage.usage import BucketState
from allotment.sidecar.ledger_source import StorageSource, _decode
from allotment.sidecar.source import Change, RecordRemoved, UsageEntry, decoded
from tests.sidecar.seed import NS, T0, Seeder


def plain_changes(ledger: Ledger, after: int, limit: int) -> tuple[int, list[Change]]:
    """Read and decode the feed as the source did before it read payloads as text."""
    with ledger.read() as conn:
        head = feed.feed_head(conn)
        entries = feed.read_feed(conn, NS, after=after, limit=limit)
    changes: list[Change] = []
    for entry in entries:
        if entry.kind == usage.USAGE_CHANGE:
            changes.extend(BucketState.from_payload(b) for b in entry.payload.get("buckets", ()))
        else:  # records and meters: decoded from the JSON objects, as they always were
            changes.extend(_decode(entry))
    position = entries[-1].position if len(entries) >= limit else max(head, after)
    return position, changes


def seed_every_kind(seeder: Seeder) -> None:
    seeder.meter("tokens", group_by={"model": "$.model"})
    seeder.meter("calls", Aggregation.COUNT, value_property=None)
    seeder.meter("users", Aggregation.UNIQUE_COUNT, value_property="$.user", event_type="login")
    seeder.meter("level", Aggregation.LATEST, value_property="$.level", event_type="gauge")
    seeder.feature("ai_tokens", "tokens", filters={"model": "gpt-4"})
    seeder.customer("acme", ["acme-sub"])
    implicit = seeder.customer("implicit")
    seeder.put(Removed(implicit.id, "customer", T0))
    seeder.meter("tokens", group_by={"model": "$.model", "region": "$.region"})  # an edit
    at = T0 + timedelta(seconds=7, microseconds=250)
    seeder.events(
        "acme-sub",
        (at, {"tokens": "0.000001", "model": "gpt-4", "region": "eu"}),
        (at, {"tokens": 12345678901234567890, "model": "gpt-4"}),
        (at + timedelta(minutes=1), {"tokens": 2.5}),
    )
    seeder.events("acme-sub", (at, {"user": "alice"}), (at, {"user": "bob"}), event_type="login")
    seeder.events(
        "acme-sub",
        (at, {"level": "3.75"}),
        (at + timedelta(seconds=1), {"level": -1}),
        event_type="gauge",
    )
    seeder.events("other", (at, {"user": "carol"}), event_type="login")


@pytest.mark.parametrize(
    "limit", [pytest.param(1, id="one-entry-pages"), pytest.param(5000, id="one-page")]
)
def test_changes_since_equals_the_plain_decoding(
    ledger: Ledger, seeder: Seeder, limit: int
) -> None:
    seed_every_kind(seeder)
    source = StorageSource(ledger)
    kinds: set[type] = set()
    position = 0
    while True:
        batch = source.changes_since(NS, position, limit)
        expected_position, expected = plain_changes(ledger, position, limit)
        assert (batch.position, list(decoded(batch.changes))) == (expected_position, expected)
        kinds.update(type(change) for change in decoded(batch.changes))
        if batch.position == position:
            break
        position = batch.position
    assert {BucketState, MeterRecord, RecordRemoved} <= kinds
    states = [c for c in plain_changes(ledger, 0, 5000)[1] if isinstance(c, BucketState)]
    assert {s.meter_slug for s in states} == {"tokens", "calls", "users", "level"}
    amounts = {s.value_sum for s in states}
    assert {Decimal("0.000001"), Decimal("12345678901234567890"), Decimal("2.5")} <= amounts
    assert {s.groups for s in states} >= {(("model", "gpt-4"), ("region", "eu"))}
    assert frozenset({"alice", "bob"}) in {s.distinct for s in states}


def test_usage_entries_are_decoded_only_when_reached(
    ledger: Ledger, seeder: Seeder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The follower applies a batch as ``decoded`` yields it: decoded all at once, a backlog's
    # batch (10^5 states) was walked by a cyclic collection for tens of ms (README).
    seed_every_kind(seeder)
    decodes: list[str] = []
    states = usage.UsageDecoder.states

    def counted(decoder: usage.UsageDecoder, text: str) -> Iterator[BucketState]:
        decodes.append(text)
        return states(decoder, text)

    monkeypatch.setattr(usage.UsageDecoder, "states", counted)
    batch = StorageSource(ledger).changes_since(NS, 0, 5000)
    entries = [item for item in batch.changes if isinstance(item, UsageEntry)]

    assert len(entries) == 4 and decodes == []  # the four event writes: read, not decoded
    changes = decoded(batch.changes)
    first_usage = next(c for c in changes if isinstance(c, BucketState))
    assert decodes == [entries[0].text]
    assert first_usage in list(entries[0].states())
    rest = list(changes)
    assert len(decodes) == 4 + 1  # each entry once more, plus the check above
    assert (
        sum(isinstance(c, BucketState) for c in rest)
        == sum(len(list(e.states())) for e in entries) - 1
    )
