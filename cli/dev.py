"""``allotment dev DIR...``: the cluster-free loop over a directory of YAML.

Role: read the allotment resources under the given paths, admit each as the apiserver would
(the CRD schema and its CEL rules, with the previous version for transition rules), reconcile
them into a ledger with the same ``apply_resource`` the operator drives, and serve the sidecar
API on 127.0.0.1:8888 from that ledger. Files are watched: a saved change is applied (an edit is
a new generation acting at the instant it was seen, D2), a removed document is a deletion (its
``deletionPolicy`` decides, D3), and what the cluster would refuse is refused with the same
message while the ledger stays as it was. By default the ledger is a new SQLite file rebuilt
from the YAML at every start; ``--db URL`` keeps one. ``--now TIME`` starts a clock at that
instant which then advances, for reproducible examples.

It must not write to the ledger except through ``apply_resource``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from allotment.cli.admission import admit
from allotment.cli.manifests import (
    CRDVersion,
    Document,
    SyntaxProblem,
    load_crds,
    manifest_files,
    read_documents,
)
from allotment.ledger.apply import Outcome, apply_resource
from allotment.ledger.clock import Clock, StartedClock, SystemClock
from allotment.ledger.core.resources import ParseError, parse_resource
from allotment.ledger.core.timeutil import format_rfc3339, parse_rfc3339
from allotment.ledger.storage import migrate
from allotment.ledger.storage.engine import Ledger, open_ledger
from allotment.sidecar import wire
from allotment.sidecar.app import create_app
from allotment.sidecar.compute import CoreValueEngine
from allotment.sidecar.ledger_source import StorageSource
from allotment.sidecar.settings import SidecarSettings, parse_address
from allotment.sidecar.view import View

GROUP = "allotment.dev"
DEFAULT_NAMESPACE = "default"
WATCH_INTERVAL = 0.5
#: Passes over waiting resources per sync: each pass can only unblock what the previous recorded.
MAX_PASSES = 8

Key = tuple[str, str, str]  # kind, namespace, name


def allotment_key(body: object) -> Key | None:
    """Return (kind, namespace, name) of an allotment object; None for anything else.

    A document without a namespace goes to ``default``, as kubectl puts it (D5).
    """
    if not isinstance(body, dict) or not str(body.get("apiVersion", "")).startswith(GROUP + "/"):
        return None
    metadata = body.get("metadata") or {}
    return (
        str(body.get("kind")),
        str(metadata.get("namespace") or DEFAULT_NAMESPACE),
        str(metadata.get("name")),
    )


@dataclass
class Tracked:
    """One resource as the dev loop holds it: what was admitted, and what the ledger said."""

    key: Key
    source: str
    written: dict[str, Any]
    stored: dict[str, Any]
    uid: str
    generation: int
    created_at: datetime
    deleted_at: datetime | None = None
    outcome: Outcome | None = None
    dirty: bool = True

    def body(self) -> dict[str, Any]:
        """Return the object as the apiserver would hand it to the operator."""
        kind, namespace, name = self.key
        metadata: dict[str, Any] = {
            "name": name,
            "namespace": namespace,
            "uid": self.uid,
            "generation": self.generation,
            "creationTimestamp": format_rfc3339(self.created_at),
        }
        if self.deleted_at is not None:
            metadata["deletionTimestamp"] = format_rfc3339(self.deleted_at)
        return {
            "apiVersion": self.stored["apiVersion"],
            "kind": kind,
            "metadata": metadata,
            "spec": self.stored.get("spec", {}),
        }


@dataclass
class DevLoop:
    """The state of ``allotment dev``: tracked resources, the ledger, the clock, the output."""

    paths: list[Path]
    ledger: Ledger
    clock: Clock
    out: TextIO
    crds: Mapping[tuple[str, str], CRDVersion] = field(default_factory=load_crds)
    tracked: dict[Key, Tracked] = field(default_factory=dict)
    fingerprint: tuple[tuple[str, int, int], ...] = ()

    def say(self, line: str) -> None:
        """Print one line of what happened."""
        print(line, file=self.out, flush=True)

    # --- reading the files -------------------------------------------------------------------

    def _fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        entries = []
        for path in manifest_files(self.paths):
            with contextlib.suppress(OSError):
                stat = path.stat()
                entries.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(entries)

    def changed(self) -> bool:
        """Tell whether any file was added, removed or saved since the last read."""
        return self._fingerprint() != self.fingerprint

    def _read(self) -> dict[Key, tuple[Document, dict[str, Any]]]:
        self.fingerprint = self._fingerprint()
        found: dict[Key, tuple[Document, dict[str, Any]]] = {}
        for path in manifest_files(self.paths):
            try:
                items = list(read_documents(path))
            except (OSError, UnicodeDecodeError) as error:
                self.say(f"Skipped {path}: {error}")
                continue
            for item in items:
                if isinstance(item, SyntaxProblem):
                    self.say(f"Refused {path}:{item.line}: {item.message}")
                    continue
                body = item.body
                key = allotment_key(body)
                if key is None:
                    continue
                if key in found:
                    first = found[key][0]
                    self.say(
                        f"Refused {path}:{item.line}: {key[0]} {key[1]}/{key[2]} is also defined "
                        f"in {first.path}:{first.line}: names are unique per kind and namespace"
                    )
                    continue
                found[key] = (item, body)
        return found

    # --- admitting changes -------------------------------------------------------------------

    def _admit(
        self, key: Key, document: Document, body: dict[str, Any], old: Tracked | None
    ) -> dict[str, Any] | None:
        crd = self.crds.get((str(body.get("apiVersion")), key[0]))
        where = f"{document.path}:{document.line}"
        if crd is None:
            self.say(f'Refused {where}: no matches for kind "{key[0]}" in {body["apiVersion"]}')
            return None
        violations, stored = admit(body, crd.schema, old.stored if old is not None else None)
        if violations:
            title = f"{key[0]} {key[1]}/{key[2]}"
            for violation in violations:
                hint = f" ({violation.hint})" if violation.hint else ""
                self.say(f"Refused {title} ({where}): {violation.message}{hint}")
            if old is not None:
                self.say(f"  {title} stays as it was applied")
            return None
        return stored

    def sync(self) -> None:
        """Read the files, admit what changed, and reconcile until nothing more can move."""
        now = self.clock.now()
        seen: set[Key] = set()
        for key, (document, body) in sorted(self._read().items(), key=lambda kv: kv[0][2]):
            seen.add(key)
            old = self.tracked.get(key)
            if old is not None and old.written == body and old.deleted_at is None:
                continue
            stored = self._admit(key, document, body, old)
            if stored is None:
                continue
            where = f"{document.path}:{document.line}"
            if old is None:
                uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"allotment-dev/{'/'.join(key)}/{now}"))
                self.tracked[key] = Tracked(key, where, body, stored, uid, 1, now)
            elif old.deleted_at is not None:
                continue  # re-created while its deletion waits: applied once the deletion is
            else:
                old.written, old.stored, old.source = body, stored, where
                old.generation += 1
                old.dirty = True
        for key, tracked in self.tracked.items():
            if key not in seen and tracked.deleted_at is None:
                tracked.deleted_at = now
                tracked.dirty = True
        self.reconcile(now)

    def reconcile(self, now: datetime) -> None:
        """Apply dirty and waiting resources in name order, pass after pass.

        What is recorded is said at once; what still waits or is refused once nothing more can
        move is said at the end (and again only when its reason changes).
        """
        touched: dict[Key, Outcome | None] = {}
        for _ in range(MAX_PASSES):
            pending = [
                t
                for t in sorted(self.tracked.values(), key=lambda t: (t.key[2], t.key[0]))
                if t.dirty or (t.outcome is not None and not t.outcome.ready and _due(t, now))
            ]
            if not pending:
                break
            progressed = False
            for tracked in pending:
                touched.setdefault(tracked.key, tracked.outcome)
                outcome = self._apply(tracked, now)
                if outcome is None:
                    continue
                tracked.outcome, tracked.dirty = outcome, False
                if outcome.ready:
                    progressed = True
                    self._report(tracked, outcome)
                    if tracked.deleted_at is not None:
                        del self.tracked[tracked.key]
            if not progressed:
                break
        for key, before in touched.items():
            still = self.tracked.get(key)
            after = None if still is None else still.outcome
            if still is None or after is None or after.ready:
                continue
            if before is None or before.ready or before.reason != after.reason:
                self._report(still, after)

    def _apply(self, tracked: Tracked, now: datetime) -> Outcome | None:
        kind, namespace, name = tracked.key
        try:
            resource = parse_resource(tracked.body())
        except ParseError as error:
            self.say(f"Refused {kind} {namespace}/{name}: {error}")
            tracked.dirty = False
            return None
        with self.ledger.write() as connection:
            return apply_resource(connection, resource, now)

    def _report(self, tracked: Tracked, outcome: Outcome) -> None:
        kind, namespace, name = tracked.key
        if outcome.action == "Unchanged":
            return
        if outcome.action == "Noop":
            self.say(f"{kind} {namespace}/{name}: {outcome.message}")
        elif outcome.ready:
            self.say(outcome.message)
        elif outcome.action == "Wait":
            self.say(f"Waiting {kind} {namespace}/{name}: {outcome.reason}: {outcome.message}")
        else:
            self.say(f"Refused {kind} {namespace}/{name}: {outcome.reason}: {outcome.message}")


def _due(tracked: Tracked, now: datetime) -> bool:
    outcome = tracked.outcome
    return outcome is not None and (outcome.retry_at is None or outcome.retry_at <= now)


# --- the process -----------------------------------------------------------------------------


def _ledger_url(args: argparse.Namespace, scratch: Path) -> str:
    if args.db:
        return str(args.db)
    return f"sqlite:///{scratch / 'ledger.db'}"


async def _serve(loop_state: DevLoop, settings: SidecarSettings, clock: Clock) -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, loop_state.sync)
    view = View(settings.namespace, CoreValueEngine())
    app = create_app(settings, view, open_source=StorageSource.open, clock=clock.now)
    runner = await wire.serve(app, settings.listen_host, settings.listen_port)
    # Say "Serving" only once the first load is done (what /readyz says); the view has no
    # readiness event, and this polls once, at start-up.
    while not view.ready:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    loop_state.say(
        f"Serving namespace {settings.namespace} on "
        f"http://{settings.listen_host}:{settings.listen_port} (watching {_paths(loop_state.paths)})"
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WATCH_INTERVAL):
                    await stop.wait()
            if stop.is_set():
                break
            waiting = any(
                t.outcome is not None and not t.outcome.ready and _due(t, clock.now())
                for t in loop_state.tracked.values()
            )
            if loop_state.changed():
                await loop.run_in_executor(None, loop_state.sync)
            elif waiting:
                await loop.run_in_executor(None, loop_state.reconcile, clock.now())
    finally:
        await runner.cleanup()


def _paths(paths: Iterable[Path]) -> str:
    return ", ".join(str(p) for p in paths)


def run(args: argparse.Namespace) -> int:
    """Run the dev loop until SIGINT or SIGTERM; return the exit code."""
    paths = [Path(p) for p in args.paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"allotment dev: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        clock: Clock = StartedClock(parse_rfc3339(args.now)) if args.now else SystemClock()
        host, port = parse_address(args.listen)
    except ValueError as error:
        print(f"allotment dev: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="allotment-dev-") as scratch:
        url = _ledger_url(args, Path(scratch))
        migrate.upgrade(url)
        ledger = open_ledger(url)
        settings = SidecarSettings(
            database_url=url,
            namespace=args.namespace,
            listen_host=host,
            listen_port=port,
            probe_port=None,
            poll_interval=timedelta(milliseconds=100),
        )
        state = DevLoop(paths, ledger, clock, sys.stdout)
        where = "a new SQLite ledger" if not args.db else "the ledger at --db"
        state.say(f"allotment dev: reconciling {_paths(paths)} into {where}")
        try:
            asyncio.run(_serve(state, settings, clock))
        except KeyboardInterrupt:
            pass
        finally:
            ledger.dispose()
    return 0


def register(subparsers: Any) -> None:
    """Add the ``dev`` subcommand."""
    parser = subparsers.add_parser(
        "dev",
        help="reconcile YAML files into a local ledger and serve the sidecar API",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or directories of YAML")
    parser.add_argument(
        "--db", help="keep the ledger at this URL (default: a new SQLite file per run)"
    )
    parser.add_argument(
        "--now",
        help="start the clock at this RFC 3339 instant; it then advances (default: wall time)",
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:8888", help="sidecar API address (default 127.0.0.1:8888)"
    )
    parser.add_argument(
        "--namespace",
        default=DEFAULT_NAMESPACE,
        help="the namespace to serve (default: default, where YAML without one goes)",
    )
    parser.set_defaults(handler=run)
