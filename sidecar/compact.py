"""The view's compact record form: a read-contract document kept as its differences from a template.

Role: store the catalogue records the sidecar holds (customers, entitlements, grants: up to
10^6 of each) in a few dozen bytes apiece instead of a tree of frozen dataclasses, and rebuild
the record when a value must be computed or a route asks for it. The form is the read
contract's own document (``allotment.ledger.storage.codec``): nothing is translated twice.

Layout: documents with the same keys in the same order share a *shape*: its key tuple and the
values of the first document seen with it (the template, kept ``marshal``-ed so every rebuild
gets fresh containers). A document is stored as one ``bytes`` object,
``marshal.dumps((head, v1, v2, ...))``: ``head`` is the shape's number plus, shifted left by
``_SHAPE_BITS``, a bit mask of the positions whose value differs from the template's; their
values follow in key order (strings, numbers, None, booleans, lists and dicts of those, exactly
as ``json.loads`` gave them). Records of one seed shape differ in their
ids, keys and names only, so each costs a few dozen bytes. Equal documents pack to equal bytes.

It must not interpret a document's meaning (the codec decodes; the view picks index fields) nor
drop a value: a value equal to the template's but of another type (``False`` and ``0``) counts
as a difference.
"""

from __future__ import annotations

import marshal
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["Shapes", "parse_instant"]

_SHAPE_BITS = 12
_SHAPE_MASK = (1 << _SHAPE_BITS) - 1
_HEADS_LIMIT = 4096


def parse_instant(text: str) -> datetime:
    """Return the aware UTC instant of a document's RFC 3339 text (the codec writes ``Z``)."""
    return datetime.fromisoformat(text).astimezone(UTC)


class Shapes:
    """The templates of one view state; packs documents and rebuilds them."""

    def __init__(self) -> None:
        self._numbers: dict[tuple[str, ...], int] = {}
        self._keys: list[tuple[str, ...]] = []
        self._values: list[tuple[Any, ...]] = []
        self._frozen: list[bytes] = []
        self._each: list[tuple[bytes, ...]] = []  # each template value marshal-ed
        #: A packed document's head -> the keys of the positions it stores (bounded: few occur).
        self._heads: dict[int, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def pack(self, document: Mapping[str, Any], always: tuple[str, ...] = ()) -> bytes:
        """Return the compact form of ``document`` (a JSON object of the read contract).

        The fields named in ``always`` are stored even where they equal the template's, so
        their text can be searched for in the packed bytes.
        """
        keys = tuple(document)
        number = self._numbers.get(keys)
        if number is None:
            if len(self._keys) > _SHAPE_MASK:  # the codec writes every key: a handful exist
                raise ValueError(f"more than {_SHAPE_MASK + 1} document shapes")
            number = self._numbers[keys] = len(self._keys)
            self._keys.append(keys)
            frozen = marshal.dumps(tuple(document.values()))
            self._frozen.append(frozen)
            self._values.append(marshal.loads(frozen))
            self._each.append(tuple(marshal.dumps(v) for v in document.values()))
        forced = 0
        for name in always:
            forced |= 1 << keys.index(name)
        changed: list[Any] = [0]
        mask = 0
        templates, each = self._values[number], self._each[number]
        dumps = marshal.dumps
        for i, value in enumerate(document.values()):
            template = templates[i]
            kind = value.__class__
            same = value is template or (  # None, booleans and small numbers are
                kind is template.__class__
                and value == template
                and (
                    kind is str
                    or kind is int
                    or (not value and kind is not float)
                    or dumps(value) == each[i]
                )
            )  # the template's value, of the same type (nested False vs 0 apart; empty is empty)
            if same and not forced >> i & 1:
                continue
            mask |= 1 << i
            changed.append(value)
        changed[0] = mask << _SHAPE_BITS | number
        return dumps(tuple(changed))

    def document(self, packed: bytes) -> dict[str, Any]:
        """Return the document ``packed`` was made from (fresh objects every time)."""
        changed = marshal.loads(packed)
        head = changed[0]
        number, mask = head & _SHAPE_MASK, head >> _SHAPE_BITS
        values = list(marshal.loads(self._frozen[number]))
        i = k = 0
        while mask:
            if mask & 1:
                k += 1
                values[i] = changed[k]
            mask >>= 1
            i += 1
        return dict(zip(self._keys[number], values, strict=True))

    def template(self, number: int) -> dict[str, Any]:
        """Return the template document of shape ``number`` (fresh objects every time)."""
        return dict(zip(self._keys[number], marshal.loads(self._frozen[number]), strict=True))

    def differences(self, packed: bytes) -> tuple[int, tuple[str, ...], tuple[Any, ...]]:
        """Return the shape number of ``packed``, and the keys and values where it differs.

        Every other field of the document is the shape's template's (``template``); the
        values are fresh objects.
        """
        changed = marshal.loads(packed)
        head = changed[0]
        keys = self._heads.get(head)
        if keys is None:
            shape, mask = self._keys[head & _SHAPE_MASK], head >> _SHAPE_BITS
            keys = tuple(key for i, key in enumerate(shape) if mask >> i & 1)
            if len(self._heads) >= _HEADS_LIMIT:
                self._heads.clear()
            self._heads[head] = keys
        return head & _SHAPE_MASK, keys, changed[1:]
