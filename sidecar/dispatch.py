"""How a request reaches its handler: routes, the boundary every handler runs in, 404 and 405.

Role: ``install(app, routes)`` adds the route list to an app without aiohttp middleware (a
middleware chain is paid by every request, the hot value read included). Each handler is
wrapped once, at install time, by ``guard``: it translates errors to problem+json, observes the
latency histogram under the route's template, and adds the freshness headers
(``Allotment-Ledger-Version``, ``-Age``) to ``/api/`` and ``/ofrep/`` answers that lack them.
Routes whose template has variable segments are matched by ``TemplateResource``: a split on
``/`` and a comparison of the literal segments, the same paths aiohttp's dynamic resources
match with a regular expression per route. What no route serves reaches ``NotServed``, the last
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

if TYPE_CHECKING:
    from aiohttp.web_urldispatcher import _InfoDict

__all__ = ["NotServed", "TemplateResource", "guard", "install"]

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
    freshness = name.startswith(_FRESHNESS_PREFIXES) or name == _NOT_SERVED

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
            freshness
            and _VERSION not in response.headers
            and request.path.startswith(_FRESHNESS_PREFIXES)
        ):
            response.headers.update(app[VIEW].freshness_headers(app[CLOCK]()))
        observe(time.perf_counter() - started)
        return response

    guarded.__doc__ = handler.__doc__
    return guarded


class TemplateResource(web.AbstractResource):
    """A route template like ``/api/v1/subjects/{subject}/entitlements/{entitlement}/value``.

    Matches what aiohttp's dynamic resource matches for such a template (every variable is one
    non-empty segment without braces, of the percent-decoded path that keeps ``%2F`` and
    ``%25``, which the variables then hold decoded), by
    splitting the path once instead of running a regular expression.
    """

    def __init__(self, template: str) -> None:
        super().__init__()
        self._template = template
        # "/api/v1/subjects/" + "{subject}/entitlements/{entitlement}" + "/value"
        first, last = template.index("{"), template.rindex("}") + 1
        self._head, self._tail = template[:first], template[last:]
        self._fixed = len(self._head) + len(self._tail)
        middle = template[first:last].split("/")
        self._size = len(middle)
        self._variables = tuple(
            (i, part[1:-1]) for i, part in enumerate(middle) if part.startswith("{")
        )
        self._literals = tuple(
            (i, part) for i, part in enumerate(middle) if not part.startswith("{")
        )
        self._routes: dict[str, web.ResourceRoute] = {}

    def add_route(self, method: str, handler: Handler) -> None:
        """Serve ``method`` (upper case) on this template with ``handler``."""
        self._routes[method] = web.ResourceRoute(method, handler, resource=self)

    @property
    def canonical(self) -> str:
        """Return the template."""
        return self._template

    def url_for(self, **parts: str) -> URL:
        """Build a URL from the template's variables."""
        path = self._template
        for _i, variable in self._variables:
            path = path.replace("{" + variable + "}", parts[variable])
        return URL.build(path=path)

    async def resolve(
        self, request: web.Request
    ) -> tuple[web.UrlMappingMatchInfo | None, set[str]]:
        """Return the match for ``request``, or None and the methods served on its path."""
        path = request.rel_url.path_safe
        if (
            len(path) <= self._fixed
            or not path.startswith(self._head)
            or not path.endswith(self._tail)
        ):
            return None, set()
        parts = path[len(self._head) : len(path) - len(self._tail)].split("/")
        if len(parts) != self._size:
            return None, set()
        for i, literal in self._literals:
            if parts[i] != literal:
                return None, set()
        found: dict[str, str] = {}
        for i, variable in self._variables:
            value = parts[i]
            if not value or "{" in value or "}" in value:
                return None, set()
            # path_safe keeps "%2F" and "%25" escaped; a variable holds them decoded
            if "%" in value:
                value = value.replace("%2F", "/").replace("%25", "%")
            found[variable] = value
        route = self._routes.get(request.method)
        if route is None:
            return None, set(self._routes)
        return web.UrlMappingMatchInfo(found, route), set(self._routes)

    def add_prefix(self, prefix: str) -> None:
        """Sub-applications are not used by the sidecar."""
        raise NotImplementedError("the sidecar's routes live in one application")

    def get_info(self) -> _InfoDict:
        """Describe the resource (for introspection)."""
        return {"formatter": self._template}

    def raw_match(self, path: str) -> bool:
        """Tell whether ``path`` is this very template."""
        return path == self._template

    def __len__(self) -> int:
        return len(self._routes)

    def __iter__(self) -> Any:
        return iter(self._routes.values())


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
    """Add ``routes`` to ``app``, each handler guarded, templates matched by segments."""
    templates: dict[str, TemplateResource] = {}
    for route in routes:
        handler = guard(app, route.path, route.handler)
        methods = [route.method]
        if route.method == hdrs.METH_GET and route.kwargs.get("allow_head", True):
            methods.append(hdrs.METH_HEAD)
        if "{" in route.path:
            resource = templates.get(route.path)
            if resource is None:
                resource = templates[route.path] = TemplateResource(route.path)
                app.router.register_resource(resource)
            for method in methods:
                resource.add_route(method, handler)
        else:
            for method in methods:
                app.router.add_route(method, route.path, handler)
    app.router.register_resource(NotServed(app))
