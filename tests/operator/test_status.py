"""Status: which user-visible value changes are worth a write."""

from __future__ import annotations

from typing import Any

import pytest

from allotment.operator.status import value_moved

BASE = {"hasAccess": True, "balance": 100, "usage": 0, "overage": 0, "asOf": "2026-01-01T00:00Z"}


@pytest.mark.parametrize(
    ("old", "new", "moved"),
    [
        pytest.param(None, BASE, True, id="first-value"),
        pytest.param(BASE, {**BASE, "asOf": "2026-01-01T00:01Z"}, False, id="only-asof"),
        pytest.param(BASE, {**BASE, "balance": 100.0}, False, id="same-number-other-type"),
        pytest.param(BASE, {**BASE, "balance": "100.000"}, False, id="same-decimal-text"),
        pytest.param(BASE, {**BASE, "balance": 99}, True, id="balance-burnt"),
        pytest.param(BASE, {**BASE, "usage": 1}, True, id="usage"),
        pytest.param(BASE, {**BASE, "hasAccess": False}, True, id="access-lost"),
        pytest.param(BASE, {**BASE, "overage": 5}, True, id="overage"),
        pytest.param(BASE, {k: v for k, v in BASE.items() if k != "balance"}, True, id="gone"),
    ],
)
def test_value_moved(old: dict[str, Any] | None, new: dict[str, Any], moved: bool) -> None:
    assert value_moved(old, new) is moved
