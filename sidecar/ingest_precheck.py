"""``requestedUsage``: ask "may I use N more?" before sending the usage (our extension).

Role: OpenMeter's value answers ``hasAccess`` for the usage already recorded, so a client about
to consume N units (say 4,000 tokens) learns only afterwards that the balance did not cover them.
With ``?requestedUsage=N`` on the value paths, or ``requestedUsage`` in an OFREP evaluation
context, a metered entitlement with a hard limit answers ``hasAccess: false`` when its balance is
below N. A soft-limit entitlement keeps its answer (it allows overage by definition), and
boolean and static entitlements have no balance to compare. Balances, usage and overage in the
answer are never changed; only ``hasAccess`` can go from true to false, so this check can never
grant anything the plain value would refuse.

It is a pre-check, not a reservation: two concurrent requests may both pass it (see the README's
worst-case overspend).

It must not look anything up in the view or change stored usage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from allotment.ledger.core.model import Entitlement, EntitlementValue

from .problems import ProblemError

__all__ = [
    "REQUESTED_USAGE",
    "apply_requested_usage",
    "parse_requested_usage",
    "requested_usage_of_context",
]

REQUESTED_USAGE = "requestedUsage"


def _amount(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValueError(f"{REQUESTED_USAGE} must be a non-negative number, got {value!r}")
    if isinstance(value, int | Decimal):
        amount = Decimal(value)
    elif isinstance(value, float | str):
        try:
            amount = Decimal(str(value).strip())
        except InvalidOperation:
            raise ValueError(
                f"{REQUESTED_USAGE} must be a non-negative number, got {value!r}"
            ) from None
    else:
        raise ValueError(f"{REQUESTED_USAGE} must be a non-negative number, got {value!r}")
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{REQUESTED_USAGE} must be a non-negative number, got {value!r}")
    return amount


def parse_requested_usage(query: Mapping[str, str]) -> Decimal | None:
    """Return the ``requestedUsage`` query parameter (None when absent); 400 when malformed."""
    text = query.get(REQUESTED_USAGE)
    if text is None or text == "":
        return None
    try:
        return _amount(text)
    except ValueError as error:
        raise ProblemError(400, f"query parameter {error}, e.g. ?{REQUESTED_USAGE}=4000") from None


def requested_usage_of_context(attributes: Mapping[str, Any]) -> Decimal | None:
    """Return the OFREP context's ``requestedUsage`` (None when absent); ValueError if bad."""
    value = attributes.get(REQUESTED_USAGE)
    return None if value is None else _amount(value)


def apply_requested_usage(
    entitlement: Entitlement, value: EntitlementValue, requested: Decimal | None
) -> EntitlementValue:
    """Deny access when a hard-limit balance is below ``requested``; change nothing else."""
    if requested is None or value.balance is None or not value.has_access:
        return value
    if entitlement.soft_limit_at(value.at):
        return value
    if value.balance >= requested:
        return value
    return dataclasses.replace(value, has_access=False)
