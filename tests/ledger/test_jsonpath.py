"""The JSONPath subset meters use, evaluated against event data."""

from __future__ import annotations

import pytest

from allotment.ledger.storage.jsonpath import MISSING, JsonPathError, compile_path

DATA = {"tokens": 12, "model": {"name": "gpt-4"}, "tags": ["a", "b"], "odd key": True}


@pytest.mark.parametrize(
    ("path", "found"),
    [
        pytest.param("$.tokens", 12, id="member"),
        pytest.param("$.model.name", "gpt-4", id="nested"),
        pytest.param("$['model']['name']", "gpt-4", id="bracketed"),
        pytest.param('$["odd key"]', True, id="quoted-with-space"),
        pytest.param("$.tags[1]", "b", id="index"),
        pytest.param("$.tags[2]", MISSING, id="index-out-of-range"),
        pytest.param("$.missing", MISSING, id="missing-member"),
        pytest.param("$.tokens.deeper", MISSING, id="through-a-number"),
        pytest.param("$", DATA, id="root"),
    ],
)
def test_paths_find_values(path: str, found: object) -> None:
    assert compile_path(path).find(DATA) == found


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("tokens", id="no-dollar"),
        pytest.param("$..tokens", id="recursive-descent"),
        pytest.param("$.tags[*]", id="wildcard"),
        pytest.param("$[?(@.x)]", id="filter"),
    ],
)
def test_paths_outside_the_subset_are_refused(path: str) -> None:
    with pytest.raises(JsonPathError, match="JSONPath"):
        compile_path(path)
