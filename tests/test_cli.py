"""The command line: demo data on first run, schema print, explain, and errors without traces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.config import Config
from tests.conftest import REPO


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
        input=stdin,
    )


def test_schema_print_builds_the_demo_city_on_first_run(tmp_path: Path) -> None:
    result = run("schema", "print", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == sorted(
        f"{d}.db"
        for d in ("public_security", "health", "transport", "market_regulation", "environment", "human_resources")
    )
    assert "building the demo city" in result.stderr
    assert "type health_clinic_visits {" in result.stdout
    assert "  resident: public_security_residents" in result.stdout
    again = run("schema", "print", "--data-dir", str(tmp_path))
    assert again.returncode == 0 and "building" not in again.stderr and again.stdout == result.stdout


def test_explain_prints_each_engines_sql(services_config: Config) -> None:
    query = '{ transport_stations(where: {district: {_eq: "南城"}}) { name } }'
    result = run("explain", "--config", str(REPO / "configs" / "services.yaml"), query)
    assert result.returncode == 0, result.stderr
    assert "-- transport_stations on trino (trino)" in result.stdout
    assert "-- transport_stations on embedded (duckdb)" in result.stdout
    assert '"transport"."public"."stations"' in result.stdout
    assert "'南城'" in result.stdout


def test_explain_reads_standard_input_and_reports_bad_queries(tmp_path: Path) -> None:
    ok = run("explain", "--data-dir", str(tmp_path), "-", stdin="{ transport_stations { nam } }")
    assert ok.returncode == 2
    assert ok.stderr.strip().splitlines()[-1] == (
        'citygate: error: unknown field "nam" on "transport_stations"; did you mean "name"?'
    )


def test_serve_with_a_bad_config_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text("engine: {kind: embedded}\ndepartments: {a: {store: {kind: sqlite}}}\n")
    result = run("serve", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.startswith(f"citygate: error: {bad}: departments.a.store.path: required key is missing")
    assert "Traceback" not in result.stderr
