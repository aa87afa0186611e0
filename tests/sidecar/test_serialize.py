"""The hot path's hand-written value JSON is exactly the general serialiser's."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from allotment.ledger.core.model import EntitlementValue
from allotment.sidecar.serialize import dumps, value_json, value_v1, value_v2

AT = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(EntitlementValue(AT, True), id="boolean"),
        pytest.param(EntitlementValue(AT, False), id="inactive"),
        pytest.param(EntitlementValue(AT, True, config='{"a":"é"}'), id="static"),
        pytest.param(
            EntitlementValue(
                AT,
                True,
                balance=Decimal("900.50"),
                usage=Decimal("99.5"),
                overage=Decimal(0),
                total_available_grant_amount=Decimal("1000.000"),
                grant_balances={"01JAAAAAAAAAAAAAAAAAAAAAAA": Decimal("900.50")},
            ),
            id="metered",
        ),
        pytest.param(
            EntitlementValue(
                AT,
                False,
                balance=Decimal(0),
                usage=Decimal("1E+3"),
                overage=Decimal("0.000001"),
                total_available_grant_amount=Decimal(-5),
                grant_balances={},
            ),
            id="metered-exponents-and-no-grants",
        ),
    ],
)
@pytest.mark.parametrize("v2", [pytest.param(False, id="v1"), pytest.param(True, id="v2")])
def test_value_json_matches_the_general_serialiser(value: EntitlementValue, v2: bool) -> None:
    expected = dumps(value_v2(value) if v2 else value_v1(value))
    assert value_json(value, v2=v2) == expected
    json.loads(expected)


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        pytest.param(Decimal("900.50"), "900.5", id="trailing-zero"),
        pytest.param(Decimal("1E+3"), "1000", id="exponent"),
        pytest.param(Decimal("0.000001"), "0.000001", id="small"),
        pytest.param(Decimal("-3"), "-3", id="negative"),
        pytest.param(
            Decimal("12345678901234567890.123456789"), "12345678901234567890.123456789", id="exact"
        ),
    ],
)
def test_amounts_are_exact_json_numbers(amount: Decimal, text: str) -> None:
    assert dumps({"n": amount}) == '{"n":' + text + "}"
