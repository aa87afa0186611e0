"""The follower's polls run on a thread of their own that yields its core to the access checks:
on Linux under ``SCHED_IDLE``, so the event loop's thread, woken by a request, never waits for a
poll's time slice; the loop's own thread keeps its priority."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from allotment.sidecar.source import FeedBatch

from .test_follow_slices import OneBatch, following
from .test_view_changes import loaded_view


class WhereItRuns(OneBatch):
    """A feed source that records the thread and scheduling policy each poll runs under."""

    def __init__(self, batch: FeedBatch) -> None:
        super().__init__(batch)
        self.threads: list[tuple[threading.Thread, int]] = []

    def changes_since(self, namespace: str, position: int, limit: int) -> FeedBatch:
        self.threads.append((threading.current_thread(), os.sched_getscheduler(0)))
        return super().changes_since(namespace, position, limit)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's")
async def test_polls_run_on_one_idle_priority_thread_and_the_loop_keeps_its_priority() -> None:
    view = loaded_view()
    follower = following(view, FeedBatch("epoch", 7, 1, []))
    source = WhereItRuns(FeedBatch("epoch", 7, 1, []))
    follower.source = source
    loop_policy = os.sched_getscheduler(0)

    for _ in range(3):
        await follower.poll_once()

    assert view.position == 7
    (thread,) = {thread for thread, _ in source.threads}
    assert thread is not threading.current_thread()
    assert {policy for _, policy in source.threads} == {os.SCHED_IDLE}
    assert os.sched_getscheduler(0) == loop_policy != os.SCHED_IDLE  # the loop's: as it was

    await follower.close()
    thread.join(timeout=5)
    assert not thread.is_alive()
