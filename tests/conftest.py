"""Shared fixtures: the generator's own output as the oracle, and real engines over real stores.

The services (PostgreSQL, MariaDB, Trino) are started by `make services`, which `make test`
runs first. A test that needs one and cannot reach it fails with what to do; nothing skips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from sqlglot import exp

from catalogue.errors import CitygateError
from catalogue.files import write_atomic
from catalogue.stores import SqliteStore
from connectors.base import Engine
from connectors.embedded import EmbeddedEngine
from connectors.settings import EngineSettings
from connectors.trino import TrinoEngine
from datasets import load as stores
from datasets.datagen import City, generate
from datasets.demo import demo_config, secure_demo
from datasets.demo_city import TABLES
from gateway.config import Config, TokenGuard, load_config
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.identity.caller import Identity
from tests.oracle import Oracle
from tests.policy_support import ENGINES as POLICY_ENGINES
from tests.policy_support import secured_gateway, with_policies
from tools.services import export_client_environment

REPO = Path(__file__).resolve().parent.parent

# CI runs a fixed sample of generated queries; HYPOTHESIS_PROFILE=hunt explores many more. No
# deadline: an example's time says nothing of its answer, and on a busy machine (the fast layer
# runs on every core) a first example past Hypothesis' 200 ms failed a correct test as flaky.
settings.register_profile("ci", max_examples=40, derandomize=True, deadline=None)
settings.register_profile("hunt", max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
SERVICES_CONFIG = REPO / "configs" / "services.yaml"
# configs/services.yaml logs in to Trino with a password and checks its certificate against the
# services' CA: what it reads from the environment for both, for every gateway the tests start.
export_client_environment()


def unreachable(what: str, error: Exception) -> None:
    pytest.fail(
        f"{what} is not reachable ({error}); start the services with `make services`",
        pytrace=False,
    )


# -- the fast layer: `make check` runs every test that needs no service (`-m "not services"`) ----

# Fixtures that reach PostgreSQL, MariaDB or Trino, and the parameters that name an engine or a
# gateway on them; a test parametrized by engine is a service test only for those parameters.
SERVICE_FIXTURES = frozenset(
    {
        "services_config",
        "embedded_services",
        "trino_engine",
        "gateway_services",
        "gateway_trino",
        "gateway_delegated",
        "dynamic_catalogs",
    }
)
SERVICE_PARAMS = frozenset({*SERVICE_FIXTURES, "embedded_services", "trino", "delegated"})
LOCAL_PARAMS = frozenset(
    {"embedded_sqlite", "sqlite_delegated", "gateway_sqlite", "gateway_sqlite_delegated", "sqlite_config"}
)


def needs_services(item: pytest.Item) -> bool:
    """Whether a collected test needs the services: it is marked so, or it takes a fixture or
    an engine parameter that reaches them. A test parametrized by engine asks for the services'
    configuration for every engine, but needs the services only on theirs."""
    if item.get_closest_marker("services") is not None:
        return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    named = {value for value in params.values() if isinstance(value, str)}
    if named & SERVICE_PARAMS:
        return True
    if named & LOCAL_PARAMS:
        return False
    return bool(SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if needs_services(item) and item.get_closest_marker("services") is None:
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session")
def city() -> City:
    """The demo city at scale 1, exactly as the stores were loaded."""
    return generate(scale=1)


@pytest.fixture(scope="session")
def sqlite_config(tmp_path_factory: pytest.TempPathFactory, city: City) -> Config:
    """The embedded demo: one SQLite file per department, written by the project's loader."""
    data_dir = tmp_path_factory.mktemp("demo-city")
    for department in sorted({t.department for t in TABLES}):
        store = SqliteStore(kind="sqlite", path=data_dir / f"{department}.db")
        tables = [(t, city.rows(t.department, t.name)) for t in TABLES if t.department == department]
        stores.load(department, store, tables, lambda n: None)
    return demo_config(data_dir)


@pytest.fixture
def demo_dir(sqlite_config: Config, tmp_path: Path) -> Path:
    """A demo data directory of the test's own (``--data-dir``) with the demo city built in it
    already: a copy of the session's SQLite files, which are what `citygate` builds on its first
    run (the same generator and loader). A command run on it skips that build, seconds of CPU
    each time; tests/test_cli.py::test_schema_print_builds_the_demo_city_on_first_run runs it."""
    data_dir = tmp_path / "demo"
    data_dir.mkdir()
    for department in sqlite_config.departments.values():
        store = department.store
        assert isinstance(store, SqliteStore)
        shutil.copyfile(store.path, data_dir / store.path.name)
    return data_dir


# Embedded engines by the settings they read, shared by the gateways of one test process (see
# shared_engine), with each one's own close, which the session's end calls.
_SHARED_ENGINES: list[tuple[EngineSettings, Engine, Callable[[], None]]] = []


def shared_engine(config: Config) -> Engine:
    """The engine :func:`create_engine` makes for ``config``, shared by every gateway this test
    process starts on the same engine settings (stores, hash key, DuckDB's settings). Building
    an embedded engine costs about 0.5 s of CPU, nearly all of it DuckDB checking the signatures
    of the scanner extensions it loads; tests that start a gateway of their own (its policies,
    limits, cache or audit differ) paid it again each time. ``Gateway.close`` leaves a shared
    engine open (the session's end closes it). Only engines on SQLite files are shared: one on
    the services may be left holding connections to a store a test stopped (or a relay on a
    port a later test's relay gets again); those, and Trino, are made afresh.
    A test's own gateway: ``Gateway.start(config, shared_engine(config))``."""
    on_files = all(isinstance(d.store, SqliteStore) for d in config.departments.values())
    if config.engine.kind != "embedded" or not on_files:
        return create_engine(config)
    settings = config.engine_settings()
    for known, engine, _ in _SHARED_ENGINES:
        if known == settings:
            return engine
    engine = create_engine(config)
    _SHARED_ENGINES.append((settings, engine, engine.close))
    engine.close = lambda: None  # type: ignore[method-assign]
    return engine


_DEMO_ISSUER: dict[str, bytes] = {}  # the files of the first demo issuer this process made


def shared_secure_demo(config: Config, data_dir: Path) -> Config:
    """:func:`datasets.demo.secure_demo` in ``data_dir``, with the demo issuer (signing key and
    hash key) the first call of this test process made: a new one costs an RSA key, and a hash
    key of its own would give each gateway an engine of its own (:func:`shared_engine`)."""
    if _DEMO_ISSUER:
        data_dir.mkdir(parents=True, exist_ok=True)
        for name, content in _DEMO_ISSUER.items():
            write_atomic(data_dir / name, content, fsync=False, mode=0o600)
    secured = secure_demo(config, data_dir)
    if not _DEMO_ISSUER:
        _DEMO_ISSUER.update({name: (data_dir / name).read_bytes() for name in ("demo-issuer.json", "demo-jwks.json")})
    return secured


def pytest_sessionfinish() -> None:
    for _, _, close in _SHARED_ENGINES:
        close()
    _SHARED_ENGINES.clear()


@pytest.fixture(scope="session")
def services_config() -> Config:
    """The services' configuration, with time to plan: a first request asks the engine for its
    tables' sizes (the cost estimate), and on a busy 2-core machine a cold Trino can take longer
    than the deployment's 2 s for that. These tests are about answers; tests/test_hostile.py
    holds the plan budget itself."""
    config = load_config(SERVICES_CONFIG)
    return config.model_copy(update={"limits": config.limits.model_copy(update={"plan_seconds": 30.0})})


@pytest.fixture(scope="session")
def embedded_sqlite(sqlite_config: Config) -> Iterator[EmbeddedEngine]:
    engine = EmbeddedEngine(sqlite_config.engine_settings())
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def embedded_services(services_config: Config) -> Iterator[EmbeddedEngine]:
    engine = EmbeddedEngine(services_config.with_engine("embedded").engine_settings())
    for department in services_config.departments:
        try:
            engine.ping_department(department)
        except CitygateError as error:
            unreachable(f"the store of department {department}", error)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def trino_engine(services_config: Config) -> Iterator[TrinoEngine]:
    engine = TrinoEngine(services_config.engine_settings())
    try:
        engine.ping()
    except CitygateError as error:
        unreachable("Trino", error)
    yield engine
    engine.close()


ENGINES = ("embedded_sqlite", "embedded_services", "trino_engine")


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each engine in turn: DuckDB on SQLite files, DuckDB on PostgreSQL + MariaDB, Trino."""
    value: Engine = request.getfixturevalue(request.param)
    return value


ADMIN_TOKEN = "an-admin-token-for-the-tests-0123"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def with_admin(config: Config) -> Config:
    """``config`` with :data:`ADMIN_TOKEN` as its admin token: what only the operator sees
    (``/readyz``'s details) is then visible to a test that sends :data:`ADMIN`."""
    return config.model_copy(update={"admin": TokenGuard(token=ADMIN_TOKEN)})


def as_operator(gateway: Gateway) -> Gateway:
    """``gateway``'s engine and model under :func:`with_admin` of its configuration."""
    return Gateway(config=with_admin(gateway.config), engine=gateway.engine, model=gateway.model)


def free_port() -> int:
    """A loopback port with nothing listening: a store that is down."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def uvicorn_thread(app: Any, **options: Any) -> Iterator[int]:
    """``app`` served by uvicorn in a thread of this process on a free loopback port, until the
    block ends; yields the port."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_until_serving(port: int, process: subprocess.Popen[Any], what: str, timeout: float = 120) -> None:
    """Wait until the citygate ``process`` answers ``/healthz`` on ``port``; fail if it exits
    or takes longer than ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
            return
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.2)


# The engines' own gateways run every statement on their engine (engine.delegate: never); the
# delegated ones run each statement that reads one store on that store, the rest on the engine.


@pytest.fixture(scope="session")
def gateway_sqlite(embedded_sqlite: EmbeddedEngine, sqlite_config: Config) -> Gateway:
    return Gateway.start(sqlite_config.with_delegate("never"), embedded_sqlite)


@pytest.fixture(scope="session")
def gateway_services(embedded_services: EmbeddedEngine, services_config: Config) -> Gateway:
    return Gateway.start(services_config.with_engine("embedded").with_delegate("never"), embedded_services)


@pytest.fixture(scope="session")
def gateway_trino(trino_engine: TrinoEngine, services_config: Config) -> Gateway:
    return Gateway.start(services_config.with_delegate("never"), trino_engine)


@pytest.fixture(scope="session")
def gateway_delegated(trino_engine: TrinoEngine, services_config: Config) -> Iterator[Gateway]:
    """PostgreSQL and MariaDB statements on their own stores; the others on Trino."""
    gateway = Gateway.start(services_config.with_delegate("auto"), trino_engine)
    yield gateway
    gateway.routes.close()


@pytest.fixture(scope="session")
def gateway_sqlite_delegated(embedded_sqlite: EmbeddedEngine, sqlite_config: Config) -> Iterator[Gateway]:
    """SQLite statements on their own files; the others on the embedded engine."""
    gateway = Gateway.start(sqlite_config.with_delegate("auto"), embedded_sqlite)
    yield gateway
    gateway.routes.close()


@pytest.fixture(scope="session")
def oracle(gateway_sqlite: Gateway, city: City) -> Oracle:
    """The same queries answered in plain Python over the generator's rows."""
    return Oracle(gateway_sqlite.model, city)


GATEWAYS = ("gateway_sqlite", "gateway_services", "gateway_trino", "gateway_delegated", "gateway_sqlite_delegated")


@pytest.fixture(params=GATEWAYS)
def gateway(request: pytest.FixtureRequest) -> Gateway:
    """The GraphQL gateway on each engine in turn, and on each store's own (delegated)."""
    value: Gateway = request.getfixturevalue(request.param)
    return value


@pytest.fixture(scope="session", params=POLICY_ENGINES)
def secured(request: pytest.FixtureRequest, sqlite_config: Config, services_config: Config) -> Iterator[Gateway]:
    """A policy-enforcing gateway on each engine, under the demo's policies (tests/policy_support.py);
    one for the whole session, as building one proves its masks on every route."""
    gateway = secured_gateway(request.param, sqlite_config, services_config)
    yield gateway
    gateway.close()


@pytest.fixture(scope="session")
def analyst(sqlite_config: Config) -> Iterator[tuple[Gateway, Any]]:
    """A policy-enforcing gateway on SQLite and health_analyst's rewrite context."""
    from policies.rewrite import Context

    config = with_policies(sqlite_config)
    gateway = Gateway.start(config, create_engine(config))
    view = gateway.view(Identity("health_analyst"))
    assert view.decisions is not None
    yield gateway, Context(view.decisions, view.types, {}, view.keys)
    gateway.close()


def with_store(config: Config, department: str, **changes: Any) -> Config:
    """A copy of ``config`` where one department's store differs."""
    raw = config.model_dump(by_alias=True, exclude={"source"})
    raw["departments"][department]["store"].update(changes)
    for spec in raw["departments"].values():
        spec["store"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in spec["store"].items()}
    return Config.model_validate(raw)


def trino_with(services_config: Config, department: str, catalog: str, **store: Any) -> TrinoEngine:
    config = with_store(services_config, department, **store)
    departments = dict(config.departments)
    departments[department] = departments[department].model_copy(update={"trino_catalog": catalog})
    engine_config = config.engine.model_copy(
        update={"trino": config.engine.trino.model_copy(update={"create_missing_catalogs": True})}
    )
    return TrinoEngine(
        config.model_copy(update={"departments": departments, "engine": engine_config}).engine_settings()
    )


@pytest.fixture
def dynamic_catalogs(trino_engine: TrinoEngine) -> Iterator[list[str]]:
    """Catalogs a test registers with CREATE CATALOG, dropped afterwards."""
    created: list[str] = []
    yield created
    for catalog in created:
        trino_engine._run(f"DROP CATALOG IF EXISTS {exp.to_identifier(catalog, quoted=True).sql('trino')}", [])
