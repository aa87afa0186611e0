"""The real clients against real sidecar processes, on SQLite and PostgreSQL.

Example 01 gives customer-1 one million GPT-4 tokens a month (customers 2 to 4 get the same, so
each test that ingests has a balance of its own). Each client reads the value,
ingests usage through the sidecar, and reads the new value from the same sidecar at once
(read-your-writes); the dev server, another process on the same ledger, sees it through the feed.
"""

from __future__ import annotations

import ast
import inspect
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest
from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import Reason
from openmeter import Client
from openmeter._generated.operations import _operations

from tests.contract.conftest import Running, http_json, run_node, value_path

FULL = {
    "hasAccess": True,
    "balance": 1000000,
    "usage": 0,
    "overage": 0,
    "totalAvailableGrantAmount": 1000000,
}
PROPAGATION_LIMIT_SECONDS = 20.0


def numbers(value: dict[str, Any]) -> dict[str, Any]:
    """Keep the value fields every client returns, as exact numbers."""
    return {
        key: (value[key] if isinstance(value[key], bool) else Decimal(str(value[key])))
        for key in FULL
    }


def expected(usage: int) -> dict[str, Any]:
    return numbers({**FULL, "usage": usage, "balance": 1000000 - usage})


def wait_for_usage(base_url: str, customer: str, usage: int) -> dict[str, Any]:
    """Poll ``base_url`` (another process) until the customer's value shows ``usage``."""
    deadline = time.monotonic() + PROPAGATION_LIMIT_SECONDS
    body: Any = None
    while time.monotonic() < deadline:
        status, body = http_json(base_url + value_path(customer))
        if status == 200 and Decimal(str(body["usage"])) == usage:
            return numbers(body)
        time.sleep(0.05)
    raise AssertionError(f"{base_url} never showed usage {usage}: last answer {body}")


def test_legacy_node_sdk_reads_the_seed_value_and_ingests(node: str, running: Running) -> None:
    event_id = f"legacy-{uuid.uuid4()}"
    result = run_node(
        node,
        "legacy_sdk.mjs",
        running.sidecar_url,
        "customer-1",
        "gpt_4_tokens",
        event_id,
        "250",
    )
    assert numbers(result["before"]) == numbers(FULL)
    assert numbers(result["after"]) == expected(250)
    assert result["unknown"] == {"statusCode": 404, "title": "Not Found"}
    assert wait_for_usage(running.dev_url, "customer-1", 250) == expected(250)


def test_legacy_node_sdk_against_allotment_dev(node: str, running: Running) -> None:
    result = run_node(
        node, "legacy_sdk.mjs", running.dev_url, "customer-2", "gpt_4_tokens", "dev-1", "40"
    )
    assert numbers(result["before"]) == numbers(FULL)
    assert numbers(result["after"]) == expected(40)


def test_current_node_sdk_value_ingest_value(node: str, running: Running) -> None:
    event_id = f"current-{uuid.uuid4()}"
    result = run_node(
        node,
        "current_sdk.mjs",
        running.sidecar_url,
        "customer-3",
        "gpt_4_tokens",
        event_id,
        "1200",
    )
    assert numbers(result["before"]) == numbers(FULL)
    assert numbers(result["after"]) == expected(1200)
    # The same event again (a duplicate) and a gpt-3.5 event (filtered out): unchanged.
    assert numbers(result["again"]) == expected(1200)
    assert wait_for_usage(running.dev_url, "customer-3", 1200) == expected(1200)


def subject_operations(client: Client) -> Any:
    """Return the client's ``SubjectsOperations`` that has ``get_entitlement_value``.

    openmeter 1.0.0b236 generates two classes named ``SubjectsOperations`` in one module; the
    second (upsert, list, delete) shadows the first, so ``client.subjects`` lacks
    ``get_entitlement_value``. The first class is rebuilt from the module's own source, in the
    module's namespace, and bound to the client's pipeline: the method that runs is the
    generated one, unchanged.
    """
    tree = ast.parse(inspect.getsource(_operations))
    for node in tree.body:
        if (
            isinstance(node, ast.ClassDef)
            and node.name == "SubjectsOperations"
            and any(
                isinstance(item, ast.FunctionDef) and item.name == "get_entitlement_value"
                for item in node.body
            )
        ):
            namespace = dict(vars(_operations))
            code = compile(ast.Module(body=[node], type_ignores=[]), _operations.__file__, "exec")
            exec(code, namespace)
            cls = namespace["SubjectsOperations"]
            return cls(client._client, client._config, client._serialize, client._deserialize)
    raise AssertionError("openmeter has no SubjectsOperations.get_entitlement_value")


def test_python_openmeter_client(running: Running) -> None:
    client = Client(endpoint=running.sidecar_url)
    subjects = subject_operations(client)
    try:
        before = subjects.get_entitlement_value("customer-4", "gpt_4_tokens")
        assert numbers(dict(before)) == numbers(FULL)
        events: list[Any] = [
            {
                "id": f"python-{n}",
                "source": "contract-tests/python",
                "specversion": "1.0",
                "type": "prompt",
                "subject": "customer-4",
                "data": {"tokens": 300, "model": "gpt-4"},
            }
            for n in range(3)
        ]
        client.events.ingest_events(events)
        client.events.ingest_events(events[:1])
        after = subjects.get_entitlement_value("customer-4", "gpt_4_tokens")
        assert numbers(dict(after)) == expected(900)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("targeting_key", "attributes", "value", "reason"),
    [
        pytest.param("customer-1", {}, True, Reason.TARGETING_MATCH, id="customer-1"),
        pytest.param("customer-nobody", {}, False, Reason.DEFAULT, id="unknown-customer"),
        pytest.param(
            "customer-1",
            {"requestedUsage": 1000001},
            False,
            Reason.TARGETING_MATCH,
            id="requested-usage-above-balance",
        ),
    ],
)
def test_openfeature_with_the_ofrep_provider(
    running: Running,
    targeting_key: str,
    attributes: dict[str, Any],
    value: bool,
    reason: Reason,
) -> None:
    api.set_provider(OFREPProvider(running.sidecar_url))
    try:
        client = api.get_client()
        details = client.get_boolean_details(
            "gpt_4_tokens",
            not value,
            EvaluationContext(targeting_key=targeting_key, attributes=attributes),
        )
        assert details.error_code is None, details.error_message
        assert (details.value, details.reason) == (value, reason)
    finally:
        api.shutdown()
