"""The benchmark's own machinery, without running a benchmark: the wrk output parser on real
wrk output captured here, and the report writer on a small synthetic result."""

from __future__ import annotations

import doctest
import json
import re
from pathlib import Path
from typing import Any

import pytest

from bench import load, peer, queries, report, stats, wrk

FIXTURES = Path(__file__).parent / "fixtures" / "bench"


def test_parse_a_bounded_run() -> None:
    """2,000 responses from 32 connections, stopped by the script; five answers took longer
    than wrk's default 2 s timeout and count as socket errors."""
    result = wrk.parse((FIXTURES / "wrk-bounded-32c.txt").read_text())
    assert (result.threads, result.connections, result.requests) == (2, 32, 2000)
    assert result.duration_s == pytest.approx(43.048458)  # the threads' span, not wrk's 10-minute -d
    assert result.rps == pytest.approx(2000 / 43.048458)
    assert result.latency_ms["p50"] == pytest.approx(628.275)
    assert result.latency_ms["p95"] == pytest.approx(1209.582)
    assert result.latency_ms["p99.9"] == pytest.approx(1917.91)
    assert (result.non2xx, result.graphql_errors, result.mismatched, result.socket_errors) == (0, 0, 0, 5)
    assert result.errors == 5
    assert result.as_dict()["errors"] == 5


def test_parse_a_timed_run() -> None:
    result = wrk.parse((FIXTURES / "wrk-timed-8c.txt").read_text())
    assert (result.threads, result.connections, result.requests) == (2, 8, 1231)
    assert result.duration_s == pytest.approx(3.035046)
    assert result.latency_ms["p50"] == pytest.approx(18.89)
    assert result.errors == 0


def test_parse_falls_back_on_wrks_own_lines() -> None:
    """wrk's Non-2xx line counts even where the script's totals say less."""
    text = (FIXTURES / "wrk-timed-8c.txt").read_text()
    text = text.replace("Requests/sec:", "  Non-2xx or 3xx responses: 7\nRequests/sec:")
    assert wrk.parse(text).non2xx == 7


def test_parse_refuses_other_output() -> None:
    with pytest.raises(wrk.WrkError, match="not the output of wrk"):
        wrk.parse("Running 10s test @ http://127.0.0.1:1/\n  2 threads and 8 connections\n")


@pytest.mark.parametrize("module", [stats, queries, peer, report, load])
def test_doctests(module: Any) -> None:
    failures, _ = doctest.testmod(module)
    assert failures == 0


def _latency(p50: float) -> dict[str, float]:
    return {"p50": p50, "p90": p50 * 1.5, "p95": p50 * 2, "p99": p50 * 3, "p99.9": p50 * 4, "mean": p50, "max": p50 * 5}


def _peer_figure(rps: float, p50: float) -> dict[str, Any]:
    return {
        "rps": rps,
        "p50_ms": p50,
        "p95_ms": p50 * 2,
        "p99_ms": p50 * 3,
        "requests": int(rps * 10),
        "seconds": 10.0,
        "rounds": 2,
        "errors": 0,
        "per_round": [],
    }


def synthetic() -> dict[str, Any]:
    """A small result with every section, shaped as bench.run writes it."""
    timing = {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "runs": 10}
    by = {
        "postgraphile": _peer_figure(2400, 3.2),
        "embedded_uncached": _peer_figure(900, 5.0),
        "trino_uncached": _peer_figure(60, 90.0),
        "cached": _peer_figure(6000, 0.9),
        "ceiling": _peer_figure(8000, 0.5),
    }
    figures = {"8": by, "32": by}
    return {
        "date": "2026-11-27T20:00:00",
        "machine": "x86_64, 2 cores, CPython 3.11",
        "load_average": "load average 1.0 at the start, 1.0 at the end",
        "failures": {"seed": "ValueError: synthetic"},
        "shaping": {
            "fields_per_response": 18000,
            "citygate_us_per_field": 0.1,
            "strawberry_us_per_field": 3.4,
            "ratio": 34.0,
            "target": ">= 10x cheaper",
            "met": True,
            "citygate": timing,
            "strawberry": timing,
        },
        "overhead": [
            {
                "engine": engine,
                "direct_sql": timing,
                "gateway_in_process": timing,
                "gateway_uncached_plan": timing,
                "gateway_over_http": timing,
                "p50_ratio_in_process": 1.04,
                "p50_ratio_uncached_plan": 1.3,
                "p50_ratio_over_http": 1.6,
                "target": "<= 1.5",
                "met": True,
            }
            for engine in ("embedded", "trino")
        ],
        "policy": [
            {
                "engine": "embedded",
                "query": "residents list",
                "without_policy": timing,
                "with_policy": timing,
                "p50_ratio": 1.02,
                "target": "<= 1.05",
                "met": True,
            },
            {
                "engine": "trino",
                "query": "visits and residents",
                "without_policy": timing,
                "with_policy": timing,
                "p50_ratio": 1.04,
                "p50_ratio_ci95": [1.01, 1.08],
                "target": "<= 1.05",
                "met": None,
            },
        ],
        "statements": {"statements_per_request": {"depth_1": 1, "depth_2": 1}, "target": "1", "met": True},
        "peer": {
            "rows_compared": 8,
            "targets": peer.TARGETS,
            "cache_config": "cache: {enabled: true|false}",
            "load_generator": "wrk, 2 threads, 2 interleaved rounds of 5 s per target",
            "by_connections": figures,
            "checks": peer.checks(figures),
        },
        "load": {
            "server": "citygate serve, embedded engine, result cache False",
            "load_generator": "wrk, 2 threads, 32 connections, stop after 10,000 responses",
            "requests": 10000,
            "connections": 32,
            "seconds": 20.0,
            "rps": 500.0,
            "latency_ms": _latency(60.0),
            "errors": {"non2xx": 0, "graphql_errors": 0, "mismatched": 0, "socket_errors": 0, "total": 0},
            "warm_up": {"requests": 1000, "errors": 0},
            "rss_kib": {"started": 150_000, "before": 200_000, "after": 201_000, "delta": 1000},
            "rss_series_kib": [[1.0, 200_100], [2.0, 200_600], [3.0, 201_000]],
            "rss_second_half_delta_kib": 400,
            "checks": [{"name": "errors", "value": 0, "target": "0", "met": True}],
        },
        "seed": {"missing": "bench.seed cannot be imported (synthetic)"},
    }


@pytest.mark.slow  # matplotlib draws the plots
def test_report_writes_markdown_json_and_plots(tmp_path: Path) -> None:
    result = synthetic()
    markdown_path = report.write(result, tmp_path / "results" / "2026-11-27")
    assert markdown_path == tmp_path / "results" / "2026-11-27.md"

    assert json.loads((tmp_path / "results" / "2026-11-27.json").read_text()) == result

    text = markdown_path.read_text(encoding="utf-8")
    assert text.startswith("# citygate benchmarks, 2026-11-27T20:00:00\n")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(images) == [f"2026-11-27/{n}.png" for n in ("load", "overhead", "peer-latency", "peer-rps")]
    for image in images:
        assert (markdown_path.parent / image).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    for heading in ("## Targets", "## Peer side by side", "## Load", "## Gateway overhead", "## Seed scale"):
        assert heading in text
    assert "- **seed**: ValueError: synthetic" in text
    assert "| PostGraphile 4.14.1 | 2,400 | 3.20 |" in text
    assert "| peer | cached rps / ceiling rps at 8 connections | 0.750 | none: context | - |" in text
    # a ratio whose interval spans the target is neither met nor missed
    assert "| policy | trino, visits and residents: with policy p50 / without | 1.040 [1.010, 1.080] " in text
    assert "| 1.040 [1.010, 1.080] | 10 | <= 1.05 within noise |" in text
    _tables_are_rectangular(text)


def _tables_are_rectangular(text: str) -> None:
    """Every row of a Markdown table has as many cells as its header, and a separator follows it."""
    table: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            width = table[0].count("|")
            assert all(row.count("|") == width for row in table), table
            assert re.fullmatch(r"\|(-+:?\|)+", table[1].replace("---:", "---").replace(":", "")), table[1]
            table = []


def test_report_without_sections(tmp_path: Path) -> None:
    """A run whose sections all failed still writes a report that says so."""
    path = report.write({"date": "d", "failures": {"peer": "ServerError: no node"}}, tmp_path / "r")
    assert "- **peer**: ServerError: no node" in path.read_text(encoding="utf-8")
    assert list((tmp_path / "r").iterdir()) == []


def test_rounds_without_an_answer_have_no_latency_to_count() -> None:
    def round_of(requests: int, p50: float) -> wrk.WrkResult:
        latency = dict.fromkeys(("p50", "p90", "p95", "p99", "p99.9", "mean", "max"), p50)
        return wrk.WrkResult(8, 2, requests, 5.0, latency, 0, 0, 0, 0)

    combined = peer.combine([round_of(0, 0.0), round_of(0, 0.0), round_of(31, 4719.0)])
    assert combined["p50_ms"] == 4719.0 and combined["requests"] == 31 and combined["rounds"] == 3
    assert peer.combine([round_of(0, 0.0)])["requests"] == 0


def test_interleaved_runs_take_turns_in_alternating_order() -> None:
    calls: list[str] = []
    samples = stats.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, runs=3, warmup=1)
    warmup, measured = calls[:2], calls[2:]
    assert warmup == ["a", "b"] and measured == ["a", "b", "b", "a", "a", "b"]
    assert [len(v) for v in samples.values()] == [3, 3]


def test_the_delegation_section_checks_its_targets_and_writes_its_tables(tmp_path: Path) -> None:
    from bench import delegation

    def figure(rps: float, p50: float) -> dict[str, Any]:
        return {"rps": rps, "p50_ms": p50, "p95_ms": p50 * 2, "p99_ms": p50 * 3, "requests": int(rps * 5), "errors": 0}

    section: dict[str, Any] = {
        "rows_compared": 8,
        "audit": "on",
        "load_generator": "wrk",
        "targets": delegation.TARGETS,
        "by_connections": {
            "8": {
                "postgraphile": figure(500, 12.0),
                "delegated": figure(450, 16.0),
                "embedded": figure(80, 90.0),
                "trino": figure(11, 600.0),
            }
        },
        "mariadb_8_connections": {"delegated": figure(300, 20.0), "trino": figure(10, 700.0)},
        "raw_driver": [
            {
                "store": "MariaDB",
                "driver": {"p50_ms": 10.0, "runs": 5},
                "delegated": {"p50_ms": 14.0, "runs": 5},
                "p50_ratio": 1.4,
                "target": "<= 1.3",
                "met": False,
            },
        ],
    }
    section["checks"] = delegation.checks(section)
    met = {c["name"]: c["met"] for c in section["checks"]}
    assert met["delegated p50 / PostGraphile p50 at 8 connections"] is True  # 1.33
    assert met["delegated rps / PostGraphile rps at 8 connections"] is True  # 0.9
    assert met["MariaDB: delegated p50 / raw driver p50"] is False
    text = report.write({"date": "d", "delegation": section}, tmp_path / "r").read_text(encoding="utf-8")
    assert "## Delegation" in text
    assert "| delegation | MariaDB: delegated p50 / raw driver p50 | 1.40 | <= 1.3 | **missed** |" in text
    _tables_are_rectangular(text)
