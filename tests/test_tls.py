"""Secure connections on every route, against real servers: the stores over TLS with their
certificate checked, Trino over HTTPS with a password or a JWT.

`make services` gives each store a user, ``citygate_tls``, that may log in only over TLS, and
Trino an HTTPS port; their certificate names ``localhost`` and is signed by a CA under the
services' state directory (tools/services.py). A wrong CA, a wrong host name, a plain
connection, a wrong password or a bad token each fail with a message naming what to check.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlglot import exp

from catalogue.errors import ConfigError, EngineUnavailableError
from catalogue.sql import logical_table
from catalogue.stores import MariadbStore, PostgresStore
from connectors.embedded import EmbeddedEngine
from connectors.stores import mariadb_params, pg_params
from connectors.trino import TrinoEngine
from gateway.config import Config, load_config
from gateway.execution.gateway import Gateway
from tests.conftest import with_store
from tools.services import TLS_USER, Settings, mariadb_serves_tls, pg_serves_tls, trino_serves_https

# the services' TLS certificates and users
pytestmark = pytest.mark.services

SERVICES = Settings.from_env()
CA = SERVICES.tls / "ca.pem"
PASSWORD_ENV = "CITYGATE_TEST_TRINO_PASSWORD"
TOKEN_ENV = "CITYGATE_TEST_TRINO_JWT"
# A name that reaches the loopback address but is not on the certificate (which names
# `localhost` only). Not `127.0.0.1`: DuckDB's MySQL scanner does not compare a loopback
# address with the certificate's names.
ELSEWHERE = "127.1"
TABLES = {"health": "clinic_visits", "environment": "monitored_sites"}  # one PostgreSQL, one MariaDB
QUERY = "{ health_clinic_visits_aggregate { aggregate { count } } environment_monitored_sites(limit: 3) { site_id } }"
ROOTS = ("health_clinic_visits_aggregate", "environment_monitored_sites")


@pytest.fixture(scope="module", autouse=True)
def tls_services() -> None:
    """The services' TLS side answers; otherwise every test here fails with what to do."""
    missing = [
        what
        for what, up in (
            (f"PostgreSQL over TLS on port {SERVICES.pg_port}", pg_serves_tls),
            (f"MariaDB over TLS on port {SERVICES.mariadb_port}", mariadb_serves_tls),
            (f"Trino over HTTPS on port {SERVICES.trino_https_port}", trino_serves_https),
        )
        if not up(SERVICES)
    ]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not reachable with the CA {CA}; start the services with `make services` "
            "(services started before TLS was added need `make services-stop` first)",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def wrong_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that signed nothing the services present."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "some other city's CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path_factory.mktemp("wrong-ca") / "ca.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def tls_store(services_config: Config, host: str = "localhost", **tls: Any) -> Config:
    """The services' configuration with health (PostgreSQL) and environment (MariaDB) read by
    the TLS user, with ``tls`` as given (default: verify-full against the services' CA)."""
    tls = tls or {"mode": "verify-full", "ca": str(CA)}
    config = services_config
    for department in TABLES:
        config = with_store(config, department, host=host, user=TLS_USER, tls=tls)
    return config


def count(department: str) -> exp.Select:
    return exp.select(exp.func("count", exp.Star())).from_(logical_table(department, TABLES[department]))


def trino_engine(config: Config, catalogs: list[str] | None = None, suffix: str = "", **trino: Any) -> TrinoEngine:
    """A Trino engine over HTTPS (with the password unless ``trino`` says otherwise). Given
    ``catalogs``, its health and environment catalogs are new ones, registered with this
    configuration's store settings, so that Trino's own connections to the stores use them;
    else it reads the services' own catalogs."""
    departments = dict(config.departments)
    for department in TABLES if catalogs is not None else ():
        catalog = f"{department}_tls_{suffix}"
        departments[department] = departments[department].model_copy(update={"trino_catalog": catalog})
        catalogs.append(catalog)  # type: ignore[union-attr]
    settings = {
        "host": "localhost",
        "port": SERVICES.trino_https_port,
        "http_scheme": "https",
        "verify": CA,
        "password_env": PASSWORD_ENV,
        "create_missing_catalogs": catalogs is not None,
        **trino,
    }
    engine = config.engine.model_copy(update={"trino": config.engine.trino.model_validate(settings)})
    return TrinoEngine(config.model_copy(update={"departments": departments, "engine": engine}).engine_settings())


@pytest.fixture(autouse=True)
def trino_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, SERVICES.password)


@pytest.fixture
def embedded(request: pytest.FixtureRequest) -> Iterator[list[EmbeddedEngine]]:
    """Embedded engines a test opens, closed afterwards."""
    opened: list[EmbeddedEngine] = []
    yield opened
    for engine in opened:
        engine.close()


def open_embedded(opened: list[EmbeddedEngine], config: Config) -> EmbeddedEngine:
    engine = EmbeddedEngine(config.with_engine("embedded").engine_settings())
    opened.append(engine)
    return engine


# -- the routes succeed over TLS -------------------------------------------------------------


def test_the_drivers_parameters_reach_each_store_over_tls(services_config: Config) -> None:
    """The parameters the loaders and the delegated route connect with (connectors.stores)."""
    config = tls_store(services_config)
    health, environment = config.departments["health"].store, config.departments["environment"].store
    assert isinstance(health, PostgresStore) and isinstance(environment, MariadbStore)
    with psycopg.connect(**pg_params(health, "health")) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    with pymysql.connect(**mariadb_params(environment, "environment")) as conn, conn.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        assert str(cursor.fetchone()[1]).startswith("TLS")


def test_embedded_engine_reads_both_kinds_of_store_over_tls(
    services_config: Config, gateway_services: Gateway, embedded: list[EmbeddedEngine]
) -> None:
    engine = open_embedded(embedded, tls_store(services_config))
    expected = gateway_services.execute(QUERY).body
    assert "errors" not in expected
    gateway = Gateway(config=services_config.with_engine("embedded"), engine=engine, model=gateway_services.model)
    assert gateway.execute(QUERY).body == expected


def test_the_delegated_route_reads_both_kinds_of_store_over_tls(
    services_config: Config, gateway_services: Gateway
) -> None:
    expected = gateway_services.execute(QUERY).body
    gateway = Gateway(
        config=tls_store(services_config).with_delegate("auto"),
        engine=gateway_services.engine,
        model=gateway_services.model,
    )
    try:
        response = gateway.execute(QUERY)
        assert response.routes == dict.fromkeys(ROOTS, "delegated")
        assert response.body == expected
    finally:
        gateway.routes.close()


def test_trino_over_https_reads_stores_over_tls(
    services_config: Config, gateway_trino: Gateway, dynamic_catalogs: list[str]
) -> None:
    """Both legs secured: the gateway to Trino over HTTPS with a password, Trino to each store
    over TLS with verify-full, as the TLS user."""
    engine = trino_engine(tls_store(services_config), dynamic_catalogs, "ok")
    assert engine.address == f"https://localhost:{SERVICES.trino_https_port}"
    for department in TABLES:
        [(rows,)] = engine.execute(count(department)).rows
        [(plain,)] = gateway_trino.engine.execute(count(department)).rows
        assert rows == plain > 0


@pytest.mark.parametrize("source", ["env", "file"])
def test_trino_accepts_a_jwt(
    services_config: Config, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str
) -> None:
    key = RSAKey.import_key((SERVICES.tls / "jwt-key.pem").read_text())
    token = jwt.encode({"alg": "RS256"}, {"sub": "citygate", "exp": int(time.time()) + 600}, key)
    if source == "env":
        monkeypatch.setenv(TOKEN_ENV, token)
        how: dict[str, Any] = {"jwt_env": TOKEN_ENV}
    else:
        (tmp_path / "token").write_text(token + "\n")
        how = {"jwt_file": tmp_path / "token"}
    engine = trino_engine(services_config, password_env=None, **how)
    assert engine.execute(count("health")).rows[0][0] > 0


# -- and fail clearly when something is wrong ---------------------------------------------------


def check_department_error(body: dict[str, Any], department: str, *expected: str) -> str:
    """The GraphQL error of a department that cannot be reached: its root field is null, the
    error names it, and carries no SQL, trace or password."""
    root = {"health": "health_clinic_visits_aggregate", "environment": "environment_monitored_sites"}[department]
    assert body["data"][root] is None
    [error] = [e for e in body["errors"] if e["path"] == [root]]
    assert error["extensions"] == {"code": "DEPARTMENT_UNAVAILABLE", "department": department}
    message: str = error["message"]
    assert message.startswith(f"department {department}: ")
    for words in expected:
        assert words in message
    for leak in ("SELECT", "Traceback", SERVICES.password):
        assert leak not in message
    return message


REFUSALS = [
    (
        "wrong CA",
        "localhost",
        {"mode": "verify-full", "ca": "WRONG"},
        "not signed by the CA in departments.health.store.tls.ca",
        "not signed by the CA in departments.environment.store.tls.ca",
    ),
    (
        "wrong host name",
        ELSEWHERE,
        {"mode": "verify-full", "ca": str(CA)},
        f"not issued for host '{ELSEWHERE}'",
        f"not issued for host '{ELSEWHERE}'",
    ),
    (
        "plain connection",
        "localhost",
        {"mode": "disable"},
        f"accepts user '{TLS_USER}' only over TLS (set departments.health.store.tls.mode)",
        # MariaDB says "access denied", as for a wrong password
        "a user that must use TLS needs departments.environment.store.tls.mode",
    ),
]


@pytest.mark.parametrize(("case", "host", "tls", "postgres", "mariadb"), REFUSALS)
def test_embedded_engine_names_the_department_and_the_key(
    services_config: Config,
    gateway_services: Gateway,
    embedded: list[EmbeddedEngine],
    wrong_ca: Path,
    case: str,
    host: str,
    tls: dict[str, str],
    postgres: str,
    mariadb: str,
) -> None:
    tls = {k: (str(wrong_ca) if v == "WRONG" else v) for k, v in tls.items()}
    config = tls_store(services_config, host, **tls).with_engine("embedded").with_delegate("never")
    gateway = Gateway(config=config, engine=open_embedded(embedded, config), model=gateway_services.model)
    body = gateway.execute(QUERY).body
    check_department_error(body, "health", postgres)
    check_department_error(body, "environment", mariadb)


@pytest.mark.parametrize(
    ("case", "host", "tls", "expected"),
    [
        ("wrong CA", "localhost", {"mode": "verify-full", "ca": "WRONG"}, "not signed by the CA in departments."),
        ("wrong host name", ELSEWHERE, {"mode": "verify-full", "ca": str(CA)}, f"not issued for host '{ELSEWHERE}'"),
        ("plain connection", "localhost", {"mode": "disable"}, "TLS"),
    ],
)
def test_trino_catalogs_name_the_department_and_the_key(
    services_config: Config,
    gateway_trino: Gateway,
    dynamic_catalogs: list[str],
    wrong_ca: Path,
    case: str,
    host: str,
    tls: dict[str, str],
    expected: str,
) -> None:
    tls = {k: (str(wrong_ca) if v == "WRONG" else v) for k, v in tls.items()}
    suffix = case.replace(" ", "_")
    engine = trino_engine(tls_store(services_config, host, **tls), dynamic_catalogs, suffix)
    engine.ensure_catalogs()
    gateway = Gateway(config=services_config.with_delegate("never"), engine=engine, model=gateway_trino.model)
    body = gateway.execute(QUERY).body
    for department in TABLES:
        check_department_error(body, department, expected)


@pytest.mark.parametrize(("case", "host", "tls", "postgres", "mariadb"), REFUSALS)
def test_the_delegated_route_names_the_department_and_the_key(
    services_config: Config,
    gateway_services: Gateway,
    wrong_ca: Path,
    case: str,
    host: str,
    tls: dict[str, str],
    postgres: str,
    mariadb: str,
) -> None:
    """The stores' own connections (connectors/native.py) refuse what the engines refuse, with
    the same words; the engine, which still reads the stores in plain, is not asked instead."""
    tls = {k: (str(wrong_ca) if v == "WRONG" else v) for k, v in tls.items()}
    gateway = Gateway(
        config=tls_store(services_config, host, **tls).with_delegate("auto"),
        engine=gateway_services.engine,
        model=gateway_services.model,
    )
    try:
        response = gateway.execute(QUERY)
        assert response.routes == dict.fromkeys(ROOTS, "delegated")
        check_department_error(response.body, "health", postgres)
        check_department_error(response.body, "environment", mariadb)
    finally:
        gateway.routes.close()


def test_the_drivers_refuse_a_plain_connection_and_a_wrong_ca(services_config: Config, wrong_ca: Path) -> None:
    plain = tls_store(services_config, mode="disable")
    health, environment = plain.departments["health"].store, plain.departments["environment"].store
    assert isinstance(health, PostgresStore) and isinstance(environment, MariadbStore)
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(**pg_params(health, "health"))
    with pytest.raises(pymysql.err.OperationalError, match="Access denied"):
        pymysql.connect(**mariadb_params(environment, "environment"))
    wrong = tls_store(services_config, mode="verify-ca", ca=str(wrong_ca))
    health, environment = wrong.departments["health"].store, wrong.departments["environment"].store
    assert isinstance(health, PostgresStore) and isinstance(environment, MariadbStore)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(**pg_params(health, "health"))
    with pytest.raises(pymysql.err.OperationalError, match="CERTIFICATE_VERIFY_FAILED"):
        pymysql.connect(**mariadb_params(environment, "environment"))


@pytest.mark.parametrize(
    ("case", "settings", "expected"),
    [
        ("wrong password", {"password_env": "WRONG"}, "refused the gateway's credentials (check engine.trino.user"),
        ("bad JWT", {"password_env": None, "jwt_env": "BAD"}, "refused the gateway's credentials"),
        ("wrong CA", {"verify": "WRONG_CA"}, "presents a certificate its CA does not sign (check engine.trino.verify)"),
        ("wrong host name", {"host": ELSEWHERE}, f"not for host '{ELSEWHERE}' (check engine.trino.host)"),
    ],
)
def test_trino_refusals_say_what_to_check(
    services_config: Config,
    gateway_trino: Gateway,
    monkeypatch: pytest.MonkeyPatch,
    wrong_ca: Path,
    case: str,
    settings: dict[str, Any],
    expected: str,
) -> None:
    monkeypatch.setenv("WRONG", "not-the-password-5c1e")
    other_key = RSAKey.generate_key(2048)
    monkeypatch.setenv("BAD", jwt.encode({"alg": "RS256"}, {"sub": "citygate"}, other_key))
    settings = {k: (wrong_ca if v == "WRONG_CA" else v) for k, v in settings.items()}
    engine = trino_engine(services_config, **settings)
    with pytest.raises(EngineUnavailableError) as caught:
        engine.execute(count("health"))
    assert expected in caught.value.message
    assert "not-the-password" not in caught.value.message
    health = engine.health()
    assert not health.reachable and expected in health.problem
    # and a client sees the same message, in GraphQL's shape, for each root field
    gateway = Gateway(config=services_config.with_delegate("never"), engine=engine, model=gateway_trino.model)
    body = gateway.execute(QUERY).body
    assert body["data"] == {"health_clinic_visits_aggregate": None, "environment_monitored_sites": None}
    for error in body["errors"]:
        assert error["extensions"]["code"] == "ENGINE_UNAVAILABLE"
        assert expected in error["message"] and "not-the-password" not in error["message"]


def test_check_says_why_trino_refused(tmp_path: Path) -> None:
    """`citygate check` prints Trino's refusal, not only that it is unreachable."""
    path = tmp_path / "c.yaml"
    path.write_text(
        f"engine: {{kind: trino, trino: {{host: localhost, port: {SERVICES.trino_https_port}, "
        f"http_scheme: https, verify: {CA}, password_env: {PASSWORD_ENV}}}}}\n"
        "policies: open\nauth: none\ndepartments:\n  health:\n"
        f"    store: {{kind: postgresql, port: {SERVICES.pg_port}, database: health, user: citygate}}\n"
    )
    env = {**os.environ, PASSWORD_ENV: "not-the-password-5c1e"}
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert f"refused the gateway's credentials (check engine.trino.user and the password in ${PASSWORD_ENV})" in (
        result.stdout
    )
    assert "not-the-password" not in result.stdout + result.stderr


def test_a_missing_password_variable_fails_at_start(services_config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(ConfigError, match=f"engine.trino.password_env: environment variable {PASSWORD_ENV} is not set"):
        trino_engine(services_config)


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        (
            "engine: {kind: trino, trino: {password_env: PW}}",
            "engine.trino: password_env needs http_scheme: https",
        ),
        (
            "engine: {kind: trino, trino: {http_scheme: https, password_env: PW, jwt_file: t}}",
            "engine.trino: give one way to authenticate, not password_env and jwt_file",
        ),
        ("engine: {kind: trino, trino: {password: x}}", "engine.trino.password: unknown key"),
        ("tls: {mode: verify-full}", "departments.health.store.tls: mode verify-full needs ca"),
        ("tls: {mode: require, ca: ca.pem}", "departments.health.store.tls: ca is set but mode require"),
        ("tls: {mode: prefer}", "departments.health.store.tls.mode: 'prefer' is not allowed"),
    ],
)
def test_configuration_errors_name_the_key(tmp_path: Path, fragment: str, expected: str) -> None:
    store = (
        "{kind: postgresql, database: health, user: u" + (", " + fragment if fragment.startswith("tls") else "") + "}"
    )
    engine = fragment if fragment.startswith("engine") else ""
    path = tmp_path / "c.yaml"
    path.write_text(f"{engine}\npolicies: open\nauth: none\ndepartments:\n  health:\n    store: {store}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert expected in caught.value.message


def test_paths_are_read_from_the_configuration_files_directory(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "engine: {kind: trino, trino: {http_scheme: https, verify: certs/trino-ca.pem, jwt_file: token}}\n"
        "policies: open\nauth: none\ndepartments:\n  health:\n"
        "    store: {kind: postgresql, database: health, user: u, tls: {mode: verify-ca, ca: certs/ca.pem}}\n"
    )
    config = load_config(path)
    store = config.departments["health"].store
    assert isinstance(store, PostgresStore)
    assert store.tls.ca == tmp_path / "certs" / "ca.pem"
    assert config.engine.trino.verify == tmp_path / "certs" / "trino-ca.pem"
    assert config.engine.trino.jwt_file == tmp_path / "token"
