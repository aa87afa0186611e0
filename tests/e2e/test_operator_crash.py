"""The operator killed with SIGKILL mid-stream leaves the ledger a clean run leaves.

Role: the crash trial of issue 5 on the real control plane with the real operator process. A
deterministic set of 200 writes (meters, features, customers, entitlements and grants of every
type; edits of mutable fields; deletions under ``deletionPolicy: Apply``) is applied twice, one
API call at a time, each run into its own namespace and SQLite ledger: once with the operator
left alone, once with it killed (SIGKILL, no cleanup) at five points a seeded RNG picks and
restarted each time. A kill comes either right after the k-th write returns or once the ledger
has logged it (the window where the ledger committed but Kopf has not yet patched status or its
progress annotations). When everything is Ready and the deleted objects are gone, the two
ledgers' canonical dumps (``tests.operator.ledger_dump``: ids, uids and Kubernetes-derived
instants named by what they stand for) must be equal: no duplicate grant, version, log row,
seen instant or feed entry, and every instant the one D2 says.

Also here: deleting and re-creating a Grant leaves one ledger grant, and deleting the objects of
a Terminating namespace voids and ends nothing (D1, D3).

Must not: assert timings (the trial prints its durations as JSON), or touch other namespaces.
"""

from __future__ import annotations

import functools
import json
import random
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from kubernetes import client, config

from allotment.ledger.storage import migrate
from tests.harness.cluster import ControlPlane
from tests.operator.ledger_dump import Facts, canonical_dump, differences, read_tables
from tests.operator.running import (
    PLURALS,
    OperatorProcess,
    install_crds,
    operator_kubeconfig,
    ready,
    running_operator,
    start_operator,
    wait_until,
)

GROUP, VERSION = "allotment.dev", "v1alpha1"
KINDS = ("Meter", "Feature", "Customer", "Entitlement", "Grant")
SEED = 20261124
WRITES = 200
KILLS = 5
ANCHOR = "2026-01-01T00:00:00Z"  # literal anchors keep edits' next period boundary run-independent
CONVERGE_TIMEOUT = 150.0


@dataclass(frozen=True)
class Write:
    """One API call of the trial: create a whole object, merge-patch its spec, or delete it."""

    verb: str  # create | edit | delete
    kind: str
    name: str
    spec: dict[str, Any] = field(default_factory=dict)


def trial_writes(seed: int = SEED, count: int = WRITES) -> list[Write]:
    """Return the trial's writes: references always before what names them, then edits/deletes.

    Edits and deletions target objects created at least 25 writes earlier; every deletion is of
    an object with ``deletionPolicy: Apply`` (its finalizer guarantees the operator sees it), and
    ``play`` lets everything before a deletion converge first.
    """
    rng = random.Random(seed)
    creates: list[Write] = [
        Write("create", "Meter", "api-requests", {"eventType": "request", "aggregation": "COUNT"}),
        Write("create", "Meter", "tokens-total",
              {"eventType": "prompt", "aggregation": "SUM", "valueProperty": "$.tokens"}),
        Write("create", "Feature", "api-calls", {"meterSlug": "api_requests", "name": "API calls"}),
        Write("create", "Feature", "gpt-tokens", {"meterSlug": "tokens_total"}),
        Write("create", "Feature", "single-sign-on", {"name": "SSO"}),
        Write("create", "Feature", "integrations", {}),
    ]  # fmt: skip
    metered = ("api_calls", "gpt_tokens")
    edits_budget, deletes_budget = 14, 8
    customer = 0
    while len(creates) < count - edits_budget - deletes_budget:
        customer += 1
        name = f"c{customer:03d}"
        creates.append(Write("create", "Customer", name,
                             {"name": f"Customer {customer}", "subjectKeys": [f"{name}-svc"]}))  # fmt: skip
        for feature in rng.sample(metered, rng.randint(1, 2)):
            ent = f"{name}-{feature.replace('_', '-')}"
            spec: dict[str, Any] = {
                "customer": name,
                "featureKey": feature,
                "type": "metered",
                "usagePeriod": {"interval": rng.choice(["MONTH", "YEAR"]), "anchor": ANCHOR},
            }
            if rng.random() < 0.5:
                spec["issueAfterReset"] = rng.choice([100, 1000, 5000])
            if rng.random() < 0.3:
                spec["deletionPolicy"] = "Apply"
            creates.append(Write("create", "Entitlement", ent, spec))
            for g in range(rng.randint(0, 2)):
                grant: dict[str, Any] = {"amount": rng.randint(1, 50) * 10,
                                         "priority": rng.randint(0, 3)}  # fmt: skip
                if rng.random() < 0.5:
                    grant["entitlement"] = ent
                else:
                    grant |= {"customer": name, "featureKey": feature}
                if rng.random() < 0.3:
                    grant["expiration"] = {"duration": "MONTH", "count": 2}
                if rng.random() < 0.3:
                    grant["recurrence"] = {"interval": "MONTH"}
                    grant["maxRolloverAmount"] = 0
                if rng.random() < 0.4:
                    grant["deletionPolicy"] = "Apply"
                creates.append(Write("create", "Grant", f"{ent}-g{g}", grant))
        if rng.random() < 0.5:
            creates.append(Write("create", "Entitlement", f"{name}-sso",
                                 {"customer": name, "featureKey": "single_sign_on",
                                  "type": "boolean"}))  # fmt: skip
        elif rng.random() < 0.5:
            creates.append(Write("create", "Entitlement", f"{name}-integrations",
                                 {"customer": name, "featureKey": "integrations",
                                  "type": "static", "config": {"tier": customer}}))  # fmt: skip
    writes = creates[: count - edits_budget - deletes_budget]
    return _with_edits_and_deletes(rng, writes, edits_budget, deletes_budget)


def _edit_of(rng: random.Random, target: Write) -> dict[str, Any] | None:
    """Return a merge patch of a mutable field of ``target``'s spec, or None."""
    if target.kind == "Customer":
        return {"name": f"{target.spec['name']} (renamed)"}
    if target.kind == "Feature":
        return {"name": f"{target.name} v2"}
    if target.kind == "Entitlement" and target.spec.get("type") == "metered":
        return rng.choice([{"isSoftLimit": True}, {"issueAfterReset": 2500},
                           {"preserveOverageAtReset": True}])  # fmt: skip
    if target.kind == "Grant" and target.spec.get("deletionPolicy") != "Apply":
        return {"voidAt": "2027-06-01T00:00:00Z"}
    return None


def _with_edits_and_deletes(
    rng: random.Random, writes: list[Write], edits: int, deletes: int
) -> list[Write]:
    result = list(writes)
    touched: set[str] = set()
    early = writes[6 : len(writes) - 25]  # room for 25 writes between creation and change
    deletable = [w for w in early if w.spec.get("deletionPolicy") == "Apply"]
    for target in rng.sample(deletable, deletes):
        touched.add(target.name)
        at = rng.randint(writes.index(target) + 25, len(result))
        result.insert(at, Write("delete", target.kind, target.name))
    editable = [w for w in early if w.name not in touched and _edit_of(rng, w) is not None]
    for target in rng.sample(editable, edits):
        patch = _edit_of(rng, target)
        assert patch is not None
        at = rng.randint(result.index(target) + 25, len(result))
        result.insert(at, Write("edit", target.kind, target.name, patch))
    return result


# --- running one series of writes --------------------------------------------------------------


@dataclass
class Run:
    """One run of the trial: its namespace, ledger, operator and what the API server said."""

    plane: ControlPlane
    api: Any
    db_url: str
    kubeconfig: Path
    folder: Path
    namespace: str
    facts: Facts
    operator: OperatorProcess | None = None
    restarts: int = 0

    def start(self) -> None:
        self.operator = start_operator(self.db_url, self.kubeconfig, self.folder, [self.namespace])

    def crash(self) -> None:
        """SIGKILL the operator (no cleanup, no finalizer removal) and start a new one."""
        assert self.operator is not None
        self.operator.kill()
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()

    def get(self, write: Write) -> dict[str, Any]:
        obj: dict[str, Any] = self.api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURALS[write.kind], write.name
        )
        return obj

    def do(self, write: Write) -> dict[str, Any]:
        """Make the API call; return the object as the API server answered."""
        plural = PLURALS[write.kind]
        if write.verb == "create":
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": write.kind,
                    "metadata": {"name": write.name}, "spec": write.spec}  # fmt: skip
            created: dict[str, Any] = self.api.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, plural, body
            )
            self.facts.record_created(write.kind, write.name, created)
            return created
        if write.verb == "edit":
            # The ledger records generation 1 first, as it would with a person editing later;
            # otherwise a fast run may see the object first at generation 2 (a shorter history).
            wait_until(lambda: ready(self.get(write)), timeout=CONVERGE_TIMEOUT,
                       what=f"{write.kind} {write.name} to be Ready before its edit")  # fmt: skip
            edited: dict[str, Any] = self.api.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, plural, write.name, {"spec": write.spec},
                _content_type="application/merge-patch+json",
            )  # fmt: skip
            return edited
        deleting: dict[str, Any] = self.api.delete_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, write.name
        )
        self.facts.record_deleted(write.kind, write.name, deleting)
        return deleting

    def logged(self, write: Write, obj: dict[str, Any]) -> bool:
        """Tell whether the ledger's log holds this write (a row for its uid and generation)."""
        action = "deleted" if write.verb == "delete" else None
        engine = sa.create_engine(self.db_url)
        try:
            with engine.connect() as connection:
                rows = connection.execute(
                    sa.text(
                        "SELECT l.action FROM reconcile_log l JOIN resources r"
                        " ON r.id = l.resource_id WHERE r.namespace = :ns AND r.kind = :kind"
                        " AND r.name = :name AND l.uid = :uid AND l.generation = :generation"
                    ),
                    {"ns": self.namespace, "kind": write.kind, "name": write.name,
                     "uid": obj["metadata"]["uid"],
                     "generation": obj["metadata"]["generation"]},
                ).all()  # fmt: skip
        finally:
            engine.dispose()
        return any(action is None or row.action == action for row in rows)

    def converged(self, writes: list[Write]) -> bool:
        """Tell whether every live object is Ready at its generation and deleted ones are gone."""
        gone = {(w.kind, w.name) for w in writes if w.verb == "delete"}
        expected = {(w.kind, w.name) for w in writes if w.verb == "create"} - gone
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for kind in KINDS:
            plural = PLURALS[kind]
            listed = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, plural)
            for obj in listed["items"]:
                found[(kind, obj["metadata"]["name"])] = obj
        return set(found) == expected and all(ready(obj) for obj in found.values())


def kill_points(writes: list[Write], seed: int = SEED) -> dict[int, str]:
    """Return the seeded kill points: write index -> when (``returned`` or ``logged``).

    One lands right after an edit, one after a deletion (the finalizer still held), the rest
    anywhere.
    """
    rng = random.Random(seed + 1)
    by_verb = {verb: [i for i, w in enumerate(writes) if w.verb == verb and i >= 10]
               for verb in ("create", "edit", "delete")}  # fmt: skip
    points = {rng.choice(by_verb["edit"]), rng.choice(by_verb["delete"])}
    while len(points) < KILLS:
        points.add(rng.choice(by_verb["create"] + by_verb["edit"] + by_verb["delete"]))
    return {k: rng.choice(["returned", "logged"]) for k in sorted(points)}


def barrier(run: Run, writes: list[Write]) -> None:
    """Wait until ``writes`` converged: live objects Ready, deleted ones gone."""
    try:
        wait_until(lambda: run.converged(writes), timeout=CONVERGE_TIMEOUT,
                   what=f"{run.namespace} to converge")  # fmt: skip
    except AssertionError:
        tail = run.operator.tail(40) if run.operator else ""
        pytest.fail(f"{run.namespace} did not converge; operator log:\n{tail}")


def play(run: Run, writes: list[Write], kills: dict[int, str]) -> dict[str, float]:
    """Apply ``writes`` one call at a time, crashing the operator at ``kills``; wait converged."""
    began = time.monotonic()
    run.start()
    for index, write in enumerate(writes):
        if write.verb == "delete":
            # Everything so far Ready first: the object holds our finalizer (the operator must
            # see its deletion), and no Grant still waits for the entitlement about to end.
            barrier(run, writes[:index])
        obj = run.do(write)
        when = kills.get(index)
        if when == "logged":
            wait_until(functools.partial(run.logged, write, obj), timeout=CONVERGE_TIMEOUT,
                       what=f"the ledger to log write {index} ({write.verb} {write.name})")  # fmt: skip
        if when is not None:
            run.crash()
    applied = time.monotonic() - began
    barrier(run, writes)
    return {
        "applied_seconds": round(applied, 1),
        "total_seconds": round(time.monotonic() - began, 1),
    }


@pytest.fixture(scope="module")
def trial_env(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Path, Any]]:
    folder = tmp_path_factory.mktemp("crash-trial")
    install_crds(control_plane)
    kubeconfig = operator_kubeconfig(control_plane, folder)
    api_client = config.new_client_from_config(config_file=str(control_plane.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        yield folder, kubeconfig, client.CustomObjectsApi(api_client)
    finally:
        api_client.close()


def new_run(plane: ControlPlane, env: tuple[Path, Path, Any], label: str) -> Run:
    folder, kubeconfig, api = env
    namespace = f"crash-{label}-{secrets.token_hex(3)}"
    created = plane.kubectl("create", "namespace", namespace)
    assert created.returncode == 0, created.stderr
    db_url = f"sqlite:///{folder / f'{namespace}.db'}"
    migrate.upgrade(db_url)
    return Run(plane, api, db_url, kubeconfig, folder, namespace, Facts(namespace))


def test_the_trial_writes_are_deterministic_and_varied() -> None:
    writes = trial_writes()
    assert writes == trial_writes()
    assert len(writes) == WRITES
    verbs = {
        verb: sum(1 for w in writes if w.verb == verb) for verb in ("create", "edit", "delete")
    }
    assert verbs == {"create": 178, "edit": 14, "delete": 8}
    assert {w.kind for w in writes} == set(KINDS)
    kills = kill_points(writes)
    assert len(kills) == KILLS
    assert {writes[i].verb for i in kills} == {"create", "edit", "delete"}


def test_a_ledger_after_five_kills_equals_a_clean_runs_ledger(
    control_plane: ControlPlane, trial_env: tuple[Path, Path, Any]
) -> None:
    writes = trial_writes()
    kills = kill_points(writes)
    clean, crashed = (
        new_run(control_plane, trial_env, "clean"),
        new_run(control_plane, trial_env, "kill"),
    )
    try:
        clean_times = play(clean, writes, {})
        crash_times = play(crashed, writes, kills)
    finally:
        clean.stop()
        crashed.stop()
    print(json.dumps({"crash_trial": {"writes": len(writes), "kills": kills,
                                      "clean": clean_times, "crashed": crash_times}}))  # fmt: skip
    assert crashed.restarts == KILLS

    expected = canonical_dump(clean.db_url, clean.facts)
    found = canonical_dump(crashed.db_url, crashed.facts)
    diff = differences(expected, found)
    assert not diff, "the crashed run's ledger differs:\n" + "\n".join(diff[:40])

    # The dump is not vacuous: every created object has one identity, grants are voided only by
    # their deletion or voidAt, and no instant was left unnamed where a Kubernetes fact applies.
    tables = read_tables(crashed.db_url)
    created = {(w.kind, w.name) for w in writes if w.verb == "create"}
    identities = {(r["kind"], r["name"]) for r in tables["resources"]}
    assert identities == created
    assert len(expected["reconcile_log"]) > len(created)
    assert not any("<unknown" in text for rows in found.values() for text, _ in rows.values())


# --- deletion cases of D1 and D3 ---------------------------------------------------------------


def _apply_all(plane: ControlPlane, namespace: str, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        done = plane.kubectl("apply", "-n", namespace, "-f", "-",
                             input=json.dumps({"apiVersion": f"{GROUP}/{VERSION}", **obj}))  # fmt: skip
        assert done.returncode == 0, done.stderr


def _wait_ready(plane: ControlPlane, namespace: str, count: int, operator: OperatorProcess) -> None:
    def all_ready() -> bool:
        plurals = ",".join(PLURALS[kind] for kind in KINDS)
        out = plane.kubectl("get", plurals, "-n", namespace, "-o", "json")
        items = json.loads(out.stdout)["items"] if out.returncode == 0 else []
        return len(items) == count and all(ready(o) for o in items)

    try:
        wait_until(all_ready, timeout=CONVERGE_TIMEOUT, what=f"{namespace} to be Ready")
    except AssertionError:
        pytest.fail(f"{namespace} not Ready; operator log:\n{operator.tail(30)}")


def _documents(db_url: str, namespace: str, kind: str) -> list[dict[str, Any]]:
    """Return the current catalogue document of every ``kind`` record of ``namespace``."""
    tables = read_tables(db_url)
    latest: dict[str, tuple[int, str]] = {}
    for row in tables["catalogue_versions"]:
        if row["namespace"] != namespace or row["kind"] != kind:
            continue
        if row["resource_id"] not in latest or row["version"] > latest[row["resource_id"]][0]:
            latest[row["resource_id"]] = (row["version"], row["document"])
    return [json.loads(document) for _, document in latest.values()]


CATALOGUE = [
    {"kind": "Meter", "metadata": {"name": "seat-events"},
     "spec": {"eventType": "seat", "aggregation": "COUNT"}},
    {"kind": "Feature", "metadata": {"name": "seats"}, "spec": {"meterSlug": "seat_events"}},
    {"kind": "Entitlement", "metadata": {"name": "acme-seats"},
     "spec": {"subject": "acme", "featureKey": "seats", "type": "metered",
              "usagePeriod": {"interval": "MONTH"}, "deletionPolicy": "Apply"}},
]  # fmt: skip


@pytest.fixture
def operator_in(
    control_plane: ControlPlane,
    trial_env: tuple[Path, Path, Any],
    namespace: str,
) -> Iterator[tuple[OperatorProcess, str]]:
    folder, kubeconfig, _ = trial_env
    db_url = f"sqlite:///{folder / f'{namespace}.db'}"
    migrate.upgrade(db_url)
    with running_operator(db_url, kubeconfig, folder, [namespace]) as operator:
        yield operator, db_url


def test_a_grant_deleted_and_re_created_with_the_same_spec_is_one_ledger_grant(
    control_plane: ControlPlane, namespace: str, operator_in: tuple[OperatorProcess, str]
) -> None:
    operator, db_url = operator_in
    grant = {"kind": "Grant", "metadata": {"name": "acme-seats-topup"},
             "spec": {"entitlement": "acme-seats", "amount": 25, "priority": 1}}  # fmt: skip
    _apply_all(control_plane, namespace, [*CATALOGUE, grant])
    _wait_ready(control_plane, namespace, 4, operator)
    first = json.loads(control_plane.kubectl("get", "grant", "acme-seats-topup", "-n", namespace,
                                             "-o", "json").stdout)  # fmt: skip

    deleted = control_plane.kubectl("delete", "grant", "acme-seats-topup", "-n", namespace,
                                    "--timeout=60s")  # fmt: skip
    assert deleted.returncode == 0, deleted.stderr
    _apply_all(control_plane, namespace, [grant])
    _wait_ready(control_plane, namespace, 4, operator)
    again = json.loads(control_plane.kubectl("get", "grant", "acme-seats-topup", "-n", namespace,
                                             "-o", "json").stdout)  # fmt: skip

    assert again["metadata"]["uid"] != first["metadata"]["uid"]
    assert again["status"]["id"] == first["status"]["id"]  # re-adopted (D1)
    grants = _documents(db_url, namespace, "grant")
    assert [(g["id"], g["amount"], g["voidAt"]) for g in grants] == [
        (first["status"]["id"], "25", None)
    ]


def test_deleting_the_objects_of_a_terminating_namespace_voids_and_ends_nothing(
    control_plane: ControlPlane, namespace: str, operator_in: tuple[OperatorProcess, str]
) -> None:
    operator, db_url = operator_in
    grant = {"kind": "Grant", "metadata": {"name": "acme-seats-pack"},
             "spec": {"entitlement": "acme-seats", "amount": 10, "deletionPolicy": "Apply"}}  # fmt: skip
    _apply_all(control_plane, namespace, [*CATALOGUE, grant])
    _wait_ready(control_plane, namespace, 4, operator)

    # kube-apiserver alone runs no namespace controller: the namespace stays Terminating and
    # its objects stay until deleted one by one, which is what the namespace controller does.
    terminating = control_plane.kubectl("delete", "namespace", namespace, "--wait=false")
    assert terminating.returncode == 0, terminating.stderr
    for kind, name in (("grant", "acme-seats-pack"), ("entitlement", "acme-seats")):
        gone = control_plane.kubectl("delete", kind, name, "-n", namespace, "--timeout=60s")
        assert gone.returncode == 0, f"{kind} {name} was not let go: {gone.stderr}"

    # The namespace refuses new Events, so the ledger's log is where the orphaning shows.
    def orphan_markers() -> set[str]:
        tables = read_tables(db_url)
        names = {r["id"]: r["name"] for r in tables["resources"] if r["namespace"] == namespace}
        return {names[r["resource_id"]] for r in tables["reconcile_log"]
                if r["action"] == "deleted" and r["resource_id"] in names}  # fmt: skip

    wait_until(lambda: orphan_markers() == {"acme-seats-pack", "acme-seats"}, timeout=30,
               what="the deletions to be logged as orphaned")  # fmt: skip
    (pack,) = _documents(db_url, namespace, "grant")
    (seats,) = _documents(db_url, namespace, "entitlement")
    assert pack["voidAt"] is None
    assert seats["activeTo"] is None
