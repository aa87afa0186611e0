"""The read contract's documents round-trip every field of every record kind exactly."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from allotment.ledger.core.model import (
    Aggregation,
    CalendarDuration,
    Consistency,
    Customer,
    Entitlement,
    EntitlementType,
    Expiration,
    ExpirationUnit,
    Feature,
    Grant,
    IssueAfterReset,
    Meter,
    PeriodSource,
    Recurrence,
    UsagePeriodEntry,
    Versioned,
    WhenStale,
)
from allotment.ledger.storage.codec import (
    CustomerRecord,
    FeatureRecord,
    MeterRecord,
    Record,
    decode_record,
    encode_record,
)

T0 = datetime(2026, 1, 31, 15, 0, tzinfo=UTC)
T1 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
MONTH = CalendarDuration.parse("MONTH")

RECORDS: list[Record] = [
    Entitlement(
        id="01JAAAAAAAAAAAAAAAAAAAAAAA",
        namespace="default",
        name="customer-1-gpt-4",
        customer_key="customer-1",
        feature_key="gpt_4_tokens",
        type=EntitlementType.METERED,
        created_at=T0,
        usage_period=(
            UsagePeriodEntry(T0, Recurrence(MONTH, T0)),
            UsagePeriodEntry(
                T1, Recurrence(CalendarDuration(hours=6), T1), PeriodSource.RESET, True
            ),
        ),
        measure_usage_from=T0,
        issue_after_reset=(
            Versioned(T0, IssueAfterReset(Decimal("1000000"), 1)),
            Versioned(T1, None),
        ),
        is_soft_limit=(Versioned(T0, False), Versioned(T1, True)),
        preserve_overage_at_reset=(Versioned(T0, False),),
        active_to=T1,
        metadata={"team": "ml"},
    ),
    Entitlement(
        id="01JBBBBBBBBBBBBBBBBBBBBBBB",
        namespace="default",
        name="customer-1-integrations",
        customer_key="customer-1",
        feature_key="integrations",
        type=EntitlementType.STATIC,
        created_at=T0,
        config='{"integrations":["github"]}',
        active_from=T0,
    ),
    Grant(
        id="01JCCCCCCCCCCCCCCCCCCCCCCC",
        namespace="default",
        name="customer-1-bonus",
        entitlement_id="01JAAAAAAAAAAAAAAAAAAAAAAA",
        amount=Decimal("0.000000000000000001"),
        effective_at=T0,
        created_at=T0,
        priority=3,
        expiration=Expiration(ExpirationUnit.MONTH, 2),
        min_rollover_amount=Decimal("10.5"),
        max_rollover_amount=Decimal("12345678901234567890.123"),
        recurrence=Recurrence(CalendarDuration(weeks=1), T0),
        void_at=T1,
        metadata={"order": "42"},
        annotations={"issueAfterReset": "true"},
    ),
    Grant(
        id="01JDDDDDDDDDDDDDDDDDDDDDDD",
        namespace="default",
        name="plain",
        entitlement_id="01JAAAAAAAAAAAAAAAAAAAAAAA",
        amount=Decimal(100),
        effective_at=T0,
        created_at=T1,
    ),
    CustomerRecord(
        "01JEEEEEEEEEEEEEEEEEEEEEEE",
        Customer("customer-1", "Customer One", ("acme-prod", "acme-staging"), {"tier": "gold"}),
        T0,
    ),
    FeatureRecord(
        "01JFFFFFFFFFFFFFFFFFFFFFFF",
        Feature(
            "gpt_4_tokens",
            "GPT-4 tokens",
            "tokens_total",
            {"model": "gpt-4"},
            {"unit": "token"},
            WhenStale.DENY,
            Consistency.STRICT,
        ),
        T0,
    ),
    MeterRecord(
        "01JGGGGGGGGGGGGGGGGGGGGGGG",
        Meter("tokens_total", "prompt", Aggregation.SUM, "$.tokens", {"model": "$.model"}),
        T0,
    ),
    MeterRecord("01JHHHHHHHHHHHHHHHHHHHHHHH", Meter("requests", "request", Aggregation.COUNT), T1),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_a_record_survives_the_contract_through_json_text(record: Record) -> None:
    text = json.dumps(encode_record(record))
    assert decode_record(json.loads(text)) == record


def test_amounts_travel_as_exact_decimal_text() -> None:
    document = encode_record(RECORDS[2])
    assert document["amount"] == "0.000000000000000001"
    assert document["maxRolloverAmount"] == "12345678901234567890.123"


def test_an_unknown_kind_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown record kind 'plan'"):
        decode_record({"kind": "plan"})
