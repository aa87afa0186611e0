"""Errors as ``application/problem+json`` (RFC 7807, OpenMeter's shape), translated once here.

Role: ``ProblemError`` is what handlers raise; ``problem_response`` renders it with OpenMeter's
fields (``type``, ``title``, ``status``, ``detail``, ``instance``, ``extensions``); the
boundary every handler runs in (``dispatch.guard``) turns aiohttp's HTTP errors, the 404/405 of
what no route serves (``dispatch.NotServed``) and any unexpected error into the same shape, so
every error a client sees says what happened and what to do.

It must not decide access or swallow an error into an allow or a deny.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

__all__ = ["PROBLEM_JSON", "ProblemError", "problem_body", "problem_response"]

PROBLEM_JSON = "application/problem+json"


class ProblemError(Exception):
    """An error a handler reports to the client as problem+json."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        extensions: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extensions = dict(extensions or {})
        self.headers = dict(headers or {})


def problem_body(status: int, detail: str, extensions: Mapping[str, Any] | None = None) -> bytes:
    """Return a problem's JSON with OpenMeter's fields (a new ``instance`` each time)."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": f"urn:request:{uuid.uuid4().hex}",
    }
    if extensions:
        body["extensions"] = dict(extensions)
    return json.dumps(body).encode()


def problem_response(
    status: int,
    detail: str,
    *,
    extensions: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """Return a problem+json response with OpenMeter's fields."""
    return web.Response(
        status=status,
        body=problem_body(status, detail, extensions),
        content_type=PROBLEM_JSON,  # no charset: the legacy Node SDK compares the type
        headers=dict(headers or {}),
    )


def from_error(error: ProblemError) -> web.Response:
    """Render a ``ProblemError``."""
    return problem_response(
        error.status, error.detail, extensions=error.extensions, headers=error.headers
    )
