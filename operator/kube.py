"""The operator's own Kubernetes calls, through the official client run off the event loop.

Role: ``ClientKubeApi`` implements ``ports.KubeApi``: re-trigger a waiting object by clearing
Kopf's progress annotation for its handler, merge-patch ``status`` (the value loop), and tell
whether a namespace or a CRD is being deleted (deletions then orphan, DESIGN D3). Credentials come
from the in-cluster service account, else the kubeconfig, as Kopf's own login does.

Must not: write admission registration, Pods or anything outside the allotment kinds' objects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config

from allotment.operator.kinds import GROUP, VERSION

PREFIX = "allotment.dev"


def load_api_client() -> Any:
    """Return an API client for the in-cluster service account, else the kubeconfig."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


class ClientKubeApi:
    """``ports.KubeApi`` over ``kubernetes.client``."""

    def __init__(self, api_client: Any) -> None:
        self._api_client = api_client
        self._objects = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._extensions = client.ApiextensionsV1Api(api_client)

    async def nudge(self, plural: str, namespace: str, name: str, handler_id: str) -> None:
        """Clear the retry delay Kopf stored for ``handler_id`` so it runs again now."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "metadata": {
                "annotations": {f"{PREFIX}/{handler_id}": None, f"{PREFIX}/nudged-at": stamp}
            }
        }
        await asyncio.to_thread(
            self._objects.patch_namespaced_custom_object,
            GROUP, VERSION, namespace, plural, name, body,
        )  # fmt: skip

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        """Merge-patch the status subresource."""
        await asyncio.to_thread(
            self._objects.patch_namespaced_custom_object_status,
            GROUP, VERSION, namespace, plural, name, {"status": dict(status)},
        )  # fmt: skip

    async def is_terminating(self, namespace: str, plural: str) -> bool:
        """Return whether ``namespace`` or the CRD ``plural.allotment.dev`` is being deleted."""
        ns = await asyncio.to_thread(self._core.read_namespace, namespace)
        if ns.metadata is not None and ns.metadata.deletion_timestamp is not None:
            return True
        crd = await asyncio.to_thread(
            self._extensions.read_custom_resource_definition, f"{plural}.{GROUP}"
        )
        return crd.metadata is not None and crd.metadata.deletion_timestamp is not None

    def close(self) -> None:
        """Close the client's connection pool."""
        self._api_client.close()
