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

from collections.abc import Callable, Mapping
from dataclasses import fields as dataclass_fields
from dataclasses import is_dataclass, replace
from typing import Any

from allotment.ledger.core.model import Entitlement, Grant
from allotment.ledger.storage.codec import (
    CUSTOMER_FIELDS,
    ENTITLEMENT_FIELDS,
    GRANT_FIELDS,
    FieldDecoding,
    decode_record,
)

from .compact import Shapes
from .source import CustomerRecord

__all__ = ["DECODED_LIMIT", "Records"]

#: Rebuilt records kept for reuse (values being computed, routes reading records). Small: they
#: are the only records the cyclic collector walks (4,096 made 13 ms pauses; 256 make 1.5 ms).
DECODED_LIMIT = 256

_Fills = tuple[tuple[str, str], ...]
_FIELDS: dict[str, dict[str, FieldDecoding]] = {
    kind: {f.key: f for f in fields}
    for kind, fields in (
        ("entitlement", ENTITLEMENT_FIELDS),
        ("grant", GRANT_FIELDS),
        ("customer", CUSTOMER_FIELDS),
    )
}
_NESTED = "customer."
_IDENTITY = ENTITLEMENT_FIELDS[0].decode  # the codec's as-is decoding (ids, names, keys)
_PLANS_LIMIT = 256
#: One stored field's attribute ("" where the codec does not read it) and decoding (None: as is).
_Step = tuple[str, Callable[[Any], Any] | None]


class _Template:
    """One shape's template record, and how its documents' fields decode."""

    __slots__ = ("fields", "flat", "mappings", "nested_mappings", "plans", "record")

    def __init__(self, record: Any, fields: Mapping[str, FieldDecoding]) -> None:
        self.record = record
        self.fields = fields
        mapped = [f.attribute for f in fields.values() if f.mapping]
        self.mappings = tuple(a for a in mapped if not a.startswith(_NESTED))
        self.nested_mappings = tuple(a[len(_NESTED) :] for a in mapped if a.startswith(_NESTED))
        self.flat = not any(f.attribute.startswith(_NESTED) for f in fields.values()) and _plain(
            record.__class__
        )
        #: The keys a packed document stores -> how each decodes (a few combinations occur).
        self.plans: dict[tuple[str, ...], tuple[_Step, ...]] = {}

    def plan(self, keys: tuple[str, ...]) -> tuple[_Step, ...]:
        """Return, for each of ``keys``, the attribute it sets and its decoding (None: as is)."""
        found = self.plans.get(keys)
        if found is None:
            steps: list[_Step] = []
            for key in keys:
                decoding = self.fields.get(key)
                if decoding is None:  # the codec ignores fields it does not read
                    steps.append(("", None))
                else:
                    decode = None if decoding.decode is _IDENTITY else decoding.decode
                    steps.append((decoding.attribute, decode))
            if len(self.plans) >= _PLANS_LIMIT:
                self.plans.clear()
            found = self.plans[keys] = tuple(steps)
        return found


def _plain(cls: type) -> bool:
    """Tell whether a record class is a dataclass whose ``__init__`` only stores its fields."""
    return (
        is_dataclass(cls)
        and not hasattr(cls, "__post_init__")
        and not hasattr(cls, "__slots__")
        and all(f.init for f in dataclass_fields(cls))
    )


def _copy_with(record: Any, updates: dict[str, Any]) -> Any:
    """Return a copy of a plain frozen dataclass record with ``updates`` as attributes.

    What ``dataclasses.replace`` returns, without calling ``__init__`` (for a plain record,
    see ``_plain``, it would store the same attributes, one ``object.__setattr__`` each).
    """
    copy = object.__new__(record.__class__)
    attributes = copy.__dict__
    attributes.update(record.__dict__)
    attributes.update(updates)
    return copy


class Records:
    """Rebuilds records from packed documents of one view state; keeps the last few.

    A record is rebuilt from its shape's template record (decoded once, by the codec, from the
    template document): only the fields the packed form stores and the fills are decoded, with
    the codec's own field decodings; every other attribute is the template's immutable value
    (mappings are copied, so no two records share a mutable one).
    """

    def __init__(self, limit: int = DECODED_LIMIT) -> None:
        self.limit = limit
        self._held: dict[tuple[bytes, _Fills], Any] = {}
        self._templates: dict[int, _Template | None] = {}

    def __len__(self) -> int:
        return len(self._held)

    def record(self, shapes: Shapes, packed: bytes, fills: _Fills, *, keep: bool = True) -> Any:
        """Return the record ``packed`` holds, its ``fills`` (field, value) put back.

        ``keep=False`` takes a record already kept but keeps none it rebuilds: for a caller
        that reads each record once (recomputing answers), whose records kept would only churn
        the few held and keep garbage alive into the cyclic collector's young generation.
        """
        key = (packed, fills)
        held = self._held
        found = held.get(key)
        if found is None:
            found = self.rebuild(shapes, packed, fills)
            if keep:
                if len(held) >= self.limit:
                    held.clear()
                held[key] = found
        return found

    def rebuild(self, shapes: Shapes, packed: bytes, fills: _Fills) -> Any:
        """Return the record ``packed`` holds, rebuilt now (as ``decode_record`` would)."""
        number, keys, values = shapes.differences(packed)
        templates = self._templates
        template = templates[number] if number in templates else self._template(shapes, number)
        if template is None or "kind" in keys:
            return self._decoded(shapes, packed, fills)
        updates: dict[str, Any] = {}
        for (attribute, decode), value in zip(template.plan(keys), values, strict=True):
            if attribute:
                updates[attribute] = value if decode is None else decode(value)
        fields = template.fields
        for name, value in fills:
            found = fields.get(name)
            if found is not None:
                updates[found.attribute] = found.decode(value)
        record = template.record
        for attribute in template.mappings:
            if attribute not in updates:
                updates[attribute] = dict(getattr(record, attribute))
        if template.flat:
            return _copy_with(record, updates)
        return self._nested(record, updates, template.nested_mappings)

    def _nested(self, record: Any, updates: dict[str, Any], mappings: tuple[str, ...]) -> Any:
        inner = {a[len(_NESTED) :]: updates.pop(a) for a in list(updates) if a.startswith(_NESTED)}
        customer = record.customer
        for attribute in mappings:
            if attribute not in inner:
                inner[attribute] = dict(getattr(customer, attribute))
        return replace(record, customer=replace(customer, **inner), **updates)

    def _decoded(self, shapes: Shapes, packed: bytes, fills: _Fills) -> Any:
        document = shapes.document(packed)
        for name, value in fills:
            document[name] = value
        return decode_record(document)

    def _template(self, shapes: Shapes, number: int) -> _Template | None:
        templates = self._templates
        if number in templates:
            return templates[number]
        document = shapes.template(number)
        fields = _FIELDS.get(document.get("kind"))  # type: ignore[arg-type]
        template = None
        if fields is not None:
            try:  # the held fields are blanked in a template: they are filled per record
                template = _Template(decode_record(document), fields)
            except (KeyError, TypeError, ValueError, AttributeError):
                template = None  # decoded whole, per record, as the codec would fail or not
        templates[number] = template
        return template

    def entitlement(
        self, shapes: Shapes, packed: bytes, entitlement_id: str, *, keep: bool = True
    ) -> Entitlement:
        """Return the entitlement packed without its id (``keep``: as ``record``)."""
        found: Entitlement = self.record(shapes, packed, (("id", entitlement_id),), keep=keep)
        return found

    def grant(
        self, shapes: Shapes, packed: bytes, entitlement_id: str, *, keep: bool = True
    ) -> Grant:
        """Return the grant packed without its entitlement's id (``keep``: as ``record``)."""
        fills = (("entitlementId", entitlement_id),)
        found: Grant = self.record(shapes, packed, fills, keep=keep)
        return found

    def customer(self, shapes: Shapes, packed: bytes, record_id: str, key: str) -> CustomerRecord:
        """Return the customer packed without its id and key."""
        found: CustomerRecord = self.record(shapes, packed, (("id", record_id), ("key", key)))
        return found

    def subject_keys(self, shapes: Shapes, packed: bytes, key: str) -> tuple[str, ...]:
        """Return a packed customer's key and subject keys (``Customer.all_subject_keys``)."""
        number, keys, values = shapes.differences(packed)
        template = self._template(shapes, number)
        if template is None or "kind" in keys:
            return self._decoded(shapes, packed, (("key", key),)).customer.all_subject_keys  # type: ignore[no-any-return]
        subjects: tuple[str, ...] = template.record.customer.subject_keys
        for name, value in zip(keys, values, strict=True):
            if name == "subjectKeys":
                subjects = tuple(value)
        return (key, *(k for k in subjects if k != key))
