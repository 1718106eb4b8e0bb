"""The compose deployment stays true to the configuration the tests run."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from catalogue.stores import MariadbStore, PostgresStore
from gateway.config import Config, load_config
from tests.conftest import REPO

COMPOSE = REPO / "compose"


def test_compose_file_is_valid() -> None:
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose is missing: `make compose-check` installs it (Debian package docker-compose)"
    result = subprocess.run(
        [tool, "--env-file", str(COMPOSE / "example.env"), "-f", str(COMPOSE / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_compose_config_serves_the_same_city_through_trino(
    services_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    for line in (COMPOSE / "example.env").read_text().splitlines():
        if line and not line.startswith("#"):
            monkeypatch.setenv(*line.split("=", 1))
    compose, warnings = load_config(COMPOSE / "citygate.yaml").served()  # with policies, tokens, a trail
    assert warnings == [] and compose.policies is not None and compose.auth is not None
    assert compose.audit is not None and str(compose.audit.path) == "/var/lib/citygate/audit.jsonl"
    assert compose.engine.kind == "trino" and compose.engine.trino.host == "trino"
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
