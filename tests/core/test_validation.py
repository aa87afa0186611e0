"""Validation rules: one named case per rule, asserting the field and the words a user reads."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from allotment.ledger.core.model import CalendarDuration, EntitlementType
from allotment.ledger.core.resources import (
    EntitlementResetSpec,
    EntitlementSpec,
    FeatureSpec,
    GrantSpec,
    Target,
    parse_resource,
)
from allotment.ledger.core.validation import (
    ValidationError,
    check_change,
    check_entitlement_feature,
    check_feature_meter,
    check_grant_effective_at,
    check_grant_entitlement,
    check_reset_entitlement,
    check_resource,
    identity_of,
    is_at_least_one_hour,
    reset_before_period,
    warn_on_removal,
)


def obj(kind: str, spec: dict[str, Any], name: str = "x") -> dict[str, Any]:
    return {
        "apiVersion": "allotment.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


METER = {"eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens"}
METERED = {
    "customer": "c",
    "featureKey": "f",
    "type": "metered",
    "usagePeriod": {"interval": "MONTH"},
}
STATIC = {"customer": "c", "featureKey": "f", "type": "static", "config": {"a": 1}}
BOOLEAN = {"customer": "c", "featureKey": "f", "type": "boolean"}
GRANT = {"entitlement": "e", "amount": 100}


def fields_of(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e.field, e.message) for e in check_resource(parse_resource(body))]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(obj("Meter", METER), id="meter-sum"),
        pytest.param(obj("Meter", {"eventType": "e", "aggregation": "COUNT"}), id="meter-count"),
        pytest.param(obj("Meter", {**METER, "groupBy": {"model": "$.model"}}), id="meter-group-by"),
        pytest.param(obj("Feature", {}, name="gpt-4-tokens"), id="feature-key-from-name"),
        pytest.param(
            obj("Feature", {"meterSlug": "m", "meterGroupByFilters": {"a": "b"}}),
            id="feature-filters",
        ),
        pytest.param(
            obj("Customer", {"usageAttribution": {"subjectKeys": ["a", "b"]}}), id="customer"
        ),
        pytest.param(obj("Entitlement", METERED), id="entitlement-metered"),
        pytest.param(
            obj("Entitlement", {**METERED, "issueAfterReset": 10, "issueAfterResetPriority": 3}),
            id="entitlement-issue-after-reset",
        ),
        pytest.param(
            obj("Entitlement", {**METERED, "usagePeriod": {"interval": "PT1H"}}),
            id="interval-one-hour",
        ),
        pytest.param(
            obj("Entitlement", {**METERED, "usagePeriod": {"interval": "PT60M"}}),
            id="interval-sixty-minutes",
        ),
        pytest.param(obj("Entitlement", STATIC), id="entitlement-static"),
        pytest.param(
            obj("Entitlement", {**BOOLEAN, "usagePeriod": {"interval": "DAY"}}),
            id="entitlement-boolean",
        ),
        pytest.param(
            obj(
                "Entitlement",
                {
                    **BOOLEAN,
                    "activeFrom": "2026-01-01T00:00:00Z",
                    "activeTo": "2026-01-01T00:00:00Z",
                },
            ),
            id="active-from-equals-to",
        ),
        pytest.param(obj("Grant", GRANT), id="grant-by-entitlement"),
        pytest.param(
            obj("Grant", {"subject": "s", "featureKey": "f", "amount": 1, "priority": 0}),
            id="grant-by-subject-priority-zero",
        ),
        pytest.param(
            obj("Grant", {**GRANT, "minRolloverAmount": 100}), id="grant-min-rollover-equals-amount"
        ),
        pytest.param(obj("EntitlementReset", {"customer": "c", "featureKey": "f"}), id="reset"),
    ],
)
def test_valid_resources_pass(body: dict[str, Any]) -> None:
    assert fields_of(body) == []


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        # Meter (spec §2.1)
        pytest.param(
            obj("Meter", METER, name="Tokens"),
            "spec.slug",
            "set spec.slug explicitly",
            id="meter-derived-slug-bad",
        ),
        pytest.param(
            obj("Meter", {**METER, "slug": "a__b"}),
            "spec.slug",
            "^[a-z0-9]+(?:_[a-z0-9]+)*$",
            id="meter-slug-pattern",
        ),
        pytest.param(
            obj("Meter", {**METER, "slug": "a" * 65}),
            "spec.slug",
            "1 to 64",
            id="meter-slug-length",
        ),
        pytest.param(
            obj("Meter", {**METER, "eventType": ""}),
            "spec.eventType",
            "must not be empty",
            id="meter-event-type-empty",
        ),
        pytest.param(
            obj("Meter", {"eventType": "e", "aggregation": "COUNT", "valueProperty": "$.x"}),
            "spec.valueProperty",
            "meter value property is not allowed when the aggregation is count",
            id="count-with-value",
        ),
        pytest.param(
            obj("Meter", {"eventType": "e", "aggregation": "SUM"}),
            "spec.valueProperty",
            "meter value property is required when the aggregation is not count",
            id="sum-without-value",
        ),
        pytest.param(
            obj("Meter", {**METER, "valueProperty": "tokens"}),
            "spec.valueProperty",
            "meter value property must start with $",
            id="value-property-not-jsonpath",
        ),
        pytest.param(
            obj("Meter", {**METER, "groupBy": {"a-b": "$.x"}}),
            "spec.groupBy.a-b",
            "letters, digits or '_'",
            id="group-by-key",
        ),
        pytest.param(
            obj("Meter", {**METER, "groupBy": {"m": "model"}}),
            "spec.groupBy.m",
            "must start with $",
            id="group-by-value",
        ),
        pytest.param(
            obj("Meter", {**METER, "groupBy": {"t": "$.tokens"}}),
            "spec.groupBy.t",
            "must not equal valueProperty",
            id="group-by-equals-value-property",
        ),
        # Feature (spec §3)
        pytest.param(
            obj("Feature", {"key": "01J0000000000000000000000A"}),
            "spec.key",
            "Feature key cannot be a valid ULID",
            id="feature-key-ulid",
        ),
        pytest.param(
            obj("Feature", {}, name="GPT.4"),
            "spec.key",
            "set spec.key explicitly",
            id="feature-derived-key-bad",
        ),
        pytest.param(
            obj("Feature", {"meterGroupByFilters": {"a": "b"}}),
            "spec.meterGroupByFilters",
            "meterGroupByFilters needs meterSlug",
            id="filters-without-meter",
        ),
        pytest.param(
            obj("Feature", {"meterSlug": "Bad"}),
            "spec.meterSlug",
            "meterSlug",
            id="meter-slug-pattern",
        ),
        # Customer
        pytest.param(obj("Customer", {"key": ""}), "spec.key", "1 to 256", id="customer-key-empty"),
        pytest.param(
            obj("Customer", {"usageAttribution": {"subjectKeys": ["a", "a"]}}),
            "spec.usageAttribution.subjectKeys[1]",
            "listed twice",
            id="subject-key-twice",
        ),
        pytest.param(
            obj("Customer", {"usageAttribution": {"subjectKeys": [""]}}),
            "spec.usageAttribution.subjectKeys[0]",
            "1 to 256",
            id="subject-key-empty",
        ),
        # Entitlement (spec §4)
        pytest.param(
            obj("Entitlement", {**METERED, "subject": "s"}),
            "spec.customer",
            "set exactly one of customer or subject",
            id="customer-and-subject",
        ),
        pytest.param(
            obj("Entitlement", {k: v for k, v in METERED.items() if k != "customer"}),
            "spec.customer",
            "set exactly one of customer or subject",
            id="neither-customer-nor-subject",
        ),
        pytest.param(
            obj("Entitlement", {**METERED, "customer": ""}),
            "spec.customer",
            "customer must be 1 to 256 characters",
            id="customer-empty",
        ),
        pytest.param(
            obj("Grant", {"subject": "s" * 257, "featureKey": "f", "amount": 1}),
            "spec.subject",
            "subject must be 1 to 256 characters",
            id="grant-subject-too-long",
        ),
        pytest.param(
            obj("Entitlement", {**METERED, "featureKey": "F"}),
            "spec.featureKey",
            "featureKey",
            id="feature-key-pattern",
        ),
        pytest.param(
            obj("Entitlement", {k: v for k, v in METERED.items() if k != "usagePeriod"}),
            "spec.usagePeriod",
            "UsagePeriod is required for metered entitlements",
            id="metered-without-period",
        ),
        pytest.param(
            obj("Entitlement", {**METERED, "config": {}}),
            "spec.config",
            "Config is not allowed for metered entitlements",
            id="metered-with-config",
        ),
        pytest.param(
            obj("Entitlement", {**METERED, "usagePeriod": {"interval": "PT59M"}}),
            "spec.usagePeriod.interval",
            "UsagePeriod must be at least 1 hour",
            id="period-under-an-hour",
        ),
        pytest.param(
            obj("Entitlement", {**METERED, "usagePeriod": {"interval": "PT3599S"}}),
            "spec.usagePeriod.interval",
            "UsagePeriod must be at least 1 hour",
            id="period-3599-seconds",
        ),
        pytest.param(
            obj("Entitlement", {**METERED, "issueAfterResetPriority": 2}),
            "spec.issueAfterResetPriority",
            "IssueAfterResetPriority requires IssueAfterReset",
            id="priority-without-issue",
        ),
        pytest.param(
            obj("Entitlement", {**METERED, "issueAfterReset": 1, "issueAfterResetPriority": 0}),
            "spec.issueAfterResetPriority",
            "1 to 255",
            id="issue-priority-range",
        ),
        pytest.param(
            obj("Entitlement", {**METERED, "issueAfterReset": -1}),
            "spec.issueAfterReset",
            "must not be negative",
            id="issue-negative",
        ),
        pytest.param(
            obj("Entitlement", {k: v for k, v in STATIC.items() if k != "config"}),
            "spec.config",
            "config is required for static entitlements",
            id="static-without-config",
        ),
        pytest.param(
            obj("Entitlement", {**STATIC, "isSoftLimit": True}),
            "spec.isSoftLimit",
            "only allowed for metered entitlements",
            id="static-with-soft-limit",
        ),
        pytest.param(
            obj("Entitlement", {**BOOLEAN, "config": {}}),
            "spec.config",
            "invalid entitlement value for type boolean: Invalid inputs for type",
            id="boolean-with-config",
        ),
        pytest.param(
            obj("Entitlement", {**BOOLEAN, "issueAfterReset": 5}),
            "spec.issueAfterReset",
            "invalid entitlement value for type boolean: Invalid inputs for type",
            id="boolean-with-issue",
        ),
        pytest.param(
            obj("Entitlement", {**BOOLEAN, "measureUsageFrom": "NOW"}),
            "spec.measureUsageFrom",
            "invalid entitlement value for type boolean",
            id="boolean-with-measure-from",
        ),
        pytest.param(
            obj(
                "Entitlement",
                {
                    **BOOLEAN,
                    "activeFrom": "2026-01-02T00:00:00Z",
                    "activeTo": "2026-01-01T00:00:00Z",
                },
            ),
            "spec.activeTo",
            "activeTo must not be before activeFrom",
            id="active-to-before-from",
        ),
        # Grant (spec §7.1)
        pytest.param(
            obj("Grant", {**GRANT, "amount": 0}),
            "spec.amount",
            "amount must be positive",
            id="grant-amount-zero",
        ),
        pytest.param(
            obj("Grant", {**GRANT, "amount": -5}),
            "spec.amount",
            "amount must be positive",
            id="grant-amount-negative",
        ),
        pytest.param(
            obj("Grant", {**GRANT, "priority": 256}),
            "spec.priority",
            "0 to 255",
            id="grant-priority",
        ),
        pytest.param(
            obj("Grant", {**GRANT, "expiration": {"duration": "DAY", "count": 0}}),
            "spec.expiration.count",
            "1 to 1000",
            id="expiration-count-zero",
        ),
        pytest.param(
            obj("Grant", {**GRANT, "expiration": {"duration": "DAY", "count": 1001}}),
            "spec.expiration.count",
            "1 to 1000",
            id="expiration-count-too-big",
        ),
        pytest.param(
            obj("Grant", {**GRANT, "minRolloverAmount": 101}),
            "spec.minRolloverAmount",
            "defaults to amount",
            id="min-rollover-over-amount",
        ),
        pytest.param(
            obj("Grant", {**GRANT, "minRolloverAmount": 5, "maxRolloverAmount": 4}),
            "spec.minRolloverAmount",
            "must not exceed maxRolloverAmount",
            id="min-over-max",
        ),
        pytest.param(
            obj("Grant", {**GRANT, "maxRolloverAmount": -1}),
            "spec.maxRolloverAmount",
            "must not be negative",
            id="max-rollover-negative",
        ),
        pytest.param(
            obj("Grant", {**GRANT, "recurrence": {"interval": "PT30M"}}),
            "spec.recurrence.interval",
            "at least 1 hour",
            id="recurrence-under-an-hour",
        ),
        pytest.param(
            obj("Grant", {"amount": 1}),
            "spec.entitlement",
            "set exactly one of entitlement, or customer (or subject) with featureKey",
            id="grant-no-target",
        ),
        pytest.param(
            obj("Grant", {**GRANT, "customer": "c"}),
            "spec.entitlement",
            "set exactly one of entitlement",
            id="grant-two-targets",
        ),
        pytest.param(
            obj("Grant", {"customer": "c", "subject": "s", "featureKey": "f", "amount": 1}),
            "spec.subject",
            "set customer or subject, not both",
            id="grant-customer-and-subject",
        ),
        pytest.param(
            obj("Grant", {"customer": "c", "amount": 1}),
            "spec.featureKey",
            "featureKey goes with customer or subject",
            id="grant-customer-without-feature",
        ),
        pytest.param(
            obj("Grant", {**GRANT, "featureKey": "f"}),
            "spec.featureKey",
            "remove it when entitlement names the Entitlement",
            id="grant-entitlement-with-feature",
        ),
        # EntitlementReset
        pytest.param(
            obj("EntitlementReset", {"featureKey": "f"}),
            "spec.entitlement",
            "set exactly one of entitlement",
            id="reset-no-target",
        ),
    ],
)
def test_each_rule_names_the_field_and_the_fix(
    body: dict[str, Any], field: str, words: str
) -> None:
    found = fields_of(body)
    assert any(f == field and words in m for f, m in found), found


def test_all_broken_rules_are_reported_together() -> None:
    body = obj("Grant", {"amount": 0, "priority": 300})
    assert {f for f, _ in fields_of(body)} >= {"spec.entitlement", "spec.amount", "spec.priority"}


@pytest.mark.parametrize(
    ("text", "long_enough"),
    [
        pytest.param("PT1H", True, id="one-hour"),
        pytest.param("PT59M", False, id="59-minutes"),
        pytest.param("PT59M60S", True, id="59-minutes-60-seconds"),
        pytest.param("P1D", True, id="a-day"),
        pytest.param("PT0S", False, id="zero"),
    ],
)
def test_interval_minimum(text: str, long_enough: bool) -> None:
    assert is_at_least_one_hour(CalendarDuration.parse(text)) is long_enough


# --- D4: transitions -------------------------------------------------------------------------

T1 = "2026-02-01T00:00:00Z"


@pytest.mark.parametrize(
    ("kind", "old", "new", "field"),
    [
        pytest.param("Meter", METER, {**METER, "slug": "x"}, "spec.slug", id="meter-slug-added"),
        pytest.param(
            "Meter", METER, {**METER, "eventType": "other"}, "spec.eventType", id="meter-event-type"
        ),
        pytest.param(
            "Meter",
            METER,
            {**METER, "aggregation": "LATEST"},
            "spec.aggregation",
            id="meter-aggregation",
        ),
        pytest.param(
            "Meter",
            METER,
            {**METER, "valueProperty": "$.n"},
            "spec.valueProperty",
            id="meter-value",
        ),
        pytest.param(
            "Meter",
            {**METER, "groupBy": {"m": "$.m"}},
            {**METER, "groupBy": {"m": "$.n"}},
            "spec.groupBy.m",
            id="meter-group-by-changed",
        ),
        pytest.param(
            "Meter",
            {**METER, "groupBy": {"m": "$.m"}},
            METER,
            "spec.groupBy.m",
            id="meter-group-by-removed",
        ),
        pytest.param(
            "Feature", {}, {"key": "x"}, "spec.key", id="feature-explicit-default-is-a-change"
        ),
        pytest.param(
            "Feature", {"meterSlug": "a"}, {"meterSlug": "b"}, "spec.meterSlug", id="feature-meter"
        ),
        pytest.param(
            "Feature",
            {"meterSlug": "a", "meterGroupByFilters": {"k": "v"}},
            {"meterSlug": "a", "meterGroupByFilters": {"k": "w"}},
            "spec.meterGroupByFilters",
            id="feature-filters",
        ),
        pytest.param("Customer", {"key": "a"}, {"key": "b"}, "spec.key", id="customer-key"),
        pytest.param(
            "Entitlement", METERED, {**METERED, "customer": "d"}, "spec.customer", id="ent-customer"
        ),
        pytest.param(
            "Entitlement",
            METERED,
            {**METERED, "featureKey": "g"},
            "spec.featureKey",
            id="ent-feature",
        ),
        pytest.param(
            "Entitlement",
            BOOLEAN,
            {**BOOLEAN, "type": "static", "config": {}},
            "spec.type",
            id="ent-type",
        ),
        pytest.param(
            "Entitlement",
            METERED,
            {**METERED, "measureUsageFrom": "NOW"},
            "spec.measureUsageFrom",
            id="ent-measure-from",
        ),
        pytest.param(
            "Entitlement",
            METERED,
            {**METERED, "usagePeriod": {"interval": "MONTH", "anchor": T1}},
            "spec.usagePeriod.anchor",
            id="ent-anchor",
        ),
        pytest.param(
            "Entitlement",
            METERED,
            {**METERED, "activeFrom": T1},
            "spec.activeFrom",
            id="ent-active-from",
        ),
        pytest.param(
            "Entitlement",
            {**METERED, "activeTo": T1},
            METERED,
            "spec.activeTo",
            id="ent-active-to-removed",
        ),
        pytest.param(
            "Entitlement",
            {**METERED, "activeTo": T1},
            {**METERED, "activeTo": "2026-03-01T00:00:00Z"},
            "spec.activeTo",
            id="ent-active-to-moved",
        ),
        pytest.param("Grant", GRANT, {**GRANT, "amount": 200}, "spec.amount", id="grant-amount"),
        pytest.param(
            "Grant",
            GRANT,
            {**GRANT, "priority": 0},
            "spec.priority",
            id="grant-explicit-default-priority",
        ),
        pytest.param(
            "Grant",
            GRANT,
            {**GRANT, "effectiveAt": T1},
            "spec.effectiveAt",
            id="grant-effective-at",
        ),
        pytest.param(
            "Grant",
            GRANT,
            {**GRANT, "entitlement": "other"},
            "spec.entitlement",
            id="grant-entitlement",
        ),
        pytest.param(
            "Grant", {**GRANT, "voidAt": T1}, GRANT, "spec.voidAt", id="grant-void-removed"
        ),
        pytest.param(
            "EntitlementReset",
            {"entitlement": "e"},
            {"entitlement": "e", "retainAnchor": True},
            "spec",
            id="reset-immutable",
        ),
    ],
)
def test_immutable_fields_refuse_edits(
    kind: str, old: dict[str, Any], new: dict[str, Any], field: str
) -> None:
    errors = check_change(parse_resource(obj(kind, old)).spec, parse_resource(obj(kind, new)).spec)
    assert [e.field for e in errors] == [field]
    assert (
        "immutable" in errors[0].message
        or "set once" in errors[0].message
        or "only be set" in errors[0].message
    )


@pytest.mark.parametrize(
    ("kind", "old", "new"),
    [
        pytest.param(
            "Meter",
            METER,
            {**METER, "name": "Tokens", "groupBy": {"m": "$.m"}},
            id="meter-new-group-by",
        ),
        pytest.param(
            "Feature",
            {},
            {"name": "N", "metadata": {"a": "b"}, "whenStale": "Deny"},
            id="feature-names",
        ),
        pytest.param(
            "Customer", {}, {"usageAttribution": {"subjectKeys": ["s"]}}, id="customer-subject-keys"
        ),
        pytest.param(
            "Entitlement",
            METERED,
            {
                **METERED,
                "usagePeriod": {"interval": "WEEK"},
                "isSoftLimit": True,
                "issueAfterReset": 5,
                "preserveOverageAtReset": True,
                "deletionPolicy": "Apply",
            },
            id="entitlement-mutables",
        ),
        pytest.param(
            "Entitlement", METERED, {**METERED, "activeTo": T1}, id="entitlement-active-to-set-once"
        ),
        pytest.param("Entitlement", STATIC, {**STATIC, "config": {"b": 2}}, id="static-config"),
        pytest.param(
            "Grant",
            GRANT,
            {**GRANT, "voidAt": T1, "metadata": {"a": "b"}, "deletionPolicy": "Apply"},
            id="grant-void-set-once",
        ),
    ],
)
def test_mutable_fields_may_change(kind: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    assert (
        check_change(parse_resource(obj(kind, old)).spec, parse_resource(obj(kind, new)).spec) == ()
    )


@pytest.mark.parametrize(
    ("kind", "a", "b", "same"),
    [
        pytest.param(
            "Grant",
            GRANT,
            {**GRANT, "metadata": {"x": "y"}},
            True,
            id="mutable-difference-same-identity",
        ),
        pytest.param("Grant", GRANT, {**GRANT, "voidAt": T1}, True, id="set-once-not-in-identity"),
        pytest.param(
            "Grant", GRANT, {**GRANT, "priority": 0}, False, id="omitted-default-stays-omitted"
        ),
        pytest.param(
            "Meter",
            METER,
            {**METER, "groupBy": {"m": "$.m"}},
            False,
            id="meter-group-by-in-identity",
        ),
        pytest.param(
            "Entitlement",
            METERED,
            {**METERED, "usagePeriod": {"interval": "P1M"}},
            True,
            id="interval-is-mutable",
        ),
    ],
)
def test_identity_compares_immutable_fields_as_written(
    kind: str, a: dict[str, Any], b: dict[str, Any], same: bool
) -> None:
    first, second = parse_resource(obj(kind, a)).spec, parse_resource(obj(kind, b)).spec
    assert (identity_of(first) == identity_of(second)) is same


# --- rules that need context -----------------------------------------------------------------


def feature(spec: dict[str, Any]) -> FeatureSpec:
    parsed = parse_resource(obj("Feature", spec)).spec
    assert isinstance(parsed, FeatureSpec)
    return parsed


@pytest.mark.parametrize(
    ("spec", "aggregation", "columns", "expected"),
    [
        pytest.param({"meterSlug": "m"}, "SUM", (), [], id="usable-aggregation"),
        pytest.param(
            {"meterSlug": "m"},
            "AVG",
            (),
            [
                (
                    "spec.meterSlug",
                    "meter m's aggregation is AVG but features can only be created for SUM, COUNT, "
                    "UNIQUE_COUNT, LATEST: use another meter",
                )
            ],
            id="bad-aggregation",
        ),
        pytest.param(
            {"meterSlug": "m", "meterGroupByFilters": {"model": "gpt-4"}},
            "SUM",
            ("model",),
            [],
            id="filter-on-a-column",
        ),
        pytest.param(
            {"meterSlug": "m", "meterGroupByFilters": {"region": "eu"}},
            "SUM",
            ("model", "tier"),
            [
                (
                    "spec.meterGroupByFilters",
                    "invalid filters for feature: region, available columns: "
                    "model, tier: filter on a groupBy key of meter m",
                )
            ],
            id="filter-not-a-column",
        ),
    ],
)
def test_feature_against_its_meter(
    spec: dict[str, Any],
    aggregation: str,
    columns: tuple[str, ...],
    expected: list[tuple[str, str]],
) -> None:
    errors = check_feature_meter(feature(spec), "m", aggregation, columns)
    assert [(e.field, e.message) for e in errors] == expected


def test_metered_entitlement_needs_a_metered_feature() -> None:
    spec = EntitlementSpec(feature_key="f", type=EntitlementType.METERED, customer="c")
    assert check_entitlement_feature(spec, "01FEATURE", None) == (
        ValidationError(
            "spec.featureKey",
            "invalid feature 01FEATURE: Feature has no meter: use type "
            "static or boolean, or a feature with a meterSlug",
        ),
    )
    assert check_entitlement_feature(spec, "01FEATURE", "tokens") == ()
    boolean = EntitlementSpec(feature_key="f", type=EntitlementType.BOOLEAN, customer="c")
    assert check_entitlement_feature(boolean, "01FEATURE", None) == ()


@pytest.mark.parametrize(
    ("target", "field"),
    [
        pytest.param(Target(entitlement="e"), "spec.entitlement", id="named"),
        pytest.param(Target(customer="c", feature_key="f"), "spec.featureKey", id="by-customer"),
    ],
)
def test_grants_and_resets_need_a_metered_entitlement(target: Target, field: str) -> None:
    grant = GrantSpec(target=target, amount=Decimal(1))
    reset = EntitlementResetSpec(target=target)
    assert check_grant_entitlement(grant, EntitlementType.METERED) == ()
    assert [e.field for e in check_grant_entitlement(grant, EntitlementType.STATIC)] == [field]
    assert "grants are only supported for metered entitlements" in str(
        check_grant_entitlement(grant, EntitlementType.BOOLEAN)[0]
    )
    assert check_reset_entitlement(reset, EntitlementType.METERED) == ()
    assert [e.field for e in check_reset_entitlement(reset, EntitlementType.BOOLEAN)] == [field]


PERIOD_START = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("effective_at", "refused"),
    [
        pytest.param(datetime(2026, 1, 31, 23, 59, tzinfo=UTC), True, id="before-period"),
        pytest.param(PERIOD_START, False, id="at-period-start"),
        pytest.param(datetime(2026, 3, 1, tzinfo=UTC), False, id="future"),
    ],
)
def test_grant_effective_at_against_current_period(effective_at: datetime, refused: bool) -> None:
    errors = check_grant_effective_at(effective_at, PERIOD_START)
    assert bool(errors) is refused
    if refused:
        assert errors[0].message.startswith(
            "grant effective date 2026-01-31T23:59:00Z is before the current usage period 2026-02-01T00:00:00Z"
        )


def test_reset_before_period_uses_openmeter_words() -> None:
    error = reset_before_period(datetime(2026, 1, 5, tzinfo=UTC), PERIOD_START)
    assert error.field == "spec.effectiveAt"
    assert error.message.startswith(
        "reset at 2026-01-05T00:00:00Z is before current usage period start 2026-02-01T00:00:00Z"
    )


def test_validation_errors_compare_by_field_and_message() -> None:
    assert ValidationError("a", "b") == ValidationError("a", "b")
    assert ValidationError("a", "b") != ValidationError("a", "c")
    assert len({ValidationError("a", "b"), ValidationError("a", "b")}) == 1


@pytest.mark.parametrize(
    ("kind", "spec", "warned"),
    [
        pytest.param("Entitlement", METERED, True, id="entitlement-orphaned-stays-active"),
        pytest.param(
            "Entitlement", {**METERED, "activeTo": T1}, False, id="entitlement-ended-in-spec"
        ),
        pytest.param(
            "Entitlement", {**METERED, "deletionPolicy": "Apply"}, False, id="entitlement-apply"
        ),
        pytest.param("Grant", GRANT, True, id="grant-orphaned-keeps-amount"),
        pytest.param("Grant", {**GRANT, "voidAt": T1}, False, id="grant-voided-in-spec"),
        pytest.param("Grant", {**GRANT, "deletionPolicy": "Apply"}, False, id="grant-apply"),
        pytest.param("Customer", {}, False, id="other-kinds-never-move-money"),
    ],
)
def test_removal_warns_when_the_ledger_keeps_money_active(
    kind: str, spec: dict[str, Any], warned: bool
) -> None:
    warning = warn_on_removal(parse_resource(obj(kind, spec)))
    assert (warning is not None) is warned
    if warning is not None:
        assert "deletionPolicy" in warning
