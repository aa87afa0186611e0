"""The bench's load generator, bench/attack, sends what it is asked and reports every request.

It is vegeta's attacker with its own pacer: the latency table rests on it sending the rate
asked, round robin over the targets, each request's status as the server answered, and on
``-quantum`` grouping what is due at its multiples (the trade between an even pace and the
generator's CPU, which the writer beside it needs).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench import sidecar as sidecar_bench


@pytest.fixture(scope="module")
def attack_binary(tmp_path_factory: pytest.TempPathFactory) -> str:
    """bench/attack built with the Go toolchain (the first build fetches vegeta's module)."""
    return sidecar_bench.build_attack(tmp_path_factory.mktemp("attack"))


@pytest.fixture
async def recorded(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> tuple[str, list[str]]:
    """A server's base URL and the paths it was asked, in order: 404 for ``.../missing``."""
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.path)
        status = 404 if request.path.endswith("/missing") else 200
        return web.Response(status=status, text="{}", content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}", seen


async def _attack(
    binary: str, folder: Path, urls: list[str], pace: tuple[int, int], seconds: float
) -> tuple[list[sidecar_bench._Result], float]:
    """Attack ``urls`` (taken round robin) as the bench does, on core 0."""
    targets = folder / "targets.txt"
    targets.write_text("".join(f"GET {url}\n" for url in urls))
    return await asyncio.to_thread(sidecar_bench._attack, binary, targets, pace, seconds, 0)


async def test_the_attack_sends_the_rate_asked_round_robin_and_reports_each_request(
    recorded: tuple[str, list[str]], attack_binary: str, tmp_path: Path
) -> None:
    base, seen = recorded
    paths = ["/v/0", "/v/1", "/v/missing", "/v/3"]

    rows, cpu = await _attack(attack_binary, tmp_path, [base + p for p in paths], (200, 0), 1.0)

    assert 199 <= len(rows) <= 201  # 200/s for 1 s
    assert len(seen) == len(rows)  # each request reported, once
    assert sorted(seen) == sorted(itertools.islice(itertools.cycle(paths), len(rows)))
    codes = [r.code for r in rows]
    assert codes.count("404") == seen.count("/v/missing")
    assert codes.count("200") == len(rows) - codes.count("404")
    assert [r.start_ns for r in rows] == sorted(r.start_ns for r in rows)
    assert all(r.latency_ns > 0 for r in rows)
    assert cpu > 0


async def test_a_quantum_sends_what_is_due_together_at_its_multiples(
    recorded: tuple[str, list[str]], attack_binary: str, tmp_path: Path
) -> None:
    base, seen = recorded

    # 200/s in quanta of 100 ms for 1 s: the requests due 5 ms apart go in groups, 100 ms apart
    quantum_us = 100_000
    rows, _ = await _attack(attack_binary, tmp_path, [base + "/v/0"], (200, quantum_us), 1.0)

    starts = [r.start_ns for r in rows]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    between_groups = [g for g in gaps if g > quantum_us * 1000 // 2]
    # nine groups of twenty at 100 to 900 ms, and the one due at 1 s, when the attack ends
    assert len(between_groups) == 9
    assert len(seen) == len(rows)
    assert 180 <= len(rows) <= 182


async def test_rate_zero_attacks_as_fast_as_the_connections_go(
    recorded: tuple[str, list[str]], attack_binary: str, tmp_path: Path
) -> None:
    """``--saturate-with attack``: a closed loop over 16 connections, every request reported."""
    base, seen = recorded

    rows, _ = await _attack(attack_binary, tmp_path, [base + "/v/0", base + "/v/1"], (0, 0), 0.5)

    assert len(rows) == len(seen) > 200  # far more than any pace the other tests ask
    assert {r.code for r in rows} == {"200"}
    assert set(seen) == {"/v/0", "/v/1"}
