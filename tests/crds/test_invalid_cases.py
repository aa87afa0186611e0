"""The shared invalid-manifest table: `validate` refuses each case with its expected fragment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .cli import CASES, run_validate

DESIGN_KINDS = {
    "meters.yaml",
    "features.yaml",
    "customers.yaml",
    "entitlements.yaml",
    "grants.yaml",
    "entitlementresets.yaml",
}
INVALID = sorted(path for path in (CASES / "invalid").iterdir() if path.is_dir())


def _case(path: Path) -> object:
    return pytest.param(path, id=path.name)


def test_the_table_covers_every_constraint_class_and_every_rule() -> None:
    names = {path.name for path in INVALID}
    for constraint in (
        "enum",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "required",
        "unknown-field",
        "max-length",
        "min-length",
        "type",
        "set-duplicate",
    ):
        assert any(name.startswith(f"schema-{constraint}") for name in names), constraint
    expected = {(path / "expected.txt").read_text().strip() for path in INVALID}
    for crd in sorted((CASES.parents[1] / "crds").glob("*.yaml")):
        if crd.name not in DESIGN_KINDS:
            continue
        for message in _rule_messages(yaml.safe_load(crd.read_text())):
            assert message in expected, f"{crd.name}: no case for the rule: {message}"


def _rule_messages(node: object) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for rule in node.get("x-kubernetes-validations", []):
            found.append(rule["message"])
        for value in node.values():
            found.extend(_rule_messages(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_rule_messages(value))
    return found


@pytest.mark.parametrize("case", [_case(path) for path in INVALID])
def test_validate_refuses_the_case_with_its_expected_fragment(case: Path) -> None:
    expected = (case / "expected.txt").read_text().strip()
    argv: list[str | Path] = [case / "new.yaml"]
    if (case / "old.yaml").exists():
        argv += ["--previous", case / "old.yaml"]
    result = run_validate(*argv)
    assert result.code == 1, result.out
    assert len(result.error_lines) == 1, result.out
    assert expected in result.error_lines[0]


@pytest.mark.parametrize("case", [_case(path) for path in INVALID if (path / "old.yaml").exists()])
def test_the_old_version_of_a_transition_case_is_valid(case: Path) -> None:
    result = run_validate(case / "old.yaml")
    assert result.code == 0, result.out


@pytest.mark.parametrize("case", [_case(path) for path in INVALID if (path / "old.yaml").exists()])
def test_a_transition_case_passes_without_previous(case: Path) -> None:
    result = run_validate(case / "new.yaml")
    assert result.code == 0, result.out
    assert "transition rules (immutable fields) and removal checks were skipped" in result.out


# Whole lines as kube-apiserver v1.36.3 printed them for these cases (kubectl apply's stderr).
APISERVER_LINES = [
    (
        "cel-grant-amount-immutable",
        "spec: Invalid value: amount is immutable: void this Grant (set voidAt) and create a new one",
    ),
    (
        "cel-entitlement-interval-under-an-hour",
        "spec.usagePeriod: Invalid value: interval must be at least 1 hour: use DAY, WEEK, MONTH, YEAR or an ISO-8601 duration such as PT1H or P1M",
    ),
    (
        "schema-enum-meter-aggregation",
        'spec.aggregation: Unsupported value: "AVERAGE": supported values: "SUM", "COUNT", "UNIQUE_COUNT", "LATEST"',
    ),
    (
        "schema-format-entitlement-active-to",
        'spec.activeTo: Invalid value: "tomorrow": spec.activeTo in body must be of type date-time: "tomorrow"',
    ),
    ("schema-max-length-feature-key", "spec.key: Too long: may not be more than 64 bytes"),
    (
        "schema-maximum-grant-priority",
        "spec.priority: Invalid value: 256: spec.priority in body should be less than or equal to 255",
    ),
    (
        "schema-min-length-customer-key",
        'spec.key: Invalid value: "": spec.key in body should be at least 1 chars long',
    ),
    (
        "schema-minimum-exclusive-grant-amount",
        "spec.amount: Invalid value: 0: spec.amount in body should be greater than 0",
    ),
    (
        "schema-pattern-meter-slug",
        "spec.slug: Invalid value: \"Tokens-Total\": spec.slug in body should match '^[a-z0-9]+(?:_[a-z0-9]+)*$'",
    ),
    ("schema-required-meter-event-type", "spec.eventType: Required value"),
    (
        "schema-set-duplicate-subject-keys",
        'spec.usageAttribution.subjectKeys[1]: Duplicate value: "acme-web"',
    ),
    (
        "schema-type-grant-amount",
        'spec.amount: Invalid value: "string": spec.amount in body must be of type number: "string"',
    ),
    ("schema-unknown-field-grant", 'unknown field "spec.amout"'),
]


@pytest.mark.parametrize(
    ("case", "line"), [pytest.param(case, line, id=case) for case, line in APISERVER_LINES]
)
def test_validate_words_the_error_as_the_apiserver_does(case: str, line: str) -> None:
    folder = CASES / "invalid" / case
    argv: list[str | Path] = [folder / "new.yaml"]
    if (folder / "old.yaml").exists():
        argv += ["--previous", folder / "old.yaml"]
    [error] = run_validate(*argv).error_lines
    assert error.endswith(f": {line}")
