"""The compose deployment stays true to the configuration the tests run."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from catalogue.stores import MariadbStore, PostgresStore
from gateway.config import Config, load_config
from tests.conftest import REPO

COMPOSE = REPO / "compose"


def compose_config() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (anchors merged, variables from example.env)."""
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose is missing: `make compose-check` installs it (Debian package docker-compose)"
    result = subprocess.run(
        [tool, "--env-file", str(COMPOSE / "example.env"), "-f", str(COMPOSE / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)
    return resolved


def test_compose_file_is_valid() -> None:
    assert compose_config()["services"]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's volumes, target -> source (docker-compose 1.x writes them `source:target:mode`)."""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def test_compose_runs_what_the_tests_ran() -> None:
    services = compose_config()["services"]
    assert {"keycloak", "trino", "trino-worker", "gateway-a", "gateway-b", "balancer"} <= set(services)
    # Keycloak imports the realm the tests get their tokens from
    realm = mounts(services["keycloak"])["/opt/keycloak/data/import/citygate-realm.json"]
    assert realm == str(REPO / "configs" / "keycloak" / "citygate-realm.json")
    # a coordinator that runs no splits, workers that can be scaled (no fixed name, no host port)
    coordinator = (COMPOSE / "trino" / "config.properties").read_text()
    assert "node-scheduler.include-coordinator=false" in coordinator
    worker = services["trino-worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert "coordinator=false" in (COMPOSE / "trino" / "worker.properties").read_text()
    # two gateways, each healthy when /readyz is, each with its own audit volume
    gateways = [services["gateway-a"], services["gateway-b"]]
    assert all("/readyz" in " ".join(g["healthcheck"]["test"]) for g in gateways)
    assert len({mounts(g)["/var/lib/citygate"] for g in gateways}) == 2
    # the balancer runs the nginx.conf tests/test_scale_out.py runs, in front of both
    assert mounts(services["balancer"])["/etc/nginx/nginx.conf"] == str(COMPOSE / "nginx" / "nginx.conf")
    assert set(services["balancer"]["depends_on"]) == {"gateway-a", "gateway-b"}
    assert "/readyz" in " ".join(services["balancer"]["healthcheck"]["test"])


def test_the_compose_file_holds_no_secrets() -> None:
    """Every password, key, token and secret is a reference to the environment."""
    text = (COMPOSE / "docker-compose.yml").read_text()
    secretive = re.compile(r"^\s*(\w*(?:PASSWORD|KEY|TOKEN|SECRET)\w*):\s*(.+)$", re.MULTILINE)
    found = secretive.findall(text)
    assert len(found) >= 5
    for name, value in found:
        assert value.startswith(("${", "*password")), f"{name} has a value written in the file"


def test_compose_config_serves_the_same_city_through_trino(
    services_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    for line in (COMPOSE / "example.env").read_text().splitlines():
        if line and not line.startswith("#"):
            monkeypatch.setenv(*line.split("=", 1))
    compose, warnings = load_config(COMPOSE / "citygate.yaml").served()  # with policies, tokens, a trail
    assert warnings == [] and compose.policies is not None and compose.auth is not None
    assert compose.audit is not None and str(compose.audit.path) == "/var/lib/citygate/audit.jsonl"
    assert compose.state_url().startswith("postgresql://citygate:") and "@postgres:5432/" in compose.state_url()
    assert compose.engine.kind == "trino" and compose.engine.trino.host == "trino"
    assert compose.auth.discovery == "http://keycloak:8180/realms/citygate/.well-known/openid-configuration"
    assert compose.auth.roles_claim == "realm_access.roles"
    assert compose.engine.trino.create_missing_catalogs
    assert compose.relationships == services_config.relationships
    assert list(compose.departments) == list(services_config.departments)
    for name, department in compose.departments.items():
        local = services_config.departments[name]
        assert department.tables == local.tables
        assert type(department.store) is type(local.store)
        assert isinstance(department.store, (PostgresStore, MariadbStore))
        assert department.store.host == ("postgres" if isinstance(department.store, PostgresStore) else "mariadb")
        assert department.store.database == local.store.database  # type: ignore[union-attr]
    text = (COMPOSE / "docker-compose.yml").read_text()
    assert (
        "trinodb/trino:476" in text
        and "catalog.management=dynamic" in (COMPOSE / "trino" / "config.properties").read_text()
    )
