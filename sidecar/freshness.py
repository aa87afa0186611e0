"""Freshness: whether the view is past its staleness budget, and what to answer then (D7).

Role: ``stale_at`` compares the view's age (time since it last knew it had every committed
change) with the budget; ``apply_stale_policy`` applies the feature's ``whenStale`` to a current
value: ``LastKnown`` answers the last known value, ``Allow`` grants access, ``Deny`` refuses it.
Balances and usage are never altered, only ``hasAccess``.

It must not read the clock itself (``now`` is passed) or change the view.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from aiohttp import web

from allotment.ledger.core.model import Entitlement, EntitlementValue, WhenStale

from .keys import METRICS, SETTINGS, VIEW
from .view import View

__all__ = ["apply_stale_policy", "stale_at"]


def stale_at(request: web.Request, now: datetime) -> bool:
    """Tell whether the view is past the staleness budget at ``now``."""
    age = request.app[VIEW].age(now)
    return age is None or age > request.app[SETTINGS].staleness_budget


def apply_stale_policy(
    app: web.Application, view: View, entitlement: Entitlement, value: EntitlementValue
) -> tuple[EntitlementValue, WhenStale]:
    """Apply the feature's ``whenStale`` to a current value read past the staleness budget."""
    feature = view.feature(entitlement.feature_key)
    policy = feature.feature.when_stale if feature else WhenStale.LAST_KNOWN
    app[METRICS].count_stale_answer(policy.value)
    if policy is WhenStale.ALLOW and not value.has_access:
        value = dataclasses.replace(value, has_access=True)
    elif policy is WhenStale.DENY and value.has_access:
        value = dataclasses.replace(value, has_access=False)
    return value, policy
