"""The shared state (`state.url`): one privacy budget and one rate limit for every worker process
and every gateway on it, spent or refused in one transaction; values read back checked; a state
that cannot be reached refuses (fail closed) and serving resumes by itself when it is back.

PostgreSQL here is a server of this test's own (initdb in a temporary directory, a free port),
since the test stops and starts it: the shared services are never touched."""

from __future__ import annotations

import math
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from catalogue.errors import ConfigError, PrivacyBudgetExhausted
from datasets.demo import secure_demo
from gateway.config import CacheConfig, Config, LimitsConfig, RoleLimits, StateConfig
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.http.app import create_app
from gateway.identity.caller import Identity
from gateway.state import State, StateUnavailable
from tests.conftest import free_port
from tests.own_postgres import Postgres
from tests.test_noise import TOTAL, policy_file

STATIONS = {"query": "{ transport_stations(limit: 2, order_by: [{station_id: asc}]) { name } }"}


def until(condition: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    server = Postgres()
    server.start()
    try:
        yield server
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(server.bin / "pg_ctl"),
                "-D",
                str(server.data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(server.root, ignore_errors=True)


def test_values_read_back_are_checked_and_refuse(tmp_path: Path) -> None:
    """A state file edited to hold NaN, a negative spending, text or infinity refuses the spending
    (and never grants 205 answers more); the state is left as it was."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    state = State.open(url)
    assert state.spend("officer", 7, 1.0, 10.0)
    editor = sqlite3.connect(tmp_path / "state.db")
    editor.execute("PRAGMA ignore_check_constraints = ON")  # as a hand edit would
    with pytest.raises(sqlite3.IntegrityError), editor:  # SQLite keeps NaN as NULL, which it refuses
        editor.execute("UPDATE citygate_budget SET spent = ? WHERE role = 'officer'", (float("nan"),))
    for bad in (-200.0, "a lot", float("inf")):
        with editor:
            editor.execute("UPDATE citygate_budget SET spent = ? WHERE role = 'officer'", (bad,))
        with pytest.raises(StateUnavailable) as refused:
            state.spend("officer", 7, 1.0, 10.0)
        assert "cannot be a spending" in str(refused.value.detail)
        with pytest.raises(StateUnavailable):
            state.spent("officer", 7)
    with editor:  # periods are compared (only a newer one renews): one that is no number refuses
        editor.execute("UPDATE citygate_budget SET period = 'next week', spent = 1.0 WHERE role = 'officer'")
    with pytest.raises(StateUnavailable) as refused:
        state.spend("officer", 7, 1.0, 10.0)
    assert "cannot be a period" in str(refused.value.detail)
    editor.close()
    with pytest.raises(ValueError):
        state.spend("officer", 7, float("nan"), 10.0)
    with pytest.raises(ValueError):
        state.spend("officer", 7, -1.0, 10.0)
    state.close()


def test_gateways_whose_clocks_differ_at_a_period_boundary_never_renew_a_budget(tmp_path: Path) -> None:
    """Two gateways (two State objects on one database), one clock a second ahead of the other,
    at midnight UTC: one already spends in the new day, the other still in the old. Spending in
    turn, they once reset the budget for each other at every turn (each reset granting it again);
    only a newer period renews, and the older caller counts against it."""
    from gateway.execution.privacy import PrivacyBudgets
    from policies.model import PrivacyBudget

    url = f"sqlite:///{tmp_path / 'state.db'}"
    midnight = 86_400.0 * 20_000
    ahead = PrivacyBudgets(State.open(url), clock=lambda: midnight + 0.5)
    behind = PrivacyBudgets(State.open(url), clock=lambda: midnight - 0.5)
    budget = PrivacyBudget(epsilon=1.0, period="1d")
    granted = 0
    for _ in range(5):
        for gateway in (ahead, behind):
            try:
                gateway.spend("noisy", 0.5, budget)
                granted += 1
            except PrivacyBudgetExhausted:
                pass
    assert granted == 2  # the new day's budget, once
    assert ahead.left("noisy", budget) == behind.left("noisy", budget) == pytest.approx(0.0)

    # a clock that is behind never resets a period that has begun, even first thing in it
    late = State.open(url)
    assert late.spend("officer", 20_001, 1.0, 1.0)
    assert not late.spend("officer", 20_000, 1.0, 1.0)
    assert late.spent("officer", 20_000) == pytest.approx(1.0)
    assert late.spend("officer", 20_002, 1.0, 1.0)  # a newer period renews it
    late.refund("officer", 20_001, 1.0)  # not given back to the newer period
    assert late.spent("officer", 20_002) == pytest.approx(1.0)


SPENDER = """
import sys, time
from pathlib import Path
from gateway.state import State
state = State.open(sys.argv[1])
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
print(sum(state.spend("noisy", 1, 0.25, 10.0) for _ in range(40)), flush=True)
"""


def test_two_worker_processes_on_one_sqlite_state_spend_one_budget(tmp_path: Path) -> None:
    """Two processes spending at once from one SQLite file: 80 spendings of 0.25, 40 fit in 10."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    State.open(url).close()
    go = tmp_path / "go"
    workers = [
        subprocess.Popen([sys.executable, "-c", SPENDER, url, str(go)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    time.sleep(2)  # both have opened the state
    go.touch()
    granted = [int(worker.communicate(timeout=120)[0]) for worker in workers]
    assert sum(granted) == 40, granted
    assert State.open(url).spent("noisy", 1) == pytest.approx(10.0)


def gateway_on(config: Config, data_dir: Path, url: str, budget: float) -> Gateway:
    """A gateway with its own data dir (its own audit trail) on the shared state ``url``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = secure_demo(config, data_dir)
    assert config.policies is not None
    files = [*config.policies.files, policy_file(data_dir / "noise.yaml", budget=budget)]
    config = config.model_copy(
        update={
            "policies": config.policies.model_copy(update={"files": files}),
            "state": StateConfig(url=url),
            "cache": CacheConfig(enabled=False),
            "limits": LimitsConfig(roles={"anonymous": RoleLimits(requests_per_minute=3)}),
        }
    )
    return Gateway.start(config, create_engine(config))


@pytest.mark.slow
def test_two_gateways_on_one_postgresql_state_have_one_budget_and_one_rate_limit(
    sqlite_config: Config, tmp_path: Path, postgres: Postgres
) -> None:
    a = gateway_on(sqlite_config, tmp_path / "a", postgres.url, budget=2.0)
    b = gateway_on(sqlite_config, tmp_path / "b", postgres.url, budget=2.0)
    try:
        noisy = Identity("noisy")
        assert a.execute(TOTAL, identity=noisy).epsilon == {"health_clinic_visits_aggregate": 1.0}
        assert b.execute(TOTAL, identity=noisy).epsilon == {"health_clinic_visits_aggregate": 1.0}
        for gateway in (a, b):  # the budget of 2 is spent: on both
            [error] = gateway.execute(TOTAL, identity=noisy).body["errors"]
            assert error["extensions"]["code"] == "PRIVACY_BUDGET_EXHAUSTED"
        address = ("198.51.100.40", 40000)
        with TestClient(create_app(a), client=address) as first, TestClient(create_app(b), client=address) as second:
            statuses = [c.post("/graphql", json=STATIONS).status_code for c in (first, second, first, second)]
        assert statuses == [200, 200, 200, 429]  # 3 a minute, counted across both
    finally:
        a.close()
        b.close()


@pytest.mark.slow
def test_two_gateway_processes_on_one_postgresql_state_have_one_budget_and_one_rate_limit(
    sqlite_config: Config, tmp_path: Path, postgres: Postgres
) -> None:
    """Two `citygate serve` processes, each with its own data dir and audit trail, on one
    PostgreSQL state; requests alternate between them. A limit of 10 a minute answers 10 across
    both (each counting its own would answer 20), a budget of 4 noisy answers 4 (not 8)."""
    import psycopg

    from tests.test_workers import answered, bearer, noisy_deployment, post, served

    with psycopg.connect(postgres.url, autocommit=True) as admin:
        admin.execute("CREATE DATABASE two_processes")  # a state of this test's own: nothing spent yet
    url = postgres.url.rsplit("/", 1)[0] + "/two_processes"
    limits = {"roles": {"exact": {"requests_per_minute": 10}}}
    issuer = tmp_path / "issuer"
    configs = [
        noisy_deployment(tmp_path / name, sqlite_config, 4.0, issuer, state={"url": url}, limits=limits)
        for name in ("a", "b")
    ]
    tokens = configs[0][1]
    ports = [free_port(), free_port()]
    with (
        served(configs[0][0], 1, ports[0], tmp_path / "a.log"),
        served(configs[1][0], 1, ports[1], tmp_path / "b.log"),
    ):
        for port in ports:  # plans made, engines warm, under a subject of its own (the limit is per subject)
            assert post(port, TOTAL, bearer(issuer, "exact", "warm-up"))[0] == 200
        started = time.monotonic()
        limited = [post(ports[n % 2], TOTAL, tokens["exact"]) for n in range(20)]
        took = time.monotonic() - started
        noisy = [post(ports[n % 2], TOTAL, tokens["noisy"]) for n in range(8)]
    # one every 6 s after the first 10: exactly 10 while the 20 took less than 6 s
    assert 10 <= answered(limited) <= 10 + took / 6, took
    if took < 6:
        assert [status for status, _, _ in limited] == [200] * 10 + [429] * 10
    assert answered(noisy) == 4
    assert [status for status, _, _ in noisy[:4]] == [200] * 4  # two from each gateway, then refused on both
    assert {body["errors"][0]["extensions"]["code"] for _, body, _ in noisy[4:]} == {"PRIVACY_BUDGET_EXHAUSTED"}
    assert State.open(url).spent("noisy", math.floor(time.time() / 86_400)) == pytest.approx(4.0)


def state_up(client: TestClient) -> float:
    """``citygate_state_up`` as a scrape reads it."""
    [line] = [line for line in client.get("/metrics").text.splitlines() if line.startswith("citygate_state_up ")]
    return float(line.split()[1])


def test_a_state_database_stopped_refuses_and_serving_resumes_when_it_is_back(
    sqlite_config: Config, tmp_path: Path, postgres: Postgres, caplog: pytest.LogCaptureFixture
) -> None:
    """While the state is down, requests that need it are refused, and the probes say so:
    `/readyz` 503 (its reason to the operator only), `citygate_state_up` 0, one log line each way."""
    gateway = gateway_on(sqlite_config, tmp_path / "g", postgres.url, budget=100.0)
    noisy = Identity("noisy")
    operator = {"authorization": f"Bearer {gateway.config.admin.token}"}
    try:
        with TestClient(create_app(gateway), client=("203.0.113.41", 40000)) as client:
            assert client.post("/graphql", json=STATIONS).status_code == 200
            assert client.get("/readyz").status_code == 200
            assert client.get("/readyz", headers=operator).json()["state"] == "ok"
            assert state_up(client) == 1.0
            postgres.stop()
            try:
                refused = client.post("/graphql", json=STATIONS)  # the rate limit cannot be counted
                assert refused.status_code == 503, refused.text
                assert refused.json()["errors"][0]["extensions"]["code"] == "STATE_UNAVAILABLE"
                assert "postgresql" not in refused.text  # where the state is: the operator's, in the log
                [error] = gateway.execute(TOTAL, identity=noisy).body["errors"]  # nothing unbudgeted
                assert error["extensions"]["code"] == "STATE_UNAVAILABLE"
                until(lambda: client.get("/readyz").status_code == 503)  # the last check stands 2 s
                assert client.get("/readyz").json() == {"status": "unavailable"}  # nothing of where
                why = client.get("/readyz", headers=operator).json()["state"]
                assert why.startswith("postgresql://citygate:***@127.0.0.1:") and "Error" in why, why
                assert state_up(client) == 0.0
                started = time.monotonic()
                for _ in range(20):  # a flood of probes is answered from the last check, not each waiting
                    assert client.get("/readyz").status_code == 503
                assert time.monotonic() - started < 2.0
            finally:
                postgres.start()
            until(lambda: client.get("/readyz").status_code == 200)
            assert client.get("/readyz", headers=operator).json()["state"] == "ok"
            assert state_up(client) == 1.0
            until(lambda: client.post("/graphql", json=STATIONS).status_code == 200)
        until(lambda: "errors" not in gateway.execute(TOTAL, identity=noisy).body)
    finally:
        gateway.close()
    changes = [r.getMessage() for r in caplog.records if r.name == "citygate.state"]
    assert sum("cannot be reached" in m for m in changes) == 1, changes  # once, not once a request
    assert sum("answers again" in m for m in changes) == 1, changes


def test_an_earlier_versions_budget_file_is_taken_over_not_renewed(sqlite_config: Config, tmp_path: Path) -> None:
    import json
    import math

    from gateway.execution.privacy import PrivacyBudgets
    from policies.model import PrivacyBudget

    window = math.floor(time.time() / 86_400)
    (tmp_path / "privacy-budget.json").write_text(json.dumps({"noisy": [window, 1.5]}))
    gateway = gateway_on(sqlite_config, tmp_path, f"sqlite:///{tmp_path / 'state.db'}", budget=2.0)
    try:
        assert gateway.privacy.left("noisy", PrivacyBudget(epsilon=2.0)) == pytest.approx(0.5)
    finally:
        gateway.close()
    assert (tmp_path / "privacy-budget.json.adopted").exists()
    (tmp_path / "privacy-budget.json").write_text(json.dumps({"noisy": [window, float("nan")]}))
    with pytest.raises(ConfigError, match="cannot be a spending"):
        gateway_on(sqlite_config, tmp_path, f"sqlite:///{tmp_path / 'state.db'}", budget=2.0)
    assert PrivacyBudgets(State.open(f"sqlite:///{tmp_path / 'state.db'}")).left(
        "noisy", PrivacyBudget(epsilon=2.0)
    ) == pytest.approx(0.5)


def test_workers_starting_together_on_a_new_postgresql_state_all_open_it(postgres: Postgres) -> None:
    """`serve --workers N` starts its workers at once, each creating the state's tables: without
    turns, CREATE TABLE IF NOT EXISTS fails on PostgreSQL's catalogue for all but one (a
    worker died at start-up here, and the balancer sent requests to one that was restarting)."""
    import threading

    import psycopg

    def open_state(url: str, together: threading.Barrier, failures: list[BaseException]) -> None:
        together.wait()
        try:
            State.open(url).close()
        except BaseException as error:  # what the worker would have died of
            failures.append(error)

    for attempt in range(4):
        database = f"fresh{attempt}"
        with psycopg.connect(postgres.url, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {database}")
        url = postgres.url.rsplit("/", 1)[0] + "/" + database
        together = threading.Barrier(6)
        failures: list[BaseException] = []
        threads = [threading.Thread(target=open_state, args=(url, together, failures)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not failures, failures


def test_a_postgresql_state_that_waits_does_not_hold_the_event_loop(
    sqlite_config: Config, tmp_path: Path, postgres: Postgres
) -> None:
    """The rate limit is one transaction on the state; on a server it may wait (a lock, the
    network). It is taken off the event loop, so other requests go on meanwhile."""
    import threading

    import psycopg

    gateway = gateway_on(sqlite_config, tmp_path / "a", postgres.url, budget=2.0)
    try:
        with TestClient(create_app(gateway), client=("192.0.2.77", 40000)) as client:  # a network of its own
            assert client.post("/graphql", json=STATIONS).status_code == 200  # the table exists
            with psycopg.connect(postgres.url) as holder:
                holder.execute("LOCK TABLE citygate_rate IN ACCESS EXCLUSIVE MODE")  # held until commit
                released = threading.Timer(3.0, holder.commit)  # so a loop held by it is let go
                released.start()
                answered: list[int] = []
                waiting = threading.Thread(
                    target=lambda: answered.append(client.post("/graphql", json=STATIONS).status_code)
                )
                waiting.start()
                time.sleep(0.5)  # the request waits for the lock
                assert not answered
                started = time.monotonic()
                assert client.get("/healthz").status_code == 200  # the loop answers meanwhile
                assert time.monotonic() - started < 1.0
                assert not answered
                released.join()
            waiting.join(timeout=30)
            assert answered == [200]
    finally:
        gateway.close()
