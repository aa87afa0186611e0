"""The sidecar bench's CPU accounting reads /proc the way the kernel writes it, and its wrk
script asks for every subject.

``bench.sidecar`` reports the server's CPU per request from ``bench.cpu``; a misread field
(the wrong column, a command name with spaces) would silently report another number. Its
saturation attack is wrk with a Lua round robin: a script that asked one path would silently
measure one cached answer.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench import sidecar as sidecar_bench
from bench.cpu import CLOCK_TICKS, CoreTicks, Interval, core_ticks, process_seconds, process_ticks

# utime 1234, stime 56 (fields 14 and 15); the other numbers differ from them on purpose
STAT_TAIL = "S 1 1 1 0 -1 4194560 7 8 9 10 1234 56 11 12 20 0 3 0 99 100 200"


@pytest.mark.parametrize(
    "command",
    [
        pytest.param("python", id="plain-name"),
        pytest.param("my prog", id="name-with-a-space"),
        pytest.param("a) (b", id="name-with-parentheses"),
    ],
)
def test_process_ticks_are_utime_plus_stime(command: str) -> None:
    assert process_ticks(f"4242 ({command}) {STAT_TAIL}\n") == 1234 + 56


def test_core_ticks_count_everything_but_idle_and_iowait_as_busy() -> None:
    proc_stat = (
        "cpu  300 0 60 900 20 0 10 5 0 0\n"
        "cpu0 100 0 20 500 10 0 5 2 7 0\n"
        "cpu1 200 0 40 400 10 0 5 3 0 0\n"
        "intr 1 2 3\n"
    )
    assert core_ticks(proc_stat) == {
        0: CoreTicks(busy=100 + 20 + 5 + 2, total=100 + 20 + 500 + 10 + 5 + 2),
        1: CoreTicks(busy=200 + 40 + 5 + 3, total=200 + 40 + 400 + 10 + 5 + 3),
    }


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_process_seconds_agree_with_the_process_own_times() -> None:
    sum(i * i for i in range(300_000))  # use some CPU, so the counters are not both zero
    own = sum(os.times()[:2])
    read = process_seconds(os.getpid())
    assert read is not None
    assert abs(read - own) <= 2 / CLOCK_TICKS


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_interval_names_each_process_and_reports_a_gone_one_as_none() -> None:
    interval = Interval({"me": os.getpid(), "absent": None})
    sum(i * i for i in range(300_000))
    reading = interval.end()
    assert reading.cpu_seconds["absent"] is None
    mine = reading.cpu_seconds["me"]
    assert mine is not None and mine >= 0
    assert set(reading.core_busy) <= {f"core{i}" for i in range(os.cpu_count() or 1)}


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (apt-get install wrk)")
async def test_wrk_goes_round_robin_over_the_subjects_from_the_first_given(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]], tmp_path: Path
) -> None:
    seen: list[str] = []

    async def value(request: web.Request) -> web.Response:
        seen.append(request.match_info["subject"])
        return web.json_response({"hasAccess": True})

    app = web.Application()
    app.router.add_get("/api/v1/subjects/{subject}/entitlements/tokens/value", value)
    server = await aiohttp_server(app)
    script = tmp_path / "round-robin.lua"
    script.write_text(sidecar_bench._WRK_SCRIPT)
    url = str(server.make_url("/"))
    form = sidecar_bench._subject_path_format()
    measured, _cpu = await asyncio.to_thread(
        sidecar_bench._wrk, shutil.which("wrk") or "wrk", script, url, 1, 0, (form, 3, 5)
    )
    assert measured["non_2xx"] == 0
    assert measured["requests"] > 0
    assert set(seen) == {f"sub-{i}" for i in range(5)}
    counts = Counter(seen)
    # every call of wrk's request() takes the next subject; at most one per connection is
    # cut off when the run ends
    assert max(counts.values()) - min(counts.values()) <= 16 + 1


def _attack(requests: int, seconds: float, cpu_us: float, cold: int = 0) -> dict[str, object]:
    return {
        "requests": requests,
        "seconds": seconds,
        "throughput_per_s": requests / seconds,
        "p50_ms": 0.2,
        "p99_ms": 1.0,
        "p99_9_ms": 2.0,
        "max_ms": 3.0,
        "non_2xx": 0,
        "socket_errors": 0,
        "values_computed_cold": cold,
        "server_cpu_us_per_request": cpu_us,
        "server_core_share": 1.0,
        "background_core_share": 0.2,
        "generator_core_share": 0.4,
        "core_busy": {"core0": 1.0, "core1": 0.6},
        "generator": "wrk",
    }


def test_saturation_rounds_pool_by_requests_and_take_the_median_ratio() -> None:
    bares = [_attack(40_000, 4.0, 60.0), _attack(48_000, 4.0, 55.0), _attack(44_000, 4.0, 58.0)]
    values = [
        _attack(36_000, 4.0, 70.0, cold=100),
        _attack(36_000, 4.0, 72.0),
        _attack(30_800, 4.0, 80.0),
    ]
    rounds = sidecar_bench._rounds(bares, values)
    assert [r["value_over_bare"] for r in rounds] == [0.9, 0.75, 0.7]
    assert sidecar_bench._median_ratio(rounds) == 0.75
    pooled = sidecar_bench._pooled(values, 1000.0)
    assert pooled["throughput_per_s"] == round(102_800 / 12.0, 1)
    assert pooled["requests"] == 102_800
    spent = 36_000 * 70.0 + 36_000 * 72.0 + 30_800 * 80.0
    assert pooled["server_cpu_us_per_request"] == round(spent / 102_800, 1)
    assert pooled["cold_fraction"] == round(100 / 102_800, 3)
    assert pooled["core_busy"] == {"core0": 1.0, "core1": 0.6}
