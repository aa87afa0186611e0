"""The spec-coverage map names a real test for every section §1-§12."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from tests.core.spec_coverage import SPEC_COVERAGE

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = [f"§{n}" for n in range(1, 13)]


def _param_ids(function: Any) -> set[str]:
    """Return the explicit ``pytest.param(id=...)`` ids of a parametrized test."""
    ids: set[str] = set()
    for mark in getattr(function, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        values = mark.args[1] if len(mark.args) > 1 else mark.kwargs.get("argvalues", [])
        ids.update(v.id for v in values if getattr(v, "id", None))
    return ids


def node_exists(node_id: str) -> bool:
    """Tell whether ``path::function[param]`` names a collected test of this repository."""
    path, _, rest = node_id.partition("::")
    name, _, param = rest.partition("[")
    param = param.removesuffix("]")
    if not (ROOT / path).is_file() or not name:
        return False
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    function = getattr(module, name, None)
    if not callable(function) or not name.startswith("test"):
        return False
    return not param or param in _param_ids(function)


@pytest.mark.parametrize("section", SECTIONS)
def test_every_section_lists_a_test(section: str) -> None:
    assert SPEC_COVERAGE.get(section), f"{section} of the spec has no test in spec_coverage.py"


@pytest.mark.parametrize("section", SECTIONS)
def test_every_listed_test_exists(section: str) -> None:
    missing = [n for n in SPEC_COVERAGE.get(section, []) if not node_exists(n)]
    assert not missing, f"{section} lists tests that do not exist: {missing}"


def test_only_known_sections_are_listed() -> None:
    assert set(SPEC_COVERAGE) <= set(SECTIONS)


@pytest.mark.parametrize(
    ("node_id", "exists"),
    [
        pytest.param("tests/core/test_engine.py::test_engine_cases", True, id="function"),
        pytest.param(
            "tests/core/test_engine.py::test_engine_cases[rollover-capped-by-max]", True, id="param"
        ),
        pytest.param(
            "tests/core/test_engine.py::test_engine_cases[no-such-case]", False, id="unknown-param"
        ),
        pytest.param("tests/core/test_engine.py::test_nothing_here", False, id="unknown-function"),
        pytest.param("tests/core/test_missing.py::test_x", False, id="unknown-file"),
    ],
)
def test_node_exists_detects_missing_ids(node_id: str, exists: bool) -> None:
    assert node_exists(node_id) is exists
