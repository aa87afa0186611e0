"""The view's compact record form: a read-contract document kept as its differences from a template.

Role: store the catalogue records the sidecar holds (customers, entitlements, grants: up to
10^6 of each) in a few dozen bytes apiece instead of a tree of frozen dataclasses, and rebuild
the record when a value must be computed or a route asks for it. The form is the read
contract's own document (``allotment.ledger.storage.codec``): nothing is translated twice.

Layout: documents with the same keys in the same order share a *shape*: its key tuple and the
values of the first document seen with it (the template, kept ``marshal``-ed so every rebuild
gets fresh containers). A document is stored as one ``bytes`` object,
``marshal.dumps((shape, i1, v1, i2, v2, ...))``: the shape's number, then each position whose
value differs from the template's, with its value (strings, numbers, None, booleans, lists and
dicts of those, exactly as ``json.loads`` gave them). Records of one seed shape differ in their
ids, keys and names only, so each costs about 100 bytes. Equal documents pack to equal bytes, so
the packed form can key a cache of rebuilt records.

It must not interpret a document's meaning (the codec decodes; the view picks index fields) nor
drop a value: a value equal to the template's but of another type (``False`` and ``0``) counts
as a difference.
"""

from __future__ import annotations

import marshal
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from allotment.ledger.storage.codec import Record, decode_record

__all__ = ["Shapes", "parse_instant"]

_SCALARS = (str, int, type(None), bool, float)


def parse_instant(text: str) -> datetime:
    """Return the aware UTC instant of a document's RFC 3339 text (the codec writes ``Z``)."""
    return datetime.fromisoformat(text).astimezone(UTC)


def _same(value: Any, template: Any) -> bool:
    if value.__class__ is not template.__class__ or value != template:
        return False
    if value.__class__ in _SCALARS:
        return True
    return marshal.dumps(value) == marshal.dumps(template)  # nested False vs 0 stay apart


class Shapes:
    """The templates of one view state; packs documents and rebuilds them."""

    def __init__(self) -> None:
        self._numbers: dict[tuple[str, ...], int] = {}
        self._keys: list[tuple[str, ...]] = []
        self._values: list[tuple[Any, ...]] = []
        self._frozen: list[bytes] = []

    def __len__(self) -> int:
        return len(self._keys)

    def pack(self, document: Mapping[str, Any]) -> bytes:
        """Return the compact form of ``document`` (a JSON object of the read contract)."""
        keys = tuple(document)
        number = self._numbers.get(keys)
        if number is None:
            number = self._numbers[keys] = len(self._keys)
            self._keys.append(keys)
            frozen = marshal.dumps(tuple(document.values()))
            self._frozen.append(frozen)
            self._values.append(marshal.loads(frozen))
            return marshal.dumps((number,))
        packed: list[Any] = [number]
        for i, (value, template) in enumerate(
            zip(document.values(), self._values[number], strict=True)
        ):
            if not _same(value, template):
                packed.append(i)
                packed.append(value)
        return marshal.dumps(tuple(packed))

    def document(self, packed: bytes) -> dict[str, Any]:
        """Return the document ``packed`` was made from (fresh objects every time)."""
        fields = marshal.loads(packed)
        number = fields[0]
        values = list(marshal.loads(self._frozen[number]))
        for k in range(1, len(fields), 2):
            values[fields[k]] = fields[k + 1]
        return dict(zip(self._keys[number], values, strict=True))

    def record(self, packed: bytes) -> Record:
        """Return the record ``packed`` holds, decoded by the read contract's codec."""
        return decode_record(self.document(packed))
