"""Dispatch: route templates match exactly what aiohttp's own routing matches; 404 and 405."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from allotment.sidecar.dispatch import TemplateResource
from allotment.sidecar.routes import ROUTES

TEMPLATES = sorted({route.path for route in ROUTES if "{" in route.path})


async def _handler(_request: web.Request) -> web.Response:
    return web.Response()


def _resolve(resource: web.AbstractResource, method: str, path: str) -> tuple[Any, set[str]]:
    request = make_mocked_request(method, path)
    match, allowed = asyncio.run(resource.resolve(request))
    return (None if match is None else dict(match)), allowed


def _pair(template: str) -> tuple[TemplateResource, web.DynamicResource]:
    ours = TemplateResource(template)
    theirs = web.DynamicResource(template)
    for method in ("GET", "POST"):
        ours.add_route(method, _handler)
        theirs.add_route(method, _handler)
    return ours, theirs


SEGMENT = st.one_of(
    st.sampled_from(["", "api", "v1", "v2", "subjects", "customers", "entitlements", "value"]),
    st.sampled_from(["history", "grants", "{x}", "a{b", "c}", "%2F", "customer-1", "tokens"]),
    st.text(alphabet="abc-_.~%2F{}", min_size=0, max_size=6),
)


@st.composite
def _paths(draw: st.DrawFn, template: str) -> str:
    """A path near ``template``: its variables filled with any segment, or any segments."""
    if draw(st.booleans()):
        return "/" + "/".join(draw(st.lists(SEGMENT, min_size=1, max_size=9)))
    parts = template.split("/")
    return "/".join(draw(SEGMENT) if part.startswith("{") else part for part in parts)


@given(data=st.data(), template=st.sampled_from(TEMPLATES), method=st.sampled_from(["GET", "PUT"]))
def test_a_template_matches_what_aiohttp_matches(
    data: st.DataObject, template: str, method: str
) -> None:
    """Any path, any method: the same match, the same variables, the same allowed methods."""
    path = data.draw(_paths(template))
    ours, theirs = _pair(template)
    assert _resolve(ours, method, path) == _resolve(theirs, method, path)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param(
            "/api/v1/subjects/customer-1/entitlements/tokens/value",
            {"subject": "customer-1", "entitlement": "tokens"},
            id="value",
        ),
        pytest.param(
            "/api/v1/subjects/a%20b/entitlements/tokens/value",
            {"subject": "a b", "entitlement": "tokens"},
            id="percent-decoded",
        ),
        pytest.param("/api/v1/subjects//entitlements/tokens/value", None, id="empty-subject"),
        pytest.param("/api/v1/subjects/a/b/entitlements/tokens/value", None, id="extra-segment"),
        pytest.param("/api/v1/subjects/a/entitlements/tokens/values", None, id="other-tail"),
    ],
)
def test_a_value_path_is_matched_by_its_template(path: str, expected: Any) -> None:
    """The value template's variables, as a user's path carries them."""
    ours, theirs = _pair("/api/v1/subjects/{subject}/entitlements/{entitlement}/value")
    assert _resolve(ours, "GET", path)[0] == expected
    assert _resolve(theirs, "GET", path)[0] == expected
