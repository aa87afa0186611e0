"""Reads that do not need grant balances answer from a slot's cached v1 body, computing nothing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal

from allotment.sidecar.source import FeedBatch
from allotment.sidecar.view import micros

from .test_follow_slices import Counting, bucket
from .test_view_changes import NOW, loaded_view, records


def test_a_v1_read_caches_what_ofrep_and_v1_reads_need() -> None:
    view = loaded_view()
    engine = view.engine = Counting()
    entitlement, grant = records(1)[1:]
    assert view.hot_body("sub-1", "tokens", micros(NOW), by_subject=True, v2=False) is not None
    assert engine.computed == 1

    cached = view.value(entitlement, NOW, v2=False)
    assert engine.computed == 1  # from the v1 body
    assert (cached.has_access, cached.balance, cached.usage) == (True, Decimal(200), Decimal(0))

    full = view.value(entitlement, NOW)  # grant balances: the v2 tail is computed once
    assert engine.computed == 2
    assert full.grant_balances == {grant.id: Decimal(200)}
    assert (full.has_access, full.balance, full.usage) == (True, Decimal(200), Decimal(0))


def test_usage_stamped_ahead_of_a_check_counts_once_the_clock_passes_it() -> None:
    view = loaded_view()
    ahead = bucket("sub-0", 4 * 24 * 60, 9)  # a day after NOW (a client clock running ahead)
    assert view.apply(FeedBatch("epoch", 2, 1, [ahead]), NOW)

    def usage_at(now: datetime) -> object:
        body = view.hot_body("sub-0", "tokens", micros(now), by_subject=True, v2=False)
        assert body is not None
        return json.loads(body)["usage"]

    assert usage_at(NOW) == 0
    assert usage_at(NOW + timedelta(days=2)) == 9
