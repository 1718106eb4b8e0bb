"""The audit trail's price: citygate with every answer waiting for its record (written and
fsynced, group commit) against citygate with the trail off, side by side under wrk.

Both serve the same query from the result cache (the cheapest answer, so the record's share of
it is the largest), from the same configuration but for ``audit``, with the default worker
processes, in interleaved rounds (:func:`bench.peer.turns`) at 32 connections. A third server
writes the same trail without fsync: beside the other two it tells the flush's share of the
price from the record's own (sealing, the batch, the writer thread and the wake-up).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench import peer, servers, wrk
from bench.queries import SELECTIVE

TARGETS = {
    "off": "audit off",
    "written": "audit written, no fsync (file, group commit)",
    "durable": "audit durable (file, fsync, group commit)",
}
CONNECTIONS = 32
TARGET = 1.10  # durable p50 / off p50 at most


def _config(workdir: Path, key: str) -> Path:
    audit: dict[str, Any] = {"sink": "off"}
    if key in ("durable", "written"):
        audit = {"sink": "file", "path": str(workdir / f"{key}-audit.jsonl"), "fsync": key == "durable"}
    raw = {
        "include": str(servers.SERVICES),
        "engine": {"kind": "embedded", "delegate": "never"},
        **servers.OPEN,
        **servers.cache_section(True),
        "audit": audit,
        "limits": servers.UNLIMITED,
        "data_dir": str(workdir / f"durability-{key}"),
    }
    path = workdir / f"durability-{key}.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def run(workdir: Path, rounds: int, seconds: float, progress: Callable[[str], None]) -> dict[str, Any]:
    body = json.dumps({"query": SELECTIVE})
    with contextlib.ExitStack() as stack:
        progress("durability: starting citygate with the trail off and with it durable")
        found = {
            key: stack.enter_context(servers.serve(_config(workdir, key), workdir, f"citygate-audit-{key}"))
            for key in TARGETS
        }
        answers = {key: servers.post(server.url, body) for key, server in found.items()}
        if len({json.dumps(answer, sort_keys=True) for answer in answers.values()}) != 1:
            raise RuntimeError("the servers do not give the same answer")

        cpu = {key: [0.0, 0] for key in TARGETS}  # the server's CPU seconds, and its answers

        def measure(key: str, duration: float) -> wrk.WrkResult:
            before = servers.cpu_seconds({found[key].pid})
            result, _ = wrk.run(found[key].url, [body], connections=CONNECTIONS, seconds=duration)
            cpu[key][0] += servers.cpu_seconds({found[key].pid}) - before
            cpu[key][1] += result.requests
            servers.quiesce()
            return result

        for key in TARGETS:  # warm-up, discarded
            measure(key, 1)
        results: dict[str, list[wrk.WrkResult]] = {key: [] for key in TARGETS}
        for index in range(rounds):
            for key in peer.turns(list(TARGETS), index):
                progress(f"durability: round {index + 1}/{rounds}, {key}")
                results[key].append(measure(key, seconds))
    figures = {key: peer.combine(runs) for key, runs in results.items()}
    ratio = figures["durable"]["p50_ms"] / figures["off"]["p50_ms"]
    return {
        "query": SELECTIVE,
        "targets": TARGETS,
        "load_generator": f"wrk, 2 threads, {CONNECTIONS} connections, {rounds} interleaved rounds of {seconds:g} s",
        "figures": figures,
        # CPU milliseconds per answer of each server's processes (warm-ups included)
        "cpu_ms_per_request": {key: 1000 * used / count for key, (used, count) in cpu.items() if count},
        "checks": [
            peer._check(
                f"audit durable p50 / audit off p50, {CONNECTIONS} connections",
                ratio,
                f"≤ {TARGET:.2f}",
                ratio <= TARGET,
            ),
            peer._check(
                f"audit durable rps / audit off rps, {CONNECTIONS} connections",
                figures["durable"]["rps"] / figures["off"]["rps"],
                "reported",
                None,
            ),
            peer._check(  # the record's own price, without the flush
                f"audit written (no fsync) p50 / audit off p50, {CONNECTIONS} connections",
                figures["written"]["p50_ms"] / figures["off"]["p50_ms"],
                "reported",
                None,
            ),
            peer._check(  # the flush's price
                f"audit durable p50 / audit written (no fsync) p50, {CONNECTIONS} connections",
                figures["durable"]["p50_ms"] / figures["written"]["p50_ms"],
                "reported",
                None,
            ),
        ],
    }


def markdown(result: Any) -> list[str]:
    """The report's section."""
    if not isinstance(result, dict) or "figures" not in result:
        return []
    lines = [
        "## Durability: every answer after its audit record, against the trail off",
        "",
        f"Load generator: {result['load_generator']}. The query is answered from the result cache.",
        "",
        "| server | rps | p50 ms | p95 ms | p99 ms | errors | CPU ms per answer |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    cpu = result.get("cpu_ms_per_request", {})
    for key, figure in result["figures"].items():
        lines.append(
            f"| {result['targets'][key]} | {figure['rps']:.0f} | {figure['p50_ms']:.2f} | {figure['p95_ms']:.2f} "
            f"| {figure['p99_ms']:.2f} | {figure['errors']} | {cpu.get(key, float('nan')):.3f} |"
        )
    return [*lines, ""]
