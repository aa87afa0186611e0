"""The current ``@openmeter/sdk`` ingesting through one sidecar process and reading two.

``events.ingest`` through the first sidecar, then ``entitlementsV1.value``: the first sidecar
answers with the new usage at once (read-your-writes), and a second ``allotment sidecar``
process on the same ledger (default poll interval, as deployed) shows it through the change
feed. How long the second took is recorded as a test property (``secondSawItAfterMs``) next to
the 1 s propagation target; tests assert no timings, so the wait is bounded generously.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.contract.conftest import (
    Process,
    Running,
    allotment_command,
    free_port,
    run_node,
    start,
    wait_for_value,
)

CUSTOMER = "customer-2"
TOKENS = 3300
WAIT_LIMIT_MS = 10_000


@pytest.fixture(scope="module")
def second_sidecar(running: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start another ``allotment sidecar`` on the same ledger; yield its URL; stop it by PID."""
    folder: Path = tmp_path_factory.mktemp("second-sidecar")
    port = free_port()
    process: Process = start(
        "second allotment sidecar",
        [
            *allotment_command(),
            "sidecar",
            "--db",
            running.ledger_url,
            "--namespace",
            "default",
            "--listen",
            f"127.0.0.1:{port}",
            "--probe-listen",
            "off",
        ],
        folder / "sidecar.log",
        folder,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_value(process, url)
        yield url
    finally:
        process.stop()


def test_sdk_ingest_shows_at_once_here_and_through_the_feed_on_another_sidecar(
    node: str, running: Running, second_sidecar: str, record_property: pytest.RecordProperty
) -> None:
    result = run_node(
        node,
        "ingest_two_sidecars.mjs",
        running.sidecar_url,
        second_sidecar,
        CUSTOMER,
        "gpt_4_tokens",
        f"two-sidecars-{uuid.uuid4()}",
        str(TOKENS),
        str(WAIT_LIMIT_MS),
    )
    before = result["secondBefore"]["usage"]
    assert result["firstAfter"]["usage"] == before + TOKENS
    assert result["firstAfter"]["balance"] == result["secondBefore"]["balance"] - TOKENS
    assert result["secondAfter"] == result["firstAfter"]
    assert result["secondSawItAfterMs"] is not None
    record_property("secondSawItAfterMs", round(result["secondSawItAfterMs"], 1))
