"""Check one manifest against its CRD offline, as the kube-apiserver would admit it.

The checks, in the apiserver's order: unknown fields (strict field validation: anything the
structural schema does not declare), null pruning and defaulting, the OpenAPI schema (jsonschema),
then the CRD's CEL rules (cel-python), with ``oldSelf`` for transition rules when the previous
version of the object is given. Messages are formatted as the apiserver formats them, so a
fragment of one appears verbatim in the other. This module knows nothing about allotment's
semantics beyond what the CRDs say, and never talks to a cluster.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import celpy
import celpy.celtypes as ct
import jsonschema
from celpy.evaluation import CELEvalError

from allotment.cli.manifests import JSONPath

_OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


@dataclass(frozen=True)
class Violation:
    """One reason the apiserver would refuse the object, at a field path."""

    json_path: JSONPath
    message: str
    hint: str = ""


def field_path(json_path: JSONPath) -> str:
    """Format a JSON path as Kubernetes field paths are printed (``spec.items[0].name``)."""
    text = ""
    for part in json_path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + part
    return text or "<nil>"


def go_value(value: Any) -> str:
    """Format a bad value as field.Error does (%q for strings, %v for numbers and booleans)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return '"null"'
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    return '"object"' if isinstance(value, dict) else '"array"'


def is_rfc3339(text: str) -> bool:
    """Tell whether ``text`` is an RFC 3339 date-time with a real calendar date and time."""
    if not _RFC3339.match(text):
        return False
    try:
        datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Structural pass: unknown fields, nulls, defaults, list-type=set duplicates.


def _is_preserving(schema: Mapping[str, Any]) -> bool:
    return bool(schema.get("x-kubernetes-preserve-unknown-fields"))


def find_unknown_fields(
    value: Any, schema: Mapping[str, Any], here: JSONPath = ()
) -> Iterator[Violation]:
    """Yield every field the structural schema does not declare (kubectl --validate=strict)."""
    if isinstance(value, dict):
        if _is_preserving(schema) and "properties" not in schema:
            return
        properties: Mapping[str, Any] = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            if here == () and key in ("apiVersion", "kind"):
                continue
            if here == () and key == "metadata":
                yield from _unknown_metadata_fields(item)
                continue
            if key in properties:
                yield from find_unknown_fields(item, properties[key], (*here, key))
            elif isinstance(additional, Mapping):
                yield from find_unknown_fields(item, additional, (*here, key))
            elif not _is_preserving(schema):
                path = field_path((*here, key))
                yield Violation(
                    (*here, key),
                    f'unknown field "{path}"',
                    "remove it: the CRD does not declare this field (check its spelling and nesting)",
                )
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for position, item in enumerate(value):
            yield from find_unknown_fields(item, schema["items"], (*here, position))


def _unknown_metadata_fields(metadata: Any) -> Iterator[Violation]:
    if not isinstance(metadata, dict):
        return
    for key in metadata:
        if key not in _OBJECT_META_FIELDS:
            yield Violation(
                ("metadata", key),
                f'unknown field "metadata.{key}"',
                "remove it: ObjectMeta has no such field (labels and annotations take free-form keys)",
            )


def prune_nulls_and_default(value: Any, schema: Mapping[str, Any]) -> Any:
    """Drop null fields that are not nullable and apply schema defaults, as the apiserver does."""
    if isinstance(value, dict):
        properties: Mapping[str, Any] = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        result: dict[str, Any] = {}
        for key, item in value.items():
            child = properties.get(key) or (additional if isinstance(additional, Mapping) else {})
            if item is None and not child.get("nullable", False):
                continue
            result[key] = prune_nulls_and_default(item, child)
        for key, child in properties.items():
            if key not in result and "default" in child:
                result[key] = prune_nulls_and_default(copy.deepcopy(child["default"]), child)
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [prune_nulls_and_default(item, schema["items"]) for item in value]
    return value


def _set_duplicates(value: Any, schema: Mapping[str, Any], here: JSONPath) -> Iterator[Violation]:
    if isinstance(value, dict):
        properties: Mapping[str, Any] = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            child = properties.get(key) or (additional if isinstance(additional, Mapping) else None)
            if child is not None:
                yield from _set_duplicates(item, child, (*here, key))
    elif isinstance(value, list):
        items = schema.get("items")
        if schema.get("x-kubernetes-list-type") == "set":
            seen: list[Any] = []
            for position, item in enumerate(value):
                if item in seen:
                    yield Violation(
                        (*here, position),
                        f"{field_path((*here, position))}: Duplicate value: {go_value(item)}",
                        "list each value once",
                    )
                seen.append(item)
        if isinstance(items, Mapping):
            for position, item in enumerate(value):
                yield from _set_duplicates(item, items, (*here, position))


# ---------------------------------------------------------------------------------------------
# OpenAPI schema pass (jsonschema), with the apiserver's messages.


def _to_jsonschema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a CRD's OpenAPI v3 schema to a draft-4 JSON Schema (dropping k8s extensions)."""
    converted: dict[str, Any] = {}
    for key, item in schema.items():
        if key.startswith("x-kubernetes-") or key in ("description", "default", "nullable"):
            continue
        if key == "properties":
            converted[key] = {name: _to_jsonschema(child) for name, child in item.items()}
        elif key in ("items", "additionalProperties") and isinstance(item, Mapping):
            converted[key] = _to_jsonschema(item)
        else:
            converted[key] = item
    if schema.get("nullable") and "type" in converted:
        converted["type"] = [converted["type"], "null"]
    return converted


def _is_integer(_checker: Any, instance: Any) -> bool:
    if isinstance(instance, bool):
        return False
    return isinstance(instance, int) or (isinstance(instance, float) and instance.is_integer())


_TYPE_CHECKER = jsonschema.Draft4Validator.TYPE_CHECKER.redefine("integer", _is_integer)
_Validator = jsonschema.validators.extend(jsonschema.Draft4Validator, type_checker=_TYPE_CHECKER)
_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("date-time")  # type: ignore[untyped-decorator]
def _check_date_time(instance: object) -> bool:
    return not isinstance(instance, str) or is_rfc3339(instance)


@cache
def _validator(schema_json: str) -> Any:
    return _Validator(_to_jsonschema(json.loads(schema_json)), format_checker=_FORMATS)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "null"
    return "object"


def _describe(error: Any) -> Violation | None:
    """Translate one jsonschema error into the apiserver's wording."""
    here: JSONPath = tuple(error.absolute_path)
    path = field_path(here)
    keyword, expected, value = error.validator, error.validator_value, error.instance
    if keyword == "required":
        missing = [name for name in expected if not (isinstance(value, dict) and name in value)]
        child = (*here, missing[0]) if missing else here
        return Violation(child, f"{field_path(child)}: Required value", "add this field")
    if keyword == "enum":
        supported = ", ".join(go_value(item) for item in expected)
        return Violation(
            here,
            f"{path}: Unsupported value: {go_value(value)}: supported values: {supported}",
            "use one of the supported values",
        )
    if keyword == "type":
        wanted = expected if isinstance(expected, str) else expected[0]
        return Violation(
            here,
            f'{path}: Invalid value: "{_json_type(value)}": {path} in body must be of type '
            f'{wanted}: "{_json_type(value)}"',
            "quote strings, and leave numbers and booleans unquoted",
        )
    if keyword == "pattern":
        return Violation(
            here,
            f"{path}: Invalid value: {go_value(value)}: {path} in body should match '{expected}'",
            "change the value to match the pattern",
        )
    if keyword == "format":
        return Violation(
            here,
            f"{path}: Invalid value: {go_value(value)}: {path} in body must be of type "
            f"{expected}: {go_value(value)}",
            "write an RFC 3339 instant such as 2030-01-01T00:00:00Z",
        )
    if keyword == "minimum":
        exclusive = bool(error.schema.get("exclusiveMinimum"))
        relation = "greater than" if exclusive else "greater than or equal to"
        return Violation(
            here,
            f"{path}: Invalid value: {go_value(value)}: {path} in body should be {relation} "
            f"{go_value(expected)}",
            "raise the value",
        )
    if keyword == "maximum":
        exclusive = bool(error.schema.get("exclusiveMaximum"))
        relation = "less than" if exclusive else "less than or equal to"
        return Violation(
            here,
            f"{path}: Invalid value: {go_value(value)}: {path} in body should be {relation} "
            f"{go_value(expected)}",
            "lower the value",
        )
    if keyword == "minLength":
        return Violation(
            here,
            f"{path}: Invalid value: {go_value(value)}: {path} in body should be at least "
            f"{expected} chars long",
            "make the value longer",
        )
    if keyword == "maxLength":
        return Violation(
            here,
            f"{path}: Too long: may not be more than {expected} bytes",
            "shorten the value",
        )
    if keyword in ("maxItems", "maxProperties"):
        return Violation(
            here,
            f"{path}: Too many: {len(value)}: must have at most {expected} items",
            "remove entries",
        )
    return Violation(here, f"{path}: Invalid value: {go_value(value)}: {error.message}")


def schema_violations(body: Any, schema: Mapping[str, Any]) -> list[Violation]:
    """Return the OpenAPI schema violations of ``body`` (already pruned and defaulted)."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    found = [_describe(error) for error in validator.iter_errors(body)]
    found.extend(_set_duplicates(body, schema, ()))
    found.extend(_non_finite_numbers(body, ()))
    return sorted(
        (item for item in found if item is not None),
        key=lambda item: (field_path(item.json_path), item.message),
    )


def _non_finite_numbers(value: Any, here: JSONPath) -> Iterator[Violation]:
    if isinstance(value, float) and not math.isfinite(value):
        yield Violation(
            here,
            f"{field_path(here)}: json: unsupported value: {value}",
            "write a finite number",
        )
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite_numbers(item, (*here, key))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from _non_finite_numbers(item, (*here, position))


# ---------------------------------------------------------------------------------------------
# CEL pass (x-kubernetes-validations), with Kubernetes' CEL type mapping.

_CEL_ENV = celpy.Environment()


@cache
def _cel_program(rule: str) -> Any:
    return _CEL_ENV.program(_CEL_ENV.compile(rule))


def to_cel(value: Any, schema: Mapping[str, Any]) -> Any:
    """Convert a JSON value to CEL as Kubernetes types it from the schema."""
    kind = schema.get("type")
    if isinstance(value, dict):
        properties: Mapping[str, Any] = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        return ct.MapType(
            {
                ct.StringType(key): to_cel(
                    item,
                    properties.get(key) or (additional if isinstance(additional, Mapping) else {}),
                )
                for key, item in value.items()
            }
        )
    if isinstance(value, list):
        items = schema.get("items")
        return ct.ListType(
            [to_cel(item, items if isinstance(items, Mapping) else {}) for item in value]
        )
    if isinstance(value, bool):
        return ct.BoolType(value)
    if isinstance(value, int | float) and kind == "number":
        return ct.DoubleType(float(value))
    if isinstance(value, int):
        return ct.IntType(value)
    if isinstance(value, float):
        return ct.IntType(int(value)) if kind == "integer" else ct.DoubleType(value)
    if isinstance(value, str):
        if schema.get("format") in ("date-time", "date"):
            return ct.TimestampType(value.upper().replace("Z", "+00:00"))
        return ct.StringType(value)
    return None


def _is_transition_rule(rule: str) -> bool:
    return re.search(r"\boldSelf\b", rule) is not None


@cache
def _fields_read(rule: str) -> Mapping[str, bool] | None:
    """The fields of self and oldSelf a rule reads, each mapped to True when the rule only tests
    its presence (``has(self.f)``); None when the rule reads the whole object."""
    if re.search(r"\b(?:self|oldSelf)\b(?!\.\w)", rule):
        return None
    reads: dict[str, bool] = {}
    for match in re.finditer(r"(has\()?\b(?:self|oldSelf)\.(\w+)(\.\w+)?(\))?", rule):
        presence_only = bool(match.group(1)) and match.group(3) is None and bool(match.group(4))
        reads[match.group(2)] = reads.get(match.group(2), True) and presence_only
    return reads


def _project(value: Any, reads: Mapping[str, bool] | None) -> Any:
    """Keep only what a rule reads of ``value`` (a field tested for presence becomes ``True``)."""
    if reads is None or not isinstance(value, dict):
        return value
    return {
        name: True if presence else value[name] for name, presence in reads.items() if name in value
    }


class RuleOutcomes:
    """Remembers each rule's outcome by the part of self and oldSelf it reads, for one run:
    objects written from the same pattern then cost one CEL evaluation per rule."""

    def __init__(self) -> None:
        self._outcomes: dict[tuple[str, str, str], bool | str] = {}

    def evaluate(self, rule: str, schema: Mapping[str, Any], value: Any, old: Any) -> bool | str:
        """Return whether the rule holds, or the evaluation error as text."""
        reads = _fields_read(rule)
        mine, previous = _project(value, reads), _project(old, reads)
        key = (rule, json.dumps(mine, sort_keys=True), json.dumps(previous, sort_keys=True))
        found = self._outcomes.get(key)
        if found is None:
            found = _evaluate(rule, schema, mine, previous)
            self._outcomes[key] = found
        return found


def _evaluate(rule: str, schema: Mapping[str, Any], value: Any, old: Any) -> bool | str:
    activation: dict[str, Any] = {"self": to_cel(value, schema)}
    if _is_transition_rule(rule):
        activation["oldSelf"] = to_cel(old, schema)
    try:
        return bool(_cel_program(rule).evaluate(activation))
    except (CELEvalError, TypeError, ValueError, KeyError) as error:
        return str(error) or type(error).__name__


def cel_violations(
    value: Any,
    schema: Mapping[str, Any],
    old: Any = None,
    here: JSONPath = (),
    transitions: bool = True,
    outcomes: RuleOutcomes | None = None,
) -> Iterator[Violation]:
    """Yield the CRD's CEL rules that ``value`` breaks (transition rules only with ``old``)."""
    outcomes = outcomes if outcomes is not None else RuleOutcomes()
    for validation in schema.get("x-kubernetes-validations", ()):
        rule = validation["rule"]
        if _is_transition_rule(rule) and (old is None or not transitions):
            continue
        result = outcomes.evaluate(rule, schema, value, old)
        path = field_path(here)
        if isinstance(result, str):
            yield Violation(
                here,
                f"{path}: Invalid value: {go_value(value)}: rule evaluation failed: {result}",
                f"the rule was: {rule}",
            )
        elif not result:
            message = validation.get("message") or f"failed rule: {rule}"
            yield Violation(here, f"{path}: Invalid value: {message}")
    if isinstance(value, dict):
        properties: Mapping[str, Any] = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            child = properties.get(key) or (additional if isinstance(additional, Mapping) else None)
            if child is None:
                continue
            previous = old.get(key) if isinstance(old, dict) else None
            yield from cel_violations(item, child, previous, (*here, key), transitions, outcomes)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for position, item in enumerate(value):
            yield from cel_violations(
                item, schema["items"], None, (*here, position), transitions, outcomes
            )


# ---------------------------------------------------------------------------------------------


def name_violations(body: Mapping[str, Any]) -> list[Violation]:
    """Check metadata.name as the apiserver does for custom resources."""
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        return [
            Violation(("metadata",), "metadata: Required value: name or generateName is required")
        ]
    name = metadata.get("name")
    if name is None and metadata.get("generateName") is None:
        return [
            Violation(
                ("metadata", "name"),
                "metadata.name: Required value: name or generateName is required",
                "add metadata.name",
            )
        ]
    if name is not None and (
        not isinstance(name, str) or not _DNS_SUBDOMAIN.match(name) or len(name) > 253
    ):
        return [
            Violation(
                ("metadata", "name"),
                f"metadata.name: Invalid value: {go_value(name)}: a lowercase RFC 1123 subdomain "
                "must consist of lower case alphanumeric characters, '-' or '.', and must start "
                "and end with an alphanumeric character",
                "rename the object",
            )
        ]
    return []


def admit(
    body: Mapping[str, Any],
    schema: Mapping[str, Any],
    old: Mapping[str, Any] | None = None,
    outcomes: RuleOutcomes | None = None,
) -> tuple[list[Violation], dict[str, Any]]:
    """Check one object against its CRD schema and rules; return the violations and the object
    as stored (nulls pruned, defaults applied). Pass one ``outcomes`` to every call of a run."""
    violations = list(name_violations(body))
    violations.extend(find_unknown_fields(body, schema))
    # With the status subresource, create and update drop status before validating it.
    written = {key: value for key, value in body.items() if key != "status"}
    stored: dict[str, Any] = prune_nulls_and_default(written, schema)
    violations.extend(schema_violations(stored, schema))
    if violations:
        return violations, stored
    previous = (
        prune_nulls_and_default(
            {key: value for key, value in old.items() if key != "status"}, schema
        )
        if old is not None
        else None
    )
    violations.extend(cel_violations(stored, schema, previous, outcomes=outcomes))
    return violations, stored
