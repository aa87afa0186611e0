"""Records rebuilt from packed documents equal what the codec decodes from the whole document.

The view packs each document without the fields its holder keeps (ids, keys), against the
template of its shape, and rebuilds the record from the template record plus the fields that
differ (``sidecar.records.Records``). Every record of a table of varied ones is packed after
every other (each one the template once), rebuilt, and compared with ``decode_record``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from allotment.ledger.core.model import (
    CalendarDuration,
    Customer,
    Entitlement,
    EntitlementType,
    Expiration,
    ExpirationUnit,
    Feature,
    Grant,
    IssueAfterReset,
    PeriodSource,
    Recurrence,
    UsagePeriodEntry,
    Versioned,
)
from allotment.ledger.storage.codec import (
    CustomerRecord,
    FeatureRecord,
    decode_record,
    encode_record,
)
from allotment.sidecar.compact import Shapes
from allotment.sidecar.records import Records

T0 = datetime(2026, 11, 1, tzinfo=UTC)
DAY = timedelta(days=1)
MONTHLY = Recurrence(CalendarDuration(months=1), T0)


def _entitlement(i: int, **changes: Any) -> Entitlement:
    fields: dict[str, Any] = {
        "id": f"01J{i:023d}",
        "namespace": "default",
        "name": f"customer-{i}-tokens",
        "customer_key": f"customer-{i}",
        "feature_key": "tokens",
        "type": EntitlementType.METERED,
        "created_at": T0,
        "usage_period": (UsagePeriodEntry(T0, MONTHLY),),
        "measure_usage_from": T0,
        "is_soft_limit": (Versioned(T0, False),),
        "preserve_overage_at_reset": (Versioned(T0, False),),
    }
    return Entitlement(**{**fields, **changes})


def _grant(i: int, **changes: Any) -> Grant:
    fields: dict[str, Any] = {
        "id": f"01G{i:023d}",
        "namespace": "default",
        "name": f"customer-{i}-tokens-grant",
        "entitlement_id": f"01J{i:023d}",
        "amount": Decimal(1_000_000),
        "effective_at": T0,
        "created_at": T0,
    }
    return Grant(**{**fields, **changes})


def _customer(i: int, subjects: tuple[str, ...] = (), **changes: Any) -> CustomerRecord:
    customer = Customer(f"customer-{i}", f"Customer {i}", subjects, changes.pop("metadata", {}))
    return CustomerRecord(f"01C{i:023d}", customer, changes.pop("created_at", T0))


ENTITLEMENTS = [
    _entitlement(1),
    _entitlement(2),
    _entitlement(3, active_from=T0 + DAY, active_to=T0 + 40 * DAY),
    _entitlement(4, is_soft_limit=(Versioned(T0, False), Versioned(T0 + DAY, True))),
    _entitlement(
        5,
        issue_after_reset=(
            Versioned(T0, IssueAfterReset(Decimal("10.50"), 2)),
            Versioned(T0 + DAY, None),
        ),
        preserve_overage_at_reset=(Versioned(T0, True),),
    ),
    _entitlement(
        6,
        usage_period=(
            UsagePeriodEntry(T0, MONTHLY),
            UsagePeriodEntry(
                T0 + 3 * DAY,
                Recurrence(CalendarDuration(days=1), T0 + 3 * DAY),
                PeriodSource.RESET,
                True,
            ),
            UsagePeriodEntry(
                T0 + 5 * DAY, Recurrence(CalendarDuration(weeks=1), T0), PeriodSource.EDIT
            ),
        ),
        measure_usage_from=T0 + DAY,
        created_at=T0 - DAY,
    ),
    _entitlement(
        7,
        type=EntitlementType.STATIC,
        config='{"seats": 5}',
        usage_period=(),
        measure_usage_from=None,
        is_soft_limit=(),
        preserve_overage_at_reset=(),
    ),
    _entitlement(8, type=EntitlementType.BOOLEAN, metadata={"tier": "gold"}, feature_key="sso"),
]
GRANTS = [
    _grant(1),
    _grant(2),
    _grant(3, expiration=Expiration(ExpirationUnit.DAY, 30), priority=3),
    _grant(
        4,
        recurrence=Recurrence(CalendarDuration(months=1), T0),
        max_rollover_amount=Decimal("500"),
        min_rollover_amount=Decimal("0.5"),
    ),
    _grant(5, void_at=T0 + 2 * DAY, amount=Decimal("12.000")),
    _grant(6, metadata={"source": "plan"}, annotations={"allotment.dev/owner": "ops"}),
    _grant(7, effective_at=T0 + DAY, created_at=T0 + 2 * DAY, priority=0),
]
CUSTOMERS = [
    _customer(1),
    _customer(2, ("customer-2",)),
    _customer(3, ("s-3a", "s-3b", "customer-3")),
    _customer(4, ("s-4",), metadata={"region": "eu"}),
    _customer(5, ("s-5a", "s-5b"), created_at=T0 + DAY),
]

#: Fields each kind's holder keeps (blanked in the packed form, put back on rebuilding), and
#: the fields packed whatever the template holds: as ``view._State.pack`` does.
HELD = {"entitlement": ("id",), "grant": ("entitlementId",), "customer": ("id", "key")}
ALWAYS = {"grant": ("id",)}


def _pack(shapes: Shapes, document: dict[str, Any]) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    kind = document["kind"]
    fills = tuple((name, document[name]) for name in HELD[kind])
    blanked = {**document, **dict.fromkeys(HELD[kind])}
    return shapes.pack(blanked, ALWAYS.get(kind, ())), fills


def _older(document: dict[str, Any]) -> dict[str, Any]:
    """The document without its optional fields (an older writer's shape)."""
    optional = (
        "measureUsageFrom",
        "config",
        "activeFrom",
        "activeTo",
        "metadata",
        "voidAt",
        "maxRolloverAmount",
        "recurrence",
        "expiration",
        "annotations",
    )
    return {k: v for k, v in document.items() if k not in optional}


@pytest.mark.parametrize(
    "records",
    [
        pytest.param(ENTITLEMENTS, id="entitlements"),
        pytest.param(GRANTS, id="grants"),
        pytest.param(CUSTOMERS, id="customers"),
    ],
)
@pytest.mark.parametrize(
    "older", [pytest.param(False, id="current"), pytest.param(True, id="older")]
)
def test_every_record_rebuilds_as_the_codec_decodes_it(records: list[Any], older: bool) -> None:
    documents = [encode_record(r) for r in records]
    if older:
        documents = [_older(d) for d in documents]
    for template in range(len(documents)):
        shapes, rebuilt_by = Shapes(), Records()
        order = documents[template:] + documents[:template]
        for document in order:
            packed, fills = _pack(shapes, document)
            expected = decode_record(document)
            rebuilt = rebuilt_by.rebuild(shapes, packed, fills)
            assert rebuilt == expected
            assert repr(rebuilt) == repr(expected)  # same types: 0 is not False, 1.0 not 1
            if isinstance(expected, CustomerRecord):
                key = expected.customer.key
                assert rebuilt_by.subject_keys(shapes, packed, key) == (
                    expected.customer.all_subject_keys
                )


def test_records_of_a_shape_share_no_mapping() -> None:
    shapes, records = Shapes(), Records()
    packed = [
        _pack(shapes, encode_record(g))
        for g in (
            GRANTS[5],
            _grant(9, metadata={"source": "plan"}, annotations={"allotment.dev/owner": "ops"}),
        )
    ]
    first, second = (records.rebuild(shapes, p, fills) for p, fills in packed)
    assert first.metadata == second.metadata
    assert first.metadata is not second.metadata
    assert first.annotations is not second.annotations


def test_a_kind_without_field_decodings_is_decoded_whole() -> None:
    shapes, records = Shapes(), Records()
    feature = FeatureRecord("01F" + "0" * 23, Feature("tokens", "Tokens", "tokens"), T0)
    packed = shapes.pack(encode_record(feature))
    assert records.rebuild(shapes, packed, ()) == feature


def test_rebuilt_records_are_kept_up_to_the_limit() -> None:
    shapes, records = Shapes(), Records(limit=2)
    packed = [_pack(shapes, encode_record(g)) for g in GRANTS[:3]]
    first = records.record(shapes, *packed[0])
    assert records.record(shapes, *packed[0]) is first
    records.record(shapes, *packed[1])
    records.record(shapes, *packed[2])
    assert len(records) <= 2


def test_a_record_not_kept_is_rebuilt_unkept_or_taken_from_those_kept() -> None:
    shapes, records = Shapes(), Records()
    (grant, fills), (other, other_fills) = (_pack(shapes, encode_record(g)) for g in GRANTS[:2])
    unkept = records.record(shapes, grant, fills, keep=False)
    assert unkept == decode_record(encode_record(GRANTS[0]))
    assert len(records) == 0
    kept = records.record(shapes, other, other_fills)
    assert records.record(shapes, other, other_fills, keep=False) is kept
    assert len(records) == 1
