"""The operator's one frozen settings object, built once by ``allotment operator``.

Role: everything configurable about the operator process, passed to Kopf in ``memo`` (STYLE 6).

Must not: read argv or the environment (the CLI does), or hold clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_WEBHOOK_PORT = 9443
DEFAULT_SIDECAR_IMAGE = "ghcr.io/allotment-dev/allotment:0.1.0"


@dataclass(frozen=True)
class WebhookSettings:
    """Where Kopf's admission server listens and which certificate it presents."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_WEBHOOK_PORT
    certfile: Path | None = None
    keyfile: Path | None = None


@dataclass(frozen=True)
class SidecarSettings:
    """What the injection webhook adds to a labelled Pod (DESIGN "Sidecar HTTP API")."""

    image: str = DEFAULT_SIDECAR_IMAGE
    listen_port: int = 8888
    probe_port: int = 8889
    ledger_secret: str = "allotment-sidecar-ledger"
    ledger_secret_key: str = "url"
    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    memory_limit: str = "256Mi"


@dataclass(frozen=True)
class OperatorSettings:
    """How one operator process runs."""

    database_url: str
    namespaces: tuple[str, ...] = ()
    webhook: WebhookSettings | None = None
    sidecar: SidecarSettings = SidecarSettings()
    liveness_endpoint: str | None = None
    ledger_timeout_seconds: float = 10.0
    ledger_writers: int = 4  # concurrent reconcile transactions on PostgreSQL (SQLite: 1)
    wait_retry_seconds: float = 30.0
    # A waiter's handler may still be finishing when its reference is recorded: Kopf's own patch
    # of the retry delay then overwrites the nudge, so every nudge is repeated once, this later.
    nudge_again_seconds: float = 2.0
    conflict_retry_seconds: float = 120.0
    max_wait_seconds: float = 3600.0
    value_refresh_seconds: float = 15.0
    value_patches_per_second: float = 20.0
