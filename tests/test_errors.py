"""A store that is down, a wrong password, an unreachable Trino, a bad config: one clear message each.

Messages name the department or file and what to check, and never carry a password.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlglot import exp
from starlette.testclient import TestClient

from catalogue.errors import ERROR_CODES, EngineUnavailableError, StoreUnavailableError
from catalogue.sql import logical_table
from connectors.embedded import EmbeddedEngine
from connectors.trino import TrinoEngine
from datasets.demo import issue_token
from gateway.config import AuthConfig, Config, LimitsConfig, RoleLimits, TrustedDocumentsConfig
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.graphql.documents import write_manifest
from gateway.http.app import create_app
from tests.conftest import REPO, free_port, shared_engine, shared_secure_demo, trino_with, with_store
from tools.relay import Relay as StallingProxy

WRONG_PASSWORD = "not-the-password-7f3a"


def count(department: str, table: str) -> exp.Select:
    return exp.select(exp.func("count", exp.Star())).from_(logical_table(department, table))


@pytest.mark.parametrize("department", ["health", "environment"])
def test_embedded_store_down_names_the_department_and_others_still_answer(
    services_config: Config, department: str
) -> None:
    engine = EmbeddedEngine(
        with_store(services_config, department, port=free_port()).with_engine("embedded").engine_settings()
    )
    try:
        table = {"health": "clinic_visits", "environment": "monitored_sites"}[department]
        with pytest.raises(StoreUnavailableError) as caught:
            engine.execute(count(department, table))
        assert caught.value.department == department
        assert caught.value.message.startswith(f"department {department}: ")
        assert "did not answer" in caught.value.message and f"departments.{department}.store" in caught.value.message
        assert engine.execute(count("transport", "stations")).rows == [(24,)]
        health = engine.health()
        assert not health.ok and health.departments["transport"] == "ok"
        assert department in health.departments[department]
    finally:
        engine.close()


@pytest.mark.parametrize("department", ["public_security", "market_regulation"])
def test_embedded_wrong_password_is_named_without_the_password(services_config: Config, department: str) -> None:
    engine = EmbeddedEngine(
        with_store(services_config, department, password=WRONG_PASSWORD).with_engine("embedded").engine_settings()
    )
    try:
        table = {"public_security": "residents", "market_regulation": "enterprises"}[department]
        with pytest.raises(StoreUnavailableError) as caught:
            engine.execute(count(department, table))
        assert "rejected user 'citygate'" in caught.value.message
        assert WRONG_PASSWORD not in caught.value.message
        assert WRONG_PASSWORD not in (caught.value.detail or "")
    finally:
        engine.close()


def test_embedded_missing_sqlite_file(sqlite_config: Config, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"
    engine = EmbeddedEngine(with_store(sqlite_config, "health", path=str(missing)).engine_settings())
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            engine.execute(count("health", "clinic_visits"))
        assert str(missing) in caught.value.message and "departments.health.store.path" in caught.value.message
        assert engine.execute(count("transport", "stations")).rows == [(24,)]
    finally:
        engine.close()


def test_unreachable_trino(services_config: Config) -> None:
    port = free_port()
    config = services_config.model_copy(
        update={
            "engine": services_config.engine.model_copy(
                update={"trino": services_config.engine.trino.model_copy(update={"port": port})}
            )
        }
    )
    engine = TrinoEngine(config.engine_settings())
    with pytest.raises(EngineUnavailableError) as caught:
        engine.execute(count("health", "clinic_visits"))
    assert f"{config.engine.trino.host}:{port} is unreachable" in caught.value.message
    assert not engine.health().ok


def test_trino_registers_missing_catalogs_dynamically(
    services_config: Config, trino_engine: TrinoEngine, dynamic_catalogs: list[str]
) -> None:
    engine = trino_with(services_config, "transport", "transport_dynamic")
    dynamic_catalogs.append("transport_dynamic")
    assert "transport_dynamic" not in trino_engine.catalogs()
    assert engine.execute(count("transport", "stations")).rows == [(24,)]
    assert "transport_dynamic" in trino_engine.catalogs()


@pytest.mark.parametrize(
    ("department", "table", "store", "expected"),
    [
        ("health", "clinic_visits", {"password": WRONG_PASSWORD}, "rejected user 'citygate'"),
        ("environment", "monitored_sites", {"password": WRONG_PASSWORD}, "rejected user 'citygate'"),
        ("health", "clinic_visits", {"port": "free"}, "did not answer"),
    ],
)
def test_trino_store_failures_name_the_department(
    services_config: Config,
    dynamic_catalogs: list[str],
    department: str,
    table: str,
    store: dict[str, Any],
    expected: str,
) -> None:
    catalog = f"{department}_broken_{len(dynamic_catalogs)}_{'pw' if 'password' in store else 'down'}"
    store = {k: (free_port() if v == "free" else v) for k, v in store.items()}
    engine = trino_with(services_config, department, catalog, **store)
    dynamic_catalogs.append(catalog)
    with pytest.raises(StoreUnavailableError) as caught:
        engine.execute(count(department, table))
    assert caught.value.department == department
    assert caught.value.message.startswith(f"department {department}: ")
    assert expected in caught.value.message
    assert WRONG_PASSWORD not in caught.value.message


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "departments: {health: {store: {kind: oracle}}}",
            "departments.health.store.kind: 'oracle' is not one of 'sqlite', 'postgresql', 'mariadb'",
        ),
        (
            "departments: {health: {store: {kind: sqlite, path: x.db, colour: red}}}",
            "departments.health.store.colour: unknown key; allowed keys: kind, path",
        ),
        (
            "engine: {kind: spark}\ndepartments: {health: {store: {kind: sqlite, path: x.db}}}",
            "engine.kind: 'spark' is not allowed; expected 'trino' or 'embedded'",
        ),
        (
            "departments: {health: {store: {kind: postgresql, database: h, user: u, port: 70000}}}",
            "departments.health.store.port: input should be less than or equal to 65535",
        ),
        (
            "departments: {health: {store: {kind: postgresql, database: h, user: u, "
            "password: '${CITYGATE_NO_SUCH_VAR}'}}}",
            "departments.health.store.password: environment variable CITYGATE_NO_SUCH_VAR is not set",
        ),
        (
            "audit: {sink: file}\ndepartments: {health: {store: {kind: sqlite, path: x.db}}}",
            "audit: the file sink needs a path",
        ),
        (
            "cache: {ttl_seconds: -1}\ndepartments: {health: {store: {kind: sqlite, path: x.db}}}",
            "cache.ttl_seconds: input should be greater than or equal to 0",
        ),
        (
            "admin: {token: short}\ndepartments: {health: {store: {kind: sqlite, path: x.db}}}",
            "admin.token: string should have at least 16 characters",
        ),
        (
            "telemetry: {exporter: jaeger}\ndepartments: {health: {store: {kind: sqlite, path: x.db}}}",
            "telemetry.exporter: 'jaeger' is not allowed",
        ),
        ("departments: {health: [unclosed", "not valid YAML at line 1"),
        ("departments: {}", "departments: at least one department is required"),
        (
            "departments: {health: {store: {kind: sqlite, path: x.db}, tables: {t: {columns: {c: {type: money}}}}}}",
            "departments.health.tables.t.columns.c.type: unknown type 'money'",
        ),
    ],
)
@pytest.mark.slow
def test_malformed_config_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "deployment.yaml"
    path.write_text(text)
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"citygate: error: {path}: ")
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_cli("check", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"citygate: error: {tmp_path / 'absent.yaml'}: no such configuration file"


@pytest.mark.slow
def test_cli_check_reports_each_department(tmp_path: Path, sqlite_config: Config) -> None:
    broken = with_store(sqlite_config, "health", path=str(tmp_path / "gone.db"))
    path = tmp_path / "deployment.yaml"
    import yaml

    path.write_text(yaml.safe_dump(broken.model_dump(mode="json", by_alias=True, exclude={"source"})))
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 1
    assert "  transport: ok" in result.stdout
    assert f"  health: department health: SQLite file {tmp_path / 'gone.db'} does not exist" in result.stdout
    assert "Traceback" not in result.stderr


def test_trino_catalog_files(tmp_path: Path, services_config: Config, sqlite_config: Config) -> None:
    result = run_cli("trino-catalogs", "--config", str(REPO / "configs" / "services.yaml"), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    health = (tmp_path / "health.properties").read_text().splitlines()
    assert health[0] == "connector.name=postgresql"
    port = services_config.departments["health"].store.port  # type: ignore[union-attr]
    # no TLS unless the store says so: PostgreSQL's JDBC driver would otherwise try it (prefer)
    assert f"connection-url=jdbc:postgresql://127.0.0.1:{port}/health?sslmode=disable" in health
    environment = (tmp_path / "environment.properties").read_text().splitlines()
    assert environment[0] == "connector.name=mariadb"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{d}.properties" for d in services_config.departments)

    import yaml

    path = tmp_path / "embedded.yaml"
    path.write_text(yaml.safe_dump(sqlite_config.model_dump(mode="json", by_alias=True, exclude={"source"})))
    result = run_cli("trino-catalogs", "--config", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Trino has no connector for store kind 'sqlite'" in result.stderr


@pytest.mark.parametrize("kind", ["embedded_sqlite", "trino"])
def test_an_answer_over_the_row_limit_is_refused_by_name(
    sqlite_config: Config, services_config: Config, kind: str
) -> None:
    """Found by a red-team review: 30 aliases of a 2 KB query made a 136 MB answer. One
    request's answer now holds at most `limits.max_rows` rows, and no statement reads more."""
    config = sqlite_config if kind == "embedded_sqlite" else services_config
    config = config.model_copy(update={"limits": LimitsConfig(max_rows=100)})
    gateway = Gateway.start(config, shared_engine(config))
    try:
        whole = gateway.execute("{ public_security_residents { district } }").body
        assert whole["data"] == {"public_security_residents": None}
        [error] = whole["errors"]
        assert error["extensions"]["code"] == "RESULT_TOO_LARGE" and "more than 100 rows" in error["message"]
        assert gateway.execute("{ public_security_residents(limit: 100) { district } }").body.keys() == {"data"}
        two = (
            "{ a: public_security_residents(limit: 60) { district } b: public_security_residents(limit: 60) { name } }"
        )
        for _ in range(2):  # and again, when both answers are cached
            body = gateway.execute(two).body
            assert [e["extensions"]["code"] for e in body["errors"]] == ["RESULT_TOO_LARGE"]
            assert sorted(len(v or []) for v in body["data"].values()) == [0, 60]
    finally:
        gateway.close()


def test_a_store_that_stops_answering_fails_its_requests_in_time_and_holds_no_others(
    services_config: Config,
) -> None:
    """Found by a red-team review: with a MariaDB that accepted connections and never
    answered, embedded requests hung for good and eight of them took the gateway's workers."""
    mariadb = services_config.departments["environment"].store
    proxy = StallingProxy(mariadb.port)  # type: ignore[union-attr]
    config = with_store(services_config, "environment", port=proxy.port).with_engine("embedded")
    config = config.model_copy(
        update={
            "limits": LimitsConfig(statement_seconds=1.5),
            "cache": config.cache.model_copy(update={"enabled": False}),
        }
    )
    gateway = Gateway.start(config, shared_engine(config))
    sites = "{ environment_monitored_sites(limit: 1) { site_id } }"
    try:
        assert "errors" not in gateway.execute(sites).body  # through the proxy while it relays
        proxy.silent.set()
        started = time.monotonic()
        [error] = gateway.execute(sites).body["errors"]
        assert 1.4 < time.monotonic() - started < 5
        assert error["extensions"] == {"code": "DEPARTMENT_UNAVAILABLE", "department": "environment"}
        assert error["message"] == "department environment did not answer within 1.5 s"
        started = time.monotonic()
        [again] = gateway.execute(sites).body["errors"]  # left alone for a while: at once
        assert time.monotonic() - started < 0.5 and "did not answer" in again["message"]
        both = gateway.execute(sites[:-1] + " transport_stations(limit: 1) { name } }").body
        assert both["data"]["transport_stations"] and both["data"]["environment_monitored_sites"] is None
    finally:
        proxy.close()  # the thread still waiting on the store gets its end of file
        gateway.close()


def test_a_slow_query_fails_alone_and_leaves_its_department_answering(services_config: Config) -> None:
    """Found by a code review: a statement past the limit marked its departments down for
    everyone, so any caller with a slow query could make a healthy department look down."""
    config = services_config.with_engine("embedded")
    config = config.model_copy(
        update={
            "limits": LimitsConfig(statement_seconds=0.02),
            "cache": config.cache.model_copy(update={"enabled": False}),
        }
    )
    gateway = Gateway.start(config, shared_engine(config))
    try:
        slow = """{ health_clinic_visits_group_by(by: [id_card, visit_date, cost]) {
            keys { id_card } aggregate { count(columns: [diagnosis], distinct: true) } } }"""
        [error] = gateway.execute(slow).body["errors"]
        assert error["extensions"]["code"] == "TIMEOUT" and "ran longer than 0.02 s" in error["message"], error
        assert not gateway.statements.unresponsive  # the store answered the probe
    finally:
        gateway.close()


# -- docs/errors.md against the server ------------------------------------------------------

JSON, GRAPHQL_JSON = {"accept": "application/json"}, {"accept": "application/graphql-response+json"}
STATIONS = "{ transport_stations(limit: 1) { name } }"
DECIMAL = "health_clinic_visits(where: {cost: {_gt: %s}}, limit: 1) { visit_id }"

# (code, why, request, headers kind, the status expected); the request is a JSON body, or
# (content type, raw bytes). "token:<role>" sends the demo issuer's token for that role.
REQUESTS: list[tuple[str, str, Any, str, int]] = [
    ("BAD_REQUEST", "bad JSON", ("application/json", b"{not json"), "anonymous", 400),
    ("BAD_REQUEST", "a mutation", {"query": "mutation { x }"}, "anonymous", 400),
    ("BAD_REQUEST", "an unknown operationName", {"query": STATIONS, "operationName": "Nope"}, "anonymous", 400),
    ("BAD_REQUEST", "a text/plain body", ("text/plain", STATIONS.encode()), "anonymous", 415),
    ("BAD_REQUEST", "a body over 1 MiB", {"query": STATIONS + " " * (1 << 20)}, "anonymous", 413),
    ("UNAUTHENTICATED", "a token that is no token", {"query": STATIONS}, "garbage", 401),
    ("FORBIDDEN", "a role the token does not carry", {"query": STATIONS}, "token:health_analyst>supervisor", 403),
    ("UNAVAILABLE", "the keys cannot be fetched", {"query": STATIONS}, "token:health_analyst@unreachable", 503),
    ("UNTRUSTED_DOCUMENT", "an unregistered document", {"query": STATIONS}, "token:district_officer", 403),
    ("RATE_LIMITED", "a second request in a minute of one", {"query": STATIONS}, "token:supervisor*2", 429),
    ("PERSISTED_QUERY_NOT_FOUND", "an unknown hash", {"documentId": "sha256:" + "0" * 64}, "anonymous", 0),
    ("GRAPHQL_PARSE_FAILED", "not GraphQL", {"query": "{ transport_stations { name "}, "anonymous", 0),
    ("GRAPHQL_VALIDATION_FAILED", "a field the role lacks", {"query": "{ nope }"}, "anonymous", 0),
    ("BAD_USER_INPUT", "a bad Decimal literal", {"query": "{ " + DECIMAL % '"abc"' + " }"}, "token:health_analyst", 0),
    (
        "BAD_USER_INPUT",
        "the same Decimal as a variable",
        {"query": "query ($c: Decimal!) { " + DECIMAL % "$c" + " }", "variables": {"c": "abc"}},
        "token:health_analyst",
        0,
    ),
    ("BAD_USER_INPUT", "a negative limit (field)", {"query": "{ transport_stations(limit: -1) { name } }"}, "", 200),
    (
        "COST_LIMIT",
        "six root fields for anonymous",
        {"query": "{" + " ".join(f"s{i}: {STATIONS[2:-2]}" for i in range(6)) + "}"},
        "anonymous",
        0,
    ),
    ("RESULT_TOO_LARGE", "more rows than limits.max_rows", {"query": "{ transport_stations { name } }"}, "", 200),
]

# Codes a request to a healthy gateway cannot meet; each is shown where its fault is made.
ELSEWHERE = {
    "POLICY_REFUSED": "test_last_step.py::test_a_statement_the_last_step_refuses_is_a_policy_refusal_not_a_crash",
    "PRIVACY_BUDGET_EXHAUSTED": "test_noise.py::test_the_budget_refuses_past_its_limit_and_renews_after_the_period",
    "NOISE_REQUIRED": "test_noise.py::test_an_answer_depending_on_noisy_rows_without_spending_is_refused",
    "TIMEOUT": "test_errors.py::test_a_slow_query_fails_alone_and_leaves_its_department_answering",
    "DEPARTMENT_UNAVAILABLE": "test_partial.py",
    "ENGINE_UNAVAILABLE": "test_routes.py::test_with_trino_down_the_gateway_starts_and_delegated_statements_answer_"
    "until_it_is_back",
    "ENGINE_ERROR": "test_hostile.py::test_the_embedded_engine_stays_within_its_memory",
    "BAD_CONFIG": "test_errors.py::test_malformed_config_names_file_and_key",
    "INTERNAL": "a bug; tests/test_fuzz.py looks for it",
    "AUDIT_UNAVAILABLE": "test_audit_faults.py::test_a_full_disk_answers_503_until_the_trail_can_be_written",
    "STATE_UNAVAILABLE": "test_state.py::test_a_state_database_stopped_refuses_and_serving_resumes_when_it_is_back",
}


@pytest.fixture(scope="module")
def documented(sqlite_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The demo (its policies and issuer) with limits and trusted documents that each code's
    request can meet, and the same behind an identity provider that does not answer."""

    data_dir = tmp_path_factory.mktemp("documented")
    manifest = data_dir / "documents.json"
    write_manifest(manifest, {})
    config = shared_secure_demo(sqlite_config, data_dir).model_copy(
        update={
            "limits": LimitsConfig(max_rows=10, roles={"supervisor": RoleLimits(requests_per_minute=1)}),
            "trusted_documents": TrustedDocumentsConfig(store=manifest, roles=["district_officer"]),
        }
    )
    assert config.auth is not None
    down = config.model_copy(
        update={
            "auth": AuthConfig(
                issuer=config.auth.issuer,
                audience=config.auth.audience,
                jwks_url=f"http://127.0.0.1:{free_port()}/jwks",
            )
        }
    )
    gateways = [Gateway.start(c, create_engine(c)) for c in (config, down)]
    with TestClient(create_app(gateways[0])) as client, TestClient(create_app(gateways[1])) as unreachable:
        yield {
            "client": client,
            "unreachable": unreachable,
            "token": lambda role: issue_token(data_dir, role, {"district": "南城"}, 300),
        }
    for gateway in gateways:
        gateway.close()


def _send(documented: dict[str, Any], request: Any, who: str, accept: dict[str, str]) -> Any:
    headers = dict(accept)
    client = documented["client"]
    if who == "garbage":
        headers["authorization"] = "Bearer not-a-token"
    elif who.startswith("token:"):
        role, _, rest = who[6:].partition(">")
        role, _, where = role.partition("@")
        role, _, times = role.partition("*")
        headers["authorization"] = "Bearer " + documented["token"](role)
        if rest:
            headers["x-citygate-role"] = rest
        if where == "unreachable":
            client = documented["unreachable"]
        for _ in range(int(times or 1) - 1):
            client.post("/graphql", json=request, headers=headers)
    if isinstance(request, tuple):
        return client.post("/graphql", content=request[1], headers={**headers, "content-type": request[0]})
    return client.post("/graphql", json=request, headers=headers)


@pytest.mark.parametrize(
    ("code", "why", "request_", "who", "status"), REQUESTS, ids=[f"{r[0]}: {r[1]}" for r in REQUESTS]
)
def test_each_documented_code_is_what_the_server_answers(
    documented: dict[str, Any], code: str, why: str, request_: Any, who: str, status: int
) -> None:
    """docs/errors.md's table, row by row, against the server: the code, and the status the
    row states (both statuses of a "200/400" row: one per media type)."""
    [row] = [e for e in ERROR_CODES if e.code == code]
    expected = [(JSON, 200), (GRAPHQL_JSON, 400)] if status == 0 else [(JSON, status)]
    if status == 0:
        assert row.status == "200/400", why
    else:
        assert str(status) in row.status, f"{code} answers {status} ({why}); docs/errors.md says {row.status}"
    for accept, wanted in expected:
        response = _send(documented, request_, who, accept)
        codes = [e["extensions"]["code"] for e in response.json()["errors"]]
        assert (response.status_code, codes) == (wanted, [code]), (why, accept, response.json())


def test_an_operator_endpoint_that_names_nothing_is_the_documented_404(documented: dict[str, Any]) -> None:
    response = documented["client"].get("/console/static/nope.js")
    [row] = [e for e in ERROR_CODES if e.code == "BAD_REQUEST"]
    assert "404" in row.status
    assert response.status_code == 404
    assert [e["extensions"]["code"] for e in response.json()["errors"]] == ["BAD_REQUEST"]


def test_every_documented_code_is_sent_here_or_shown_elsewhere() -> None:
    assert {e.code for e in ERROR_CODES} == {r[0] for r in REQUESTS} | set(ELSEWHERE)


def test_an_unknown_field_names_the_role_and_the_catalogue_the_same_whether_hidden_or_absent(
    documented: dict[str, Any],
) -> None:
    """`name` is a column anonymous may not see, `zzz` no column at all: the two refusals name
    the role and the catalogue, and differ in nothing but the name they were asked for."""
    client = documented["client"]
    said = {}
    for name in ("name", "zzz"):
        response = client.post("/graphql", json={"query": "{ public_security_residents(limit: 1) { " + name + " } }"})
        [error] = response.json()["errors"]
        assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        said[name] = error["message"].replace(f'"{name}"', '"…"')
    assert said["name"] == said["zzz"]
    assert "for role anonymous" in said["name"] and "catalogue at /console lists what it may read" in said["name"]


def test_a_delegated_store_that_stops_answering_mid_byte_fails_its_department_in_time(
    services_config: Config,
) -> None:
    """Found by a fault-injection run: a PostgreSQL behind a link that stopped forwarding, on
    the delegated route (the store runs its own statement). The first request took 34 s against
    a 4 s limit and failed INTERNAL, and held a healthy department's field with it: psycopg's
    cancel, sent through the same silent link, waited out its own 30 s timeout."""
    postgres = services_config.departments["health"].store
    proxy = StallingProxy(postgres.port)  # type: ignore[union-attr]
    config = with_store(services_config, "health", port=proxy.port).with_engine("embedded").with_delegate("auto")
    config = config.model_copy(
        update={
            "limits": LimitsConfig(statement_seconds=2.0, plan_seconds=30.0),
            "cache": config.cache.model_copy(update={"enabled": False}),
        }
    )
    gateway = Gateway.start(config, shared_engine(config))
    both = "{ health_clinic_visits(limit: 1) { visit_id } transport_stations(limit: 1) { name } }"
    try:
        warm = gateway.execute(both)
        assert "errors" not in warm.body and warm.routes == {
            "health_clinic_visits": "delegated",
            "transport_stations": "delegated",
        }
        proxy.silent.set()  # mid-conversation: the connections stay open, nothing comes back
        started = time.monotonic()
        body = gateway.execute(both).body
        took = time.monotonic() - started
        assert took < 2.0 + 3.0, f"took {took:.1f} s"
        [error] = body["errors"]
        assert error["extensions"] == {"code": "DEPARTMENT_UNAVAILABLE", "department": "health"}
        assert body["data"]["transport_stations"] == [{"name": "莞城汽车客运站"}]  # the healthy one answered
        started = time.monotonic()
        health = gateway.health()  # the first check since: only the silent one is down
        assert time.monotonic() - started < 10
        down = sorted(d for d, state in health.departments.items() if state != "ok")
        assert down == ["health"], health.departments
    finally:
        proxy.close()
        gateway.close()
