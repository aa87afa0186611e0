"""Ledger identifiers: ULIDs, given to a record when it is first recorded (DESIGN D1).

Role: mint 26-character Crockford base32 ULIDs (48-bit millisecond time, 80 random bits), so
identifiers sort roughly by creation. It must not be used by the pure core (it reads the clock).
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid() -> str:
    """Return a new ULID string."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))
