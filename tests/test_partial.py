"""A department that is down: its root fields answer null with an error, the others still answer."""

from __future__ import annotations

from typing import Any

from connectors.trino import TrinoEngine
from gateway.config import Config
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from tests.conftest import free_port, trino_with, with_store

QUERY = "{ health_clinic_visits(limit: 1) { visit_id } transport_stations(limit: 2) { name } }"


def check_partial(body: dict[str, Any], department: str) -> None:
    assert body["data"]["health_clinic_visits"] is None
    assert [s["name"] for s in body["data"]["transport_stations"]] == ["莞城汽车客运站", "南城汽车客运站"]
    [error] = body["errors"]
    assert error["path"] == ["health_clinic_visits"]
    assert error["extensions"] == {"code": "DEPARTMENT_UNAVAILABLE", "department": department}
    assert error["message"].startswith(f"department {department}: ")
    assert "SELECT" not in error["message"] and "Traceback" not in error["message"]


def test_embedded_store_down_after_start(gateway_services: Gateway, services_config: Config) -> None:
    broken = with_store(services_config, "health", port=free_port()).with_engine("embedded")
    engine = create_engine(broken)
    gateway = Gateway(config=broken, engine=engine, model=gateway_services.model)
    try:
        check_partial(gateway.execute(QUERY).body, "health")
    finally:
        gateway.close()


def test_trino_store_down_after_start(
    gateway_trino: Gateway, services_config: Config, dynamic_catalogs: list[str]
) -> None:
    engine: TrinoEngine = trino_with(services_config, "health", "health_partial_down", port=free_port())
    dynamic_catalogs.append("health_partial_down")
    # only Trino's catalog is broken: the department's own route (delegated) would still answer
    gateway = Gateway(config=services_config.with_delegate("never"), engine=engine, model=gateway_trino.model)
    check_partial(gateway.execute(QUERY).body, "health")


def test_start_leaves_a_down_department_out_and_names_it(services_config: Config) -> None:
    broken = with_store(services_config, "environment", port=free_port()).with_engine("embedded")
    gateway = Gateway.start(broken, create_engine(broken))
    try:
        assert set(gateway.unavailable) == {"environment"}
        assert "environment_emission_readings" not in gateway.model.roots
        assert "health_clinic_visits" in gateway.model.roots
        response = gateway.execute("{ environment_monitored_sites { site_id } }")
        assert response.body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    finally:
        gateway.close()
