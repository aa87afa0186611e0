"""Kopf configured in one startup hook; resources acquired there and released at cleanup.

Role: ``configure`` sets our finalizer (``allotment.dev/finalizer``), keeps handler progress and
the diff base in ``allotment.dev/*`` annotations (never in ``status``), sets watch timeouts and
the admission server, opens the ledger (refusing a schema this code does not match, DESIGN D11)
and puts the ``Runtime`` into ``memo``; ``cleanup`` stops the value loop and disposes of the
ledger. ``build_registry`` assembles every handler; ``run`` is what ``allotment operator`` calls.

Must not: read argv or the environment (the CLI does), or write admission registration.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from allotment.ledger.storage.engine import SchemaMismatchError
from allotment.operator import admission, handlers, values
from allotment.operator.gateway import open_gateway
from allotment.operator.kube import ClientKubeApi, load_api_client
from allotment.operator.ports import KubeApi, LedgerGateway
from allotment.operator.runtime import MEMO_KEY, Runtime
from allotment.operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

PREFIX = "allotment.dev"
FINALIZER = f"{PREFIX}/finalizer"
SETTINGS_KEY = "settings"
LOOP_KEY = "value_loop"


def _body(body: Mapping[str, Any]) -> kopf.Body:
    return body if isinstance(body, kopf.Body) else kopf.Body(cast(kopf.RawBody, dict(body)))


class KopfEvents:
    """Kubernetes Events through Kopf's own poster."""

    def info(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        """Post a Normal event."""
        kopf.info(_body(body), reason=reason, message=message)

    def warn(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        """Post a Warning event."""
        kopf.warn(_body(body), reason=reason, message=message)


def system_now() -> datetime:
    """Return the wall-clock instant (the operator's only clock)."""
    return datetime.now(UTC)


def configure_kopf(kopf_settings: Any, settings: OperatorSettings) -> None:
    """Apply our conventions to Kopf's settings (STYLE 4)."""
    kopf_settings.persistence.finalizer = FINALIZER
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    kopf_settings.watching.server_timeout = 270
    kopf_settings.watching.client_timeout = 300
    kopf_settings.watching.connect_timeout = 30
    kopf_settings.networking.request_timeout = 60
    kopf_settings.posting.level = logging.INFO
    kopf_settings.batching.error_delays = (1, 2, 5, 10, 30, 60)
    if settings.webhook is not None:
        hook = settings.webhook
        kopf_settings.admission.server = kopf.WebhookServer(
            addr=hook.host,
            port=hook.port,
            certfile=str(hook.certfile) if hook.certfile else None,
            pkeyfile=str(hook.keyfile) if hook.keyfile else None,
        )
        kopf_settings.admission.managed = None  # static configuration only (STYLE 10)


async def configure(settings: Any, memo: Any, **_: Any) -> None:
    """Configure Kopf and acquire the ledger, the API client and the value loop."""
    ours: OperatorSettings = memo[SETTINGS_KEY]
    configure_kopf(settings, ours)
    opener: Callable[[str], LedgerGateway] = memo.get("open_gateway") or open_gateway
    try:
        ledger = await asyncio.to_thread(opener, ours.database_url)
    except SchemaMismatchError as error:
        raise kopf.PermanentError(f"refusing to start: {error}") from error
    kube: KubeApi = memo.get("kube") or ClientKubeApi(load_api_client())
    runtime = Runtime(
        settings=ours, ledger=ledger, kube=kube, events=KopfEvents(), clock=system_now
    )
    memo[MEMO_KEY] = runtime
    stop = asyncio.Event()
    memo[LOOP_KEY] = (stop, asyncio.create_task(values.refresh_forever(runtime, stop)))
    logger.info("Operator ready: ledger open, %d namespace(s) watched",
                len(ours.namespaces))  # fmt: skip


async def cleanup(memo: Any, **_: Any) -> None:
    """Stop the value loop and dispose of the ledger and the API client."""
    loop = memo.get(LOOP_KEY)
    if loop is not None:
        stop, task = loop
        stop.set()
        await asyncio.wait([task], timeout=5)
    runtime = memo.get(MEMO_KEY)
    if isinstance(runtime, Runtime):
        runtime.ledger.close()
        close = getattr(runtime.kube, "close", None)
        if callable(close):
            close()


def build_registry(*, webhooks: bool = True) -> Any:
    """Return a Kopf registry with every allotment handler and hook, and the webhooks if asked."""
    registry = kopf.OperatorRegistry()
    # In-cluster service account, else the kubeconfig: the same loader as kube.py's client.
    kopf.on.login(id="login", registry=registry)(kopf.login_via_client)
    kopf.on.startup(id="configure", registry=registry)(configure)
    kopf.on.cleanup(id="cleanup", registry=registry)(cleanup)
    handlers.register(registry)
    if webhooks:  # Kopf refuses to run admission handlers without a server
        admission.register(registry)
    return registry


def run(settings: OperatorSettings, *, ready: Any = None, stop: Any = None) -> None:
    """Run the operator until it is stopped (SIGINT/SIGTERM, or ``stop``)."""
    started = time.monotonic()
    memo = kopf.Memo({SETTINGS_KEY: settings})
    namespaces = list(settings.namespaces)
    asyncio.run(
        kopf.operator(
            registry=build_registry(webhooks=settings.webhook is not None),
            memo=memo,
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=settings.liveness_endpoint,
            ready_flag=ready,
            stop_flag=stop,
        )
    )
    logger.info("Operator stopped after %.1fs", time.monotonic() - started)
