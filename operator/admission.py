"""Admission webhooks: cross-object warnings for allotment kinds, and sidecar injection on Pods.

Role: validating handlers that only append warnings (a missing Feature, Customer, Meter or
Entitlement; a second Entitlement for the same customer and feature), answered from Kopf indexes
of what the cluster holds. Refusals come from the CRD schema and CEL alone (DESIGN D6): these
handlers never raise, and their configurations use ``failurePolicy: Ignore``. The mutating
handler on Pods applies ``injection.inject_sidecar``.

Must not: refuse anything, talk to the ledger, or register admission configurations (those are
static: ``manifests/webhooks.yaml``, or the e2e test's own ``clientConfig.url``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import jsonpatch
import kopf
from prometheus_client import Counter

from allotment.ledger.core.resources import default_key
from allotment.operator import injection
from allotment.operator.kinds import GROUP, VERSION
from allotment.operator.runtime import runtime_of
from allotment.operator.settings import SidecarSettings

logger = logging.getLogger(__name__)

INJECTION_SKIPPED = Counter(
    "allotment_sidecar_injection_skipped_total",
    "Pods labelled for injection that got no sidecar, by reason.",
    ["reason"],
)
INJECTED = Counter("allotment_sidecar_injected_total", "Pods the sidecar was injected into.")

# --- indexes of what the cluster holds, keyed within a namespace (D5) -------------------------


def index_meters(*, namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> Any:
    """Index Meters by (namespace, slug)."""
    return {(namespace, spec.get("slug") or default_key(name)): name}


def index_features(*, namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> Any:
    """Index Features by (namespace, key)."""
    return {(namespace, spec.get("key") or default_key(name)): name}


def index_customers(*, namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> Any:
    """Index Customers by (namespace, key) and by each subject key."""
    keys = {spec.get("key") or name}
    keys.update((spec.get("usageAttribution") or {}).get("subjectKeys") or ())
    return {(namespace, str(key)): name for key in keys}


def index_plans(*, namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> Any:
    """Index Plans by (namespace, key)."""
    return {(namespace, spec.get("key") or default_key(name)): name}


def index_entitlements(*, namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> Any:
    """Index Entitlements by name and by (namespace, customer or subject, featureKey)."""
    who = spec.get("customer") or spec.get("subject")
    return {
        ("name", namespace, name): name,
        ("target", namespace, who, spec.get("featureKey")): name,
    }


# --- validating: warnings only ---------------------------------------------------------------


def _missing(index: Any, key: tuple[Any, ...]) -> bool:
    return key not in index


def reference_warnings(
    kind: str,
    namespace: str,
    name: str,
    spec: Mapping[str, Any],
    indexes: Mapping[str, Any],
) -> list[str]:
    """Return the warnings for an object's references to others in its namespace."""
    found: list[str] = []
    waits = "it will wait (Ready=False) until one is applied"
    slug = spec.get("meterSlug")
    if kind == "Feature" and slug and _missing(indexes["meters"], (namespace, slug)):
        found.append(f"no Meter with slug {slug!r} in {namespace}: {waits}")
    feature = spec.get("featureKey")
    if feature and _missing(indexes["features"], (namespace, feature)):
        found.append(f"no Feature with key {feature!r} in {namespace}: {waits}")
    if spec.get("customer") and _missing(indexes["customers"], (namespace, spec["customer"])):
        found.append(f"no Customer with key {spec['customer']!r} in {namespace}: {waits}")
    plan = spec.get("planKey")
    if kind == "Subscription" and plan and _missing(indexes["plans"], (namespace, plan)):
        found.append(f"no Plan with key {plan!r} in {namespace}: {waits}")
    named = spec.get("entitlement")
    if named and _missing(indexes["entitlements"], ("name", namespace, named)):
        found.append(f"no Entitlement named {named!r} in {namespace}: {waits}")
    if kind == "Entitlement":
        who = spec.get("customer") or spec.get("subject")
        target = ("target", namespace, who, spec.get("featureKey"))
        others = [n for n in indexes["entitlements"].get(target, ()) if n != name]
        if others:
            found.append(
                f"Entitlement {others[0]!r} already gives {who!r} the feature "
                f"{spec.get('featureKey')!r}: only one can be active at a time "
                f"(set activeTo on one of them); this one will report EntitlementConflict"
            )
    return found


async def warn_references(
    *,
    body: kopf.Body,
    warnings: list[str],
    param: Any = None,
    meter_index: Any = None,
    feature_index: Any = None,
    customer_index: Any = None,
    entitlement_index: Any = None,
    plan_index: Any = None,
    **_: Any,
) -> None:
    """Add cross-object warnings to an admission response; never refuse."""
    try:
        metadata = body.get("metadata") or {}
        indexes = {
            "meters": meter_index,
            "features": feature_index,
            "customers": customer_index,
            "entitlements": entitlement_index,
            "plans": plan_index,
        }
        warnings.extend(
            reference_warnings(
                str(param),
                str(metadata.get("namespace") or "default"),
                str(metadata.get("name") or ""),
                body.get("spec") or {},
                indexes,
            )
        )
    except Exception as error:  # a warning is never worth a refusal
        logger.warning("Could not compute admission warnings: %s", error)


# --- mutating: sidecar injection ------------------------------------------------------------


def _sidecar_settings(memo: Mapping[str, Any]) -> SidecarSettings:
    try:
        return runtime_of(memo).settings.sidecar
    except RuntimeError:
        return SidecarSettings()


async def inject(
    *, body: kopf.Body, patch: kopf.Patch, warnings: list[str], memo: Any, dryrun: bool, **_: Any
) -> None:
    """Add the native sidecar to a labelled Pod, or say why not; never refuse the Pod."""
    try:
        settings = _sidecar_settings(memo)
        reason = injection.skip_reason(body, settings)
        metadata = body.get("metadata") or {}
        pod = f"{metadata.get('namespace')}/{metadata.get('name') or metadata.get('generateName')}"
        if reason is not None:
            warnings.append(f"allotment: no sidecar injected: {reason}")
            logger.warning("Skipped injecting the sidecar into Pod %s: %s", pod, reason)
            if not dryrun:
                INJECTION_SKIPPED.labels(reason=reason.split(",")[0][:60]).inc()
            return
        ops = injection.inject_sidecar(body, settings)
        patch.fns.append(lambda raw: jsonpatch.apply_patch(raw, ops, in_place=True))
        if not dryrun:
            INJECTED.inc()
        logger.info("Injected the sidecar into Pod %s", pod)
    except Exception as error:  # the Pod goes ahead without a sidecar rather than not at all
        warnings.append(f"allotment: no sidecar injected: {error}")
        logger.warning("Sidecar injection failed: %s", error)


def register(registry: Any) -> None:
    """Register the indexes, the validating warnings and the Pod injection into ``registry``."""
    for plural, fn in (
        ("meters", index_meters),
        ("features", index_features),
        ("customers", index_customers),
        ("entitlements", index_entitlements),
        ("plans", index_plans),
    ):
        kopf.index(GROUP, VERSION, plural, id=f"{plural[:-1]}_index", registry=registry)(fn)
    for kind, plural in (
        ("Feature", "features"),
        ("Entitlement", "entitlements"),
        ("Grant", "grants"),
        ("EntitlementReset", "entitlementresets"),
        ("Subscription", "subscriptions"),
    ):
        kopf.on.validate(GROUP, VERSION, plural, id=f"warn-{plural}", param=kind,
                         operations=["CREATE", "UPDATE"], ignore_failures=True,
                         registry=registry)(warn_references)  # fmt: skip
    kopf.on.mutate("v1", "pods", id="inject-sidecar", operations=["CREATE"],
                   ignore_failures=True, registry=registry)(inject)  # fmt: skip
