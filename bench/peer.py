"""Peer side by side: PostGraphile 4 and citygate serving the same single-department query over
the same PostgreSQL database, under the same load generator and connection counts.

Five servers run at once on loopback, each a real process: PostGraphile; citygate without its
result cache on the embedded engine and on Trino; citygate with its result cache (embedded);
and a ceiling, starlette answering with fixed bytes (``bench/ceiling.py``), which shows what
this machine can serve at all while the figures are taken.
Before any timing, both sides must answer with the same rows. Then, for 8 and for 32
connections, wrk runs against each server in turn for a few seconds, round after round, in a
different order every round (:func:`turns`), so drift on a busy 2-core machine falls on all alike.

Each figure is the run's total requests over its total time (requests per second) and the
median over rounds of wrk's per-round latency percentiles (p50, p95, p99).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import servers, wrk
from bench.queries import SELECTIVE

POSTGRAPHILE_VERSION = "4.14.1"  # bench/peer/package.json pins it exactly
# PostGraphile's inflection of the same request: `condition` for equality on columns, the
# primary key's order, the first 10 rows.
POSTGRAPHILE_SELECTIVE = """{ allClinicVisits(condition: {hospital: "东华医院", visitDate: "2015-06-30"},
  orderBy: VISIT_ID_ASC, first: 10) { nodes { visitId hospital departmentName diagnosis visitDate cost } } }"""

TARGETS = {
    "postgraphile": f"PostGraphile {POSTGRAPHILE_VERSION}",
    "embedded_uncached": "citygate, embedded, uncached",
    "trino_uncached": "citygate, Trino, uncached",
    "cached": "citygate, cached",
    "ceiling": "starlette, fixed answer (ceiling)",
}
CONNECTIONS = (8, 32)


def run(workdir: Path, rounds: int, seconds: float, progress: Callable[[str], None]) -> dict[str, Any]:
    """Start the four servers, check they agree, and measure them round by round."""
    unsupported = servers.cache_supported()
    # Until the gateway's configuration knows the result cache, both citygate flavours run
    # with the configuration's defaults (the plan cache only), and the report says so.
    cached, uncached = (None, None) if unsupported else (True, False)
    with contextlib.ExitStack() as stack:
        progress("peer: starting PostGraphile, three citygate servers and the ceiling")
        found = {
            "postgraphile": stack.enter_context(servers.postgraphile(workdir)),
            "embedded_uncached": stack.enter_context(
                servers.citygate("embedded", uncached, workdir, "citygate-embedded-uncached")
            ),
            "trino_uncached": stack.enter_context(
                servers.citygate("trino", uncached, workdir, "citygate-trino-uncached")
            ),
            "cached": stack.enter_context(servers.citygate("embedded", cached, workdir, "citygate-embedded-cached")),
        }
        answer = servers.post(found["cached"].url, json.dumps({"query": SELECTIVE}))
        found["ceiling"] = stack.enter_context(servers.ceiling(workdir, answer))
        rows = same_rows(found)
        first = rows[0]["visit_id"]
        bodies = {
            key: json.dumps({"query": POSTGRAPHILE_SELECTIVE if key == "postgraphile" else SELECTIVE}) for key in found
        }
        expected = {key: f'"visitId":"{first}"' if key == "postgraphile" else f'"visit_id":"{first}"' for key in found}
        rss_before = {key: servers.rss_kib(server.pid) for key, server in found.items()}

        def measure(key: str, connections: int, duration: float) -> wrk.WrkResult:
            result, _ = wrk.run(
                found[key].url, [bodies[key]], connections=connections, seconds=duration, expected=expected[key]
            )
            # Requests still running when wrk hangs up (Trino's take seconds) would load the
            # machine during the next server's turn: one more request waits behind them, then
            # the machine must go quiet.
            servers.post(found[key].url, bodies[key], timeout=300)
            servers.quiesce()
            return result

        runs: dict[int, dict[str, list[wrk.WrkResult]]] = {}
        order = list(found)
        for connections in CONNECTIONS:
            for key in order:  # warm-up, discarded: JIT, pools, caches
                progress(f"peer: warm-up {key} at {connections} connections")
                measure(key, connections, 1)
            runs[connections] = {key: [] for key in order}
            for index in range(rounds):
                for key in turns(order, index):
                    progress(f"peer: {connections} connections, round {index + 1}/{rounds}, {key}")
                    runs[connections][key].append(measure(key, connections, seconds))
        rss_after = {key: servers.rss_kib(server.pid) for key, server in found.items()}
    figures = {
        str(connections): {key: combine(results) for key, results in by_target.items()}
        for connections, by_target in runs.items()
    }
    return {
        "query": SELECTIVE,
        "postgraphile_query": POSTGRAPHILE_SELECTIVE,
        "rows_compared": len(rows),
        "targets": TARGETS,
        "cache_config": "cache: {enabled: true|false}" if not unsupported else f"not supported yet: {unsupported}",
        "audit": "citygate writes an audit record per request to a file"
        if servers.AUDIT and not unsupported
        else "off",
        "load_generator": f"wrk, 2 threads, {rounds} interleaved rounds of {seconds:g} s per target",
        "by_connections": figures,
        "rss_kib": {"before": rss_before, "after": rss_after},
        "checks": checks(figures),
    }


def turns(order: list[str], index: int) -> list[str]:
    """The order of round ``index``: through the servers with a different stride each round, so
    that no server follows the same one round after round (a plain rotation keeps every
    server's neighbours), and what one leaves behind (Trino goes on compiling and collecting
    after its turn) falls on each of the others in turn.

    >>> [turns(["a", "b", "c", "d", "e"], i) for i in range(3)]
    [['a', 'b', 'c', 'd', 'e'], ['b', 'd', 'a', 'c', 'e'], ['c', 'a', 'd', 'b', 'e']]
    """
    n = len(order)
    strides = [m for m in range(1, n) if math.gcd(m, n) == 1] or [1]
    stride = strides[index % len(strides)]
    return [order[(index + k * stride) % n] for k in range(n)]


def same_rows(found: dict[str, servers.Server]) -> list[dict[str, Any]]:
    """The rows every server answers, after renaming PostGraphile's camelCase fields; raise
    unless they are the same rows in the same order."""
    theirs = servers.post(found["postgraphile"].url, json.dumps({"query": POSTGRAPHILE_SELECTIVE}))
    if "errors" in theirs:
        raise AssertionError(f"PostGraphile refused the query: {theirs['errors']}")
    reference = [{_snake(k): v for k, v in node.items()} for node in theirs["data"]["allClinicVisits"]["nodes"]]
    if not reference:
        raise AssertionError("the peer query matches no rows; pick a condition that does")
    for key, server in found.items():
        if key == "postgraphile":
            continue
        ours = servers.post(server.url, json.dumps({"query": SELECTIVE}))
        if ours.get("data", {}).get("health_clinic_visits") != reference:
            raise AssertionError(f"{key} answers other rows than PostGraphile:\n{ours}\n{reference}")
    return reference


def _snake(name: str) -> str:
    """PostGraphile's field name as citygate's column name.

    >>> _snake("departmentName")
    'department_name'
    """
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def combine(results: list[wrk.WrkResult]) -> dict[str, Any]:
    """One target's rounds: total requests over total time, and the median of each percentile
    over the rounds that got any answer (a round with none has no latency to speak of)."""
    requests = sum(r.requests for r in results)
    seconds = sum(r.duration_s for r in results)
    answered = [r for r in results if r.requests] or results

    def median(name: str) -> float:
        return statistics.median(r.latency_ms[name] for r in answered)

    return {
        "rps": requests / seconds,
        "p50_ms": median("p50"),
        "p95_ms": median("p95"),
        "p99_ms": median("p99"),
        "requests": requests,
        "seconds": seconds,
        "rounds": len(results),
        "errors": sum(r.errors for r in results),
        "per_round": [r.as_dict() for r in results],
    }


def checks(figures: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met."""
    out = []
    for connections, by in figures.items():
        peer, cached, embedded = by["postgraphile"], by["cached"], by["embedded_uncached"]
        if not (peer["requests"] and cached["requests"] and embedded["requests"]):
            out.append(_check(f"answers from every server at {connections} connections", 0, "> 0", False))
            continue
        out.append(
            _check(
                f"cached rps / PostGraphile rps at {connections} connections",
                cached["rps"] / peer["rps"],
                ">= 2",
                cached["rps"] / peer["rps"] >= 2,
            )
        )
        out.append(
            _check(
                f"uncached embedded p50 / PostGraphile p50 at {connections} connections",
                embedded["p50_ms"] / peer["p50_ms"],
                "<= 2",
                embedded["p50_ms"] / peer["p50_ms"] <= 2,
            )
        )
        ceiling = by.get("ceiling")
        if ceiling and ceiling["requests"]:  # context, not a target: how near the machine's limit
            out.append(
                _check(
                    f"cached rps / ceiling rps at {connections} connections",
                    cached["rps"] / ceiling["rps"],
                    "none: context",
                    None,
                )
            )
    eight = figures.get("8")
    if eight is not None:
        cached = eight["cached"]
        out.append(_check("cached p50 at 8 connections (ms)", cached["p50_ms"], "<= 1", cached["p50_ms"] <= 1))
        out.append(_check("cached rps at 8 connections", cached["rps"], ">= 5000", cached["rps"] >= 5000))
    errors = sum(f["errors"] for by in figures.values() for f in by.values())
    out.append(_check("errors in all peer runs", errors, "0", errors == 0))
    return out


def _check(name: str, value: float, target: str, met: bool | None) -> dict[str, Any]:
    return {"name": name, "value": value, "target": target, "met": met}
