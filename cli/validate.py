"""``allotment validate``: check manifests offline, as the apiserver and the operator would.

Every allotment document is checked against its CRD from ``allotment.crds`` (unknown fields, the
OpenAPI schema, the CEL rules; transition rules against ``--previous``), then the whole set is
checked for what only the operator would notice later (missing references, duplicate keys, two
entitlements for one customer and feature, removals that leave money in place). The first kind
are errors (exit 1), the second warnings. This module reads files and prints; it never talks to a
cluster or the ledger.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from allotment.cli.admission import RuleOutcomes, Violation, admit, field_path, is_rfc3339
from allotment.cli.manifests import (
    GROUP,
    CRDVersion,
    Document,
    JSONPath,
    SyntaxProblem,
    load_crds,
    manifest_files,
    read_documents,
)

Severity = Literal["error", "warning", "note"]

_KEY_PATTERN = r"^[a-z0-9]+(?:_[a-z0-9]+)*$"
_ULID_PATTERN = r"^[0-7][0-9a-hjkmnp-tv-z]{25}$"


@dataclass(frozen=True)
class Finding:
    """One line of the report: where, what, and what to do."""

    severity: Severity
    file: Path | None
    index: int | None
    line: int | None
    subject: str
    message: str
    hint: str = ""


@dataclass(frozen=True)
class Resource:
    """An allotment object that passed admission, with where it came from."""

    kind: str
    namespace: str
    name: str
    body: Mapping[str, Any]
    document: Document

    @property
    def spec(self) -> Mapping[str, Any]:
        """The object's spec (empty if it has none)."""
        spec = self.body.get("spec")
        return spec if isinstance(spec, dict) else {}

    @property
    def title(self) -> str:
        """Kind namespace/name, as log lines and findings name objects."""
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class Report:
    """The findings of one run and what was read."""

    findings: tuple[Finding, ...]
    files: int
    documents: int
    resources: int

    @property
    def errors(self) -> int:
        """How many findings are errors."""
        return sum(1 for finding in self.findings if finding.severity == "error")

    @property
    def warnings(self) -> int:
        """How many findings are warnings."""
        return sum(1 for finding in self.findings if finding.severity == "warning")


def _identity(body: Mapping[str, Any]) -> tuple[str, str, str]:
    """Return (kind, namespace, name); no namespace means default, as kubectl applies it."""
    metadata = body.get("metadata")
    meta: Mapping[str, Any] = metadata if isinstance(metadata, dict) else {}
    namespace = meta.get("namespace") or "default"
    name = meta.get("name") or meta.get("generateName") or "<unnamed>"
    return str(body.get("kind")), str(namespace), str(name)


def _finding_at(
    severity: Severity,
    document: Document,
    subject: str,
    json_path: JSONPath,
    message: str,
    hint: str = "",
) -> Finding:
    return Finding(
        severity, document.path, document.index, document.line_of(json_path), subject, message, hint
    )


@dataclass(frozen=True)
class _Loaded:
    resources: tuple[Resource, ...]
    findings: tuple[Finding, ...]
    files: int
    documents: int


def _load_set(
    paths: list[Path],
    catalog: Mapping[tuple[str, str], CRDVersion],
    previous: Mapping[tuple[str, str, str], Resource] | None,
) -> _Loaded:
    """Read, admit and index every document under ``paths``."""
    outcomes = RuleOutcomes()
    findings: list[Finding] = []
    resources: list[Resource] = []
    files = documents = 0
    for path in manifest_files(paths):
        files += 1
        if not path.exists():
            findings.append(
                Finding("error", path, None, None, str(path), "no such file or directory")
            )
            continue
        try:
            items = list(read_documents(path))
        except (OSError, UnicodeDecodeError) as error:
            findings.append(
                Finding("error", path, None, None, str(path), f"cannot read the file: {error}")
            )
            continue
        for item in items:
            documents += 1
            if isinstance(item, SyntaxProblem):
                findings.append(
                    Finding(
                        "error",
                        item.path,
                        item.index,
                        item.line,
                        f"document {item.index}",
                        item.message,
                        "fix the YAML syntax (kubectl cannot read this document or any after it)",
                    )
                )
                continue
            for document in expand_lists(item):
                resource, found = _admit_document(document, catalog, previous, outcomes)
                findings.extend(found)
                if resource is not None:
                    resources.append(resource)
    return _Loaded(tuple(resources), tuple(findings), files, documents)


def expand_lists(document: Document) -> list[Document]:
    """Split a ``v1`` List (as ``kubectl get -o yaml`` writes) into its items, as kubectl does."""
    body = document.body
    if not (
        isinstance(body, dict)
        and body.get("apiVersion") == "v1"
        and str(body.get("kind", "")).endswith("List")
        and isinstance(body.get("items"), list)
    ):
        return [document]
    items: list[Document] = []
    for position, item in enumerate(body["items"]):
        prefix: JSONPath = ("items", position)
        lines = {
            path[2:]: line
            for path, line in document.lines.items()
            if path[:2] == prefix and len(path) > 2
        }
        start = document.lines.get(prefix, document.line)
        items.append(Document(document.path, document.index, start, item, lines))
    return items


def _admit_document(
    document: Document,
    catalog: Mapping[tuple[str, str], CRDVersion],
    previous: Mapping[tuple[str, str, str], Resource] | None,
    outcomes: RuleOutcomes,
) -> tuple[Resource | None, list[Finding]]:
    body = document.body
    subject = f"document {document.index}"
    if not isinstance(body, dict):
        return None, [
            _finding_at(
                "error",
                document,
                subject,
                (),
                "the document is not a Kubernetes object (a mapping with apiVersion and kind)",
                "write a mapping, or remove the document",
            )
        ]
    missing = [name for name in ("apiVersion", "kind") if not isinstance(body.get(name), str)]
    if missing:
        return None, [
            _finding_at("error", document, subject, (), f"{name}: Required value", f"set {name}")
            for name in missing
        ]
    api_version, kind = body["apiVersion"], body["kind"]
    kind_, namespace, name = _identity(body)
    subject = f"{kind} {namespace}/{name}"
    if api_version.split("/")[0] != GROUP:
        return None, [
            _finding_at(
                "note",
                document,
                subject,
                (),
                f"skipped: {api_version} {kind} is not an allotment kind",
            )
        ]
    crd = catalog.get((api_version, kind))
    if crd is None:
        known = ", ".join(sorted({f"{version}/{known_kind}" for version, known_kind in catalog}))
        return None, [
            _finding_at(
                "error",
                document,
                subject,
                ("kind",),
                f'no matches for kind "{kind}" in version "{api_version}"',
                f"use one of: {known}",
            )
        ]
    old = previous.get((kind_, namespace, name)) if previous is not None else None
    violations, stored = admit(body, crd.schema, old.body if old is not None else None, outcomes)
    findings = [_from_violation("error", document, subject, violation) for violation in violations]
    if "status" in body:
        findings.append(
            _finding_at(
                "warning",
                document,
                subject,
                ("status",),
                "status: the apiserver ignores status on create and apply (the operator writes it)",
                "remove status",
            )
        )
    if violations:
        return None, findings
    resource = Resource(kind, namespace, name, stored, document)
    findings.extend(_derived_key_findings(resource))
    return resource, findings


def _from_violation(
    severity: Severity, document: Document, subject: str, violation: Violation
) -> Finding:
    return _finding_at(
        severity, document, subject, violation.json_path, violation.message, violation.hint
    )


def _derived_key_findings(resource: Resource) -> list[Finding]:
    """Refuse a Meter or Feature whose name cannot give its slug or key when none is written."""
    field = {"Meter": "slug", "Feature": "key"}.get(resource.kind)
    if field is None or field in resource.spec:
        return []
    derived = resource.name.replace("-", "_")
    is_ulid = resource.kind == "Feature" and re.match(_ULID_PATTERN, derived) is not None
    if len(derived) <= 64 and re.match(_KEY_PATTERN, derived) and not is_ulid:
        return []
    problem = (
        "which is a ULID (OpenMeter refuses feature keys that are)"
        if is_ulid
        else f"which does not match {_KEY_PATTERN} (at most 64 characters)"
    )
    return [
        _finding_at(
            "error",
            resource.document,
            resource.title,
            ("metadata", "name"),
            f"spec.{field}: metadata.name {resource.name!r} gives {field} {derived!r}, {problem}; "
            "the operator would refuse it",
            f"set spec.{field}",
        )
    ]


# ---------------------------------------------------------------------------------------------
# Checks over the whole set (warnings: the operator waits or refuses later).


def meter_slug(resource: Resource) -> str:
    """The effective slug of a Meter."""
    return str(resource.spec.get("slug") or resource.name.replace("-", "_"))


def feature_key(resource: Resource) -> str:
    """The effective key of a Feature."""
    return str(resource.spec.get("key") or resource.name.replace("-", "_"))


def customer_key(resource: Resource) -> str:
    """The effective key of a Customer."""
    return str(resource.spec.get("key") or resource.name)


def customer_subjects(resource: Resource) -> list[str]:
    """Every subject key of a Customer, its key first."""
    attribution = resource.spec.get("usageAttribution") or {}
    return [customer_key(resource), *[str(key) for key in attribution.get("subjectKeys", [])]]


def _instant(text: Any) -> datetime | None:
    if isinstance(text, str) and is_rfc3339(text):
        return datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    return None


class _Index:
    """The set's objects by namespace, for reference and uniqueness checks (built once)."""

    def __init__(self, resources: Iterable[Resource]) -> None:
        self.by_kind: dict[tuple[str, str], list[Resource]] = defaultdict(list)
        for resource in resources:
            self.by_kind[(resource.kind, resource.namespace)].append(resource)
        self.customer_of_subject: dict[tuple[str, str], str] = {}
        for (kind, namespace), items in self.by_kind.items():
            if kind == "Customer":
                for customer in items:
                    for subject in customer_subjects(customer):
                        self.customer_of_subject.setdefault(
                            (namespace, subject), customer_key(customer)
                        )
        self.entitlement_by_name: dict[tuple[str, str], Resource] = {}
        self.entitlements_by_pair: dict[tuple[str, str, str], list[Resource]] = defaultdict(list)
        for entitlement in self.of_all("Entitlement"):
            self.entitlement_by_name[(entitlement.namespace, entitlement.name)] = entitlement
            pair = (
                entitlement.namespace,
                self.owner(entitlement),
                str(entitlement.spec.get("featureKey")),
            )
            self.entitlements_by_pair[pair].append(entitlement)
        self.plans: dict[tuple[str, str], Resource] = {
            (plan.namespace, str(plan.spec.get("key") or plan.name)): plan
            for plan in self.of_all("Plan")
        }
        self.subscribed: dict[tuple[str, str, str], list[tuple[Resource, Any]]] = defaultdict(list)
        for subscription in self.of_all("Subscription"):
            plan = self.plans.get((subscription.namespace, str(subscription.spec.get("planKey"))))
            for item in (plan.spec.get("features") or []) if plan is not None else []:
                if isinstance(item, dict):
                    pair = (
                        subscription.namespace,
                        self.owner(subscription),
                        str(item.get("featureKey")),
                    )
                    self.subscribed[pair].append((subscription, item.get("type")))

    def of(self, kind: str, namespace: str) -> list[Resource]:
        """The objects of one kind in one namespace."""
        return self.by_kind.get((kind, namespace), [])

    def of_all(self, kind: str) -> Iterator[Resource]:
        """The objects of one kind in every namespace."""
        for (candidate, _), items in self.by_kind.items():
            if candidate == kind:
                yield from items

    def owner(self, entitlement_like: Resource) -> str:
        """The customer key an Entitlement (or a Grant's customer/subject) resolves to."""
        spec = entitlement_like.spec
        if "customer" in spec:
            return str(spec["customer"])
        subject = str(spec.get("subject", ""))
        return self.customer_of_subject.get((entitlement_like.namespace, subject), subject)

    def entitlements_for(self, referrer: Resource) -> list[tuple[str, Any]]:
        """The entitlements a Grant or EntitlementReset refers to, as (description, type):
        Entitlement objects, or for customer/subject and featureKey also Subscriptions' plans."""
        spec = referrer.spec
        if "entitlement" in spec:
            found = self.entitlement_by_name.get((referrer.namespace, str(spec["entitlement"])))
            return [(found.title, found.spec.get("type"))] if found is not None else []
        pair = (referrer.namespace, self.owner(referrer), str(spec.get("featureKey")))
        return [
            *(
                (item.title, item.spec.get("type"))
                for item in self.entitlements_by_pair.get(pair, [])
            ),
            *(
                (f"the entitlement {subscription.title} gives", kind)
                for subscription, kind in self.subscribed.get(pair, [])
            ),
        ]


def cross_resource_findings(resources: Iterable[Resource]) -> Iterator[Finding]:
    """Warn about what the operator would wait on or refuse: references and uniqueness."""
    index = _Index(resources)
    for (kind, namespace), items in sorted(index.by_kind.items()):
        if kind == "Meter":
            yield from _duplicates(items, meter_slug, "slug", ("spec", "slug"))
        elif kind == "Feature":
            yield from _duplicates(items, feature_key, "key", ("spec", "key"))
            slugs = {meter_slug(meter) for meter in index.of("Meter", namespace)}
            for feature in items:
                slug = feature.spec.get("meterSlug")
                if slug is not None and slug not in slugs:
                    yield _warn(
                        feature,
                        ("spec", "meterSlug"),
                        f"spec.meterSlug: no Meter with slug {slug!r} in namespace {namespace} "
                        "among the files validated; the operator waits (Ready=False) until one exists",
                        "add the Meter, or fix meterSlug",
                    )
        elif kind == "Customer":
            yield from _duplicates(items, customer_key, "key", ("spec", "key"))
            yield from _shared_subjects(items)
        elif kind == "Entitlement":
            yield from _entitlement_findings(index, namespace, items)
        elif kind in ("Grant", "EntitlementReset"):
            for referrer in items:
                yield from _reference_findings(index, referrer)
        elif kind == "Subscription":
            for subscription in items:
                plan_key = subscription.spec.get("planKey")
                if plan_key is not None and (namespace, str(plan_key)) not in index.plans:
                    yield _warn(
                        subscription,
                        ("spec", "planKey"),
                        f"spec.planKey: no Plan with key {plan_key!r} in namespace {namespace} "
                        "among the files validated; the operator waits until one exists",
                        "add the Plan, or fix planKey",
                    )


def _warn(resource: Resource, json_path: JSONPath, message: str, hint: str = "") -> Finding:
    return _finding_at("warning", resource.document, resource.title, json_path, message, hint)


def _duplicates(
    items: list[Resource], key_of: Callable[[Resource], str], label: str, json_path: JSONPath
) -> Iterator[Finding]:
    seen: dict[str, Resource] = {}
    for item in items:
        key = key_of(item)
        first = seen.setdefault(key, item)
        if first is not item:
            yield _warn(
                item,
                json_path,
                f"{label} {key!r} is already used by {first.title} ({first.document.path}); keys "
                "are unique per namespace, so the operator refuses the second",
                f"choose another {label}",
            )


def _shared_subjects(customers: list[Resource]) -> Iterator[Finding]:
    owner_of: dict[str, Resource] = {}
    for customer in customers:
        for subject in dict.fromkeys(customer_subjects(customer)):
            first = owner_of.setdefault(subject, customer)
            if first is not customer:
                yield _warn(
                    customer,
                    ("spec", "usageAttribution", "subjectKeys"),
                    f"subject {subject!r} is also a key or subject key of {first.title}; a string "
                    "may belong to at most one customer per namespace",
                    "remove it from one of the two customers",
                )


def _entitlement_findings(
    index: _Index, namespace: str, items: list[Resource]
) -> Iterator[Finding]:
    features = {feature_key(feature): feature for feature in index.of("Feature", namespace)}
    customers = {customer_key(customer) for customer in index.of("Customer", namespace)}
    for entitlement in items:
        spec = entitlement.spec
        feature = features.get(str(spec.get("featureKey")))
        if feature is None:
            yield _warn(
                entitlement,
                ("spec", "featureKey"),
                f"spec.featureKey: no Feature with key {spec.get('featureKey')!r} in namespace "
                f"{namespace} among the files validated; the operator waits (Ready=False, reason "
                "FeatureNotFound) until one exists",
                "add the Feature, or fix featureKey",
            )
        elif spec.get("type") == "metered" and "meterSlug" not in feature.spec:
            yield _warn(
                entitlement,
                ("spec", "type"),
                f"a metered entitlement needs a metered feature, and {feature.title} has no "
                "meterSlug; the operator refuses it",
                "use type boolean or static, or give the Feature a meterSlug",
            )
        if "customer" in spec and spec["customer"] not in customers:
            yield _warn(
                entitlement,
                ("spec", "customer"),
                f"spec.customer: no Customer with key {spec['customer']!r} in namespace "
                f"{namespace} among the files validated; the operator waits until one exists",
                "add the Customer, or use subject for an implicit customer",
            )
    for entitlement in items:
        pair = (namespace, index.owner(entitlement), str(entitlement.spec.get("featureKey")))
        for subscription, _ in index.subscribed.get(pair, []):
            yield _warn(
                entitlement,
                ("spec",),
                f"{subscription.title} already gives customer {pair[1]!r} an entitlement to "
                f"{pair[2]!r}; at most one may be active at any instant",
                "remove one of the two, or end this Entitlement (activeTo) before the subscription",
            )
    by_pair: dict[tuple[str, str], list[Resource]] = defaultdict(list)
    for entitlement in items:
        by_pair[(index.owner(entitlement), str(entitlement.spec.get("featureKey")))].append(
            entitlement
        )
    for (owner, key), group in by_pair.items():
        for position, later in enumerate(group):
            for earlier in group[:position]:
                if _overlap(earlier, later):
                    yield _warn(
                        later,
                        ("spec",),
                        f"{earlier.title} is already an entitlement of customer {owner!r} to "
                        f"{key!r} at overlapping times; at most one may be active at any instant",
                        "set activeTo on one and activeFrom on the other so they do not overlap",
                    )


def _overlap(first: Resource, second: Resource) -> bool:
    """Tell whether two entitlements' [activeFrom, activeTo) may overlap (absent = unbounded)."""
    lowest, highest = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)

    def bounds(resource: Resource) -> tuple[datetime, datetime]:
        start = _instant(resource.spec.get("activeFrom"))
        end = _instant(resource.spec.get("activeTo"))
        return (start or lowest, end or highest)

    first_start, first_end = bounds(first)
    second_start, second_end = bounds(second)
    return first_start < second_end and second_start < first_end


def _reference_findings(index: _Index, referrer: Resource) -> Iterator[Finding]:
    targets = index.entitlements_for(referrer)
    spec = referrer.spec
    if not targets:
        described = (
            f"named {spec['entitlement']!r}"
            if "entitlement" in spec
            else f"of {index.owner(referrer)!r} to {spec.get('featureKey')!r}"
        )
        field = "entitlement" if "entitlement" in spec else "featureKey"
        yield _warn(
            referrer,
            ("spec", field),
            f"no Entitlement {described} in namespace {referrer.namespace} among the files "
            "validated; the operator waits (Ready=False) until one exists",
            "add the Entitlement, or fix the reference",
        )
        return
    for title, kind in targets:
        if kind != "metered":
            yield _warn(
                referrer,
                ("spec",),
                f"{referrer.kind} applies only to metered entitlements, and {title} is "
                f"{kind}; the operator refuses it",
                "point it at a metered Entitlement",
            )


def subscription_removal(title: str, policy: str) -> tuple[str, str]:
    """Return the warning and the hint for removing a Subscription (it has no activeTo, D3)."""
    if policy == "Apply":
        return (
            f"this change removes {title}; deletionPolicy Apply will end its entitlements at the "
            "deletion instant (never before the current period), which no reviewer sees",
            "plan the removal for a known instant, or set deletionPolicy: Orphan to keep them",
        )
    return (
        f"this change removes {title}; the ledger keeps its entitlements active as last applied "
        "(deletionPolicy Orphan): deleting it ends nothing",
        "to end them, first set deletionPolicy: Apply in a reviewed change, then remove the file",
    )


def removal_findings(
    current: Iterable[Resource], previous: Iterable[Resource]
) -> Iterator[Finding]:
    """Warn when a change removes an active Entitlement or Grant without ending or voiding it,
    or a Subscription, whatever its deletionPolicy does (D3)."""
    present = {(item.kind, item.namespace, item.name) for item in current}
    for old in previous:
        if old.kind not in ("Entitlement", "Grant", "Subscription"):
            continue
        if (old.kind, old.namespace, old.name) in present:
            continue
        if old.kind == "Subscription":
            policy = str(old.spec.get("deletionPolicy", "Orphan"))
            message, hint = subscription_removal(old.title, policy)
            doc = old.document
            yield Finding("warning", doc.path, doc.index, doc.line, old.title, message, hint)
            continue
        field = "activeTo" if old.kind == "Entitlement" else "voidAt"
        if field in old.spec:
            continue
        action = "end" if old.kind == "Entitlement" else "void"
        effect = (
            f"the ledger keeps it as it is (deletionPolicy Orphan): deleting it does not {action} it"
            if old.spec.get("deletionPolicy", "Orphan") == "Orphan"
            else f"deletionPolicy Apply will {action} it at the deletion instant, which no reviewer sees"
        )
        yield Finding(
            "warning",
            old.document.path,
            old.document.index,
            old.document.line,
            old.title,
            f"this change removes {old.title} without spec.{field}; {effect}",
            f"first set spec.{field} in a reviewed change, then remove the file",
        )


# ---------------------------------------------------------------------------------------------


def validate_paths(paths: list[Path], previous: list[Path] | None = None) -> Report:
    """Validate every manifest under ``paths`` (with ``previous`` as the old versions)."""
    catalog = load_crds()
    findings: list[Finding] = []
    old_index: dict[tuple[str, str, str], Resource] | None = None
    old_set: _Loaded | None = None
    if previous is not None:
        old_set = _load_set(previous, catalog, None)
        old_index = {(item.kind, item.namespace, item.name): item for item in old_set.resources}
    loaded = _load_set(paths, catalog, old_index)
    findings.extend(loaded.findings)
    findings.extend(cross_resource_findings(loaded.resources))
    if old_set is not None:
        findings.extend(removal_findings(loaded.resources, old_set.resources))
        unreadable = sum(1 for finding in old_set.findings if finding.severity == "error")
        if unreadable:
            findings.append(
                Finding(
                    "note",
                    None,
                    None,
                    None,
                    "validate",
                    f"{unreadable} problems in --previous: objects there that are not valid were "
                    "not compared (no transition rules, no removal check)",
                    "run allotment validate on the --previous directory to see them",
                )
            )
    else:
        findings.append(
            Finding(
                "note",
                None,
                None,
                None,
                "validate",
                "transition rules (immutable fields) and removal checks were skipped",
                "pass --previous DIR with the manifests as they are now (for example the base branch)",
            )
        )
    return Report(tuple(findings), loaded.files, loaded.documents, len(loaded.resources))


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render(report: Report, output_format: str, out: TextIO) -> None:
    """Print the findings as text lines or GitHub workflow commands, then a summary."""
    for finding in report.findings:
        where = ""
        if finding.file is not None:
            where = f"{finding.file}:{finding.line}: " if finding.line else f"{finding.file}: "
        document = f"document {finding.index}, " if finding.index is not None else ""
        if output_format == "github":
            command = {"error": "error", "warning": "warning", "note": "notice"}[finding.severity]
            properties = []
            if finding.file is not None:
                properties.append(f"file={_escape_property(str(finding.file))}")
                if finding.line:
                    properties.append(f"line={finding.line}")
            properties.append(f"title={_escape_property(finding.subject)}")
            text = f"{document}{finding.subject}: {finding.message}"
            if finding.hint:
                text += f" (fix: {finding.hint})"
            out.write(f"::{command} {','.join(properties)}::{_escape_data(text)}\n")
        else:
            out.write(
                f"{where}{finding.severity}: {document}{finding.subject}: {finding.message}\n"
            )
            if finding.hint:
                out.write(f"  fix: {finding.hint}\n")
    out.write(
        f"validate: {report.files} files, {report.documents} documents, {report.resources} "
        f"allotment objects: {report.errors} errors, {report.warnings} warnings\n"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``allotment validate``; exit 1 on any error."""
    report = validate_paths(
        [Path(item) for item in args.paths],
        [Path(args.previous)] if args.previous is not None else None,
    )
    render(report, args.format, sys.stdout)
    return 1 if report.errors else 0


def register(subparsers: Any) -> None:
    """Add the ``validate`` subcommand."""
    parser = subparsers.add_parser(
        "validate",
        help="check manifests offline against the CRDs and each other",
        description=(
            "Check allotment manifests offline: each document against its CRD (schema, unknown "
            "fields, CEL rules), and the set for missing references and duplicates (warnings). "
            "Exit 1 on any error."
        ),
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="YAML files or directories (recursive)"
    )
    parser.add_argument(
        "--previous",
        metavar="DIR",
        help="the manifests as they are now: run transition rules and warn about removals",
    )
    parser.add_argument(
        "--format", choices=("text", "github"), default="text", help="output format"
    )
    parser.set_defaults(handler=run)


__all__ = ["Finding", "Report", "field_path", "register", "render", "validate_paths"]
