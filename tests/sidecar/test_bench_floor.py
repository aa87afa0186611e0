"""The bench's floor answers the value attack's requests with a value read's own answer.

``value_p99_over_floor_ms`` compares the sidecar with the floor under the same generator: the
floor must send back exactly the bytes the server answered (a shorter answer costs the generator
less per request, and its tail then belongs to another load) and one answer per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestServer

from bench import sidecar as sidecar_bench


async def test_a_recorded_answer_is_the_whole_response_as_the_server_sent_it(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> None:
    body = '{"hasAccess":true}' * 20000  # 360 kB: several reads

    async def value(_request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="application/json", headers={"X-Seen": "1"})

    app = web.Application()
    app.router.add_get("/value", value)
    server = await aiohttp_server(app)
    assert server.port is not None

    answer = await asyncio.to_thread(sidecar_bench.recorded_answer, server.port, "/value")

    head, _, sent = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"X-Seen: 1" in lines
    assert f"Content-Length: {len(body)}".encode() in lines
    assert sent == body.encode()


async def test_the_floor_answers_each_request_with_the_recorded_answer() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: sidecar_bench._FloorProtocol(answer), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(10):  # a missing answer fails, not hangs
            await _ask_twice_then_once(port, answer)
    finally:
        server.close()
        await server.wait_closed()


async def _ask_twice_then_once(port: int, answer: bytes) -> None:
    """Two whole requests and part of a third in one write, then the rest of the third."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    writer.write(request * 2 + request[:10])
    await writer.drain()
    assert await reader.readexactly(2 * len(answer)) == answer * 2
    writer.write(request[10:])
    await writer.drain()
    assert await reader.readexactly(len(answer)) == answer
    writer.close()
    await writer.wait_closed()
