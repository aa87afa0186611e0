"""`allotment validate` as a CI job sees it: exit codes, locations, annotations, warnings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .cli import CASES, EXAMPLES, run_validate

METER = """\
apiVersion: allotment.dev/v1alpha1
kind: Meter
metadata:
  name: {name}
spec:
  eventType: prompt
  aggregation: {aggregation}
  valueProperty: $.tokens
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_an_error_names_file_line_document_field_and_fix(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "meters.yaml",
        METER.format(name="ok-meter", aggregation="SUM")
        + "---\n"
        + METER.format(name="bad-meter", aggregation="AVERAGE"),
    )
    result = run_validate(path)
    assert result.code == 1
    [line] = result.error_lines
    assert line.startswith(f"{path}:16: error: document 1, Meter default/bad-meter: ")
    assert 'spec.aggregation: Unsupported value: "AVERAGE"' in line
    assert "  fix: use one of the supported values" in result.out


def test_github_format_emits_one_annotation_per_finding(tmp_path: Path) -> None:
    path = write(tmp_path, "meter.yaml", METER.format(name="bad-meter", aggregation="AVERAGE"))
    result = run_validate("--format", "github", path)
    assert result.code == 1
    annotations = [line for line in result.out.splitlines() if line.startswith("::")]
    assert annotations[0].startswith(
        f"::error file={path},line=7,title=Meter default/bad-meter::document 0, "
    )
    assert annotations[0].endswith("(fix: use one of the supported values)")
    assert annotations[1].startswith("::notice title=validate::")
    assert re.search(
        r"^validate: 1 files, 1 documents, 0 allotment objects: 1 errors", result.out, re.M
    )


def test_github_format_escapes_newlines_and_percent(tmp_path: Path) -> None:
    path = write(tmp_path, "broken%.yaml", "kind: [unclosed\n")
    result = run_validate("--format", "github", path)
    [annotation] = [line for line in result.out.splitlines() if line.startswith("::error")]
    assert "broken%25.yaml" in annotation
    assert "\n" not in annotation


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param(
            "apiVersion: allotment.dev/v1alpha1\nkind: Budget\nmetadata: {name: x}\n",
            'no matches for kind "Budget" in version "allotment.dev/v1alpha1"',
            id="unknown-kind",
        ),
        pytest.param(
            "apiVersion: allotment.dev/v1beta9\nkind: Meter\nmetadata: {name: x}\n",
            'no matches for kind "Meter" in version "allotment.dev/v1beta9"',
            id="unknown-version",
        ),
        pytest.param("kind: Meter\nmetadata: {name: x\n", "YAML syntax error", id="yaml-syntax"),
        pytest.param("a: 1\na: 2\n", 'duplicate field "a"', id="duplicate-key"),
        pytest.param("- just\n- a list\n", "not a Kubernetes object", id="not-a-mapping"),
        pytest.param("metadata: {name: x}\n", "apiVersion: Required value", id="no-api-version"),
    ],
)
def test_unreadable_documents_are_reported_not_crashed_on(
    tmp_path: Path, text: str, fragment: str
) -> None:
    result = run_validate(write(tmp_path, "doc.yaml", text))
    assert result.code == 1
    assert any(fragment in line for line in result.error_lines), result.out


def test_a_syntax_error_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "doc.yaml", METER.format(name="m", aggregation="SUM") + "---\nkind: [\n")
    [line] = run_validate(path).error_lines
    assert line.startswith(f"{path}:11: error: document 1")


def test_other_kinds_are_skipped_with_a_note(tmp_path: Path) -> None:
    path = write(
        tmp_path, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n"
    )
    result = run_validate(path)
    assert result.code == 0
    assert (
        "note: document 0, Namespace default/team-a: skipped: v1 Namespace is not an allotment kind"
        in result.out
    )


def test_directories_are_read_recursively_yaml_and_yml_only(tmp_path: Path) -> None:
    write(tmp_path, "a/meter.yml", METER.format(name="meter-a", aggregation="SUM"))
    write(tmp_path, "a/b/meter.yaml", METER.format(name="meter-b", aggregation="SUM"))
    write(tmp_path, "a/b/notes.txt", "kind: [ not yaml")
    write(tmp_path, "a/b/usage.ndjson", '{"id": "1"}\n')
    result = run_validate(tmp_path)
    assert result.code == 0, result.out
    assert "validate: 2 files, 2 documents, 2 allotment objects: 0 errors, 0 warnings" in result.out


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        pytest.param(
            ["01-gpt-4-tokens/entitlement.yaml"],
            "no Feature with key 'gpt_4_tokens' in namespace default",
            id="missing-feature",
        ),
        pytest.param(
            ["01-gpt-4-tokens/feature.yaml"],
            "no Meter with slug 'tokens_total' in namespace default",
            id="missing-meter",
        ),
        pytest.param(
            ["07-manual-reset/later/reset.yaml"],
            "no Entitlement named 'customer-7-vector-search' in namespace default",
            id="missing-entitlement-for-reset",
        ),
        pytest.param(
            ["03-grants/grants.yaml", "03-grants/catalogue.yaml"],
            "no Entitlement of 'customer-3' to 'api_calls' in namespace default",
            id="missing-entitlement-for-grant",
        ),
        pytest.param(
            [
                "01-gpt-4-tokens/entitlement.yaml",
                "01-gpt-4-tokens/feature.yaml",
                "01-gpt-4-tokens/meter.yaml",
            ],
            "spec.customer: no Customer with key 'customer-1'",
            id="missing-customer",
        ),
    ],
)
def test_missing_references_are_warnings(files: list[str], fragment: str) -> None:
    result = run_validate(*(EXAMPLES / name for name in files))
    assert result.code == 0, result.out
    assert any(fragment in line for line in result.warning_lines), result.out


def test_duplicate_keys_and_two_entitlements_for_one_pair_are_warnings(tmp_path: Path) -> None:
    write(tmp_path, "catalogue.yaml", (EXAMPLES / "01-gpt-4-tokens" / "meter.yaml").read_text())
    write(
        tmp_path,
        "copy.yaml",
        (EXAMPLES / "01-gpt-4-tokens" / "meter.yaml")
        .read_text()
        .replace("name: tokens-total", "name: tokens-copy"),
    )
    for name in ("feature.yaml", "customer.yaml", "entitlement.yaml"):
        write(tmp_path, name, (EXAMPLES / "01-gpt-4-tokens" / name).read_text())
    write(
        tmp_path,
        "second.yaml",
        (EXAMPLES / "01-gpt-4-tokens" / "entitlement.yaml")
        .read_text()
        .replace("name: customer-1-gpt-4-tokens", "name: customer-1-gpt-4-tokens-again"),
    )
    result = run_validate(tmp_path)
    assert result.code == 0, result.out
    warnings = "\n".join(result.warning_lines)
    assert "slug 'tokens_total' is already used by Meter default/tokens-total" in warnings
    assert (
        "Entitlement default/customer-1-gpt-4-tokens is already an entitlement of customer 'customer-1'"
        in warnings
    )


def test_entitlements_at_different_times_do_not_conflict(tmp_path: Path) -> None:
    base = (EXAMPLES / "01-gpt-4-tokens" / "entitlement.yaml").read_text()
    write(tmp_path, "first.yaml", base + '  activeTo: "2099-01-01T00:00:00Z"\n')
    write(
        tmp_path,
        "second.yaml",
        base.replace("name: customer-1-gpt-4-tokens", "name: customer-1-gpt-4-tokens-2099")
        + '  activeFrom: "2099-01-01T00:00:00Z"\n',
    )
    result = run_validate(tmp_path)
    assert "already an entitlement" not in result.out


def test_previous_runs_transition_rules_and_warns_about_removals(tmp_path: Path) -> None:
    previous = tmp_path / "previous"
    current = tmp_path / "current"
    write(
        previous,
        "entitlement.yaml",
        (EXAMPLES / "01-gpt-4-tokens" / "entitlement.yaml").read_text(),
    )
    write(previous, "grants.yaml", (EXAMPLES / "03-grants" / "grants.yaml").read_text())
    write(previous, "void.yaml", (EXAMPLES / "06-end-and-void" / "grant.yaml").read_text())
    current.mkdir()
    result = run_validate(current, "--previous", previous)
    assert result.code == 0, result.out
    warnings = "\n".join(result.warning_lines)
    assert (
        "this change removes Entitlement default/customer-1-gpt-4-tokens without spec.activeTo; "
        "the ledger keeps it as it is (deletionPolicy Orphan)" in warnings
    )
    assert "removes Grant default/customer-3-api-calls-promo without spec.voidAt" in warnings
    assert "customer-6-ci-minutes-goodwill" not in warnings
    assert "were skipped" not in result.out


def test_without_previous_the_skipped_checks_are_named() -> None:
    result = run_validate(EXAMPLES / "01-gpt-4-tokens")
    assert (
        "note: validate: transition rules (immutable fields) and removal checks were skipped"
        in result.out
    )


def test_the_invalid_table_is_read_through_directories_too() -> None:
    result = run_validate(CASES / "invalid" / "schema-enum-meter-aggregation")
    assert result.code == 1


def test_the_items_of_a_list_are_each_validated(tmp_path: Path) -> None:
    meter = METER.format(name="listed-meter", aggregation="AVERAGE")
    items = "".join(
        ("  - " if number == 0 else "    ") + line + "\n"
        for number, line in enumerate(meter.splitlines())
    )
    path = write(tmp_path, "list.yaml", "apiVersion: v1\nkind: List\nitems:\n" + items)
    result = run_validate(path)
    assert result.code == 1
    [line] = result.error_lines
    assert line.startswith(
        f"{path}:10: error: document 0, Meter default/listed-meter: spec.aggregation"
    )


@pytest.mark.parametrize(
    ("kind_and_spec", "name", "fragment"),
    [
        pytest.param(
            METER.format(name="{name}", aggregation="SUM"),
            "tokens.v2",
            "set spec.slug",
            id="meter-dot",
        ),
        pytest.param(
            "apiVersion: allotment.dev/v1alpha1\nkind: Feature\nmetadata:\n  name: {name}\nspec:\n  name: X\n",
            "01hzx3ndektsv4rrffq69g5fav",
            "which is a ULID",
            id="feature-ulid",
        ),
        pytest.param(
            "apiVersion: allotment.dev/v1alpha1\nkind: Feature\nmetadata:\n  name: {name}\nspec:\n  name: X\n",
            "gpt--4",
            "set spec.key",
            id="feature-double-dash",
        ),
    ],
)
def test_a_name_that_cannot_give_a_key_is_an_error(
    tmp_path: Path, kind_and_spec: str, name: str, fragment: str
) -> None:
    result = run_validate(write(tmp_path, "x.yaml", kind_and_spec.replace("{name}", name)))
    assert result.code == 1
    assert fragment in result.out


SUBSCRIPTION_SET = """\
apiVersion: allotment.dev/v1alpha1
kind: Plan
metadata:
  name: pro
spec:
  key: pro
  name: Pro
  features:
    - featureKey: ai_requests
      type: metered
      usagePeriod:
        interval: MONTH
---
apiVersion: allotment.dev/v1alpha1
kind: Subscription
metadata:
  name: globex-pro
spec:
  customer: globex
  planKey: pro
---
apiVersion: allotment.dev/v1alpha1
kind: Grant
metadata:
  name: globex-top-up
spec:
  customer: globex
  featureKey: ai_requests
  amount: 100
"""


def test_a_grant_may_fund_the_entitlement_a_subscription_gives(tmp_path: Path) -> None:
    from allotment.cli.manifests import load_crds

    if ("allotment.dev/v1alpha1", "Subscription") not in load_crds():
        pytest.skip("the Plan and Subscription CRDs are not in crds/ yet")
    result = run_validate(write(tmp_path, "set.yaml", SUBSCRIPTION_SET))
    assert "no Entitlement of 'globex'" not in result.out, result.out


def test_status_is_ignored_with_a_warning_as_the_apiserver_drops_it(tmp_path: Path) -> None:
    text = METER.format(name="exported", aggregation="SUM") + "status:\n  observedGeneration: x\n"
    result = run_validate(write(tmp_path, "exported.yaml", text))
    assert result.code == 0, result.out
    assert "status: the apiserver ignores status on create and apply" in result.out
