"""Domain-type defaults and identifiers (spec §3, §7.1, §11; DESIGN Resources, D8)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from allotment.ledger.core.model import Consistency, Feature, Versioned, WhenStale, value_at
from allotment.ledger.core.ulid import derived_ulid, is_ulid, new_ulid
from tests.core.factory import T, grant


def test_feature_defaults_are_last_known_and_eventual() -> None:
    feature = Feature("gpt_4_tokens", "GPT-4 tokens", meter_slug="tokens")
    assert (feature.when_stale, feature.consistency) == (WhenStale.LAST_KNOWN, Consistency.EVENTUAL)
    assert dict(feature.meter_group_by_filters) == {}


def test_grant_v2_defaults() -> None:
    g = grant("g", 10, "2024-01-01T00:00")
    assert (g.priority, g.expiration, g.min_rollover_amount, g.rollover_cap) == (0, None, 0, 10)


@pytest.mark.parametrize(
    ("instant", "entropy", "expected"),
    [
        pytest.param(datetime(1970, 1, 1, tzinfo=UTC), bytes(10), "0" * 26, id="epoch-zero"),
        pytest.param(
            datetime(2026, 1, 1, tzinfo=UTC), bytes(10), "01KDVDNA00" + "0" * 16, id="time-prefix"
        ),
        pytest.param(
            datetime(1970, 1, 1, tzinfo=UTC), b"\xff" * 10, "0000000000" + "Z" * 16, id="entropy"
        ),
    ],
)
def test_new_ulid_encodes_time_and_entropy(
    instant: datetime, entropy: bytes, expected: str
) -> None:
    assert new_ulid(instant, entropy) == expected
    assert is_ulid(expected)


def test_ulids_sort_by_time_and_derived_ids_are_stable() -> None:
    early = new_ulid(T("2024-01-01T00:00"), b"\xff" * 10)
    late = new_ulid(T("2024-01-01T00:01"), bytes(10))
    assert early < late
    assert derived_ulid(T("2024-01-01T00:00"), "x") == derived_ulid(T("2024-01-01T00:00"), "x")
    assert derived_ulid(T("2024-01-01T00:00"), "x") != derived_ulid(T("2024-01-01T00:00"), "y")


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        pytest.param("01ARZ3NDEKTSV4RRFFQ69G5FAV", True, id="ulid"),
        pytest.param("gpt_4_tokens", False, id="feature-key"),
        pytest.param("81ARZ3NDEKTSV4RRFFQ69G5FAV", False, id="overflow-first-char"),
        pytest.param("01ARZ3NDEKTSV4RRFFQ69G5FAI", False, id="letter-i-not-crockford"),
    ],
)
def test_is_ulid_tells_keys_from_ids(text: str, valid: bool) -> None:
    assert is_ulid(text) is valid


def test_versioned_value_at() -> None:
    timeline = (Versioned(T("2024-01-01T00:00"), "a"), Versioned(T("2024-02-01T00:00"), "b"))
    assert value_at(timeline, T("2023-01-01T00:00")) == "a"
    assert value_at(timeline, T("2024-02-01T00:00")) == "b"
    with pytest.raises(ValueError):
        value_at((), T("2024-01-01T00:00"))
