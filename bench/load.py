"""Load: a bounded run against a real citygate server on loopback.

10,000 requests from 32 connections (wrk, ``bench/post.lua``), cycling through the 365 days of
2015 as a query variable, so the engine answers a different day each time from one plan.
Every response is checked: a non-2xx status, a GraphQL ``errors`` member or a body without the
expected field counts as an error, and there must be none. The server's resident set size
(``VmRSS``) is read before and after; it must stay flat.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from bench import servers, wrk
from bench.queries import days_of_2015

ENGINE: Literal["trino", "embedded"] = "embedded"
# Without the result cache every request reaches the engine: the whole path is under load.
CACHE = False
# A leak of 1 KiB per request would grow the process by about 10 MiB over 10,000 requests;
# "flat" allows less than that.
FLAT_KIB = 8 * 1024
EXPECTED = '{"data":{"health_clinic_visits":['  # citygate's compact JSON


def run(
    workdir: Path, requests: int, connections: int, progress: Callable[[str], None], threads: int = 2
) -> dict[str, Any]:
    cache = None if servers.cache_supported() else CACHE
    bodies = days_of_2015()
    progress("load: starting citygate")
    with servers.citygate(ENGINE, cache, workdir, "citygate-load") as server:
        rss_started = servers.rss_kib(server.pid)
        progress(f"load: warm-up, {requests // 10:,} requests")
        warm, _ = wrk.run(
            server.url,
            bodies,
            connections=connections,
            threads=threads,
            seconds=300,
            limit=requests // 10,
            expected=EXPECTED,
        )
        rss_before = servers.rss_kib(server.pid)
        progress(f"load: {requests:,} requests from {connections} connections")
        with _sampling(server.pid) as series:
            result, output = wrk.run(
                server.url,
                bodies,
                connections=connections,
                threads=threads,
                seconds=600,
                limit=requests,
                expected=EXPECTED,
            )
        rss_after = servers.rss_kib(server.pid)
    delta = rss_after - rss_before
    return {
        "server": f"citygate serve, {ENGINE} engine, result cache "
        f"{'as configured by default' if cache is None else 'on' if cache else 'off'}, "
        f"audit trail {'to a file' if servers.AUDIT and cache is not None else 'off'}",
        "load_generator": f"wrk, {threads} threads, {connections} connections, stop after {requests:,} responses",
        "requests": result.requests,
        "connections": connections,
        "seconds": result.duration_s,
        "rps": result.rps,
        "latency_ms": result.latency_ms,
        "errors": {
            "non2xx": result.non2xx,
            "graphql_errors": result.graphql_errors,
            "mismatched": result.mismatched,
            "socket_errors": result.socket_errors,
            "total": result.errors,
        },
        "warm_up": {"requests": warm.requests, "errors": warm.errors},
        "rss_kib": {"started": rss_started, "before": rss_before, "after": rss_after, "delta": delta},
        # (seconds into the run, KiB) once a second: a plateau and a leak differ in their slope
        "rss_series_kib": series,
        "rss_second_half_delta_kib": _second_half(series),
        "checks": [
            {
                "name": "errors (non-2xx, GraphQL errors, wrong rows, sockets)",
                "value": result.errors,
                "target": "0",
                "met": result.errors == 0 and warm.errors == 0,
            },
            {"name": "RSS after - before (KiB)", "value": delta, "target": f"< {FLAT_KIB}", "met": delta < FLAT_KIB},
            {
                # wrk finishes the responses already in flight when a thread stops: a few more
                "name": "requests completed",
                "value": result.requests,
                "target": f">= {requests}",
                "met": result.requests >= requests,
            },
        ],
        "wrk_output": output,
    }


@contextlib.contextmanager
def _sampling(pid: int, every: float = 1.0) -> Iterator[list[tuple[float, int]]]:
    """The process's RSS once per ``every`` seconds while the block runs."""
    series: list[tuple[float, int]] = []
    stop = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        while not stop.wait(every):
            series.append((round(time.monotonic() - started, 1), servers.rss_kib(pid)))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield series
    finally:
        stop.set()
        thread.join()


def _second_half(series: list[tuple[float, int]]) -> int | None:
    """RSS growth from the middle sample to the last: after warm-up effects, what keeps growing.

    >>> _second_half([(1.0, 100), (2.0, 150), (3.0, 160), (4.0, 171)])
    11
    """
    if len(series) < 2:
        return None
    return series[-1][1] - series[len(series) // 2][1]
