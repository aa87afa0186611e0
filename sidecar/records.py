"""Rebuilding the view's records (entitlements, grants, customers) from their packed documents.

Role: turn a packed read-contract document (``compact.Shapes``) plus the fields its holder keeps
(ids, keys) back into the ledger's frozen record (``Entitlement``, ``Grant``,
``CustomerRecord``), exactly as ``codec.decode_record`` would from the whole document, and keep
the last few rebuilt records for reuse (a bounded cache owned by the view state, STYLE rule 6).

It must not change what a record holds (the codec's decoding is the reference; tests compare
the two), hold records without bound (they are what the cyclic collector walks), read the
clock, or pack documents (``Shapes.pack`` does).
"""

from __future__ import annotations

from typing import Any

from allotment.ledger.core.model import Entitlement, Grant
from allotment.ledger.storage.codec import decode_record

from .compact import Shapes
from .source import CustomerRecord

__all__ = ["DECODED_LIMIT", "Records"]

#: Rebuilt records kept for reuse (values being computed, routes reading records). Small: they
#: are the only records the cyclic collector walks (4,096 made 13 ms pauses; 256 make 1.5 ms).
DECODED_LIMIT = 256

_Fills = tuple[tuple[str, str], ...]


class Records:
    """Rebuilds records from packed documents of one view state; keeps the last few."""

    def __init__(self, limit: int = DECODED_LIMIT) -> None:
        self.limit = limit
        self._held: dict[tuple[bytes, _Fills], Any] = {}

    def __len__(self) -> int:
        return len(self._held)

    def record(self, shapes: Shapes, packed: bytes, fills: _Fills) -> Any:
        """Return the record ``packed`` holds, its ``fills`` (field, value) put back."""
        key = (packed, fills)
        held = self._held
        found = held.get(key)
        if found is None:
            if len(held) >= self.limit:
                held.clear()
            document = shapes.document(packed)
            for name, value in fills:
                document[name] = value
            found = held[key] = decode_record(document)
        return found

    def entitlement(self, shapes: Shapes, packed: bytes, entitlement_id: str) -> Entitlement:
        """Return the entitlement packed without its id."""
        found: Entitlement = self.record(shapes, packed, (("id", entitlement_id),))
        return found

    def grant(self, shapes: Shapes, packed: bytes, entitlement_id: str) -> Grant:
        """Return the grant packed without its entitlement's id."""
        found: Grant = self.record(shapes, packed, (("entitlementId", entitlement_id),))
        return found

    def customer(self, shapes: Shapes, packed: bytes, record_id: str, key: str) -> CustomerRecord:
        """Return the customer packed without its id and key."""
        found: CustomerRecord = self.record(shapes, packed, (("id", record_id), ("key", key)))
        return found
