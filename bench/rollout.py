"""Benchmark: a Plan edit rolling out to every subscriber, in chunks, as the ledger commits it.

Prints one JSON object per mode:

- ``dev``: ``allotment dev``'s path without the apiserver: the same ``apply_resource`` on a
  SQLite ledger. The subscribers are seeded through ``apply_resource`` too, many per
  transaction; then the Plan edit (``pro``: ``ai_requests`` issueAfterReset 1000 -> 2000) is
  applied again and again, one transaction each, until its outcome is no longer
  ``RollingOut``, as dev's loop and the operator do.
- ``cluster``: a real etcd + kube-apiserver (``tests/harness/cluster.py``) and ``allotment
  operator`` on a SQLite ledger. The Subscriptions are created with kubectl, 500 per request,
  and reconciled by the operator; then the Plan is patched and the bench polls until the Plan's
  ``status.rollout`` is finished (the ledger is done) and every Subscription's
  ``status.plan.generation`` is 2 (their status, paced by the operator, is done). The
  apiserver's own request counters give the writes the operator made.

Every result carries ``loadavg`` (the box is shared; numbers are noisy).

Usage::

    python -m bench.rollout                                   # dev 100,000 and cluster 10,000
    python -m bench.rollout --mode dev --subscriptions 100000
    python -m bench.rollout --mode cluster --subscriptions 10000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from allotment.ledger import apply as apply_module
from allotment.ledger.apply import ROLLOUT_CHUNK, apply_resource
from allotment.ledger.core.resources import parse_resource
from allotment.ledger.core.timeutil import parse_rfc3339
from allotment.ledger.storage import migrate
from allotment.ledger.storage.engine import Ledger, open_ledger

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "08-plans"
NS = "bench"
T0 = datetime(2026, 11, 1, tzinfo=UTC)
EDIT_AT = T0 + timedelta(days=3)
SEED_BATCH = 2000  # subscriptions per seeding transaction (dev)
CREATE_BATCH = 500  # Subscriptions per kubectl create (cluster)
STATUS_TIMEOUT = 1800.0  # seconds to wait for every Subscription's status after the ledger


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def catalogue(namespace: str) -> list[dict[str, Any]]:
    """Return example 08's meter, features and the ``pro`` plan, in ``namespace``."""
    found = []
    for name in ("catalogue.yaml", "plans.yaml"):
        for body in yaml.safe_load_all((EXAMPLE / name).read_text()):
            if body["kind"] in ("Meter", "Feature") or body["metadata"]["name"] == "pro":
                body["metadata"]["namespace"] = namespace
                found.append(body)
    return found


def subscription(i: int, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "allotment.dev/v1alpha1",
        "kind": "Subscription",
        "metadata": {"name": f"sub-{i:06d}", "namespace": namespace},
        "spec": {"subject": f"customer-{i:06d}", "planKey": "pro"},
    }


def raised(plan: dict[str, Any]) -> dict[str, Any]:
    features = [dict(f) for f in plan["spec"]["features"]]
    features[0]["issueAfterReset"] = 2000
    return {**plan, "spec": {**plan["spec"], "features": features}}


# --- dev ---------------------------------------------------------------------------------------


def stamped(body: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    meta = {
        **body["metadata"],
        "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, body["metadata"]["name"])),
        "generation": generation,
        "creationTimestamp": T0.isoformat(),
    }
    return {**body, "metadata": meta}


def bench_dev(count: int, url: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="issue9-rollout-") as scratch:
        db = url or f"sqlite:///{Path(scratch) / 'ledger.db'}"
        migrate.upgrade(db)
        ledger = open_ledger(db)
        try:
            return _bench_dev(ledger, count, db)
        finally:
            ledger.dispose()


def _apply(ledger: Ledger, bodies: list[dict[str, Any]], now: datetime) -> list[str]:
    with ledger.write() as connection:
        return [apply_resource(connection, parse_resource(b), now).action for b in bodies]


def _seed(ledger: Ledger, bodies: list[dict[str, Any]]) -> list[str]:
    """Record Subscriptions as ``apply_resource`` does, many per transaction, without building
    each one's status (what a rollout chunk does for its subscribers)."""
    with ledger.write() as connection:
        plans = apply_module._load_plans(connection, NS)
        features = apply_module._load_features(connection, NS)
        return [
            apply_module._apply(
                connection,
                parse_resource(body),
                T0,
                with_status=False,
                plans=plans,
                features=features,
            ).action
            for body in bodies
        ]


def _bench_dev(ledger: Ledger, count: int, db: str) -> dict[str, Any]:
    objects = [stamped(b) for b in catalogue(NS)]
    plan = next(b for b in objects if b["kind"] == "Plan")
    _apply(ledger, objects, T0)
    began = time.perf_counter()
    for start in range(0, count, SEED_BATCH):
        batch = [stamped(subscription(i, NS)) for i in range(start, min(count, start + SEED_BATCH))]
        actions = _seed(ledger, batch)
        if set(actions) != {"Record"}:
            raise RuntimeError(f"seeding answered {sorted(set(actions))}")
    seeded = time.perf_counter() - began
    edit = stamped(raised(plan), generation=2)
    chunks: list[float] = []
    began = time.perf_counter()
    now = EDIT_AT
    while True:
        tick = time.perf_counter()
        with ledger.write() as connection:
            outcome = apply_resource(connection, parse_resource(edit), now)
        chunks.append(time.perf_counter() - tick)
        if outcome.reason != "RollingOut":
            break
        now += timedelta(seconds=1)
    took = time.perf_counter() - began
    rollout = outcome.status.get("rollout", {})
    return {
        "mode": "dev",
        "database": db.split(":", 1)[0],
        "subscriptions": count,
        "chunk": ROLLOUT_CHUNK,
        "seed_seconds": round(seeded, 1),
        "seed_ms_per_subscription": round(1000 * seeded / count, 2),
        "rollout_seconds": round(took, 1),
        "rollout_ms_per_subscription": round(1000 * took / count, 2),
        "transactions": len(chunks),
        "longest_transaction_seconds": round(max(chunks), 2),
        "rollout_status": rollout,
        "outcome": outcome.action,
        "loadavg": loadavg(),
    }


# --- cluster -----------------------------------------------------------------------------------


def _kubectl(plane: Any, *args: str, input: str | None = None) -> str:
    done = plane.kubectl(*args, input=input)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args[:3])}: {done.stderr[-2000:]}")
    return str(done.stdout)


def _jsonpath(plane: Any, plural: str, path: str) -> list[str]:
    out = _kubectl(
        plane, "get", plural, "-n", NS, "-o", f"jsonpath={{range .items[*]}}{path}{{'\\n'}}{{end}}"
    )
    return out.splitlines()


def _poll(what: str, check: Any, timeout: float, every: float) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if check():
            return time.monotonic() - began
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


def _requests(plane: Any) -> dict[str, int]:
    """Return the apiserver's request counts by verb and resource for allotment.dev."""
    text = _kubectl(plane, "get", "--raw", "/metrics")
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{") or 'group="allotment.dev"' not in line:
            continue
        verb = re.search(r'verb="([A-Z]+)"', line)
        resource = re.search(r'resource="([a-z]+)"', line)
        sub = re.search(r'subresource="([a-z]*)"', line)
        if verb and resource:
            key = f"{verb.group(1)} {resource.group(1)}{'/' + sub.group(1) if sub and sub.group(1) else ''}"
            counts[key] = counts.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


def _moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] != before.get(k, 0)}


def bench_cluster(count: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.harness.cluster import ControlPlane
    from tests.operator.running import install_crds, running_operator

    with tempfile.TemporaryDirectory(prefix="issue9-rollout-cluster-") as scratch:
        folder = Path(scratch)
        db = f"sqlite:///{folder / 'ledger.db'}"
        migrate.upgrade(db)
        with ControlPlane.start(folder / "plane", tie_to_parent=True) as plane:
            install_crds(plane)
            _kubectl(plane, "create", "namespace", NS)
            with running_operator(db, plane.kubeconfig, folder, [NS]) as operator:
                try:
                    return _bench_cluster(plane, count)
                except Exception:
                    print(operator.tail(80), file=sys.stderr)
                    raise


def _bench_cluster(plane: Any, count: int) -> dict[str, Any]:
    objects = catalogue(NS)
    plan = next(b for b in objects if b["kind"] == "Plan")
    _kubectl(
        plane,
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
    )
    _poll(
        "the plan to be Ready",
        lambda: (
            _jsonpath(plane, "plans", '{.status.conditions[?(@.type=="Ready")].status}') == ["True"]
        ),
        120,
        1,
    )
    began = time.monotonic()
    for start in range(0, count, CREATE_BATCH):
        items = [subscription(i, NS) for i in range(start, min(count, start + CREATE_BATCH))]
        _kubectl(
            plane,
            "create",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
        )
    created = time.monotonic() - began

    def all_ready() -> bool:
        found = _jsonpath(plane, "subscriptions", '{.status.conditions[?(@.type=="Ready")].status}')
        return len(found) == count and all(s == "True" for s in found)

    reconciled = created + _poll("every Subscription to be Ready", all_ready, 7200, 5)
    before = _requests(plane)
    began = time.monotonic()
    _kubectl(plane, "apply", "-f", "-", input=json.dumps(raised(plan)))

    def rolled_out() -> bool:
        text = _kubectl(plane, "get", "plan", "pro", "-n", NS, "-o", "json")
        rollout = json.loads(text).get("status", {}).get("rollout", {})
        finished, started = rollout.get("finishedAt"), rollout.get("startedAt")
        return rollout.get("observedGeneration") == 2 and bool(finished) and finished >= started

    ledger_done = _poll("the Plan's rollout to finish", rolled_out, 7200, 1)

    followed = [0]

    def statuses_done() -> bool:
        found = _jsonpath(plane, "subscriptions", "{.status.plan.generation}")
        followed[0] = sum(1 for g in found if g == "2")
        return followed[0] == count

    try:
        status_done: float | None = ledger_done + _poll(
            "every Subscription's status.plan", statuses_done, STATUS_TIMEOUT, 5
        )
    except RuntimeError:
        status_done = None  # reported with how many got there
    current = json.loads(_kubectl(plane, "get", "plan", "pro", "-n", NS, "-o", "json"))
    plan_status = current["status"]
    rollout = plan_status.get("rollout") or {}
    spent = parse_rfc3339(rollout["finishedAt"]) - parse_rfc3339(rollout["startedAt"])
    return {
        "mode": "cluster",
        "database": "sqlite",
        "subscriptions": count,
        "chunk": ROLLOUT_CHUNK,
        "create_seconds": round(created, 1),
        "create_and_reconcile_seconds": round(reconciled, 1),
        "rollout_ledger_seconds": round(ledger_done, 1),
        "rollout_ledger_seconds_by_status": round(spent.total_seconds(), 1),
        "rollout_statuses_seconds": None if status_done is None else round(status_done, 1),
        "statuses_following_generation_2": followed[0],
        "rollout_status": plan_status.get("rollout"),
        "apiserver_requests_during_rollout": _moved(before, _requests(plane)),
        "loadavg": loadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("dev", "cluster", "both"), default="both")
    parser.add_argument("--subscriptions", type=int, help="default: 100000 (dev), 10000 (cluster)")
    parser.add_argument("--db", help="dev: a ledger URL (must be empty); default a temp SQLite")
    args = parser.parse_args()
    if args.mode in ("dev", "both"):
        print(json.dumps(bench_dev(args.subscriptions or 100_000, args.db)), flush=True)
    if args.mode in ("cluster", "both"):
        print(json.dumps(bench_cluster(args.subscriptions or 10_000)), flush=True)


if __name__ == "__main__":
    main()
