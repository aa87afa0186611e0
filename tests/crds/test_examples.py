"""Every example validates against the CRDs, alone and as one tree."""

from __future__ import annotations

import re

import pytest

from allotment.cli.manifests import read_documents

from .cli import EXAMPLES, run_validate

EXAMPLE_DIRS = sorted(path for path in EXAMPLES.iterdir() if path.is_dir())


def test_examples_are_numbered_folders_with_a_readme() -> None:
    names = [path.name for path in EXAMPLE_DIRS]
    assert names[0].startswith("01-")
    assert [name[:2] for name in names] == [f"{number:02d}" for number in range(1, len(names) + 1)]
    for path in EXAMPLE_DIRS:
        assert (path / "README.md").is_file(), path


@pytest.mark.parametrize("folder", [pytest.param(path, id=path.name) for path in EXAMPLE_DIRS])
def test_each_example_validates_without_errors_or_warnings(folder: object) -> None:
    result = run_validate(folder)
    assert result.code == 0, result.out
    assert result.error_lines == [] and result.warning_lines == [], result.out
    assert re.search(r": 0 errors, 0 warnings$", result.out.strip())


def test_all_examples_together_have_distinct_names_and_pairs() -> None:
    result = run_validate(EXAMPLES)
    assert result.code == 0, result.out
    assert result.warning_lines == [], result.out


def test_examples_leave_namespace_to_kubectl_and_use_no_past_instants() -> None:
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for document in read_documents(path):
            body = getattr(document, "body", None)
            assert isinstance(body, dict), path
            assert "namespace" not in body["metadata"], path
            for instant in re.findall(r"\d{4}-\d{2}-\d{2}T[\d:]+Z", path.read_text()):
                assert instant >= "2099", (
                    f"{path}: {instant} would change answers when applied later"
                )


def test_the_walkthrough_matches_the_seed() -> None:
    bodies = {
        document.body["kind"]: document.body
        for path in sorted((EXAMPLES / "01-gpt-4-tokens").glob("*.yaml"))
        for document in read_documents(path)
        if hasattr(document, "body")
    }
    assert bodies["Meter"]["spec"] == {
        "slug": "tokens_total",
        "name": "Tokens total",
        "eventType": "prompt",
        "aggregation": "SUM",
        "valueProperty": "$.tokens",
        "groupBy": {"model": "$.model"},
    }
    assert bodies["Feature"]["metadata"]["name"] == "gpt-4-tokens"
    assert bodies["Feature"]["spec"]["key"] == "gpt_4_tokens"
    assert bodies["Feature"]["spec"]["meterGroupByFilters"] == {"model": "gpt-4"}
    assert bodies["Customer"]["metadata"]["name"] == "customer-1"
    entitlement = bodies["Entitlement"]["spec"]
    assert entitlement["type"] == "metered"
    assert entitlement["usagePeriod"] == {"interval": "MONTH"}
    assert entitlement["issueAfterReset"] == 1000000
    assert "Grant" not in bodies
