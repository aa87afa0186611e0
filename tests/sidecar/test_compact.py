"""The view's packed documents rebuild exactly the document they were made from."""

from __future__ import annotations

from typing import Any

import pytest

from allotment.sidecar.compact import Shapes

TEMPLATE: dict[str, Any] = {
    "kind": "grant",
    "id": "01AAAAAAAAAAAAAAAAAAAAAAAA",
    "amount": "1000",
    "priority": 0,
    "voidAt": None,
    "flags": [{"since": "2026-11-01T00:00:00Z", "value": False}],
    "metadata": {},
}


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({}, id="the-template-itself"),
        pytest.param({"id": "01BBBBBBBBBBBBBBBBBBBBBBBB", "amount": "7.5"}, id="ids-and-amounts"),
        pytest.param({"priority": False}, id="false-is-not-zero"),
        pytest.param({"priority": 0.0}, id="float-zero-is-not-int-zero"),
        pytest.param({"voidAt": "2026-12-01T00:00:00Z"}, id="none-to-instant"),
        pytest.param(
            {"flags": [{"since": "2026-11-01T00:00:00Z", "value": 0}]}, id="nested-false-vs-zero"
        ),
        pytest.param({"flags": []}, id="shorter-list"),
        pytest.param({"metadata": {"tier": "gold"}}, id="nested-mapping"),
    ],
)
def test_a_packed_document_rebuilds_exactly(changes: dict[str, Any]) -> None:
    shapes = Shapes()
    shapes.pack(TEMPLATE)
    document = {**TEMPLATE, **changes}
    rebuilt = shapes.document(shapes.pack(document))
    assert rebuilt == document
    assert repr(rebuilt) == repr(document)  # same types: False is not 0, 0.0 is not 0


def test_documents_of_other_keys_get_their_own_shape() -> None:
    shapes = Shapes()
    other = {"kind": "customer", "id": "01C", "key": "c", "subjectKeys": ["s"]}
    packed = [shapes.pack(TEMPLATE), shapes.pack(other)]
    assert [shapes.document(p) for p in packed] == [TEMPLATE, other]
    assert len(shapes) == 2


def test_rebuilt_documents_share_no_containers() -> None:
    shapes = Shapes()
    packed = shapes.pack(TEMPLATE)
    first = shapes.document(packed)
    first["flags"][0]["value"] = True
    first["metadata"]["x"] = "y"
    assert shapes.document(packed) == TEMPLATE


def test_a_similar_document_packs_small() -> None:
    shapes = Shapes()
    shapes.pack(TEMPLATE)
    packed = shapes.pack({**TEMPLATE, "id": "01BBBBBBBBBBBBBBBBBBBBBBBB"})
    assert len(packed) < 40


def test_fields_packed_always_are_in_the_bytes_even_when_equal_to_the_template() -> None:
    shapes = Shapes()
    first = shapes.pack(TEMPLATE, always=("id",))
    assert TEMPLATE["id"].encode() in first
    assert shapes.document(first) == TEMPLATE
    assert TEMPLATE["id"].encode() not in Shapes().pack(TEMPLATE)
