"""Pruning raw events and feed rows, on both databases: usage stays, nothing counts twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from allotment.cli.main import main
from allotment.ledger.core.model import Aggregation, Meter
from allotment.ledger.core.timeutil import format_rfc3339
from allotment.ledger.storage import feed, leases, prune, usage
from allotment.ledger.storage.engine import Ledger
from allotment.ledger.storage.schema import LeaseRow, UsageEventRow

NS = "team-a"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
TOKENS = Meter("tokens", "prompt", Aggregation.SUM, "$.tokens")
KEPT_FOR = usage.DEFAULT_HORIZON + prune.CLOCK_MARGIN
DAY = timedelta(days=1)


def record_meter(ledger: Ledger, namespace: str = NS) -> None:
    with ledger.write() as conn:
        usage.record_meter(
            conn, namespace, "tokens", TOKENS, uid="u", generation=1, acted_at=T0, now=T0
        )


def ingest(
    ledger: Ledger, number: int, at: datetime, received: datetime, namespace: str = NS
) -> usage.IngestOutcome:
    event = usage.IncomingEvent(f"e{number}", "app", "prompt", "customer-1", at, {"tokens": 10})
    with ledger.write() as conn:
        return usage.ingest(conn, namespace, [event], received_at=received)


def total(ledger: Ledger) -> Decimal:
    with ledger.read() as conn:
        buckets = usage.read_buckets(
            conn, NS, "tokens", subjects=["customer-1"], start=T0 - 100 * DAY, end=T0 + 100 * DAY
        )
    return sum((b.amount for b in buckets), Decimal(0))


def stored_events(ledger: Ledger) -> int:
    with ledger.read() as conn:
        return int(
            conn.execute(select(func.count()).select_from(UsageEventRow.__table__)).scalar_one()
        )


@pytest.mark.parametrize(
    ("received_after", "pruned_after", "pruned"),
    [
        pytest.param(timedelta(0), KEPT_FOR + timedelta(minutes=1), True, id="past-horizon"),
        pytest.param(timedelta(0), KEPT_FOR - timedelta(minutes=1), False, id="inside-margin"),
        pytest.param(timedelta(0), usage.DEFAULT_HORIZON, False, id="at-horizon"),
        pytest.param(30 * DAY, KEPT_FOR + timedelta(minutes=1), False, id="received-late"),
        pytest.param(30 * DAY, 30 * DAY + KEPT_FOR + DAY, True, id="received-late-then-past"),
    ],
)
def test_raw_events_go_only_when_both_their_time_and_receipt_are_past_the_horizon(
    ledger: Ledger, received_after: timedelta, pruned_after: timedelta, pruned: bool
) -> None:
    record_meter(ledger)
    ingest(ledger, 1, T0, T0 + received_after)
    outcome = prune.prune(ledger, now=T0 + pruned_after, feed_retention=None)
    assert (outcome.events, stored_events(ledger)) == ((1, 0) if pruned else (0, 1))
    assert total(ledger) == Decimal(10)  # the usage stays in its bucket either way


def test_a_resent_pruned_event_is_refused_and_never_counted_twice(ledger: Ledger) -> None:
    record_meter(ledger)
    ingest(ledger, 1, T0, T0)
    later = T0 + KEPT_FOR + DAY
    assert prune.prune(ledger, now=later, feed_retention=None).events == 1
    with pytest.raises(usage.EventRefusedError, match="older than the usage horizon"):
        ingest(ledger, 1, T0, later)
    assert total(ledger) == Decimal(10)


def test_a_horizon_shorter_than_ingestions_is_refused(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="shorter than ingestion's default"):
        prune.prune(ledger, now=T0, horizon=usage.DEFAULT_HORIZON - DAY)


def feed_positions(ledger: Ledger, namespace: str) -> list[int]:
    with ledger.read() as conn:
        return [entry.position for entry in feed.read_feed(conn, namespace, after=0)]


def epoch(ledger: Ledger) -> str:
    with ledger.read() as conn:
        return feed.ledger_epoch(conn)


def test_old_feed_rows_go_and_the_new_epoch_makes_followers_reload(ledger: Ledger) -> None:
    record_meter(ledger)
    ingest(ledger, 1, T0, T0)
    ingest(ledger, 2, T0 + 10 * DAY, T0 + 10 * DAY)
    before = feed_positions(ledger, NS)
    old_epoch = epoch(ledger)
    outcome = prune.prune(ledger, now=T0 + 15 * DAY, feed_retention=7 * DAY)
    assert outcome.feed_rows == len(before) - 1
    assert feed_positions(ledger, NS) == before[-1:]
    assert outcome.epoch == epoch(ledger) != old_epoch
    assert total(ledger) == Decimal(20)


def test_nothing_to_prune_keeps_the_epoch(ledger: Ledger) -> None:
    record_meter(ledger)
    ingest(ledger, 1, T0, T0)
    old_epoch = epoch(ledger)
    outcome = prune.prune(ledger, now=T0 + DAY, feed_retention=7 * DAY)
    assert outcome == prune.PruneOutcome(0, 0, None)
    assert epoch(ledger) == old_epoch


def test_feed_rows_recorded_out_of_clock_order_are_cut_at_the_first_one_kept(
    ledger: Ledger,
) -> None:
    record_meter(ledger)  # recorded at T0
    ingest(ledger, 1, T0 + 20 * DAY, T0 + 20 * DAY)  # recent
    ingest(ledger, 2, T0 + 5 * DAY, T0 + 5 * DAY)  # a writer whose clock lags: an old instant
    before = feed_positions(ledger, NS)
    outcome = prune.prune(ledger, now=T0 + 21 * DAY, feed_retention=7 * DAY)
    assert outcome.feed_rows == 1  # only the meter's row lies below the first row kept
    assert feed_positions(ledger, NS) == before[1:]


def test_the_cli_prunes_and_says_what_it_did(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    record_meter(ledger)
    ingest(ledger, 1, T0, T0)
    later = format_rfc3339(T0 + KEPT_FOR + DAY)
    code = main(["ledger", "prune", "--db", ledger.url, "--now", later])
    out = capsys.readouterr().out
    assert code == 0
    assert "deleted 1 raw usage events and 2 feed rows, and 0 lapsed strict-mode leases" in out
    assert "new epoch" in out
    assert stored_events(ledger) == 0


def test_the_cli_refuses_a_short_horizon(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["ledger", "prune", "--db", ledger.url, "--horizon-days", "7", "--keep-feed"])
    assert code == 2
    assert "shorter than ingestion's default" in capsys.readouterr().err


def test_only_leases_that_lapsed_before_the_clock_margin_are_deleted(ledger: Ledger) -> None:
    record_meter(ledger)
    scope = leases.UsageScope("tokens", ("customer-1",))
    with ledger.write() as conn:
        for holder, taken in (("pod-a", T0), ("pod-b", T0 + 2 * DAY)):
            leases.take_lease(
                conn,
                NS,
                "01JENTITLEMENT000000000000",
                T0,
                holder,
                scope=scope,
                budget=Decimal(1000),
                want=Decimal(100),
                minimum=Decimal(0),
                spent=Decimal(0),
                now=taken,
                ttl=timedelta(seconds=15),
            )
    outcome = prune.prune(ledger, now=T0 + 2 * DAY, feed_retention=None)
    assert outcome.leases == 1  # pod-a's lapsed a day before; pod-b's is live
    with ledger.read() as conn:
        holders = conn.execute(select(LeaseRow.holder)).scalars().all()
        held = leases.outstanding(conn, NS, "01JENTITLEMENT000000000000", T0, now=T0 + 2 * DAY)
    assert (holders, held) == (["pod-b"], Decimal(100))
