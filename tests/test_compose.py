"""The compose deployment stays true to the configuration the tests run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from catalogue.stores import MariadbStore, PostgresStore
from gateway.config import Config, load_config
from tests.conftest import REPO
from tools.services import trino_rules

# docker-compose, from `make compose-check`
pytestmark = pytest.mark.services

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


def test_compose_trino_takes_clients_only_with_a_password() -> None:
    """As the tests' Trinos: clients on HTTPS with a password, the plain port refusing them and
    not published, nodes signing their requests, and the same access control rules (each user
    sees its own queries only: the gateway's statements carry the hash key)."""
    services = compose_config()["services"]
    coordinator = (COMPOSE / "trino" / "config.properties").read_text().splitlines()
    for line in (
        "http-server.https.enabled=true",
        "http-server.authentication.type=PASSWORD",
        "http-server.authentication.allow-insecure-over-http=false",
        "internal-communication.shared-secret=${ENV:TRINO_SHARED_SECRET}",
    ):
        assert line in coordinator
    worker = (COMPOSE / "trino" / "worker.properties").read_text().splitlines()
    assert "internal-communication.shared-secret=${ENV:TRINO_SHARED_SECRET}" in worker
    assert [p.removesuffix("/tcp") for p in services["trino"]["ports"]] == ["127.0.0.1:8443:8443"]
    trino = mounts(services["trino"])
    assert trino["/etc/trino/rules.json"] == str(COMPOSE / "trino" / "rules.json")
    assert json.loads((COMPOSE / "trino" / "rules.json").read_text()) == trino_rules()
    assert {"/etc/trino/access-control.properties", "/etc/trino/password.db", "/etc/trino/tls/keystore.pem"} <= set(
        trino
    )
    assert "event-listener" not in " ".join(trino)  # a listener would get every statement's text
    for gateway in ("gateway-a", "gateway-b"):
        assert "/etc/citygate/trino-ca.pem" in mounts(services[gateway])


def test_the_compose_file_holds_no_secrets() -> None:
    """Every password, key, token and secret is a reference to the environment."""
    text = (COMPOSE / "docker-compose.yml").read_text()
    secretive = re.compile(r"^\s*(\w*(?:PASSWORD|KEY|TOKEN|SECRET)\w*):\s*(.+)$", re.MULTILINE)
    found = secretive.findall(text)
    assert len(found) >= 5
    for name, value in found:
        assert value.startswith(("${", "*password", "*reader-password")), f"{name} has a value written in the file"


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
    trino = compose.engine.trino
    assert (trino.http_scheme, trino.port, trino.password_env) == ("https", 8443, "CITYGATE_TRINO_PASSWORD")
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


def test_the_gateways_read_as_a_user_that_may_only_select() -> None:
    """grant.sql once granted ALL PRIVILEGES ON *.*; now the loader owns the departments'
    databases and nothing else, and the gateways read as citygate_reader."""
    services = compose_config()["services"]
    mariadb_departments = {"market_regulation", "environment", "human_resources"}
    loader_grants = re.findall(
        r"GRANT (.+) ON `(\w+)`\.\* TO 'citygate'@'%'", (COMPOSE / "mariadb" / "grant.sql").read_text()
    )
    assert "*.*" not in (COMPOSE / "mariadb" / "grant.sql").read_text()
    assert {database for _, database in loader_grants} == mariadb_departments
    reader = (COMPOSE / "mariadb" / "reader.sh").read_text()
    assert set(re.findall(r"GRANT (.+) ON \\`(\w+)\\`\.\* TO 'citygate_reader'", reader)) == {
        ("SELECT, SHOW VIEW", d) for d in mariadb_departments
    }
    postgres = (COMPOSE / "postgres" / "init.sh").read_text()
    granted = set(re.findall(r"GRANT (\w+) ON .*? TO citygate_reader", postgres))
    assert granted == {"CONNECT", "USAGE", "SELECT"}
    assert mounts(services["postgres"])["/docker-entrypoint-initdb.d/init.sh"] == str(COMPOSE / "postgres" / "init.sh")
    assert services["gateway-a"]["environment"]["CITYGATE_STORE_USER"] == "citygate_reader"
    assert services["loader"]["environment"]["CITYGATE_STORE_USER"] == "citygate"


def test_keycloak_runs_in_production_mode_on_the_compose_postgresql() -> None:
    keycloak = compose_config()["services"]["keycloak"]
    assert keycloak["command"][0] == "start"  # not start-dev: no in-memory H2, no dev defaults
    assert keycloak["environment"]["KC_DB"] == "postgres"
    assert keycloak["environment"]["KC_DB_URL"] == "jdbc:postgresql://postgres:5432/keycloak"
    assert "CREATE DATABASE keycloak OWNER keycloak" in (COMPOSE / "postgres" / "init.sh").read_text()


def test_the_gateways_take_the_client_nginx_names_and_only_from_nginx(monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind nginx every connection is nginx's: the gateways trust its X-Forwarded-For (so one
    client guessing tokens is refused as itself, not as everyone), from nginx's fixed address
    alone, and nginx appends the address it saw connect in every location it proxies."""
    import ipaddress

    resolved = compose_config()
    services = resolved["services"]
    balancer = services["balancer"]["networks"]["edge"]["ipv4_address"]
    [subnet] = resolved["networks"]["edge"]["ipam"]["config"]
    assert ipaddress.ip_address(balancer) in ipaddress.ip_network(subnet["subnet"])
    for gateway in ("gateway-a", "gateway-b"):
        assert set(services[gateway]["networks"]) == {"default", "edge"}
    for line in (COMPOSE / "example.env").read_text().splitlines():
        if line and not line.startswith("#"):
            monkeypatch.setenv(*line.split("=", 1))
    assert load_config(COMPOSE / "citygate.yaml").server.trusted_proxies == [f"{balancer}/32"]
    conf = (COMPOSE / "nginx" / "nginx.conf").read_text()
    locations = re.findall(r"location [^{]+\{([^}]*)\}", conf)
    proxying = [body for body in locations if "proxy_pass" in body]
    assert len(proxying) == 3
    assert all("proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in body for body in proxying)
