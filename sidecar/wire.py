"""The access check on the wire: a plain value read answered by its connection, before aiohttp.

Role: ``serve(app, host, port)`` starts an app the way the CLI, ``allotment dev`` and the bench
do: on a ``LaneSite``, an aiohttp site whose connections are ``WireProtocol`` objects, with the
``FastLane`` in front of the application's handler (``fastlane.install``). A connection hands
every byte it receives to aiohttp's own request handler, made for it and told of it when it is
accepted, except while aiohttp has seen nothing on it: then a received chunk that is exactly one
plain value read (``WireLane.answer``) is answered at once with a whole HTTP response, the same
status, headers and body the application gives (``Date`` aside, to the second). The first chunk
that is anything else, and everything after it, goes to aiohttp: responses can never leave out of
order, and aiohttp's keep-alive, limits, errors and shutdown apply as they always do.

A plain value read here: ``GET`` of one of OpenMeter's three value paths in origin form, HTTP/1.1,
no query, segments of unreserved characters (no percent-encoding, no dot segment), well-formed
header fields within aiohttp's size limit, none of which frames a body or changes the connection
(``Content-Length``, ``Transfer-Encoding``, ``Expect``, ``Upgrade``, a ``Connection`` other
than ``keep-alive``); a loaded view. What a fresh view finds is answered from its cache
(``cached_value``'s rules); past the staleness budget, with what the routes answer (the
feature's ``whenStale``, ``routes.current_value``); a customer or an entitlement the view does
not find, with the routes' own 404 problem (``routes.value_entitlement``). So a client asking
about customers not provisioned yet, or reading through a ledger outage, keeps its connection on
the lane. The lane decides nothing else: whatever it does not answer, aiohttp and the
application do.

Why: aiohttp's request parsing, request and response objects and writer cost a value read about
three quarters of its server time; a keep-alive client's checks arrive one request per chunk
(measured: see the README, "The sidecar API").
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_protocol import RequestHandler

from . import fastlane
from .keys import CLOCK, SETTINGS, VIEW
from .problems import PROBLEM_JSON, ProblemError, problem_body
from .routes import current_value, value_entitlement
from .serialize import value_json
from .view import MICROSECOND, instant

__all__ = ["LaneSite", "WireLane", "WireProtocol", "serve"]

log = logging.getLogger("allotment.sidecar.wire")

#: aiohttp's default limit for a request line or a header field; a longer request is its to judge.
MAX_REQUEST_BYTES = 8190

_SEGMENT = rb"([-!$&'()*+,.0-9:;=@A-Z_a-z~]+)"
#: One whole plain request: the request line, header fields (token, colon, a value of visible
#: characters, spaces and tabs), the empty line, nothing after it.
_REQUEST = re.compile(
    rb"GET /api/(v1/subjects|v1/customers|v2/customers)/"
    + _SEGMENT
    + rb"/entitlements/"
    + _SEGMENT
    + rb"/value HTTP/1\.1\r\n"
    + rb"((?:[-!#$%&'*+.^_`|~0-9A-Za-z]+:[\t ]*(?:[\x21-\x7e\x80-\xff][\t\x20-\x7e\x80-\xff]*)?\r\n)*)"
    + rb"\r\n"
)
#: Fields that frame a body or change the connection: such a request is aiohttp's.
_FRAMING = re.compile(rb"(?:^|\n)(?:content-length|transfer-encoding|expect|upgrade):", re.I)
_CONNECTION = re.compile(rb"(?:^|\n)connection:[\t ]*([^\r]*?)[\t ]*\r", re.I)
_KEEP_ALIVE = b"keep-alive"
_DOTS = (b".", b"..")


def _plain(fields: bytes) -> bool:
    """Tell whether header ``fields`` leave the request without a body and the connection as is."""
    if _FRAMING.search(fields) is not None:
        return False
    return all(value.lower() == _KEEP_ALIVE for value in _CONNECTION.findall(fields))


class WireLane:
    """Turns the bytes of one plain value read into the whole HTTP response, or None."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.view = app[VIEW]
        self.clock = fastlane.micros_clock(app[CLOCK])
        self.budget = app[SETTINGS].staleness_budget // MICROSECOND
        self.lanes = {lane.encode(): found for lane, found in fastlane.value_lanes(app).items()}
        self._texts: tuple[str, str] | None = None
        self._head_second = -1  # the second of ``_head``'s Date
        self._head = b""
        self._date_second = -1
        self._date = ""

    def answer(self, data: bytes) -> bytes | None:
        """Return the response to ``data`` when it is one plain value read the view answers."""
        started = time.perf_counter()
        if len(data) > MAX_REQUEST_BYTES:
            return None
        matched = _REQUEST.fullmatch(data)
        if matched is None:
            return None
        lane, who, ref, fields = matched.groups()
        if who in _DOTS or ref in _DOTS or not _plain(fields):
            return None
        view, now = self.view, self.clock()
        if not view.ready:
            return None  # the app's 503
        observe, by_subject, v2 = self.lanes[lane]
        subject, feature = who.decode(), ref.decode()
        stale = view.stale(now, self.budget)
        body = None if stale else view.hot_body(subject, feature, now, by_subject=by_subject, v2=v2)
        if body is not None:
            head = self._status_and_headers(now)
        else:
            decided = self._decided(subject, feature, now, stale, by_subject=by_subject, v2=v2)
            if decided is None:
                return None
            head, body = decided
        response = b"%b%d\r\n\r\n%b" % (head, len(body), body)
        observe(time.perf_counter() - started)
        return response

    def _decided(
        self, who: str, ref: str, now: int, stale: bool, *, by_subject: bool, v2: bool
    ) -> tuple[bytes, bytes] | None:
        """What the routes answer a read the cache does not: a customer or an entitlement not
        found (404), or a view past its staleness budget (the feature's ``whenStale``)."""
        view, at = self.view, instant(now)
        try:
            entitlement = value_entitlement(view, who, ref, at, by_subject=by_subject)
        except ProblemError as problem:
            if problem.headers:
                return None
            status = HTTPStatus(problem.status)
            body = problem_body(problem.status, problem.detail, problem.extensions)
            return self._head_of(now, status, PROBLEM_JSON), body
        if not stale:
            return None  # found, yet not cached: the app's to decide
        value, headers = current_value(self.app, view, entitlement, at, v2=v2, stale=True)
        head = self._head_of(now, HTTPStatus.OK, "application/json", headers)
        return head, value_json(value, v2=v2).encode()

    def _status_and_headers(self, now: int) -> bytes:
        """A found value's response up to the ``Content-Length`` value: made again per version,
        ms and s."""
        texts = self.view.freshness(now)
        second = int(time.time())
        if texts is not self._texts or second != self._head_second:
            self._texts, self._head_second = texts, second
            self._head = self._head_of(now, HTTPStatus.OK, "application/json")
        return self._head

    def _head_of(
        self, now: int, status: HTTPStatus, content_type: str, headers: dict[str, str] | None = None
    ) -> bytes:
        """A response up to the ``Content-Length`` value, as aiohttp writes the app's."""
        second = int(time.time())
        if second != self._date_second:
            self._date, self._date_second = formatdate(second, usegmt=True), second
        fields = {**(headers or {}), **self.view.freshness_headers(now)}
        freshness = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
        return (
            f"HTTP/1.1 {status.value} {status.phrase}\r\n{freshness}"
            f"Content-Type: {content_type}\r\nDate: {self._date}\r\n"
            f"Server: {SERVER_SOFTWARE}\r\nContent-Length: "
        ).encode()


class WireProtocol(asyncio.Protocol):
    """One accepted connection: the lane answers while aiohttp's ``handler`` has seen nothing.

    Each answer moves aiohttp's keep-alive deadline as a response of its own would: its timer,
    set when the connection opens, would otherwise close a connection only the lane serves,
    however busy, once ``keepalive_timeout`` (an hour by default) has passed, and a request
    the client sent at that moment would go unanswered. An idle connection still closes then.
    """

    __slots__ = ("_clock", "_handler", "_keep_alive", "_lane", "_reading_paused", "_transport")

    def __init__(self, lane: WireLane, handler: RequestHandler) -> None:
        self._lane: WireLane | None = lane
        self._handler = handler
        self._transport: Any = None
        self._reading_paused = False
        # aiohttp's own deadline (a private field); in a version without it, its timer as it is
        known = hasattr(handler, "_next_keepalive_close_time")
        self._keep_alive = handler.keepalive_timeout if known else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._clock = asyncio.get_running_loop().time  # aiohttp's clock for its deadline
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        lane = self._lane
        if lane is not None:
            try:
                response = lane.answer(data)
            except Exception:  # aiohttp's to answer: the application reports it (500, 503)
                log.exception("The wire lane could not answer a read; aiohttp answers it")
                response = None
            if response is not None:
                self._transport.write(response)
                if self._keep_alive is not None:
                    self._handler._next_keepalive_close_time = self._clock() + self._keep_alive
                return
            self._lane = None  # aiohttp's connection from now on
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        self._handler.eof_received()
        return None  # as aiohttp's handler: the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        # A client not reading its answers: read no more requests until it does (the lane's
        # part; aiohttp's handler keeps its own).
        if self._lane is not None and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self._transport.resume_reading()
        self._handler.resume_writing()


class LaneSite(web.BaseSite):
    """A TCP site of an ``AppRunner`` whose connections answer plain value reads themselves."""

    __slots__ = ("_bound_port", "_host", "_port")

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._bound_port = port

    @property
    def port(self) -> int:
        """The port listened on (the one bound, once started, when 0 was asked for)."""
        return self._bound_port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._bound_port}"

    async def start(self) -> None:
        await super().start()
        runner = self._runner
        server = runner.server
        if server is None or not isinstance(runner, web.AppRunner):
            raise RuntimeError("set an app runner up before starting its lane site")
        lane = WireLane(runner.app)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: WireProtocol(lane, server()), self._host, self._port
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start ``app`` on ``host:port`` with both lanes; the caller cleans the runner up."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    fastlane.install(runner)
    await LaneSite(runner, host, port).start()
    return runner
