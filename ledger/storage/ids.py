"""Ledger identifiers: a new ULID for a record when it is first recorded (DESIGN D1).

Role: feed the core's pure ULID builder with the wall clock and the OS random source. It must
not be used where an identifier has to be deterministic (the core derives those itself).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from allotment.ledger.core.ulid import new_ulid


def new_id() -> str:
    """Return a new ULID for a record recorded now."""
    return new_ulid(datetime.now(UTC), os.urandom(10))
