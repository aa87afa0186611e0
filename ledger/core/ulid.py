"""ULID construction without a dependency: 48-bit millisecond time + 80 bits of entropy.

Role: ``new_ulid(instant, randbytes)`` is pure; the caller supplies the instant and the random
bytes (``os.urandom(10)`` outside the core). ``derived_ulid`` builds a deterministic id from a
seed, for records the core itself defines (the issueAfterReset default grant).

Must not: read the clock or a random source, log, or do I/O.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from .timeutil import require_utc

__all__ = ["derived_ulid", "is_ulid", "new_ulid"]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ENTROPY_BYTES = 10


def new_ulid(instant: datetime, randbytes: bytes) -> str:
    """Return the 26-character ULID for ``instant`` (ms precision) and 10 random bytes."""
    if len(randbytes) != _ENTROPY_BYTES:
        raise ValueError(f"a ULID needs exactly {_ENTROPY_BYTES} random bytes")
    utc = require_utc(instant)
    millis = (
        int(utc.timestamp()) * 1000 + utc.microsecond // 1000
    )  # exact: timestamp() of an aware datetime
    if not 0 <= millis < 2**48:
        raise ValueError(f"{utc.isoformat()} is outside the ULID time range")
    value = (millis << 80) | int.from_bytes(randbytes, "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def derived_ulid(instant: datetime, seed: str) -> str:
    """Return a deterministic ULID for ``instant`` whose entropy is a hash of ``seed``."""
    return new_ulid(instant, hashlib.sha256(seed.encode()).digest()[:_ENTROPY_BYTES])


def is_ulid(text: str) -> bool:
    """Tell whether ``text`` is a syntactically valid ULID (Crockford base32, 26 chars)."""
    return len(text) == 26 and text[0] in "01234567" and all(c in _CROCKFORD for c in text.upper())
