"""The follower holds the loop for a turn's budget at most: it applies a long feed batch a turn
at a time (the loop answers between turns, and no turn ends inside a catalogue change), and
recomputes the answers usage dropped between polls, never delaying the next poll."""

from __future__ import annotations

import asyncio
import decimal
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allotment.ledger.storage.usage import UsageDecoder
from allotment.sidecar import sync
from allotment.sidecar.compute import CoreValueEngine
from allotment.sidecar.settings import SidecarSettings
from allotment.sidecar.source import (
    Change,
    FeedBatch,
    FeedItem,
    LoadedNamespace,
    UsageBucketState,
    UsageEntry,
    decoded,
)
from allotment.sidecar.sync import Follower
from allotment.sidecar.view import View, micros

from .test_view_changes import NOW, NS, T0, loaded_view, records


def bucket(subject: str, minute: int, count: int) -> UsageBucketState:
    return UsageBucketState(
        meter_id="01METER",
        meter_slug="tokens",
        subject=subject,
        groups=(),
        minute=T0 + timedelta(minutes=minute),
        event_count=count,
        value_sum=Decimal(count),
    )


class Counting(CoreValueEngine):
    computed = 0

    def value(self, *args: Any, **kwargs: Any) -> Any:
        self.computed += 1
        return super().value(*args, **kwargs)


class OneBatch:
    """A ledger source whose feed holds one batch (the view is loaded by the test)."""

    def __init__(self, batch: FeedBatch) -> None:
        self.batch = batch
        self.polls = 0

    def load(self, namespace: str) -> LoadedNamespace:  # pragma: no cover - never reloads
        raise AssertionError("no reload expected")

    def changes_since(self, namespace: str, position: int, limit: int) -> FeedBatch:
        self.polls += 1
        if position >= self.batch.position:
            return replace(self.batch, changes=[])
        return self.batch

    def listen(self, namespace: str, wake: object) -> None:
        return None

    def close(self) -> None:
        return None


def following(view: View, batch: FeedBatch) -> Follower:
    """A follower of ``view`` whose ledger's feed holds ``batch`` after the view's position.

    Its turns end after each step (a budget of 0): what a busy or slow machine does, made
    certain.
    """
    follower = Follower(
        SidecarSettings("sqlite://", NS, probe_port=None, poll_interval=timedelta(seconds=30)),
        view,
        lambda: NOW,
        lambda _settings: OneBatch(batch),
    )
    follower.source = OneBatch(batch)
    follower.turn_budget_ns = 0
    return follower


def usage(view: View, subject: str) -> object:
    body = view.hot_body(subject, "tokens", micros(NOW), by_subject=True, v2=False)
    assert body is not None
    return json.loads(body)["usage"]


async def test_a_long_batch_lets_checks_through_and_applies_every_change() -> None:
    view = loaded_view()
    grant = replace(records(1)[2], amount=Decimal(5000))
    changes: list[Change] = [bucket("sub-0", m, 1) for m in range(48)]
    changes.append(grant)  # a catalogue change in the middle of the usage
    changes += [bucket("sub-2", m, 2) for m in range(32)]
    follower = following(view, FeedBatch("epoch", 99, 1, changes))
    seen: list[tuple[int | None, object]] = []

    async def check_meanwhile() -> None:
        while True:
            seen.append((view.position, usage(view, "sub-0")))
            await asyncio.sleep(0)

    checking = asyncio.create_task(check_meanwhile())
    await asyncio.sleep(0)
    assert await follower.poll_once() is False
    checking.cancel()

    assert view.position == 99
    assert usage(view, "sub-0") == 48
    assert usage(view, "sub-2") == 64
    assert view.grants_of(grant.entitlement_id) == [grant]
    # Checks were answered while the batch was being applied, before the position moved.
    partial = [u for position, u in seen if position == 1 and u not in (0, 48)]
    assert partial, seen[:5]


def test_slices_of_a_short_batch_are_the_batch() -> None:
    changes: list[Change] = [bucket("s", m, 1) for m in range(3)]
    assert list(sync._slices(changes, 64)) == [changes]


@given(st.lists(st.booleans(), max_size=300), st.integers(min_value=1, max_value=40))
def test_slices_keep_order_and_cut_only_between_usage(kinds: list[bool], size: int) -> None:
    grant = records(0)[2]
    changes: list[Change] = [
        bucket("s", i, 1) if is_usage else grant for i, is_usage in enumerate(kinds)
    ]
    slices = list(sync._slices(iter(changes), size))
    assert [c for part in slices for c in part] == changes
    assert all(slices) or changes == []
    cut = 0
    for part in slices[:-1]:
        cut += len(part)
        assert len(part) >= size
        assert isinstance(changes[cut - 1], UsageBucketState)
        assert isinstance(changes[cut], UsageBucketState)


async def test_answers_usage_dropped_are_recomputed_before_the_next_check() -> None:
    view = loaded_view()
    engine = view.engine = Counting()
    usage(view, "sub-0")  # read: its answer is cached
    assert engine.computed == 1  # sub-1 and sub-2 are never read
    changes: list[Change] = [bucket("sub-0", 1, 7), bucket("sub-1", 1, 5)]
    follower = following(view, FeedBatch("epoch", 2, 1, changes))
    await follower.poll_once()
    assert view.position == 2
    assert engine.computed == 1  # the poll applies; it does not wait for recomputation
    await follower.catch_up()
    assert engine.computed == 2  # sub-0 recomputed by the follower, sub-1 left for its reader
    assert usage(view, "sub-0") == 7
    assert engine.computed == 2  # the check found it cached
    assert usage(view, "sub-1") == 5
    assert engine.computed == 3


def three_read_then_used() -> tuple[View, Counting, Follower]:
    """A view whose three subjects' answers are cached, and a follower of usage for each."""
    view = loaded_view()
    engine = view.engine = Counting()
    for n in range(3):
        usage(view, f"sub-{n}")
    assert engine.computed == 3
    changes: list[Change] = [bucket(f"sub-{n}", 1, n + 1) for n in range(3)]
    return view, engine, following(view, FeedBatch("epoch", 2, 1, changes))


async def test_recomputation_goes_a_turn_at_a_time_and_yields_to_a_due_poll() -> None:
    view, engine, follower = three_read_then_used()
    await follower.poll_once()
    computed: list[int] = []

    async def check_meanwhile() -> None:
        while True:
            computed.append(engine.computed)
            await asyncio.sleep(0)

    checking = asyncio.create_task(check_meanwhile())
    await asyncio.sleep(0)
    await follower.catch_up()
    checking.cancel()
    assert engine.computed == 6
    assert {3, 4, 5} <= set(computed)  # the loop turned between two recomputations

    follower.wake.set()  # a poll is due: recomputation waits for the pause after it
    await follower.poll_once()  # nothing new (the source's feed is at its end)
    view.apply(FeedBatch("epoch", 2, 1, [bucket("sub-0", 2, 9)]), NOW)
    await follower.catch_up()
    assert engine.computed == 6
    assert usage(view, "sub-0") == 10  # its reader computes it
    assert engine.computed == 7


async def test_the_follower_recomputes_dropped_answers_while_it_waits_to_poll() -> None:
    view, engine, follower = three_read_then_used()
    done = asyncio.Event()
    compute = engine.value

    def value(*args: Any, **kwargs: Any) -> Any:
        found = compute(*args, **kwargs)
        if engine.computed == 6:
            done.set()
        return found

    engine.value = value  # type: ignore[method-assign]
    running = asyncio.create_task(follower.run())
    try:
        async with asyncio.timeout(10):
            await done.wait()
    finally:
        running.cancel()
    assert view.position == 2
    assert isinstance(follower.source, OneBatch)
    assert follower.source.polls == 1  # all three recomputed in the pause after one poll
    assert [usage(view, f"sub-{n}") for n in range(3)] == [1, 2, 3]
    assert engine.computed == 6


async def test_recomputed_answers_keep_no_rebuilt_record() -> None:
    view, engine, follower = three_read_then_used()
    state = view._state
    assert state is not None
    assert len(state.decoded) == 0  # the first reads computed their answers: nothing kept
    await follower.poll_once()
    await follower.catch_up()
    assert engine.computed == 6
    assert len(state.decoded) == 0  # each answer's records were rebuilt, used, let go


class Recording(UsageDecoder):
    """A decoder whose entries are made-up texts naming their states; it logs each decode."""

    def __init__(self, states: dict[str, list[UsageBucketState]], log: list[str]) -> None:
        super().__init__()
        self.made, self.log = states, log

    def states(self, text: str) -> Iterator[UsageBucketState]:
        self.log.append(f"decode {text}")
        yield from self.made[text]


async def test_usage_entries_are_decoded_one_at_a_time_as_they_are_applied(
    monkeypatch: Any,
) -> None:
    view = loaded_view()
    log: list[str] = []
    states = {
        "e1": [bucket("sub-0", m, 1) for m in range(3)],
        "e2": [bucket("sub-2", m, 2) for m in range(3)],
    }
    decoder = Recording(states, log)
    grant = replace(records(1)[2], amount=Decimal(5000))
    items: list[FeedItem] = [UsageEntry("e1", decoder), grant, UsageEntry("e2", decoder)]
    follower = following(view, FeedBatch("epoch", 99, 1, items))
    apply = view.apply

    def logged(batch: FeedBatch, now: Any, **kwargs: Any) -> bool:
        log.extend(
            f"apply {change.subject}"
            for change in decoded(batch.changes)
            if isinstance(change, UsageBucketState)
        )
        return apply(batch, now, **kwargs)

    monkeypatch.setattr(view, "apply", logged)
    await follower.poll_once()

    # An entry is decoded when the run before it needs its first change (a turn may not end
    # between the grant and the usage after it): at most the states of two entries are held.
    assert log == [
        "decode e1",
        "apply sub-0",
        "apply sub-0",
        "decode e2",
        "apply sub-0",  # with the grant and sub-2's first state, in one turn
        "apply sub-2",
        "apply sub-2",
        "apply sub-2",
    ]
    assert (usage(view, "sub-0"), usage(view, "sub-2")) == (3, 6)
    assert view.grants_of(grant.entitlement_id) == [grant]
    assert view.position == 99


async def test_a_batch_that_fails_half_way_leaves_the_view_as_old_as_it_was() -> None:
    # An entry that cannot be decoded fails the poll after the entries before it were applied
    # (bucket states are absolute: the next poll applies them again, counting nothing twice);
    # the view is not current as of that poll, so its age grows towards the staleness budget.
    view = loaded_view()
    synced_at, position = view.synced_at, view.position
    decoder = Recording({"e1": [bucket("sub-0", 0, 4), bucket("sub-0", 1, 3)]}, [])
    items: list[FeedItem] = [UsageEntry("e1", decoder), UsageEntry("broken", decoder)]
    follower = following(view, FeedBatch("epoch", 99, 1, items))
    follower.clock = lambda: NOW + timedelta(minutes=1)

    with pytest.raises(KeyError):
        await follower.poll_once()

    assert usage(view, "sub-0") == 4  # its first state applied (the second waited for the next)
    assert (view.synced_at, view.position) == (synced_at, position)


async def test_one_large_usage_entry_is_applied_across_turns() -> None:
    # A group commit of thousands of events is one feed entry: applied a state at a time,
    # checks are answered between its states (the budget is 0: a turn per state). That it is
    # also decoded a state at a time: the next test.
    view = loaded_view()
    states = [bucket("sub-0", m, 1) for m in range(48)]
    text = json.dumps(
        {"buckets": [s.to_payload() for s in states]}, separators=(",", ":"), sort_keys=True
    )
    follower = following(view, FeedBatch("epoch", 99, 1, [UsageEntry(text, UsageDecoder())]))
    seen: list[object] = []

    async def check_meanwhile() -> None:
        while True:
            seen.append(usage(view, "sub-0"))
            await asyncio.sleep(0)

    checking = asyncio.create_task(check_meanwhile())
    await asyncio.sleep(0)
    await follower.poll_once()
    checking.cancel()

    assert usage(view, "sub-0") == 48
    assert [u for u in seen if u not in (0, 48)], seen[:5]  # usage of part of the entry


async def test_an_entry_is_decoded_a_state_at_a_time_as_it_is_applied() -> None:
    view = loaded_view()
    good = [bucket("sub-0", m, 1).to_payload() for m in range(2)]
    text = json.dumps(
        {"buckets": [*good, {**good[0], "valueSum": "x"}]}, separators=(",", ":"), sort_keys=True
    )
    follower = following(view, FeedBatch("epoch", 99, 1, [UsageEntry(text, UsageDecoder())]))

    with pytest.raises(decimal.InvalidOperation):
        await follower.poll_once()

    # the first state was applied before the third was decoded (the second waited with it)
    assert usage(view, "sub-0") == 1
