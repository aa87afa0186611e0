"""How a request reaches its handler: routes, the boundary every handler runs in, 404 and 405.

Role: ``install(app, routes)`` adds the route list to an app without aiohttp middleware (a
middleware chain is paid by every request, the hot value read included). Each handler is
wrapped once, at install time, by ``guard``: it translates errors to problem+json, observes the
latency histogram under the route's template, and adds the freshness headers
(``Allotment-Ledger-Version``, ``-Age``) to ``/api/`` and ``/ofrep/`` answers that lack them.
What no route serves reaches ``NotServed``, the last
candidate of every path: 405 with ``Allow`` when another method is served there, else 404, both
as problem+json.

It must not decide answers: the handlers in ``routes`` do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web
from yarl import URL

from .compute import EngineUnavailableError
from .keys import CLOCK, METRICS, VIEW
from .problems import ProblemError, from_error, problem_response
from .view import micros

if TYPE_CHECKING:
    from aiohttp.web_urldispatcher import _InfoDict

__all__ = ["NotServed", "guard", "install"]

log = logging.getLogger("allotment.sidecar")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_FRESHNESS_PREFIXES = ("/api/", "/ofrep/")
_VERSION = "Allotment-Ledger-Version"  # present: the handler has set the freshness headers
_NOT_SERVED = "unmatched"


def _not_served_detail(request: web.Request) -> str:
    return f"{request.method} {request.path} is not served by this sidecar; see /openapi.json"


def guard(app: web.Application, name: str, handler: Handler) -> Handler:
    """Wrap ``handler`` in the boundary: problem+json, latency under ``name``, freshness."""
    observe = app[METRICS].check_seconds.observer(name)
    # Routes under /api/ and /ofrep/ always carry freshness; what no route serves, by its path.
    fresh_route = name.startswith(_FRESHNESS_PREFIXES)
    not_served = name == _NOT_SERVED

    async def guarded(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except ProblemError as error:
            response = from_error(error)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            detail = (
                _not_served_detail(request)
                if error.status in (404, 405)
                else error.text or error.reason
            )
            headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
            response = problem_response(error.status, detail, headers=headers)
        except EngineUnavailableError as error:
            response = problem_response(503, str(error))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Unexpected error answering %s %s", request.method, request.path)
            response = problem_response(500, "")
        if (
            fresh_route or (not_served and request.path.startswith(_FRESHNESS_PREFIXES))
        ) and _VERSION not in response.headers:
            response.headers.update(app[VIEW].freshness_headers(micros(app[CLOCK]())))
        observe(time.perf_counter() - started)
        return response

    guarded.__doc__ = handler.__doc__
    return guarded


class NotServed(web.AbstractResource):
    """The last candidate of every path: 405 (with ``Allow``) or 404, as problem+json."""

    def __init__(self, app: web.Application) -> None:
        super().__init__()
        self._app = app
        self._route = web.ResourceRoute(
            hdrs.METH_ANY, guard(app, _NOT_SERVED, self._refuse), resource=self
        )

    async def _refuse(self, request: web.Request) -> web.StreamResponse:
        allowed: set[str] = set()
        for resource in self._app.router.resources():
            if resource is not self:
                _match, methods = await resource.resolve(request)
                allowed |= methods
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        raise web.HTTPNotFound()

    @property
    def canonical(self) -> str:
        """Index it under ``/``: the router's walk reaches it after every other candidate."""
        return "/"

    def url_for(self, **_parts: str) -> URL:
        """Not a place one links to."""
        raise NotImplementedError("NotServed has no URL")

    async def resolve(
        self, request: web.Request
    ) -> tuple[web.UrlMappingMatchInfo | None, set[str]]:
        """Match every request no other resource matched."""
        return web.UrlMappingMatchInfo({}, self._route), set()

    def add_prefix(self, prefix: str) -> None:
        """Sub-applications are not used by the sidecar."""
        raise NotImplementedError("the sidecar's routes live in one application")

    def get_info(self) -> _InfoDict:
        """Describe the resource (for introspection)."""
        return {}

    def raw_match(self, path: str) -> bool:
        """Never a registered path."""
        return False

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Any:
        return iter((self._route,))


def install(app: web.Application, routes: Iterable[web.RouteDef]) -> None:
    """Add ``routes`` to ``app``, each handler guarded, then the 404/405 resource."""
    for route in routes:
        guarded = guard(app, route.path, route.handler)
        web.RouteDef(route.method, route.path, guarded, route.kwargs).register(app.router)
    app.router.register_resource(NotServed(app))
