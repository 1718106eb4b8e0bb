"""The delegated route (gateway/execution/routes.py, connectors/native.py): which statements run
on their own store, that they answer there as on the engines, within the store's own limits and
read-only, and that the hash key never reaches a store.

The three-route equality of every golden fixture, the oracle's and the generated queries is in
tests/test_graphql.py, the policy tests (the ``secured`` fixture, tests/policy_support.py) and
tests/test_properties.py (the ``gateway_delegated`` and ``gateway_sqlite_delegated`` fixtures).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from sqlglot import exp
from starlette.testclient import TestClient

from catalogue.errors import CitygateError, EngineQueryError, ResultTooLarge, StoreUnavailableError
from catalogue.sql import Hash, Partial, Slice, Tie, TimestampText, logical_table
from catalogue.stores import MariadbStore, PostgresStore
from connectors.native import MariadbEngine, NativeEngine, PostgresEngine, SqliteEngine, native_engines
from connectors.stores import mariadb_params
from gateway.config import Config
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.http.app import create_app
from gateway.identity.caller import Identity
from tests.conftest import ADMIN, free_port, with_admin, with_store
from tests.policy_support import KEY, secured_gateway
from tests.test_graphql import same


def routes(gateway: Gateway, query: str, variables: dict[str, Any] | None = None, **identity: Any) -> dict[str, str]:
    """Each root field's route, after running ``query``."""
    caller = Identity(identity["role"], identity.get("claims", {})) if identity else None
    response = gateway.execute(query, variables, identity=caller)
    assert "errors" not in response.body, response.body
    return response.routes


def native(config: Config, department: str, seconds: float = 5.0) -> NativeEngine:
    [engine] = native_engines(config.engine_settings(), seconds, [department])
    return engine


# -- which statements are delegated -------------------------------------------------------------


# one of each of citygate's SQL building blocks, over a text column
VOCABULARY: dict[type[exp.Expr], exp.Expr] = {
    Hash: Hash(this=exp.column("name")),
    Tie: Tie(this=exp.column("name")),
    Partial: Partial(this=exp.column("name"), first=exp.Literal.number(1), last=exp.Literal.number(1)),
    TimestampText: TimestampText(this=exp.column("registered_at")),
    Slice: Slice(this=exp.column("name"), start=exp.Literal.number(-2)),
    exp.ILike: exp.ILike(this=exp.column("name"), expression=exp.Literal.string("a%")),
}


@pytest.mark.parametrize("store", [PostgresEngine, MariadbEngine, SqliteEngine], ids=lambda e: e.dialect)
@pytest.mark.parametrize("node", list(VOCABULARY), ids=lambda n: n.__name__)
def test_what_a_store_declares_it_cannot_run_is_what_its_dialect_refuses(
    store: type[NativeEngine], node: type[exp.Expr]
) -> None:
    """The route is picked from each store's declaration (NativeEngine.cannot), before anything
    is rendered: the declaration must name every building block the store's dialect has no
    rendering for. (``_ilike`` renders everywhere, and is declared for what each store's case
    folding does to it, not for its text.)"""
    tree = exp.select(VOCABULARY[node]).from_("t")
    declared = store.unsupported(tree)
    try:
        tree.sql(dialect=store.Dialect(hash_key=b"k" * 32))
    except CitygateError as refusal:
        assert declared is not None and declared in refusal.message, (declared, refusal.message)
    else:
        assert declared is None or node is exp.ILike, declared


def test_a_statement_reading_one_store_runs_there_and_one_reading_two_on_the_engine(
    gateway_delegated: Gateway,
) -> None:
    query = """{
      one: transport_stations(limit: 2, order_by: [{station_id: asc}]) { name }
      mariadb: environment_monitored_sites(limit: 2, order_by: [{site_id: asc}]) { site_name }
      two: health_clinic_visits(where: {resident: {gender: {_eq: "F"}}}, limit: 2) { visit_id }
      batched: health_clinic_visits(limit: 2, order_by: [{visit_id: asc}]) { visit_id resident { name } }
      folded: transport_stations(where: {name: {_ilike: "%站"}}, limit: 1) { name }
      boolean: environment_emission_readings(limit: 1, order_by: [{reading_id: asc}]) { exceeded }
    }"""
    assert routes(gateway_delegated, query) == {
        "one": "delegated",
        "mariadb": "delegated",
        "two": "trino",  # health and public_security: two PostgreSQL databases, joined before a filter
        "batched": "batched",  # the same two, followed by key from each visit to its resident
        "folded": "trino",  # each store folds case its own way
        "boolean": "delegated",  # MariaDB's BOOLEAN comes back as 0 and 1, shaped as false and true
    }


def test_delegation_can_be_turned_off_for_all_or_for_one_department(services_config: Config, trino_engine: Any) -> None:
    query = "{ a: transport_stations(limit: 1) { name } b: health_clinic_visits(limit: 1) { visit_id } }"
    never = Gateway.start(services_config.with_delegate("never"), trino_engine)
    assert routes(never, query) == {"a": "trino", "b": "trino"}
    raw = services_config.model_dump(by_alias=True, exclude={"source"})
    departments = dict(services_config.departments)
    departments["transport"] = departments["transport"].model_copy(update={"delegate": False})
    assert raw["engine"]["delegate"] == "auto"
    one_off = Gateway.start(services_config.model_copy(update={"departments": departments}), trino_engine)
    try:
        assert routes(one_off, query) == {"a": "trino", "b": "delegated"}
    finally:
        one_off.routes.close()


def test_the_sqlite_route_leaves_what_sqlite_cannot_hold_exactly_to_the_engine(
    gateway_sqlite_delegated: Gateway,
) -> None:
    query = """{
      text: transport_stations(limit: 2, order_by: [{name: desc}]) { name level }
      decimal: health_clinic_visits(limit: 2, order_by: [{visit_id: asc}]) { cost }
      date: transport_vehicles(limit: 2, order_by: [{plate: asc}]) { registered_date }
    }"""
    assert routes(gateway_sqlite_delegated, query) == {"text": "delegated", "decimal": "embedded", "date": "embedded"}


# -- same answers: what each store does differently by default ------------------------------------

DIFFERENCES = {
    # MariaDB's default collations ignore case and trailing spaces; PostgreSQL's may order by locale.
    "case": '{ market_regulation_enterprises(where: {status: {_eq: "ACTIVE"}}) { credit_code } }',
    "trailing space": '{ market_regulation_enterprises(where: {district: {_eq: "南城 "}}) { credit_code } }',
    "lower case first": (
        '{ market_regulation_enterprises(where: {status: {_in: ["active", "Active"]}}, limit: 3,'
        " order_by: [{status: desc}, {credit_code: asc}]) { status credit_code } }"
    ),
    "range of text": (
        '{ environment_monitored_sites(where: {district: {_gt: "南"}}, order_by: [{site_id: asc}]) { site_id } }'
    ),
    "pattern, escaped": (
        '{ market_regulation_enterprises(where: {name: {_like: "%\\\\%%"}}) { credit_code } '
        ' b: market_regulation_enterprises(where: {name: {_like: "东莞市_利%"}}, limit: 5,'
        " order_by: [{credit_code: asc}]) { name } }"
    ),
    "a quote and a backslash": (
        '{ market_regulation_enterprises(where: {name: {_eq: "\\\\\' OR 1=1 -- "}}) { credit_code } '
        ' transport_stations(where: {name: {_eq: "\\\\\' OR 1=1 -- "}}) { name } }'
    ),
    "nulls first": (
        "{ health_health_records(limit: 4, offset: 10, order_by: [{chronic_conditions: desc_nulls_last},"
        " {record_id: asc}]) { record_id chronic_conditions } }"
    ),
    "microseconds": (
        '{ environment_emission_readings_aggregate(where: {measured_at: {_gt: "2015-01-01T00:09:13.9999"}})'
        " { aggregate { count } } }"
    ),
    "aggregates": (
        "{ human_resources_social_insurance_aggregate { aggregate { count sum { monthly_salary months_paid }"
        " avg { monthly_salary } max { employer_credit_code } } } }"
    ),
    "group by text": (
        "{ market_regulation_enterprises_group_by(by: [district], order_by: [{district: asc}]) "
        "{ keys { district } aggregate { count } } }"
    ),
}


@pytest.mark.parametrize("name", DIFFERENCES)
def test_each_store_answers_as_the_engines_do(
    name: str, gateway_trino: Gateway, gateway_services: Gateway, gateway_delegated: Gateway
) -> None:
    query = DIFFERENCES[name]
    bodies = [g.execute(query).body for g in (gateway_trino, gateway_services, gateway_delegated)]
    for body in bodies:
        assert "errors" not in body, body
    same(bodies[2]["data"], bodies[0]["data"])
    same(bodies[1]["data"], bodies[0]["data"])
    assert set(gateway_delegated.execute(query).routes.values()) == {"delegated"}


def test_a_mariadb_store_that_compares_loosely_is_read_under_the_exact_collation(
    services_config: Config, gateway_trino: Gateway
) -> None:
    """The demo's MariaDB databases compare exactly (utf8mb4_nopad_bin), and are read as they
    are, through their indexes; a department's database under MariaDB's default collation
    (case- and accent-insensitive, trailing spaces ignored) is read under the exact one."""
    store = services_config.departments["market_regulation"].store
    assert isinstance(store, MariadbStore)
    params = mariadb_params(store, "market_regulation")
    conn = pymysql.connect(**params, autocommit=True)
    try:
        with conn.cursor() as cursor:
            cursor.execute("DROP DATABASE IF EXISTS citygate_loose")
            cursor.execute("CREATE DATABASE citygate_loose CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
            cursor.execute("CREATE TABLE citygate_loose.enterprises AS SELECT * FROM market_regulation.enterprises")
            cursor.execute(
                "ALTER TABLE citygate_loose.enterprises CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
            )
            cursor.execute("ALTER TABLE citygate_loose.enterprises ADD PRIMARY KEY (credit_code)")
        config = with_store(services_config.with_delegate("auto"), "market_regulation", database="citygate_loose")
        loose = Gateway.start(config, create_engine(config))
        try:
            for name in ("case", "trailing space", "lower case first", "group by text"):
                response = loose.execute(DIFFERENCES[name])
                assert set(response.routes.values()) == {"delegated"}
                same(response.body, gateway_trino.execute(DIFFERENCES[name]).body)
            [statement] = loose.prepared(DIFFERENCES["case"])
            assert "COLLATE utf8mb4_nopad_bin" in statement.text  # type: ignore[union-attr]
        finally:
            loose.close()
    finally:
        with conn.cursor() as cursor:
            cursor.execute("DROP DATABASE IF EXISTS citygate_loose")
        conn.close()


# -- the route's own limits --------------------------------------------------------------------


@pytest.mark.parametrize("department", ["transport", "environment"])
def test_the_store_itself_stops_a_statement_past_its_time(services_config: Config, department: str) -> None:
    engine = native(services_config, department, seconds=0.5)
    sleep = "SELECT pg_sleep(3)" if department == "transport" else "SELECT SLEEP(3)"
    started = time.monotonic()
    try:
        with pytest.raises(EngineQueryError, match="ran past its time"):
            engine.run(sleep, [department])
    finally:
        engine.close()
    assert time.monotonic() - started < 2.5


def test_sqlite_stops_a_statement_past_its_time(sqlite_config: Config) -> None:
    engine = native(sqlite_config, "transport", seconds=0.3)
    forever = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT COUNT(*) FROM n"
    started = time.monotonic()
    try:
        with pytest.raises(EngineQueryError, match="ran past its time"):
            engine.run(forever, ["transport"])
    finally:
        engine.close()
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    ("department", "write", "refusal"),
    [
        # read_only_sql_transaction: PostgreSQL's SQLSTATE, and the code MariaDB's read-only session gives
        ("transport", 'INSERT INTO "public"."stations" SELECT * FROM "public"."stations" WHERE 1 = 0', "25006"),
        (
            "environment",
            "INSERT INTO `environment`.`monitored_sites` SELECT * FROM `environment`.`monitored_sites` LIMIT 0",
            "25006",
        ),
    ],
)
def test_the_route_can_only_read(services_config: Config, department: str, write: str, refusal: str) -> None:
    engine = native(services_config, department)
    try:
        with pytest.raises(EngineQueryError, match="refused") as refused:
            engine.run(write, [department])
        assert refusal in (refused.value.detail or "").split()  # the store's class of the error, not its words
    finally:
        engine.close()


def test_a_sqlite_file_is_opened_read_only(sqlite_config: Config) -> None:
    engine = native(sqlite_config, "transport")
    try:
        with pytest.raises(EngineQueryError, match="refused") as refused:
            engine.run("CREATE TABLE intruder (x INT)", ["transport"])
        assert "readonly" in (refused.value.detail or "").replace(" ", "").lower()
    finally:
        engine.close()


@pytest.mark.parametrize("department", ["transport", "environment"])
def test_a_store_that_does_not_answer_is_unavailable_and_a_refusal_is_an_engine_error(
    services_config: Config, department: str
) -> None:
    down = native(with_store(services_config, department, port=free_port()), department)
    try:
        with pytest.raises(StoreUnavailableError) as unavailable:
            down.execute(exp.select("*").from_(logical_table(department, "stations")).limit(1))
        assert unavailable.value.code == "DEPARTMENT_UNAVAILABLE" and department in unavailable.value.message
    finally:
        down.close()
    up = native(services_config, department)
    try:
        with pytest.raises(EngineQueryError) as refused:
            up.run("SELECT no_such_column FROM no_such_table", [department])
        assert refused.value.code == "ENGINE_ERROR"
    finally:
        up.close()


def test_the_row_cap_holds_on_the_route(services_config: Config) -> None:
    engine = native(services_config, "transport")
    try:
        statement = exp.select("*").from_(logical_table("transport", "stations"))
        with pytest.raises(ResultTooLarge):
            engine.run(engine.sql(statement), ["transport"], max_rows=5)
        assert len(engine.run(engine.sql(statement.limit(5)), ["transport"], max_rows=5).rows) == 5
    finally:
        engine.close()


def test_a_kept_connection_the_store_closed_is_replaced_without_an_error(services_config: Config) -> None:
    engine = native(services_config, "transport")
    store = services_config.departments["transport"].store
    assert isinstance(store, PostgresStore)
    try:
        [(pid,)] = engine.run("SELECT pg_backend_pid()", ["transport"]).rows
        with psycopg.connect(
            host=store.host, port=store.port, user=store.user, password=store.password, dbname="postgres"
        ) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        [(again,)] = engine.run("SELECT pg_backend_pid()", ["transport"]).rows
        assert again != pid
    finally:
        engine.close()


def test_a_store_reads_the_catalogue_as_the_engines_do(services_config: Config, trino_engine: Any) -> None:
    for department in services_config.departments:
        engine = native(services_config, department)
        try:
            assert engine.introspect([department]).describe() == trino_engine.introspect([department]).describe()
        finally:
            engine.close()


# -- the key stays home --------------------------------------------------------------------------


@contextmanager
def postgres_statement_log(config: Config) -> Iterator[list[str]]:
    """Every statement PostgreSQL receives meanwhile (``log_statement = all``, set at run time
    and reset after), read from the server's log with ``pg_read_file``."""
    store = config.departments["health"].store
    assert store.kind == "postgresql"
    params: dict[str, Any] = {"host": store.host, "port": store.port, "user": store.user, "password": store.password}
    found: list[str] = []
    with psycopg.connect(**params, dbname="postgres", autocommit=True) as conn:
        data = conn.execute("SELECT current_setting('data_directory')").fetchone()
        assert data is not None
        log = str(Path(data[0]).parent / "postgresql.log")
        start = conn.execute("SELECT size FROM pg_stat_file(%s)", (log,)).fetchone()
        assert start is not None
        conn.execute("ALTER SYSTEM SET log_statement = 'all'")
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)  # each backend reads the new setting before its next statement
        try:
            yield found
        finally:
            conn.execute("ALTER SYSTEM RESET log_statement")
            conn.execute("SELECT pg_reload_conf()")
            text = conn.execute("SELECT pg_read_file(%s, %s, 100000000)", (log, start[0])).fetchone()
            assert text is not None
            found.append(text[0])


@contextmanager
def mariadb_general_log(config: Config) -> Iterator[list[str]]:
    """Every statement MariaDB receives meanwhile (its general log, to a table), the log's
    settings restored after."""
    store = config.departments["market_regulation"].store
    assert store.kind == "mariadb"
    conn = pymysql.connect(host=store.host, port=store.port, user=store.user, password=store.password, autocommit=True)
    found: list[str] = []
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT @@global.general_log, @@global.log_output, NOW(6)")
            enabled, output, since = cursor.fetchone()
            cursor.execute("SET GLOBAL log_output = 'TABLE', GLOBAL general_log = 1")
        try:
            yield found
        finally:
            with conn.cursor() as cursor:
                cursor.execute("SET GLOBAL general_log = %s, GLOBAL log_output = %s", (enabled, output))
                cursor.execute(
                    "SELECT CONVERT(argument USING utf8mb4) FROM mysql.general_log WHERE event_time >= %s", (since,)
                )
                found.extend(row[0] for row in cursor.fetchall())
    finally:
        conn.close()


HASHED = """{
  public_security_residents(where: {id_card: {_neq: "h:0000000000000000"}}, limit: 3, order_by: [{id_card: asc}])
  { id_card name }
  market_regulation_enterprises(limit: 3, order_by: [{legal_rep_id_card: asc}]) { legal_rep_id_card name }
  plain: transport_stations(limit: 1, order_by: [{station_id: asc}]) { name }
}"""


def test_the_hash_key_never_reaches_a_stores_statement_log(sqlite_config: Config, services_config: Config) -> None:
    gateway = secured_gateway("delegated", sqlite_config, services_config)
    supervisor = Identity("supervisor", {})
    try:
        with postgres_statement_log(services_config) as pg_log, mariadb_general_log(services_config) as mariadb_log:
            response = gateway.execute(HASHED, identity=supervisor)
    finally:
        gateway.close()
    assert "errors" not in response.body, response.body
    data = response.body["data"]
    assert all(r["id_card"].startswith("h:") for r in data["public_security_residents"])
    assert all(r["legal_rep_id_card"].startswith("h:") for r in data["market_regulation_enterprises"])
    # hashed and ordered by a pseudonym: on the engine, which holds the key; the rest delegated
    assert response.routes == {
        "public_security_residents": "trino",
        "market_regulation_enterprises": "trino",
        "plain": "delegated",
    }
    pg_text, mariadb_text = "\n".join(pg_log), "\n".join(mariadb_log)
    # the logs did record the statements: Trino's reads, and the delegated one
    assert "residents" in pg_text and "stations" in pg_text, pg_text[-2000:]
    assert "enterprises" in mariadb_text, mariadb_text[-2000:]
    secrets = [s.lower() for s in gateway.engine._secrets(KEY.encode())]
    for secret in secrets:
        assert secret not in pg_text.lower() and secret not in mariadb_text.lower()


# -- Trino down ------------------------------------------------------------------------------------


class Relay:
    """A TCP relay on a loopback port to the real Trino: Trino "comes back" when it starts,
    without the shared Trino ever being stopped."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self.server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.server.settimeout(0.2)
        self.running = True
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while self.running:
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.running = False
        self.server.close()
        self.thread.join(timeout=2)
        for each in self.sockets:
            each.close()


def trino_at(config: Config, port: int, **engine: Any) -> Config:
    trino = config.engine.trino.model_copy(update={"port": port, "request_timeout": 5.0})
    return config.model_copy(update={"engine": config.engine.model_copy(update={"trino": trino, **engine})})


# one: one store; two: a join before a filter, across two stores, on the engine alone; three: a
# relationship between two stores followed by key, on the stores (engine.batch_relationships)
BOTH = """{ one: transport_stations(limit: 2, order_by: [{station_id: asc}]) { name }
  two: health_clinic_visits(where: {resident: {district: {_eq: "莞城"}}}, limit: 2, order_by: [{visit_id: asc}]) {
    visit_id resident { name } }
  three: health_clinic_visits(limit: 2, order_by: [{visit_id: asc}]) { visit_id resident { name } } }"""


def test_with_trino_down_the_gateway_starts_and_delegated_statements_answer_until_it_is_back(
    services_config: Config, gateway_trino: Gateway
) -> None:
    port = free_port()
    config = with_admin(trino_at(services_config, port))
    gateway = Gateway.start(config, create_engine(config))  # nothing listens on `port`
    relay = None
    try:
        assert not gateway.unavailable and len(gateway.catalogue.departments) == 6  # read from the stores
        response = gateway.execute(BOTH)
        assert response.body["data"]["one"] == gateway_trino.execute(BOTH).body["data"]["one"]
        assert response.body["data"]["three"] == gateway_trino.execute(BOTH).body["data"]["three"]
        assert response.routes["three"] == "batched"
        assert response.body["data"]["two"] is None
        [error] = response.body["errors"]
        assert error["path"] == ["two"] and error["extensions"]["code"] == "ENGINE_UNAVAILABLE"
        with TestClient(create_app(gateway), headers=ADMIN) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "degraded"
            routes = ready.json()["routes"]
            assert routes["trino"] != "ok"
            pg_port = os.environ.get("CITYGATE_PG_PORT", "5432")  # as configs/services.yaml reads it
            assert routes[f"delegated:postgresql://127.0.0.1:{pg_port}/transport"] == "ok"
        relay = Relay(port, (services_config.engine.trino.host, services_config.engine.trino.port))
        back = gateway.execute(BOTH)  # no restart
        assert "errors" not in back.body, back.body
        assert back.body == gateway_trino.execute(BOTH).body
        assert back.routes == {"one": "delegated", "two": "trino", "three": "batched"}
    finally:
        if relay is not None:
            relay.close()
        gateway.close()


def test_with_trino_down_the_embedded_fallback_answers_the_rest(
    services_config: Config, gateway_trino: Gateway
) -> None:
    config = trino_at(services_config, free_port(), fallback="embedded")
    gateway = Gateway.start(config, create_engine(config))
    try:
        response = gateway.execute(BOTH)
        assert "errors" not in response.body, response.body
        assert response.body == gateway_trino.execute(BOTH).body
        assert response.routes == {"one": "delegated", "two": "embedded", "three": "batched"}
    finally:
        gateway.close()


# -- the kept connections (DBUtils' PooledDB for MariaDB and SQLite) -------------------------------


def kept(config: Config, department: str, size: int, wait: float) -> NativeEngine:
    """``department``'s store engine with ``size`` connections at most, waited for ``wait`` s."""
    settings = dataclasses.replace(config.engine_settings(), pool_size=size, pool_wait=wait)
    [engine] = native_engines(settings, 5.0, [department])
    return engine


def connection_of(engine: NativeEngine, department: str) -> object:
    """Which connection a statement ran on, as the store tells it: MariaDB's connection id; for
    SQLite, whether the connection's own temporary table (made by :func:`mark`) is there."""
    if engine.dialect == "mysql":
        return engine.run("SELECT CONNECTION_ID()", [department]).rows[0][0]
    return engine.run("SELECT COUNT(*) FROM temp.sqlite_master WHERE name = 'mark'", [department]).rows[0][0]


def mark(engine: NativeEngine, department: str) -> None:
    if engine.dialect == "sqlite":
        engine.run("CREATE TEMP TABLE mark (x INTEGER)", [department])


KEPT = [
    pytest.param("sqlite", "health", id="sqlite"),
    pytest.param("services", "environment", id="mariadb", marks=pytest.mark.services),
]


@pytest.mark.parametrize(("where", "department"), KEPT)
def test_a_store_opens_at_most_its_pool_and_the_next_statement_is_told_busy_after_the_wait(
    where: str, department: str, request: pytest.FixtureRequest
) -> None:
    config: Config = request.getfixturevalue(f"{where}_config")
    if where == "services":  # six statements at once share two connections, waiting their turn
        patient = kept(config, department, size=2, wait=10.0)
        try:
            with ThreadPoolExecutor(6) as pool:
                answers = pool.map(lambda _: patient.run("SELECT CONNECTION_ID(), SLEEP(0.2)", [department]), range(6))
                assert len({answer.rows[0][0] for answer in answers}) == 2
        finally:
            patient.close()
    engine = kept(config, department, size=2, wait=0.5)
    try:
        pool_of: Any = engine._pool  # type: ignore[attr-defined]
        with pool_of.connection(), pool_of.connection():  # both at work
            began = time.monotonic()
            with pytest.raises(EngineQueryError, match="the store's connections are all busy; try again"):
                engine.run("SELECT 1", [department])
            assert 0.5 <= time.monotonic() - began < 3
        assert engine.run("SELECT 1", [department]).rows == [(1,)]  # free again
    finally:
        engine.close()


@pytest.mark.parametrize(("where", "department"), KEPT)
def test_a_connection_that_failed_is_closed_and_not_given_out_again(
    where: str, department: str, request: pytest.FixtureRequest
) -> None:
    config: Config = request.getfixturevalue(f"{where}_config")
    engine = kept(config, department, size=1, wait=0.5)
    try:
        mark(engine, department)
        before = connection_of(engine, department)
        assert connection_of(engine, department) == before  # kept: the same one again
        with pytest.raises(EngineQueryError, match="refused the query"):
            engine.run("SELECT no_such_function(1)", [department])
        assert connection_of(engine, department) != before
        if engine.dialect == "mysql":
            gone = engine.run(f"SELECT COUNT(*) FROM information_schema.processlist WHERE id = {before}", [department])
            assert gone.rows == [(0,)]  # closed, not left open on the store
    finally:
        engine.close()


def test_kept_mariadb_connections_the_store_closed_are_replaced_without_an_error(services_config: Config) -> None:
    """Every kept connection closed by the store (as a restart does): the statement finds one
    closed, and its one retry runs on a fresh connection, not on the next closed one."""
    engine = kept(services_config, "environment", size=2, wait=5.0)
    store = services_config.departments["environment"].store
    try:
        with ThreadPoolExecutor(2) as pool:  # two connections kept
            answers = list(
                pool.map(lambda _: engine.run("SELECT CONNECTION_ID(), SLEEP(0.3)", ["environment"]), range(2))
            )
        ids = {answer.rows[0][0] for answer in answers}
        assert len(ids) == 2
        assert isinstance(store, MariadbStore)
        admin = pymysql.connect(**mariadb_params(store, store.database), autocommit=True)
        try:
            with admin.cursor() as cursor:
                for connection in ids:
                    cursor.execute("KILL CONNECTION %s", (connection,))
        finally:
            admin.close()
        [(again,)] = engine.run("SELECT CONNECTION_ID()", ["environment"]).rows
        assert again not in ids
    finally:
        engine.close()


def test_the_concurrency_settings_reach_the_threads_shares_and_pools(sqlite_config: Config) -> None:
    concurrency = {
        "requests_per_caller": 3,
        "root_fields_per_caller": 5,
        "root_field_threads": 7,
        "statements_per_caller": 2,
        "statement_threads": 6,
        "store_connections": 4,
        "console_estimates": 9,
    }
    limits = sqlite_config.limits.model_copy(
        update={"concurrency": sqlite_config.limits.concurrency.model_validate(concurrency)}
    )
    config = sqlite_config.with_delegate("auto").model_copy(update={"limits": limits})
    gateway = Gateway.start(config, create_engine(config), recording=False)
    try:
        edge = create_app(gateway)
        assert (edge.admission.each, edge.console.estimates.at_once) == (3, 9)
        assert gateway.runner.pool._max_workers == 7
        assert gateway.runner.root_fields.each == 5
        assert gateway.statements.pool._max_workers == 6
        assert gateway.statements.shares.each == 2
        assert config.engine_settings().pool_size == 4
        native: Any = next(iter(gateway.native.values()))  # type: ignore[union-attr]
        assert native._pool._pool._maxconnections == 4
    finally:
        gateway.close()
