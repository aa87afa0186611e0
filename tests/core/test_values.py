"""Entitlement values per type and their valid_until (spec §4, §6; DESIGN D4, D13)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from allotment.ledger.core.model import EntitlementType, ExpirationUnit, Grant
from allotment.ledger.core.periods import edit_soft_limit
from allotment.ledger.core.values import entitlement_value
from tests.core.factory import D, T, grant, metered, value

JAN = metered("2024-01-01T00:00")


def test_boolean_entitlement_has_access_while_active() -> None:
    ent = replace(JAN, type=EntitlementType.BOOLEAN, active_to=T("2024-03-01T00:00"))
    inside = entitlement_value(ent, T("2024-02-01T00:00"))
    assert (inside.has_access, inside.balance, inside.config) == (True, None, None)
    assert inside.valid_until == T("2024-03-01T00:00")
    after = entitlement_value(ent, T("2024-03-01T00:00"))
    assert (after.has_access, after.valid_until) == (False, None)


def test_static_entitlement_returns_its_config_text() -> None:
    config = '{"integrations":["github"]}'
    ent = replace(JAN, type=EntitlementType.STATIC, config=config)
    result = entitlement_value(ent, T("2024-02-01T00:00"))
    assert (result.has_access, result.config) == (True, config)


@pytest.mark.parametrize(
    ("active_from", "active_to", "at", "valid_until"),
    [
        pytest.param(
            "2024-02-01T00:00", None, "2024-01-15T00:00", "2024-02-01T00:00", id="scheduled"
        ),
        pytest.param(None, "2024-01-10T00:00", "2024-01-10T00:00", None, id="ended"),
        pytest.param(
            "2024-01-10T00:00",
            "2024-01-10T00:00",
            "2024-01-10T00:00",
            None,
            id="zero-length-never-active",
        ),
    ],
)
def test_inactive_metered_entitlement_has_only_has_access_false(
    active_from: str | None, active_to: str | None, at: str, valid_until: str | None
) -> None:
    ent = replace(
        JAN,
        active_from=T(active_from) if active_from else None,
        active_to=T(active_to) if active_to else None,
    )
    result = value(ent, at, [grant("g", 100, "2024-01-01T00:00")])
    assert result.has_access is False
    assert (result.balance, result.usage, result.overage, result.grant_balances) == (
        None,
        None,
        None,
        None,
    )
    assert result.valid_until == (T(valid_until) if valid_until else None)


@pytest.mark.parametrize(
    ("balance_left", "soft", "has_access"),
    [
        pytest.param(1, False, True, id="positive-balance"),
        pytest.param(0, False, False, id="zero-balance-is-strictly-no-access"),
        pytest.param(0, True, True, id="soft-limit-always-has-access"),
    ],
)
def test_has_access(balance_left: int, soft: bool, has_access: bool) -> None:
    ent = metered("2024-01-01T00:00", soft=soft)
    result = value(
        ent,
        "2024-01-03T00:00",
        [grant("g", 10, "2024-01-01T00:00")],
        {"2024-01-02T00:00": 10 - balance_left},
    )
    assert result.has_access is has_access


def test_soft_limit_edit_applies_from_its_instant() -> None:
    ent = edit_soft_limit(JAN, True, T("2024-01-10T00:00"))
    grants = [grant("g", 10, "2024-01-01T00:00")]
    usage = {"2024-01-02T00:00": 10}
    assert value(ent, "2024-01-05T00:00", grants, usage).has_access is False
    assert value(ent, "2024-01-05T00:00", grants, usage).valid_until == T("2024-01-10T00:00")
    assert value(ent, "2024-01-11T00:00", grants, usage).has_access is True


def test_grant_balances_list_only_grants_active_at_the_instant() -> None:
    grants = [
        grant("expired", 10, "2024-01-01T00:00", expires=(ExpirationUnit.DAY, 1)),
        grant("active", 10, "2024-01-01T00:00"),
        grant("future", 10, "2024-01-20T00:00"),
    ]
    result = value(JAN, "2024-01-05T00:00", grants)
    assert result.grant_balances == {"active": D(10)}


@pytest.mark.parametrize(
    ("grants", "at", "valid_until"),
    [
        pytest.param([], "2024-01-15T00:00", "2024-02-01T00:00", id="next-period-boundary"),
        pytest.param(
            [grant("e", 5, "2024-01-01T00:00", expires=(ExpirationUnit.DAY, 5))],
            "2024-01-02T00:00",
            "2024-01-06T00:00",
            id="expiry",
        ),
        pytest.param(
            [grant("f", 5, "2024-01-10T00:00")],
            "2024-01-02T00:00",
            "2024-01-10T00:00",
            id="activation",
        ),
        pytest.param(
            [grant("v", 5, "2024-01-01T00:00", void="2024-01-07T00:00")],
            "2024-01-02T00:00",
            "2024-01-07T00:00",
            id="future-void",
        ),
        pytest.param(
            [grant("r", 5, "2024-01-01T00:00", recurrence=("DAY", "2024-01-01T06:00"))],
            "2024-01-02T10:00",
            "2024-01-03T06:00",
            id="recurrence",
        ),
    ],
)
def test_valid_until_is_the_next_change_without_usage(
    grants: list[Grant], at: str, valid_until: str
) -> None:
    assert value(JAN, at, grants).valid_until == T(valid_until)


def test_valid_until_stops_at_active_to() -> None:
    ent = replace(JAN, active_to=T("2024-01-20T00:00"))
    assert value(ent, "2024-01-15T00:00").valid_until == T("2024-01-20T00:00")


def test_usage_is_counted_from_the_current_period_start() -> None:
    result = value(
        JAN,
        "2024-02-10T00:00",
        [grant("g", 100, "2024-01-01T00:00")],
        {"2024-01-20T00:00": 30, "2024-02-05T00:00": 20},
    )
    assert (result.usage, result.balance, result.total_available_grant_amount) == (
        D(20),
        D(50),
        D(70),
    )


def test_before_measure_usage_from_nothing_is_burnt() -> None:
    ent = replace(metered("2024-01-10T00:00"), created_at=T("2024-01-01T00:00"))
    result = value(
        ent, "2024-01-05T00:00", [grant("g", 100, "2024-01-01T00:00")], {"2024-01-04T00:00": 30}
    )
    assert (result.balance, result.usage, result.overage, result.has_access) == (
        D(100),
        D(0),
        D(0),
        True,
    )
    assert result.valid_until == T("2024-01-10T00:00")
