"""Reads that do not need grant balances answer from a slot's cached v1 body, computing nothing."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from allotment.sidecar.compute import CoreValueEngine

from .test_view_changes import NOW, loaded_view, records


class Counting(CoreValueEngine):
    computed = 0

    def value(self, *args: Any, **kwargs: Any) -> Any:
        self.computed += 1
        return super().value(*args, **kwargs)


def test_a_v1_read_caches_what_ofrep_and_v1_reads_need() -> None:
    view = loaded_view()
    engine = view.engine = Counting()
    entitlement, grant = records(1)[1:]
    assert view.hot_body("sub-1", "tokens", NOW, by_subject=True, v2=False) is not None
    assert engine.computed == 1

    cached = view.value(entitlement, NOW, v2=False)
    assert engine.computed == 1  # from the v1 body
    assert (cached.has_access, cached.balance, cached.usage) == (True, Decimal(200), Decimal(0))

    full = view.value(entitlement, NOW)  # grant balances: the v2 tail is computed once
    assert engine.computed == 2
    assert full.grant_balances == {grant.id: Decimal(200)}
    assert (full.has_access, full.balance, full.usage) == (True, Decimal(200), Decimal(0))
