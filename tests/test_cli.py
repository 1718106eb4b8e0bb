"""The command line: demo data on first run, schema print, explain, and errors without traces."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from datasets.demo import ensure_demo_issuer, issue_token, secure_demo
from gateway.config import Config, load_config
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.http.app import create_app
from tests.conftest import REPO, free_port, wait_until_serving

# Each test runs `citygate` in a process of its own: seconds each, so `make check` leaves them to `make test`.
pytestmark = pytest.mark.slow


def run(*args: str, stdin: str | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
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


@pytest.mark.services
def test_explain_shows_each_root_fields_route_and_the_stores_own_sql() -> None:
    query = """{ one: environment_monitored_sites(where: {district: {_eq: "南城"}}) { site_name }
      two: health_clinic_visits(limit: 1) { visit_id resident { name } } }"""
    result = run("explain", "--config", str(REPO / "configs" / "services.yaml"), query)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    port = os.environ.get("CITYGATE_MARIADB_PORT", "3306")  # the services' port, as configs/services.yaml reads it
    assert f"-- one: route delegated, to mariadb://127.0.0.1:{port}/environment (mysql)" in out
    delegated = out.split("-- one: route delegated", 1)[1].split(";", 1)[0]
    # the demo's MariaDB columns compare exactly already: read as they are, through their indexes
    assert "`environment`.`monitored_sites`" in delegated and "COLLATE" not in delegated
    assert "-- two: route trino (it reads more than one store, or needs the engine)" in out


def test_explain_reads_standard_input_and_reports_bad_queries(demo_dir: Path) -> None:
    ok = run("explain", "--data-dir", str(demo_dir), "-", stdin="{ transport_stations { nam } }")
    assert ok.returncode == 2
    assert ok.stderr.strip().splitlines()[-1] == (
        'citygate: error: unknown field "nam" on "transport_stations" for role anonymous'
        ' (the catalogue at /console lists what it may read); did you mean "name"?'
    )


def test_serve_with_a_bad_config_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text("engine: {kind: embedded}\ndepartments: {a: {store: {kind: sqlite}}}\n")
    result = run("serve", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.startswith(f"citygate: error: {bad}: departments.a.store.path: required key is missing")
    assert "Traceback" not in result.stderr


def test_policy_check_and_policy_test_on_the_demo(demo_dir: Path) -> None:
    check = run("policy", "check", "--data-dir", str(demo_dir))
    assert check.returncode == 0, check.stdout + check.stderr
    roles = "anonymous, citizen, district_officer, env_inspector, health_analyst, police, supervisor"
    assert f"roles {roles}" in check.stdout
    # what the demo's policies accept is said in them (checks.accept), with the reason
    assert check.stdout.strip().splitlines()[-1].startswith("no findings, ")
    tested = run("policy", "test", str(REPO / "policies" / "demo" / "tests.yaml"), "--data-dir", str(demo_dir))
    assert tested.returncode == 0, tested.stdout
    assert tested.stdout.strip().endswith("24 passed, 0 failed")
    # Without its file: a line that says what to give, not a traceback (it was a TypeError's).
    missing = run("policy", "test", "--data-dir", str(demo_dir))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith("citygate: error: `citygate policy test` needs a file of test cases")


def test_policy_check_reports_floors_and_rules_that_match_nothing(tmp_path: Path) -> None:
    central = tmp_path / "central.yaml"
    central.write_text(
        "roles:\n  police:\n    tables:\n      health.clinic_visits: {columns: {diagnosis: allow, diagnose: allow}}\n"
        "      health.nothing: {access: deny}\n"
    )
    config = tmp_path / "city.yaml"
    floor = REPO / "policies" / "demo" / "health-floor.yaml"
    config.write_text(
        f"include: {REPO / 'configs' / 'embedded.yaml'}\n"
        f"policies: {{files: [{central}, {floor}], hash_key: 0123456789abcdef0123}}\n"
    )
    data = tmp_path / "data"
    assert run("datagen", "--data-dir", str(data), "--scale", "0.01").returncode == 0
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "policy", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
        env={**os.environ, "CITYGATE_DATA_DIR": str(data)},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "unmatched: roles.police.tables.health.clinic_visits.columns.diagnose: no such column" in result.stdout
    assert "unmatched: roles.police.tables.health.nothing: no such table" in result.stdout
    assert "floor: roles.police reveals health.clinic_visits.diagnosis raw" in result.stdout
    assert "unmatched: floors.health.health_records.chronic_conditions: no role 'health_analyst'" in result.stdout


def test_explain_as_a_role_shows_the_policy(demo_dir: Path) -> None:
    result = run(
        "explain",
        "--data-dir",
        str(demo_dir),
        "--role",
        "district_officer",
        "--claim",
        "district=南城",
        "{ public_security_residents { phone } }",
    )
    assert result.returncode == 0, result.stderr
    assert "'南城'" in result.stdout and "REPEAT('*', LENGTH(" in result.stdout
    assert "public_security.residents (allow; row filter: district = :claims.district)" in result.stdout
    printed = run("schema", "print", "--data-dir", str(demo_dir), "--role", "anonymous")
    assert "health_health_records" not in printed.stdout and "type transport_stations" in printed.stdout


def test_policy_check_and_test_understand_noisy_grants(tmp_path: Path) -> None:
    """Bounds that clamp most costs and a budget below one answer are findings; a test case
    of a noisy count passes within its tolerance, and spends a budget of the run's own."""
    central = tmp_path / "central.yaml"
    central.write_text(
        "roles:\n  statistician:\n    privacy_budget: {epsilon: 1.5, period: 1d}\n    tables:\n"
        "      health.clinic_visits:\n        access: aggregate_only\n        k: 5\n        only_listed: true\n"
        "        group_by: [hospital]\n        columns: {hospital: allow, cost: allow}\n"
        "        noise: {epsilon: 1, bounds: {cost: [0, 1000]}}\n"
    )
    config = tmp_path / "city.yaml"
    config.write_text(
        f"include: {REPO / 'configs' / 'embedded.yaml'}\n"
        f"policies: {{files: [{central}], hash_key: 0123456789abcdef0123}}\n"
    )
    data = tmp_path / "data"
    assert run("datagen", "--data-dir", str(data), "--scale", "0.01").returncode == 0
    env = {**os.environ, "CITYGATE_DATA_DIR": str(data)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "gateway.cli", "policy", *args, "--config", str(config)]
        return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300, check=False, env=env)

    check = cli("check")
    assert check.returncode == 1, check.stdout + check.stderr
    assert "noise: roles.statistician.tables.health.clinic_visits.noise: a count and its sums cost epsilon 2" in (
        check.stdout
    )
    assert "noise.bounds.cost: 9" in check.stdout and "are clamped, so every noisy sum is biased" in check.stdout
    with sqlite3.connect(data / "health.db") as db:
        [(visits,)] = db.execute("SELECT COUNT(*) FROM clinic_visits").fetchall()
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        "- name: a noisy count is near the truth\n  role: statistician\n  tolerance: 25\n"
        "  query: '{ health_clinic_visits_aggregate { aggregate { count } } }'\n"
        f"  expect: {{health_clinic_visits_aggregate: {{aggregate: {{count: {visits}}}}}}}\n"
        "- name: the next answer is past the budget\n  role: statistician\n"
        "  query: '{ health_clinic_visits_group_by(by: [hospital]) { aggregate { count } } }'\n"
        "  expect_error: PRIVACY_BUDGET_EXHAUSTED\n"
        "- name: no maximum of a noisy table\n  role: statistician\n"
        "  query: '{ health_clinic_visits_aggregate { aggregate { max { cost } } } }'\n"
        "  expect_error: GRAPHQL_VALIDATION_FAILED\n"
    )
    summed = "{ health_clinic_visits_aggregate { aggregate { sum { cost } } } }"
    explained = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "explain", "--config", str(config), "--role", "statistician", summed],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
        env=env,
    )
    assert explained.returncode == 0, explained.stderr
    assert "noise epsilon 1 per count or sum; cost in [0, 1000]" in explained.stdout
    from policies.noise import least_threshold

    shown = f"groups shown from a noisy count of {least_threshold(1.0, 5, 1e-6)} (delta 1e-06)"
    assert shown in explained.stdout, explained.stdout
    assert "CASE WHEN" in explained.stdout  # the clamp
    for _ in range(2):  # the second run has a budget of its own again: none was written down
        tested = cli("test", str(cases))
        assert tested.returncode == 0, tested.stdout + tested.stderr
        assert tested.stdout.strip().endswith("3 passed, 0 failed")


def test_token_never_makes_an_issuer_the_demo_does_not_know(tmp_path: Path) -> None:
    """Run outside the checkout it once made a new demo issuer, whose tokens the demo refused."""
    elsewhere = tmp_path / "elsewhere"
    refused = run("token", "--role", "health_analyst", "--data-dir", str(elsewhere), cwd=tmp_path)
    assert refused.returncode == 2 and not refused.stdout
    assert f"no demo issuer in {elsewhere}" in refused.stderr and "start the demo first" in refused.stderr
    assert not elsewhere.exists()
    ensure_demo_issuer(elsewhere)  # as `citygate demo` makes it on its first run
    made = run("token", "--role", "health_analyst", "--data-dir", str(elsewhere), cwd=tmp_path)
    assert made.returncode == 0 and made.stdout.count(".") == 2 and not made.stderr
    unknown = run("token", "--role", "nobody", "--data-dir", str(elsewhere), cwd=tmp_path)
    assert "the demo's policies define no such role" in unknown.stderr and "health_analyst" in unknown.stderr


def test_configs_demo_serves_the_demo_city_with_its_policies_and_issuer(
    sqlite_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for department in sqlite_config.departments.values():  # the demo's files, as `make demo` builds them
        source = Path(department.store.path)  # type: ignore[union-attr]
        (tmp_path / source.name).symlink_to(source)
    ensure_demo_issuer(tmp_path)
    monkeypatch.setenv("CITYGATE_DATA_DIR", str(tmp_path))
    config = load_config(REPO / "configs" / "demo.yaml")
    assert config.policies is not None and config.auth is not None and config.auth.anonymous
    gateway = Gateway.start(config, create_engine(config))
    query = {"query": "{ public_security_residents(limit: 1) { name } }"}
    try:
        with TestClient(create_app(gateway)) as client:
            anonymous = client.post("/graphql", json=query).json()
            assert anonymous["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
            token = issue_token(tmp_path, "health_analyst", {}, 60)
            analyst = client.post("/graphql", json=query, headers={"authorization": f"Bearer {token}"}).json()
            assert len(analyst["data"]["public_security_residents"]) == 1
    finally:
        gateway.close()
    assert (tmp_path / "audit-serve.jsonl").stat().st_size > 0


def test_make_demo_takes_a_port(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        ["make", "--no-print-directory", "demo", f"PORT={port}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # make and the citygate it starts, stopped together
    )
    try:
        wait_until_serving(port, process, f"make demo PORT={port}", timeout=240)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_the_readmes_try_another_role_example_answers_differently_per_role(
    sqlite_config: Config, tmp_path: Path
) -> None:
    """README's loop sends one query with each role's token: each role must get other rows."""

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    query = json.loads(re.search(r"^QUERY='(.+)'$", readme, re.MULTILINE).group(1))  # type: ignore[union-attr]
    roles = re.search(r"^for ROLE in (.+); do$", readme, re.MULTILINE).group(1)  # type: ignore[union-attr]
    config = secure_demo(sqlite_config, tmp_path)
    gateway = Gateway.start(config, create_engine(config))
    answers = {}
    try:
        with TestClient(create_app(gateway)) as client:
            for role in re.findall(r'"([^"]+)"|(\w+)', roles):
                name, *claim = (role[0] or role[1]).split(" --claim ")
                claims = dict([claim[0].split("=", 1)]) if claim else {}
                token = issue_token(tmp_path, name, claims, 60)
                body = client.post("/graphql", json=query, headers={"authorization": f"Bearer {token}"}).json()
                answers[name] = json.dumps(body["data"], ensure_ascii=False)
            anonymous = client.post("/graphql", json=query).json()
    finally:
        gateway.close()
    assert set(answers) == {"police", "health_analyst", "supervisor", "district_officer", "citizen"}
    assert len(set(answers.values())) == len(answers), answers
    assert anonymous["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


def test_the_security_officers_walkthrough_works_on_a_copy(sqlite_config: Config, tmp_path: Path) -> None:
    """docs/policies.md's "Add a role", step by step as written, in a directory of its own: it
    once edited policies/demo/central.yaml in place."""
    section = (REPO / "docs" / "policies.md").read_text(encoding="utf-8").split("## Add a role", 1)[1]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.DOTALL)
    copy = next(text for kind, text in blocks if kind == "sh" and "mkdir -p my-policies" in text)
    role = next(text for kind, text in blocks if kind == "yaml" and "transport_planner:" in text)
    cases = next(text for kind, text in blocks if kind == "yaml" and "- name:" in text)
    data = tmp_path / "data"  # the demo's files and issuer, as `make demo` leaves them
    data.mkdir()
    for department in sqlite_config.departments.values():
        source = Path(department.store.path)  # type: ignore[union-attr]
        (data / source.name).symlink_to(source)
    ensure_demo_issuer(data)
    for name in ("policies", "configs"):
        (tmp_path / name).symlink_to(REPO / name)
    subprocess.run(["bash", "-e", "-c", copy], cwd=tmp_path, check=True, timeout=30)
    central = tmp_path / "my-policies" / "central.yaml"
    central.write_text(central.read_text(encoding="utf-8").replace("roles:\n", "roles:\n" + role, 1), encoding="utf-8")
    (tmp_path / "my-policies" / "transport_planner.test.yaml").write_text(cases, encoding="utf-8")
    command = re.search(r"^\.venv/bin/citygate (policy test .+)$", section, re.MULTILINE).group(1)  # type: ignore[union-attr]
    tested = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *command.split()],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "CITYGATE_DATA_DIR": str(data)},
        timeout=300,
        check=False,
    )
    assert tested.stdout.strip().endswith("2 passed, 0 failed"), tested.stdout + tested.stderr
    assert (REPO / "policies" / "demo" / "central.yaml").read_text(encoding="utf-8").count("transport_planner") == 0
