"""What `citygate explain` and the console show is the statement that runs (issue 31): byte for
byte the text the store or the engine received, read from its own log on each route: the
delegated PostgreSQL and MariaDB statements from the stores' statement logs, Trino's from its
query history, DuckDB's from its query log.

The hash key is inside the engines' statements that hash; what a screen shows has it replaced
by ``<key>`` (:meth:`connectors.base.Engine.redact`), so those are compared with the received
text redacted the same way, and every other byte must match.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import pytest

from gateway.config import Config
from gateway.console.inspect import explain
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.identity.caller import Identity
from tests.conftest import REPO, SERVICES_CONFIG
from tests.policy_support import with_policies
from tests.test_routes import mariadb_general_log, postgres_statement_log
from tests.test_trino_history import history
from tools.services import TRINO_ADMIN, TRINO_GATEWAY, Settings

pytestmark = pytest.mark.services

# One root field for each route: the supervisor's identity numbers are hashed, which needs the
# key, so that statement goes to the engine; the other two read one store each.
QUERY = """{
  residents: public_security_residents(limit: 3, order_by: [{id_card: asc}]) { id_card name }
  stations: transport_stations(where: {district: {_eq: "南城"}}, limit: 5, order_by: [{station_id: asc}]) { name }
  sites: environment_monitored_sites(limit: 3, order_by: [{site_id: asc}]) { site_name district }
}"""
SUPERVISOR = Identity("supervisor", {})
# Without policies: a relationship between two stores goes to the engine.
ACROSS = """{
  visits: health_clinic_visits(where: {resident: {gender: {_eq: "F"}}}, limit: 2, order_by: [{visit_id: asc}]) {
    visit_id resident { name } }
  linked: health_clinic_visits(limit: 2, order_by: [{visit_id: asc}]) { visit_id resident { name } }
  stations: transport_stations(where: {district: {_eq: "南城"}}, limit: 5, order_by: [{station_id: asc}]) { name }
  sites: environment_monitored_sites(limit: 3, order_by: [{site_id: asc}]) { site_name district }
}"""


@contextmanager
def duckdb_query_log(gateway: Gateway) -> Iterator[list[str]]:
    """Every statement the embedded engine's DuckDB runs meanwhile (its QueryLog)."""
    db = gateway.engine._db  # type: ignore[attr-defined]
    db.execute("CALL enable_logging('QueryLog')")
    found: list[str] = []
    try:
        yield found
    finally:
        found.extend(row[0] for row in db.execute("SELECT message FROM duckdb_logs WHERE type = 'QueryLog'").fetchall())
        db.execute("CALL disable_logging()")


def statements_in(pg_log: list[str]) -> list[str]:
    """The statements of PostgreSQL's log: each on a line of its own, after ``statement: ``
    (simple protocol) or ``execute <name>: `` (extended)."""
    found = []
    for line in "\n".join(pg_log).splitlines():
        _, marker, rest = line.partition("LOG:  ")
        if marker and rest.startswith(("statement: ", "execute ")):
            found.append(rest.split(": ", 1)[1])
    return found


def shown_and_run(config: Config) -> tuple[dict[str, dict[str, str]], Gateway, list[str], list[str], list[str]]:
    """The console's explain of :data:`QUERY` as the supervisor, then the query run through
    a fresh gateway with the stores' statement logs (and DuckDB's, on the embedded engine) on."""
    gateway = Gateway.start(config, create_engine(config))
    view = gateway.view(SUPERVISOR)
    shown = {s["field"]: s for s in explain(gateway, view, QUERY, None, SUPERVISOR)}
    duck: list[str] = []
    with postgres_statement_log(config) as pg_log, mariadb_general_log(config) as mariadb_log:
        if gateway.engine.name == "embedded":
            with duckdb_query_log(gateway) as duck:
                response = gateway.execute(QUERY, identity=SUPERVISOR)
        else:
            response = gateway.execute(QUERY, identity=SUPERVISOR)
    assert "errors" not in response.body, response.body
    assert response.routes == {key: s["route"] for key, s in shown.items()}
    return shown, gateway, pg_log, mariadb_log, duck


@pytest.mark.parametrize("engine", ["trino", "embedded"])
def test_the_console_shows_byte_for_byte_what_each_route_received(
    engine: Literal["trino", "embedded"], services_config: Config
) -> None:
    config = with_policies(services_config.with_engine(engine).with_delegate("auto"))
    shown, gateway, pg_log, mariadb_log, duck = shown_and_run(config)
    try:
        assert {key: s["route"] for key, s in shown.items()} == {
            "residents": engine,
            "stations": "delegated",
            "sites": "delegated",
        }
        pg_statements = statements_in(pg_log)
        assert shown["stations"]["sql"] in pg_statements, shown["stations"]["sql"]
        assert shown["stations"]["dialect"] == "postgres" and "'南城'" in shown["stations"]["sql"]
        assert shown["sites"]["sql"] in mariadb_log, shown["sites"]["sql"]
        assert shown["sites"]["dialect"] == "mysql" and "`environment`.`monitored_sites`" in shown["sites"]["sql"]
        hashed = shown["residents"]["sql"]
        assert "<key>" in hashed
        if engine == "trino":
            settings = Settings.from_env()
            where = f"WHERE \"user\" = '{TRINO_GATEWAY}'"
            received = [q for _, q in history(settings.trino_https_port, TRINO_ADMIN, where)]
        else:
            received = duck
        assert hashed in [gateway.engine.redact(text) for text in received], hashed
        # the engine's statement is the engine's alone: neither store saw it
        assert hashed not in pg_statements and hashed not in mariadb_log
    finally:
        gateway.close()


def test_the_command_line_shows_what_the_stores_and_trino_received(services_config: Config) -> None:
    """`citygate explain`, another process with its own plan: what it prints as each route's
    statement is the text a gateway on the same configuration sends."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    printed = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "explain", "--config", str(SERVICES_CONFIG), ACROSS],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert printed.returncode == 0, printed.stderr
    blocks: dict[str, str] = {}  # the line before each statement -> the statement (without its ";")
    lines = printed.stdout.splitlines()
    for header, text in itertools.pairwise(lines):
        if header.startswith("-- ") and text and not text.startswith("--"):
            blocks[header] = text.removesuffix(";")
    port = os.environ.get("CITYGATE_MARIADB_PORT", "3306")
    stations = next(t for h, t in blocks.items() if h.startswith("-- stations: route delegated, to postgresql://"))
    sites = blocks[f"-- sites: route delegated, to mariadb://127.0.0.1:{port}/environment (mysql)"]
    visits = blocks["-- visits on trino (trino)"]
    assert "-- visits: route trino (it reads more than one store, or needs the engine)" in lines
    # a relationship between stores followed by key: each part's text, as its store receives it
    assert "-- linked: route batched, one statement per store and level, joined by key in the gateway" in lines
    pg_port = os.environ.get("CITYGATE_PG_PORT", "5432")
    linked = [
        blocks[f"-- linked, part 1 of 2, on postgresql://127.0.0.1:{pg_port}/health (postgres)"],
        next(t for h, t in blocks.items() if h.startswith("-- linked, part 2 of 2, on postgresql://")),
    ]
    assert "$1" not in linked[0] and "UNNEST(CAST($1 AS TEXT[]))" in linked[1]

    config = services_config.with_delegate("auto")
    gateway = Gateway.start(config, create_engine(config))
    try:
        with postgres_statement_log(config) as pg_log, mariadb_general_log(config) as mariadb_log:
            response = gateway.execute(ACROSS)
    finally:
        gateway.close()
    assert "errors" not in response.body, response.body
    assert response.routes == {"visits": "trino", "linked": "batched", "stations": "delegated", "sites": "delegated"}
    pg_statements = statements_in(pg_log)
    assert stations in pg_statements, stations
    for text in linked:
        assert text in pg_statements, text
    # the keys travel as the statement's parameter, never in its text
    assert any("parameters: $1 = '{" in line for line in pg_log)
    assert sites in mariadb_log, sites
    settings = Settings.from_env()
    received = [q for _, q in history(settings.trino_https_port, TRINO_ADMIN, f"WHERE \"user\" = '{TRINO_GATEWAY}'")]
    assert visits in received, visits
