"""The wire lane: plain value reads answered by their connection, everything else by aiohttp.

Raw bytes over real sockets: what a client sends is exactly what the server parses, so each
request's framing (pipelined, in pieces, closing, malformed) is the test's, not a client's.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allotment.sidecar import wire
from allotment.sidecar.app import create_app
from allotment.sidecar.compute import CoreValueEngine
from allotment.sidecar.keys import METRICS
from allotment.sidecar.settings import SidecarSettings
from allotment.sidecar.view import View
from tests.sidecar import test_ofrep as ofrep
from tests.sidecar.conftest import Clock, Sidecar, StartSidecar, ledger_outage
from tests.sidecar.seed import NS, Seeder
from tests.sidecar.test_fastlane import READS, seed

VALUE = "/api/v1/subjects/sub-a/entitlements/gpt_4_tokens/value"
ROUTE = "/api/v1/subjects/{subject}/entitlements/{entitlement}/value"


@pytest.fixture
async def served(seeder: Seeder, start_sidecar: StartSidecar) -> Sidecar:
    """A sidecar over test_operations' seed (a property's examples share one)."""
    seed(seeder)
    return await start_sidecar()


def request(path: str = VALUE, *fields: str, line: str | None = None) -> bytes:
    """The bytes of a request: ``line`` (default a GET of ``path``), Host, ``fields``."""
    head = [line or f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *fields]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


class Connection:
    """One raw TCP connection to a site: write bytes, read whole responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """Read one response: status, headers (lower-cased names), body (Content-Length)."""
        async with asyncio.timeout(5):
            head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split(" ")[1]), headers, body

    async def closed(self) -> bool:
        """Tell whether the server closed the connection (EOF within a second)."""
        try:
            async with asyncio.timeout(1):
                return await self.reader.read(1) == b""
        except TimeoutError:
            return False

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def wire_port(served: Sidecar) -> int:
    return int(served.root.rsplit(":", 1)[1])


def answered_on_the_wire(served: Sidecar) -> float:
    """How many value reads the sidecar has counted under the subject value route."""
    for metric in served.app[METRICS].registry.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels.get("route") == ROUTE:
                return sample.value
    return 0.0


def comparable(headers: dict[str, str], body: bytes) -> object:
    """A body as compared: a problem without its instance (each request's own urn)."""
    if headers.get("content-type") == "application/problem+json":
        problem = json.loads(body)
        problem.pop("instance", None)
        return problem
    return body


COMPARED = ("content-type", "allotment-ledger-version", "server", "connection")


async def same_answer(served: Sidecar, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` to the wire site and to aiohttp's site; assert one answer; return it."""
    answers = []
    for port in (wire_port(served), served.client.port):
        connection = await Connection.open(port)
        await connection.send(data)
        answers.append(await connection.response())
        await connection.close()
    (status, headers, body), (app_status, app_headers, app_body) = answers
    assert (status, comparable(headers, body)) == (app_status, comparable(app_headers, app_body))
    assert {k: headers.get(k) for k in COMPARED} == {k: app_headers.get(k) for k in COMPARED}
    assert headers.keys() == app_headers.keys(), data
    return status, headers, body


#: Plain reads of a customer or an entitlement the view does not find: the fast lane leaves them
#: to the app, the wire answers them with the app's 404 problem.
NOT_FOUND = ("unknown-subject", "unknown-feature", "subject-as-customer")
WIRE_READS = [pytest.param(*p.values[:1], p.values[1] or p.id in NOT_FOUND, id=p.id) for p in READS]


@pytest.mark.parametrize(("path", "answered"), WIRE_READS)
async def test_the_wire_answers_plain_reads_of_what_it_finds_or_not(
    seeder: Seeder, start_sidecar: StartSidecar, path: str, answered: bool
) -> None:
    """Each read: the wire lane's answer or none; the same answer as aiohttp's either way."""
    metered = seed(seeder)
    served = await start_sidecar()
    path = path.replace("{id}", metered)
    lane = wire.WireLane(served.app)
    assert (lane.answer(request(path)) is not None) is answered
    await same_answer(served, request(path))


async def test_a_read_of_an_unknown_customer_keeps_the_connection_on_the_wire(
    served: Sidecar,
) -> None:
    """A 404 problem, then a found value: both from the lane, aiohttp's handler never reads."""
    transport, handler = _Transport(), _Handler()
    protocol = wire.WireProtocol(wire.WireLane(served.app), handler)  # type: ignore[arg-type]
    protocol._transport = transport
    protocol.data_received(request("/api/v1/subjects/nobody/entitlements/gpt_4_tokens/value"))
    protocol.data_received(request())
    assert handler.calls == []
    (missing, found) = [answer.split(b"\r\n", 1)[0] for answer in transport.written]
    assert (missing, found) == (b"HTTP/1.1 404 Not Found", b"HTTP/1.1 200 OK")
    problem = json.loads(transport.written[0].split(b"\r\n\r\n", 1)[1])
    assert problem["status"] == 404 and "'nobody'" in problem["detail"]


#: Requests the wire lane leaves to aiohttp, though their path is a plain value read.
DECLINED = [
    pytest.param(request(line=f"GET {VALUE} HTTP/1.0"), id="http-1.0"),
    pytest.param(request(VALUE, "Connection: close"), id="connection-close"),
    pytest.param(request(VALUE, "Connection: upgrade"), id="connection-upgrade"),
    pytest.param(request(VALUE, "Content-Length: 0"), id="content-length"),
    pytest.param(request(VALUE, "content-length: 2") + b"{}", id="body"),
    pytest.param(request(VALUE, "Transfer-Encoding: chunked") + b"0\r\n\r\n", id="chunked"),
    pytest.param(request(VALUE, "Expect: 100-continue"), id="expect"),
    pytest.param(request(VALUE, "Upgrade: websocket"), id="upgrade"),
    pytest.param(request(VALUE, "Accept : */*"), id="space-before-colon"),
    pytest.param(request(VALUE, "Accept"), id="no-colon"),
    pytest.param(request(VALUE, "Bad\x01Name: x"), id="bad-name"),
    pytest.param(request(VALUE, "X-Value: a\x00b"), id="nul-in-value"),
    pytest.param(request(VALUE, " folded"), id="obsolete-fold"),
    pytest.param(request(VALUE).replace(b"\r\n", b"\n"), id="bare-lf"),
    pytest.param(request(line=f"get {VALUE} HTTP/1.1"), id="lower-case-method"),
    pytest.param(request(line=f"GET http://127.0.0.1{VALUE} HTTP/1.1"), id="absolute-form"),
    pytest.param(request(line=f"GET {VALUE}  HTTP/1.1"), id="two-spaces"),
    pytest.param(request(VALUE, "X-Big: " + "a" * 8190), id="too-long"),
]


@pytest.mark.parametrize("data", DECLINED)
async def test_what_the_wire_declines_aiohttp_answers(served: Sidecar, data: bytes) -> None:
    """Framing, connection and syntax the lane does not judge: aiohttp's answer, whatever it is."""
    assert wire.WireLane(served.app).answer(data) is None
    await same_answer(served, data)


@pytest.mark.parametrize(
    "fields",
    [
        (),
        ("Connection: keep-alive",),
        ("connection:Keep-Alive  ",),
        ("Accept: application/json", "User-Agent: node", "Accept-Encoding: gzip, deflate"),
        ("X-Empty:", "X-Tab:\tvalue\t", "X-Latin: caf\xe9"),
        ("Authorization: Bearer a.b.c",) * 3,
    ],
)
async def test_the_wire_answers_a_plain_read_with_any_plain_fields(
    served: Sidecar, fields: tuple[str, ...]
) -> None:
    """Header fields that change nothing about framing or the connection: the wire answers."""
    data = request(VALUE, *fields)
    data = data.decode().encode("latin-1")
    assert wire.WireLane(served.app).answer(data) is not None
    status, _, body = await same_answer(served, data)
    assert (status, body) == (200, (await (await served.client.get(VALUE)).read()))


async def test_one_connection_keeps_its_order_from_the_wire_to_aiohttp(
    served: Sidecar,
) -> None:
    """Reads, a write, reads again on one connection: each answered, in order, none lost."""
    connection = await Connection.open(wire_port(served))
    before = answered_on_the_wire(served)
    for _ in range(3):
        await connection.send(request())
        assert (await connection.response())[0] == 200
    assert answered_on_the_wire(served) == before + 3
    await connection.send(
        request(VALUE, "Content-Length: 0", line="POST /api/v1/features HTTP/1.1")
    )
    status, headers, _ = await connection.response()
    assert (status, headers["content-type"]) == (405, "application/problem+json")
    await connection.send(request())  # aiohttp's connection now: still answered, in order
    status, _, body = await connection.response()
    assert status == 200 and b"balance" in body
    await connection.send(request("/api/v1/subjects/sub-a/entitlements/sso/value"))
    status, _, body = await connection.response()
    assert (status, b"balance" in body) == (200, False)
    await connection.close()


async def test_pipelined_and_split_requests_are_answered_in_order(
    served: Sidecar,
) -> None:
    """Two requests in one chunk, one request in two chunks: aiohttp's framing, in order."""
    sso = request("/api/v1/subjects/sub-a/entitlements/sso/value")
    connection = await Connection.open(wire_port(served))
    await connection.send(request() + sso)
    first, second = await connection.response(), await connection.response()
    assert (first[0], second[0]) == (200, 200)
    assert b"balance" in first[2] and b"balance" not in second[2]
    await connection.close()
    connection = await Connection.open(wire_port(served))
    data = request()
    await connection.send(data[:20])
    await asyncio.sleep(0.05)
    await connection.send(data[20:])
    assert (await connection.response())[0] == 200
    await connection.close()


async def test_connection_close_is_answered_then_closed(
    served: Sidecar,
) -> None:
    """A read asking to close after its answer: answered (by aiohttp), then closed."""
    connection = await Connection.open(wire_port(served))
    await connection.send(request(VALUE, "Connection: close"))
    status, headers, _ = await connection.response()
    assert (status, headers.get("connection")) == (200, "close")
    assert await connection.closed()


async def test_shutting_down_closes_connections_only_the_wire_served(
    served: Sidecar,
) -> None:
    """Cleaning the runner up closes an idle keep-alive connection aiohttp never read from."""
    connection = await Connection.open(wire_port(served))
    await connection.send(request())
    assert (await connection.response())[0] == 200
    await served.client.server.runner.cleanup()  # type: ignore[union-attr]
    assert await connection.closed()


async def test_a_busy_connection_outlives_the_keep_alive_timeout_an_idle_one_does_not(
    seeder: Seeder, start_sidecar: StartSidecar
) -> None:
    """aiohttp closes a connection idle for ``keepalive_timeout``; the lane's answers count as
    activity, as aiohttp's own do (its timer starts when the connection opens)."""
    seed(seeder)
    served = await start_sidecar(keepalive_timeout=0.5)
    busy, idle = await Connection.open(wire_port(served)), await Connection.open(wire_port(served))
    await idle.send(request())
    assert (await idle.response())[0] == 200
    for _ in range(8):  # 1.2 s of reads, 0.15 s apart: never idle for 0.5 s
        await busy.send(request())
        assert (await busy.response())[0] == 200
        await asyncio.sleep(0.15)
    assert await idle.closed()  # answered on the lane once, then idle past the timeout
    await busy.send(request())
    assert (await busy.response())[0] == 200
    await busy.close()


async def test_past_the_staleness_budget_the_wire_answers_what_each_feature_decides(
    seeder: Seeder, start_sidecar: StartSidecar, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale view: each read answered on the wire as aiohttp answers it (``whenStale``)."""
    ofrep.seed(seeder)  # gpt_4_tokens: Allow, integrations: Deny
    served = await start_sidecar(staleness_budget=timedelta(seconds=5))
    ledger_outage(served, monkeypatch)
    lane = wire.WireLane(served.app)
    clock.advance(timedelta(seconds=6))
    answers = {}
    for path in (
        "/api/v1/customers/customer-2/entitlements/gpt_4_tokens/value",
        "/api/v1/subjects/sub-a/entitlements/integrations/value",
        "/api/v2/customers/customer-1/entitlements/integrations/value",
    ):
        assert lane.answer(request(path)) is not None
        status, headers, body = await same_answer(served, request(path))
        answers[path] = (status, json.loads(body)["hasAccess"], headers["allotment-stale-policy"])
    assert list(answers.values()) == [
        (200, True, "Allow"),  # access although the balance is spent
        (200, False, "Deny"),  # no access although entitled
        (200, False, "Deny"),  # v2 too
    ]
    missing = request("/api/v1/subjects/nobody/entitlements/sso/value")
    assert lane.answer(missing) is not None
    assert (await same_answer(served, missing))[0] == 404


async def test_a_view_not_loaded_leaves_reads_to_the_application(ledger_url: str) -> None:
    """Before the first load the lane answers nothing: the app's 503."""
    app = create_app(SidecarSettings(ledger_url, NS), View(NS, CoreValueEngine(), freeze_gc=False))
    assert wire.WireLane(app).answer(request()) is None


async def test_a_read_the_lane_fails_on_is_answered_by_aiohttp(
    served: Sidecar, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An error computing a read on the wire leaves it to aiohttp: answered, not dropped, and
    the lane's failure is logged (a lane that always failed would otherwise go unnoticed)."""

    def broken(*_args: object, **_kwargs: object) -> bytes:
        raise RuntimeError("a value that cannot be computed")

    monkeypatch.setattr(served.view, "hot_body", broken)
    connection = await Connection.open(wire_port(served))
    await connection.send(request())
    assert (await connection.response())[0] == 500
    await connection.close()
    assert any(r.name == "allotment.sidecar.wire" for r in caplog.records)


class _Transport:
    """Records what flow control asks of a transport, and what is written to it."""

    def __init__(self) -> None:
        self.reading = True
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class _Handler:
    """aiohttp's request handler as the lane sees it: what it is told."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def data_received(self, data: bytes) -> None:
        self.calls.append("data")

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")


def test_a_client_not_reading_its_answers_is_not_read_from() -> None:
    """Flow control: while the transport's buffer is full the lane reads no more requests."""
    transport, handler = _Transport(), _Handler()
    protocol = wire.WireProtocol(object(), handler)  # type: ignore[arg-type]
    protocol._transport = transport
    protocol.pause_writing()
    assert transport.reading is False
    protocol.resume_writing()
    assert transport.reading is True
    assert handler.calls == ["pause", "resume"]  # aiohttp's handler is told too


_NAME = st.text("abcdefghijklmnopqrstuvwxyz-ABCXYZ019_ !:@\t", min_size=1, max_size=12)
_VALUE_TEXT = st.text("abc xyz019-.,;=/\t:\x01\x7f\xe9", max_size=12)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(fields=st.lists(st.tuples(_NAME, _VALUE_TEXT), max_size=4))
async def test_any_header_fields_get_aiohttp_s_answer(
    served: Sidecar, fields: list[tuple[str, str]]
) -> None:
    """Arbitrary (often malformed) header fields: the wire site answers as aiohttp's does."""
    data = request(VALUE, *(f"{name}:{value}" for name, value in fields))
    await same_answer(served, data.decode().encode("latin-1"))
