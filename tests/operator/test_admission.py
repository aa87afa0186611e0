"""Admission warnings: cross-object problems are warned about, never refused."""

from __future__ import annotations

from typing import Any

import pytest

from allotment.operator.admission import reference_warnings

INDEXES: dict[str, Any] = {
    "meters": {("shop", "tokens"): ["tokens"]},
    "features": {("shop", "gpt_4_tokens"): ["gpt-4-tokens"]},
    "customers": {("shop", "customer-1"): ["customer-1"]},
    "plans": {("shop", "pro"): ["pro"]},
    "entitlements": {
        ("name", "shop", "customer-1-gpt"): ["customer-1-gpt"],
        ("target", "shop", "customer-1", "gpt_4_tokens"): ["customer-1-gpt"],
    },
}


@pytest.mark.parametrize(
    ("kind", "name", "spec", "expected"),
    [
        pytest.param("Feature", "f", {"meterSlug": "tokens"}, [], id="feature-ok"),
        pytest.param("Feature", "f", {"meterSlug": "nope"}, ["no Meter with slug 'nope'"],
                     id="feature-missing-meter"),
        pytest.param("Entitlement", "customer-1-gpt",
                     {"customer": "customer-1", "featureKey": "gpt_4_tokens"}, [],
                     id="entitlement-ok-itself"),
        pytest.param("Entitlement", "e2", {"customer": "customer-2", "featureKey": "x"},
                     ["no Feature with key 'x'", "no Customer with key 'customer-2'"],
                     id="entitlement-missing-both"),
        pytest.param("Entitlement", "other",
                     {"customer": "customer-1", "featureKey": "gpt_4_tokens"},
                     ["Entitlement 'customer-1-gpt' already gives 'customer-1'"],
                     id="entitlement-conflict"),
        pytest.param("Grant", "g", {"entitlement": "customer-1-gpt", "amount": 1}, [],
                     id="grant-ok"),
        pytest.param("Grant", "g", {"entitlement": "gone", "amount": 1},
                     ["no Entitlement named 'gone'"], id="grant-missing-entitlement"),
        pytest.param("Subscription", "s", {"customer": "customer-1", "planKey": "pro"}, [],
                     id="subscription-ok"),
        pytest.param("Subscription", "s", {"customer": "customer-1", "planKey": "team"},
                     ["no Plan with key 'team'"], id="subscription-missing-plan"),
        pytest.param("EntitlementReset", "r", {"customer": "customer-1", "featureKey": "x"},
                     ["no Feature with key 'x'"], id="reset-missing-feature"),
    ],
)  # fmt: skip
def test_reference_warnings(
    kind: str, name: str, spec: dict[str, Any], expected: list[str]
) -> None:
    found = reference_warnings(kind, "shop", name, spec, INDEXES)
    assert len(found) == len(expected)
    for warning, start in zip(found, expected, strict=True):
        assert warning.startswith(start)
