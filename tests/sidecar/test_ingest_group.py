"""Group commit, with a commit function that records its calls: what is committed together, and
which request gets which answer when a commit fails."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from allotment.ledger.storage.usage import EventRefusedError, IncomingEvent
from allotment.sidecar.ingest_group import GroupCommitter, ShuttingDownError

T0 = datetime(2026, 11, 2, tzinfo=UTC)


def batch(name: str, size: int = 2) -> list[IncomingEvent]:
    return [
        IncomingEvent(f"{name}-{n}", "tests", "prompt", "sub-a", T0, {"tokens": 1})
        for n in range(size)
    ]


class Ledger:
    """Records each commit's event ids; refuses ids in ``refuse``; fails while ``down``."""

    def __init__(self) -> None:
        self.commits: list[list[str]] = []
        self.refuse: set[str] = set()
        self.down = False
        self.gate = threading.Event()
        self.gate.set()

    def commit(self, events: Sequence[IncomingEvent], received_at: datetime) -> list[str]:
        self.gate.wait(5)
        if self.down:
            raise ConnectionError("the ledger is down")
        for index, event in enumerate(events):
            if event.id in self.refuse:
                raise EventRefusedError(index, "too old")
        ids = [e.id for e in events]
        self.commits.append(ids)
        return ids


async def run(ledger: Ledger, *batches: list[IncomingEvent]) -> list[object]:
    """Submit ``batches`` while the first commit is held, so the rest queue up together."""
    seen: list[tuple[list[str], float]] = []
    with ThreadPoolExecutor(max_workers=1) as executor:
        committer = GroupCommitter(
            ledger.commit,
            executor,
            workers=1,
            max_events=100,
            on_commit=lambda result, seconds: seen.append((result, seconds)),
        )
        committer.start()
        ledger.gate.clear()
        first = asyncio.create_task(committer.submit(batches[0], T0))
        await asyncio.sleep(0.05)
        rest = [
            asyncio.create_task(committer.submit(b, T0 + timedelta(seconds=1))) for b in batches[1:]
        ]
        await asyncio.sleep(0.05)
        ledger.gate.set()
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        await committer.stop()
    assert len(seen) == len(ledger.commits)
    return list(results)


async def test_queued_batches_commit_together_in_order() -> None:
    ledger = Ledger()
    results = await run(ledger, batch("a"), batch("b"), batch("c", 3))
    assert ledger.commits == [["a-0", "a-1"], ["b-0", "b-1", "c-0", "c-1", "c-2"]]
    assert results[1] == results[2] == ledger.commits[1]


async def test_a_refused_event_is_retried_alone_so_others_commit() -> None:
    ledger = Ledger()
    ledger.refuse = {"c-1"}
    results = await run(ledger, batch("a"), batch("b"), batch("c"), batch("d"))
    assert ledger.commits == [["a-0", "a-1"], ["b-0", "b-1"], ["d-0", "d-1"]]
    refused = results[2]
    assert isinstance(refused, EventRefusedError)
    assert refused.index == 1  # its index inside its own request


async def test_a_failed_commit_fails_every_request_of_the_group() -> None:
    ledger = Ledger()
    ledger.down = True
    results = await run(ledger, batch("a"), batch("b"), batch("c"))
    assert ledger.commits == []
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_submitting_after_stop_is_refused() -> None:
    with ThreadPoolExecutor(max_workers=1) as executor:
        committer = GroupCommitter(
            Ledger().commit, executor, workers=1, max_events=10, on_commit=lambda r, s: None
        )
        committer.start()
        await committer.stop()
        with pytest.raises(ShuttingDownError):
            await committer.submit(batch("a"), T0)


@pytest.mark.parametrize(
    ("linger", "commits"),
    [
        pytest.param(0.0, [["x-0"], ["y-0", "z-0"]], id="no-linger-commits-the-first-alone"),
        pytest.param(5.0, [["x-0", "y-0", "z-0"]], id="linger-waits-for-the-group-to-return"),
    ],
)
async def test_after_a_group_of_three_the_next_three_are_awaited_together(
    linger: float, commits: list[list[str]]
) -> None:
    ledger = Ledger()
    with ThreadPoolExecutor(max_workers=1) as executor:
        committer = GroupCommitter(
            ledger.commit,
            executor,
            workers=1,
            max_events=100,
            on_commit=lambda r, s: None,
            linger=linger,
        )
        committer.start()
        ledger.gate.clear()
        first = asyncio.create_task(committer.submit(batch("p", 1), T0))
        await asyncio.sleep(0.05)
        three = [asyncio.create_task(committer.submit(batch(n, 1), T0)) for n in "qrs"]
        await asyncio.sleep(0.05)
        ledger.gate.set()
        await asyncio.gather(first, *three)
        assert ledger.commits[-1] == ["q-0", "r-0", "s-0"]
        before = len(ledger.commits)
        x = asyncio.create_task(committer.submit(batch("x", 1), T0))
        await asyncio.sleep(0.1)
        rest = [asyncio.create_task(committer.submit(batch(n, 1), T0)) for n in "yz"]
        await asyncio.gather(x, *rest)
        await committer.stop()
    assert ledger.commits[before:] == commits
