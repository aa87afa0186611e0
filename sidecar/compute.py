"""The sidecar's port to the ledger core's value computation.

Role: one narrow interface, ``ValueEngine``, through which the view asks the pure core for an
entitlement's ``EntitlementValue`` (with ``valid_until``) and its burn-down history, given the
entitlement, its recorded grants, the meter aggregation and a ``UsageQuery`` backed by memory.
``CoreValueEngine`` delegates to ``allotment.ledger.core``; every number is decided there.

It must not do balance arithmetic itself, read the clock, or do I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Protocol

from allotment.ledger.core.history import BalanceHistory, WindowSize, balance_history
from allotment.ledger.core.model import (
    Aggregation,
    Entitlement,
    EntitlementType,
    EntitlementValue,
    Grant,
    UsageQuery,
)
from allotment.ledger.core.values import entitlement_value

__all__ = ["CoreValueEngine", "EngineUnavailableError", "HistoryWindow", "ValueEngine"]


class EngineUnavailableError(RuntimeError):
    """The core cannot compute this value in this build (reported as 503)."""


@dataclass(frozen=True)
class HistoryWindow:
    """The parsed query of a history request."""

    start: datetime
    end: datetime
    size: WindowSize
    zone: tzinfo


class ValueEngine(Protocol):
    """Computes values from the core; metered values are read at ``at`` rounded up a minute."""

    def value(
        self,
        entitlement: Entitlement,
        grants: Sequence[Grant],
        aggregation: Aggregation | None,
        usage: UsageQuery,
        at: datetime,
    ) -> EntitlementValue:
        """Return the entitlement's value at ``at`` with ``valid_until``."""
        ...

    def history(
        self,
        entitlement: Entitlement,
        grants: Sequence[Grant],
        aggregation: Aggregation,
        usage: UsageQuery,
        window: HistoryWindow,
    ) -> BalanceHistory:
        """Return the windowed and burn-down history of a metered entitlement."""
        ...


class CoreValueEngine:
    """The ``ValueEngine`` backed by ``allotment.ledger.core.values`` and ``history``."""

    def value(
        self,
        entitlement: Entitlement,
        grants: Sequence[Grant],
        aggregation: Aggregation | None,
        usage: UsageQuery,
        at: datetime,
    ) -> EntitlementValue:
        """Return the entitlement's value at ``at`` with ``valid_until``."""
        if entitlement.type is EntitlementType.METERED and aggregation is None:
            raise EngineUnavailableError(
                f"feature {entitlement.feature_key!r} of metered entitlement {entitlement.id} "
                "has no recorded meter"
            )
        return entitlement_value(
            entitlement, at, grants=grants, aggregation=aggregation, usage=usage
        )

    def history(
        self,
        entitlement: Entitlement,
        grants: Sequence[Grant],
        aggregation: Aggregation,
        usage: UsageQuery,
        window: HistoryWindow,
    ) -> BalanceHistory:
        """Return the windowed and burn-down history of a metered entitlement."""
        return balance_history(
            entitlement,
            grants,
            aggregation,
            usage,
            start=window.start,
            end=window.end,
            window_size=window.size,
            zone=window.zone,
        )
