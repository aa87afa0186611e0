"""``allotment plan``: what applying the desired YAML would do to the ledger, before it is applied.

Role: the command line of the plan. It builds a scratch SQLite ledger holding the current state
(from ``--current DIR`` the way ``allotment dev`` builds one, or copied from a live ledger with
``--db URL`` in a read-only transaction), applies ``--desired DIR`` to it with the same admission
and reconciliation the cluster runs, and prints the resources created, changed and deleted (and
what their deletionPolicy does), per customer and feature the grant changes and the value before
and after at ``--now``, orphans, refusals worded as the cluster words them, and a summary line.
Exit 0 when the plan is computed, 1 when anything would be refused, 2 for usage errors.

It must never write to the ledger given with ``--db`` (it only reads it, in a read-only
transaction, and works on a copy) and never talks to a cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from allotment.cli.dev import allotment_key
from allotment.cli.manifests import Document, manifest_files, read_documents
from allotment.cli.plan_build import FixedClock, PlanLoop, build_plan
from allotment.cli.plan_cluster import ClusterReadError, export_cluster
from allotment.cli.plan_model import (
    VALUE_FIELDS,
    EntitlementPlan,
    Plan,
    PlanRollout,
    PlanUsageError,
    ResourcePlan,
)
from allotment.ledger.core.timeutil import format_rfc3339, parse_rfc3339
from allotment.ledger.storage import migrate
from allotment.ledger.storage.engine import SchemaMismatchError, open_ledger

__all__ = ["compute_plan", "register", "render_json", "render_text", "run"]

_NOT_RECORDED = ("Wait", "Conflict", "Refuse", "Noop")
NO_USAGE = "none (--current DIR has no usage; values assume zero usage)"


def compute_plan(
    desired: list[Path],
    now: datetime,
    *,
    current: list[Path] | None = None,
    db: str | None = None,
) -> Plan:
    """Return the plan of applying ``desired`` over ``current`` YAML or the ledger at ``db``."""
    for path in [*desired, *(current or [])]:
        if not path.exists():
            raise PlanUsageError(f"no such file or directory: {path}")
    with tempfile.TemporaryDirectory(prefix="allotment-plan-") as scratch:
        url = f"sqlite:///{Path(scratch) / 'plan.db'}"
        migrate.upgrade(url)
        ledger = open_ledger(url)
        try:
            loop = PlanLoop([], ledger, FixedClock(now), sys.stderr)
            notes: list[str] = []
            if db is not None:
                from allotment.cli.plan_db import stage_from_ledger

                usage = stage_from_ledger(db, ledger, loop, desired, current, now, notes)
            else:
                loop.paths = list(current or [])
                loop.sync()
                notes.extend(_current_problems(loop))
                loop.not_recorded.update(
                    key
                    for key, tracked in loop.tracked.items()
                    if tracked.outcome is None or tracked.outcome.action in _NOT_RECORDED
                )
                usage = NO_USAGE
            return build_plan(loop, desired, now, usage=usage, notes=notes)
        finally:
            ledger.dispose()


def _current_problems(loop: PlanLoop) -> Iterator[str]:
    """Say what the current set itself cannot record (the cluster refused it already)."""
    for lines in loop.admission.values():
        for line in lines:
            if line.startswith("Refused "):
                yield f"in the current set: {line.removeprefix('Refused ')}"
    for line in loop.other:
        if line.startswith(("Refused", "Skipped")):
            yield f"in the current set: {line.removeprefix('Refused ')}"
    for key, tracked in sorted(loop.tracked.items()):
        outcome = tracked.outcome
        if outcome is not None and not outcome.ready:
            kind, namespace, name = key
            yield (
                f"in the current set: {kind} {namespace}/{name} is not recorded: "
                f"{outcome.reason}: {outcome.message}"
            )


# --- text ------------------------------------------------------------------------------------


def _amount(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value == value.to_integral_value() else str(value)
    if value is None:
        return "-"
    return json.dumps(value) if not isinstance(value, str) else value


def _resource_lines(resource: ResourcePlan) -> Iterator[str]:
    verb = {"create": "create", "change": "change", "delete": "delete", "unchanged": "no change"}
    head = f"{resource.title}: {verb[resource.change]}"
    if resource.refused:
        head += " REFUSED"
    elif resource.waiting is not None:
        head += " (would wait)"
    elif resource.deletion is not None:
        head += f": {resource.deletion.description}"
    yield head
    for change in resource.fields:
        line = f"    {change.path}: {_amount(change.before)} -> {_amount(change.after)}"
        if change.note:
            line += f" ({change.note})"
        yield line
    for refusal in resource.refusals:
        yield f"    refused: {refusal}"
    if resource.waiting is not None:
        yield f"    waits: {resource.waiting}"
    for warning in resource.warnings:
        yield f"    warning: {warning}"


def _entitlement_lines(plan: EntitlementPlan) -> Iterator[str]:
    state = ""
    if plan.before is None:
        state = " (new)"
    elif plan.after is None:
        state = " (no longer recorded)"
    yield (
        f"{plan.customer} / {plan.feature}: Entitlement {plan.namespace}/{plan.entitlement}{state}"
    )
    for grant in plan.grants:
        sign = "+" if grant.change == "new" else ""
        line = f"    grant {grant.name}: {sign}{_amount(grant.amount)} {grant.description}"
        if grant.balance_before is not None or grant.balance_after is not None:
            line += f"; balance {_amount(grant.balance_before)} -> {_amount(grant.balance_after)}"
        yield line
    for note in plan.notes:
        yield f"    {note}"
    before, after = plan.before or {}, plan.after or {}
    for name in VALUE_FIELDS:
        if name not in before and name not in after:
            continue
        old, new = _amount(before.get(name)), _amount(after.get(name))
        marker = "" if old == new else "   (changes)"
        yield f"    {name:<26} {old:>12} -> {new:<12}{marker}".rstrip()


def _headline(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    """Return ``balance 1000 -> 2000`` (or ``hasAccess``, for a feature without a balance)."""
    old, new = before or {}, after or {}
    names = [n for n in ("balance", "hasAccess") if n in old or n in new]
    shown = [
        f"{name} {_amount(old.get(name))} -> {_amount(new.get(name))}"
        for name in names[:1] + [n for n in names[1:] if old.get(n) != new.get(n)]
    ]
    line = ", ".join(shown) or "- -> -"
    if before != after:
        line += "   (changes)"
    return line


def _rollout_lines(rollout: PlanRollout, now: datetime) -> Iterator[str]:
    yield rollout.summary()
    for value in rollout.values:
        yield (
            f"    Subscription {rollout.namespace}/{value.subscription} / {value.feature} "
            f"(customer {value.customer})"
        )
        yield f"        now {format_rfc3339(now)}:".ljust(50) + _headline(
            value.now_before, value.now_after
        )
        if value.next_at is not None:
            yield f"        next period {format_rfc3339(value.next_at)}:".ljust(50) + _headline(
                value.next_before, value.next_after
            )


def render_text(plan: Plan, out: TextIO) -> None:
    """Print the plan for a reviewer."""
    out.write(f"plan at {format_rfc3339(plan.now)}\n")
    out.write(f"usage: {plan.usage}\n")
    for note in plan.notes:
        out.write(f"note: {note}\n")
    if plan.resources:
        out.write("\nresources:\n")
        for resource in plan.resources:
            for line in _resource_lines(resource):
                out.write(f"  {line}\n")
    orphans = [
        r for r in plan.resources if r.deletion is not None and r.deletion.effect == "orphaned"
    ]
    if orphans:
        out.write("\norphans (deleted objects whose ledger records stay):\n")
        for resource in orphans:
            out.write(f"  {resource.title}\n")
    if plan.entitlements:
        out.write(f"\nentitlement values at {format_rfc3339(plan.now)} (before -> after):\n")
        for entitlement in plan.entitlements:
            for line in _entitlement_lines(entitlement):
                out.write(f"  {line}\n")
    if plan.rollouts:
        out.write(
            f"\nplan rollouts (before -> after, at the rollout instant {format_rfc3339(plan.now)} "
            "and at each subscriber's next period):\n"
        )
        for rollout in plan.rollouts:
            for line in _rollout_lines(rollout, plan.now):
                out.write(f"  {line}\n")
    refusals = [(r.title, line) for r in plan.resources for line in r.refusals]
    if refusals or plan.problems:
        out.write("\nrefused (as the cluster would refuse it):\n")
        for title, line in refusals:
            out.write(f"  {title}: {line}\n")
        for line in plan.problems:
            out.write(f"  {line}\n")
    out.write(f"\n{plan.summary()}\n")


# --- json ------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        return format_rfc3339(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def plan_document(plan: Plan) -> dict[str, Any]:
    """Return the plan as the JSON document ``--format json`` prints."""
    document: dict[str, Any] = _jsonable(
        {
            "now": plan.now,
            "usage": plan.usage,
            "notes": list(plan.notes),
            "resources": [
                {
                    "kind": r.kind,
                    "namespace": r.namespace,
                    "name": r.name,
                    "change": r.change,
                    "result": r.result,
                    "message": r.message,
                    "fields": [
                        {"path": f.path, "before": f.before, "after": f.after, "note": f.note}
                        for f in r.fields
                    ],
                    "deletion": None
                    if r.deletion is None
                    else {
                        "policy": r.deletion.policy,
                        "effect": r.deletion.effect,
                        "at": r.deletion.at,
                        "description": r.deletion.description,
                    },
                    "refusals": list(r.refusals),
                    "waiting": r.waiting,
                    "warnings": list(r.warnings),
                }
                for r in plan.resources
            ],
            "entitlements": [
                {
                    "namespace": e.namespace,
                    "customer": e.customer,
                    "feature": e.feature,
                    "entitlement": e.entitlement,
                    "id": e.id,
                    "before": e.before,
                    "after": e.after,
                    "valueChanged": e.value_changed,
                    "grants": [
                        {
                            "name": g.name,
                            "id": g.id,
                            "change": g.change,
                            "amount": g.amount,
                            "at": g.at,
                            "description": g.description,
                            "balanceBefore": g.balance_before,
                            "balanceAfter": g.balance_after,
                        }
                        for g in e.grants
                    ],
                    "notes": list(e.notes),
                }
                for e in plan.entitlements
            ],
            "rollouts": [
                {
                    "namespace": r.namespace,
                    "plan": r.plan,
                    "key": r.key,
                    "rolloutPolicy": r.policy,
                    "changes": list(r.changes),
                    "subscriptions": r.subscriptions,
                    "summary": r.summary(),
                    "values": [
                        {
                            "subscription": v.subscription,
                            "customer": v.customer,
                            "feature": v.feature,
                            "entitlement": v.entitlement,
                            "id": v.id,
                            "now": {"at": plan.now, "before": v.now_before, "after": v.now_after},
                            "nextPeriod": None
                            if v.next_at is None
                            else {"at": v.next_at, "before": v.next_before, "after": v.next_after},
                        }
                        for v in r.values
                    ],
                }
                for r in plan.rollouts
            ],
            "orphans": [
                {"kind": r.kind, "namespace": r.namespace, "name": r.name}
                for r in plan.resources
                if r.deletion is not None and r.deletion.effect == "orphaned"
            ],
            "refusals": [
                {"kind": r.kind, "namespace": r.namespace, "name": r.name, "message": line}
                for r in plan.resources
                for line in r.refusals
            ]
            + [{"message": line} for line in plan.problems],
            "summary": {
                "create": plan.count("create"),
                "change": plan.count("change"),
                "delete": plan.count("delete"),
                "orphaned": plan.deletions("orphaned"),
                "ended": plan.deletions("ended"),
                "voided": plan.deletions("voided"),
                "unchanged": plan.unchanged,
                "valueChanges": plan.value_changes,
                "refused": plan.refused,
                "line": plan.summary(),
            },
        }
    )
    return document


def render_json(plan: Plan, out: TextIO) -> None:
    """Print the plan as one JSON document."""
    json.dump(plan_document(plan), out, indent=2)
    out.write("\n")


# --- the command -----------------------------------------------------------------------------


def hide_password(url: str) -> str:
    """Return ``url`` with its password masked, for printing."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<an unreadable URL>"


def run(args: argparse.Namespace) -> int:
    """Run ``allotment plan``: 0 when computed, 1 when anything would be refused, 2 on misuse."""
    if args.current is None and args.db is None and not args.cluster:
        print(
            "allotment plan: give --current DIR, --cluster, --db URL, or --db with one of the others",
            file=sys.stderr,
        )
        return 2
    if args.cluster and args.current is not None:
        print("allotment plan: give --current DIR or --cluster, not both", file=sys.stderr)
        return 2
    if args.cluster:
        return _run_from_cluster(args)
    try:
        now = parse_rfc3339(args.now) if args.now else datetime.now(UTC).replace(microsecond=0)
    except ValueError as error:
        print(f"allotment plan: --now: {error}", file=sys.stderr)
        return 2
    try:
        plan = compute_plan(
            [Path(p) for p in args.desired],
            now,
            current=[Path(p) for p in args.current] if args.current else None,
            db=args.db,
        )
    except PlanUsageError as error:
        print(f"allotment plan: {error}", file=sys.stderr)
        return 2
    except SchemaMismatchError as error:
        print(f"allotment plan: {error}", file=sys.stderr)
        return 2
    except SQLAlchemyError as error:
        where = hide_password(args.db) if args.db else "the scratch ledger"
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        print(f"allotment plan: cannot read {where}: {reason}", file=sys.stderr)
        return 2
    if args.format == "json":
        render_json(plan, sys.stdout)
    else:
        render_text(plan, sys.stdout)
    return 1 if plan.refused else 0


def desired_documents(paths: list[Path]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Return every allotment document under ``paths`` by (kind, namespace, name)."""
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for path in manifest_files(paths):
        for item in read_documents(path):
            if not isinstance(item, Document):
                continue
            key = allotment_key(item.body)
            if key is not None:
                found.setdefault(key, item.body)
    return found


def _run_from_cluster(args: argparse.Namespace) -> int:
    """Export the cluster's objects to a scratch directory and plan with it as --current."""
    missing = [p for p in args.desired if not Path(p).exists()]
    if missing:
        print(f"allotment plan: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="allotment-plan-cluster-") as scratch:
        written = desired_documents([Path(p) for p in args.desired])
        namespaces = {key[1] for key in written}
        try:
            count = export_cluster(Path(scratch), written, kubeconfig=args.kubeconfig)
        except ClusterReadError as error:
            print(f"allotment plan: --cluster: {error}", file=sys.stderr)
            return 2
        shown = ", ".join(sorted(namespaces)) or "none"
        print(
            f"current: {count} allotment objects read from the cluster (namespaces {shown})",
            file=sys.stderr,
        )
        return run(argparse.Namespace(**{**vars(args), "cluster": False, "current": [scratch]}))


def register(subparsers: Any) -> None:
    """Add the ``plan`` subcommand."""
    parser = subparsers.add_parser(
        "plan",
        help="show what applying the desired YAML would do to the ledger",
        description=(
            "Show what applying the desired manifests would do: resources created, changed and "
            "deleted (and what deletionPolicy does to the ledger), per customer and feature the "
            "grant changes and the entitlement value before and after, orphans, and refusals "
            "worded as the cluster words them. The current state comes from --current DIR (the "
            "manifests as applied now, for example the base branch, taken as created at --now: "
            "no usage, values assume zero usage) or from --db URL (the live ledger, with its usage). --db is never "
            "written to: plan reads it in one read-only transaction and copies what it needs "
            "(records, reconciliation log, usage buckets of the namespaces concerned) into a "
            "scratch SQLite ledger, then works on the copy. With both, --current says which "
            "objects the change removes. Exit 0 when the plan is computed (even with changes), "
            "1 when anything would be refused, 2 for usage errors."
        ),
    )
    parser.add_argument(
        "--desired",
        required=True,
        action="append",
        metavar="DIR",
        help="the manifests as they would be applied (file or directory; repeatable)",
    )
    parser.add_argument(
        "--current",
        action="append",
        metavar="DIR",
        help="the manifests as applied now (file or directory; repeatable)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help=(
            "read the current objects from the cluster with kubectl (its current context), in "
            "the namespaces the desired manifests name; no usage, as for --current"
        ),
    )
    parser.add_argument(
        "--kubeconfig", metavar="FILE", help="with --cluster: the kubeconfig kubectl uses"
    )
    parser.add_argument(
        "--db",
        metavar="URL",
        help="read the current state and usage from this ledger (read-only; never written)",
    )
    parser.add_argument(
        "--now", metavar="TIME", help="the RFC 3339 instant to plan at (default: wall time)"
    )
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (default text)"
    )
    parser.set_defaults(handler=run)
