"""entitlement_values on both databases: the ledger's current values, as the sidecar answers."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from allotment.ledger.apply import apply_resource
from allotment.ledger.core.resources import parse_resource
from allotment.ledger.storage import usage
from allotment.ledger.storage.engine import Ledger
from allotment.ledger.values import (
    entitlement_values,
    load_records,
    status_value,
    status_values,
)

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=30)
API = "allotment.dev/v1alpha1"

CATALOGUE: list[dict[str, Any]] = [
    {
        "kind": "Meter",
        "metadata": {"name": "tokens-total"},
        "spec": {
            "eventType": "prompt",
            "aggregation": "SUM",
            "valueProperty": "$.tokens",
            "groupBy": {"model": "$.model"},
        },
    },
    {
        "kind": "Feature",
        "metadata": {"name": "gpt-4-tokens"},
        "spec": {"meterSlug": "tokens_total", "meterGroupByFilters": {"model": "gpt-4"}},
    },
    {"kind": "Feature", "metadata": {"name": "sso"}, "spec": {}},
    {
        "kind": "Customer",
        "metadata": {"name": "customer-1"},
        "spec": {"usageAttribution": {"subjectKeys": ["customer-1-app"]}},
    },
    {
        "kind": "Entitlement",
        "metadata": {"name": "customer-1-gpt-4-tokens"},
        "spec": {
            "customer": "customer-1",
            "featureKey": "gpt_4_tokens",
            "type": "metered",
            "usagePeriod": {"interval": "MONTH"},
            "issueAfterReset": 1000,
        },
    },
    {
        "kind": "Entitlement",
        "metadata": {"name": "customer-1-sso"},
        "spec": {"customer": "customer-1", "featureKey": "sso", "type": "boolean"},
    },
]


def _stamp(body: dict[str, Any]) -> dict[str, Any]:
    stamped = copy.deepcopy(body)
    stamped["apiVersion"] = API
    stamped["metadata"].update(
        namespace="default", uid=str(uuid.uuid4()), generation=1, creationTimestamp=T0.isoformat()
    )
    return stamped


def _record(ledger: Ledger, bodies: list[dict[str, Any]]) -> None:
    for body in bodies:
        with ledger.write() as connection:
            outcome = apply_resource(connection, parse_resource(_stamp(body)), T0)
        assert outcome.ready, outcome.message


def _event(n: int, subject: str, tokens: int, model: str) -> usage.IncomingEvent:
    return usage.IncomingEvent(
        id=f"e{n}",
        source="test",
        type="prompt",
        subject=subject,
        time=T0 + timedelta(minutes=n),
        data={"tokens": tokens, "model": model},
    )


def _values(ledger: Ledger, now: datetime = NOW) -> dict[str, dict[str, Any]]:
    """Return status.value by entitlement name."""
    with ledger.read() as connection:
        records = load_records(connection, "default")
        values = entitlement_values(connection, "default", now)
    return {records.entitlements[i].name: status_value(v) for i, v in values.items()}


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(
            [],
            {
                "hasAccess": True,
                "balance": 1000,
                "usage": 0,
                "overage": 0,
                "totalAvailableGrantAmount": 1000,
            },
            id="no-usage",
        ),
        pytest.param(
            [
                _event(1, "customer-1", 100, "gpt-4"),
                _event(2, "customer-1-app", 250, "gpt-4"),
                _event(3, "customer-1", 500, "gpt-3.5-turbo"),
                _event(4, "someone-else", 70, "gpt-4"),
            ],
            {
                "hasAccess": True,
                "balance": 650,
                "usage": 350,
                "overage": 0,
                "totalAvailableGrantAmount": 1000,
            },
            id="subject-keys-count-and-filters-apply",
        ),
        pytest.param(
            [_event(1, "customer-1", 1200, "gpt-4")],
            {
                "hasAccess": False,
                "balance": 0,
                "usage": 1200,
                "overage": 200,
                "totalAvailableGrantAmount": 1000,
            },
            id="overage",
        ),
    ],
)
def test_metered_value_counts_the_customers_usage(
    ledger: Ledger, events: list[usage.IncomingEvent], expected: dict[str, Any]
) -> None:
    _record(ledger, CATALOGUE)
    if events:
        with ledger.write() as connection:
            usage.ingest(connection, "default", events, received_at=NOW)
    value = _values(ledger)["customer-1-gpt-4-tokens"]
    assert {k: v for k, v in value.items() if k != "asOf"} == expected
    assert value["asOf"] == "2026-11-24T12:30:00Z"


def test_a_grant_adds_to_the_balance_and_a_boolean_has_access(ledger: Ledger) -> None:
    grant = {
        "kind": "Grant",
        "metadata": {"name": "top-up"},
        "spec": {"entitlement": "customer-1-gpt-4-tokens", "amount": 500},
    }
    _record(ledger, [*CATALOGUE, grant])
    values = _values(ledger)
    assert values["customer-1-gpt-4-tokens"]["balance"] == 1500
    assert values["customer-1-sso"] == {"asOf": "2026-11-24T12:30:00Z", "hasAccess": True}


def test_usage_after_the_instant_asked_is_not_counted(ledger: Ledger) -> None:
    _record(ledger, CATALOGUE)
    with ledger.write() as connection:
        usage.ingest(connection, "default", [_event(1, "customer-1", 10, "gpt-4")], received_at=NOW)
    assert _values(ledger, T0)["customer-1-gpt-4-tokens"]["usage"] == 0
    with ledger.read() as connection:
        values = entitlement_values(connection, "default", NOW)
    assert all(isinstance(v.balance, Decimal) for v in values.values() if v.balance is not None)


def test_status_values_by_name_for_the_operator(ledger: Ledger) -> None:
    _record(ledger, CATALOGUE)
    refs = [
        ("default", "customer-1-gpt-4-tokens"),
        ("default", "customer-1-sso"),
        ("default", "not-recorded"),
        ("elsewhere", "customer-1-sso"),
    ]
    with ledger.read() as connection:
        fields = status_values(connection, refs, NOW)
    values = {ref: written["value"] for ref, written in fields.items()}
    periods = {ref: written.get("currentUsagePeriod") for ref, written in fields.items()}
    assert periods == {
        ("default", "customer-1-gpt-4-tokens"): {
            "from": "2026-11-24T12:00:00Z",  # created at 12:00, monthly from then
            "to": "2026-12-24T12:00:00Z",
        },
        ("default", "customer-1-sso"): None,  # no usage period
    }
    assert values == {
        ("default", "customer-1-gpt-4-tokens"): {
            "asOf": "2026-11-24T12:30:00Z",
            "hasAccess": True,
            "balance": 1000,
            "usage": 0,
            "overage": 0,
            "totalAvailableGrantAmount": 1000,
        },
        ("default", "customer-1-sso"): {"asOf": "2026-11-24T12:30:00Z", "hasAccess": True},
    }
