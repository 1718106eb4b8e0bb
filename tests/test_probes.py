"""Probes a load balancer can use: ``/readyz`` fails only when this instance cannot serve at
all, and reports each department's health (in its body and in the metrics) without failing."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from connectors.trino import TrinoEngine
from gateway.config import Config
from gateway.execution import gateway as gateway_module
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.http.app import create_app
from tests.conftest import ADMIN, as_operator, free_port, with_admin, with_store

DEPARTMENTS = ("public_security", "health", "transport", "market_regulation", "environment", "human_resources")


def gauge(text: str, name: str, label: str, value: str) -> float:
    match = re.search(rf'^{name}{{{label}="{value}"}} (\S+)$', text, re.MULTILINE)
    assert match is not None, f"{name}{{{label}={value!r}}} missing"
    return float(match.group(1))


@pytest.fixture
def one_store_down(services_config: Config, gateway_services: Gateway) -> Iterator[TestClient]:
    """The services, with the health department's store moved to a port where nothing listens."""
    broken = with_store(services_config, "health", port=free_port()).with_engine("embedded")
    broken = with_admin(broken)
    gateway = Gateway(config=broken, engine=create_engine(broken), model=gateway_services.model)
    with TestClient(create_app(gateway), headers=ADMIN) as client:
        yield client
    gateway.close()


def test_a_department_down_leaves_the_instance_ready_and_is_named(one_store_down: TestClient) -> None:
    ready = one_store_down.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "degraded" and body["engine"] == "embedded"
    assert set(body["departments"]) == set(DEPARTMENTS)
    assert body["departments"]["health"] != "ok" and "health" in body["departments"]["health"]
    assert all(body["departments"][d] == "ok" for d in DEPARTMENTS if d != "health")
    assert ready.headers["cache-control"] == "no-store"
    # and the instance does serve the others, as the probe promised
    answer = one_store_down.post("/graphql", json={"query": "{ transport_stations(limit: 1) { name } }"}).json()
    assert answer["data"]["transport_stations"] == [{"name": "莞城汽车客运站"}]

    metrics = one_store_down.get("/metrics").text
    assert gauge(metrics, "citygate_engine_up", "engine", "embedded") == 1.0
    assert gauge(metrics, "citygate_department_up", "department", "health") == 0.0
    assert gauge(metrics, "citygate_department_up", "department", "transport") == 1.0


def test_every_department_up_is_ready(gateway_services: Gateway) -> None:
    with TestClient(create_app(as_operator(gateway_services)), headers=ADMIN) as client:
        body = client.get("/readyz").json()
        assert body == {
            "status": "ready",
            "engine": "embedded",
            "audit": "off",  # the session's gateways record nothing
            "state": "ok",
            "departments": dict.fromkeys(DEPARTMENTS, "ok"),
            "routes": {"embedded": "ok"},  # this gateway delegates nothing
        }
        metrics = client.get("/metrics").text
        assert all(gauge(metrics, "citygate_department_up", "department", d) == 1.0 for d in DEPARTMENTS)


def test_an_engine_that_does_not_answer_makes_the_instance_unready(
    services_config: Config, gateway_trino: Gateway
) -> None:
    trino = services_config.engine.trino.model_copy(update={"port": free_port(), "request_timeout": 2.0})
    engine = services_config.engine.model_copy(update={"trino": trino, "delegate": "never"})  # no other route
    down = services_config.model_copy(update={"engine": engine})
    down = with_admin(down)
    gateway = Gateway(config=down, engine=TrinoEngine(down.engine_settings()), model=gateway_trino.model)
    try:
        with TestClient(create_app(gateway), headers=ADMIN) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503
            body = ready.json()
            assert body["status"] == "unavailable" and body["engine"] == "trino"
            assert set(body["departments"]) == set(DEPARTMENTS)
            assert not any(state == "ok" for state in body["departments"].values())
            assert client.get("/healthz").status_code == 200  # alive: restarting it would not help
            metrics = client.get("/metrics").text
            assert gauge(metrics, "citygate_engine_up", "engine", "trino") == 0.0
            assert gauge(metrics, "citygate_department_up", "department", "transport") == 0.0
    finally:
        gateway.close()


def test_a_flood_of_probes_costs_one_check_per_interval(
    gateway_services: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probes between checks are answered from the last one: the stores are asked once."""
    gateway = Gateway(config=gateway_services.config, engine=gateway_services.engine, model=gateway_services.model)
    checks: list[float] = []
    real = gateway.engine.ping

    def counted() -> None:
        checks.append(time.monotonic())
        real()

    monkeypatch.setattr(gateway.engine, "ping", counted)
    monkeypatch.setattr(gateway_module, "HEALTH_SECONDS", 3600.0)  # however slow this machine is
    with TestClient(create_app(gateway)) as client:
        for _ in range(50):
            assert client.get("/readyz").status_code == 200
        assert len(checks) == 1
        monkeypatch.setattr(gateway_module, "HEALTH_SECONDS", 0.0)
        client.get("/readyz")
        assert len(checks) == 2


def test_a_department_down_at_start_up_joins_the_schema_when_it_answers(
    services_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a fault-injection run: a department whose store did not answer at start-up was
    left out of the schema until a restart. Now the first health check that finds it answering
    reads it and serves it; the gateway is never restarted."""
    from tests.test_routes import Relay

    postgres = services_config.departments["health"].store
    port = free_port()
    config = with_admin(with_store(services_config, "health", port=port).with_engine("embedded"))
    gateway = Gateway.start(config, create_engine(config))
    monkeypatch.setattr(gateway_module, "HEALTH_SECONDS", 0.0)  # each probe checks again
    visits = {"query": "{ health_clinic_visits(limit: 1, order_by: [{visit_id: asc}]) { visit_id } }"}
    relay = None
    try:
        assert "health" in gateway.unavailable
        with TestClient(create_app(gateway), headers=ADMIN) as client:
            [error] = client.post("/graphql", json=visits).json()["errors"]
            assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
            ready = client.get("/readyz").json()
            assert ready["status"] == "degraded" and ready["departments"]["health"] != "ok"
            relay = Relay(port, (postgres.host, postgres.port))  # type: ignore[union-attr]  # the store is back
            ready = client.get("/readyz").json()  # the first check that finds it answering
            assert ready["departments"]["health"] == "ok" and not gateway.unavailable
            answer = client.post("/graphql", json=visits).json()
            assert "errors" not in answer, answer
            assert len(answer["data"]["health_clinic_visits"]) == 1
    finally:
        if relay is not None:
            relay.close()
        gateway.close()


def test_a_department_left_out_joins_with_no_probe_at_all(
    services_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway no load balancer probes looks for the departments it left out by itself."""
    from tests.test_routes import Relay

    postgres = services_config.departments["health"].store
    port = free_port()
    monkeypatch.setattr(gateway_module, "REJOIN_SECONDS", 0.5)
    monkeypatch.setattr(gateway_module, "HEALTH_SECONDS", 0.0)
    config = with_store(services_config, "health", port=port).with_engine("embedded").with_delegate("never")
    gateway = Gateway.start(config, create_engine(config))
    relay = None
    try:
        assert "health" in gateway.unavailable
        relay = Relay(port, (postgres.host, postgres.port))  # type: ignore[union-attr]
        deadline = time.monotonic() + 20
        while gateway.unavailable and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not gateway.unavailable
        body = gateway.execute("{ health_clinic_visits(limit: 1) { visit_id } }").body
        assert "errors" not in body and len(body["data"]["health_clinic_visits"]) == 1
    finally:
        if relay is not None:
            relay.close()
        gateway.close()


def test_a_department_that_rejoins_is_served_under_the_policies(
    services_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With policies, a department that joins late is held to what start-up requires (its
    decisions valid, its masks proven on every route), then served masked as at start-up."""
    from datasets.demo import secure_demo
    from gateway.identity.caller import Identity
    from tests.test_routes import Relay

    postgres = services_config.departments["health"].store
    port = free_port()
    monkeypatch.setattr(gateway_module, "HEALTH_SECONDS", 0.0)
    config = secure_demo(with_store(services_config, "health", port=port).with_engine("embedded"), tmp_path)
    gateway = Gateway.start(config, create_engine(config))
    analyst = Identity("health_analyst", subject="a-1")
    query = "{ health_clinic_visits(limit: 1, order_by: [{visit_id: asc}]) { visit_id id_card } }"
    relay = None
    try:
        assert "health" in gateway.unavailable
        assert gateway.execute(query, identity=analyst).body["errors"]
        relay = Relay(port, (postgres.host, postgres.port))  # type: ignore[union-attr]
        assert gateway.health().departments["health"] == "ok" and not gateway.unavailable
        body = gateway.execute(query, identity=analyst).body
        assert "errors" not in body, body
        [visit] = body["data"]["health_clinic_visits"]
        assert visit["id_card"] != "" and not visit["id_card"][:17].isdigit()  # masked, as its policy says
    finally:
        if relay is not None:
            relay.close()
        gateway.close()
