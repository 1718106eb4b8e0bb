"""Safe by default: a deployment is served only with policies and authentication (or with
their absence written on purpose), with its audit trail on, and only the tables it names."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from catalogue.errors import ConfigError
from catalogue.model import SharingClass
from gateway.config import Config, load_config
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.observe import audit
from tests.conftest import REPO, free_port, wait_until_serving


def deployment(tmp_path: Path, sqlite_config: Config, **sections: object) -> Path:
    """A configuration file over the demo city's SQLite files, with ``sections`` added."""
    departments = {
        name: {"store": {"kind": "sqlite", "path": str(spec.store.path)}}  # type: ignore[union-attr]
        for name, spec in sqlite_config.departments.items()
    }
    raw = {"include": str(REPO / "datasets" / "demo-city.yaml"), "departments": departments, **sections}
    path = tmp_path / "citygate.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def test_a_deployment_without_policies_or_auth_is_refused_unless_it_says_so(
    tmp_path: Path, sqlite_config: Config
) -> None:
    with pytest.raises(ConfigError, match=r"policies: missing; without policies every column is served raw"):
        load_config(deployment(tmp_path, sqlite_config)).served()
    with pytest.raises(ConfigError, match=r"auth: missing; without it every caller is anonymous"):
        load_config(deployment(tmp_path, sqlite_config, policies="open")).served()
    config, warnings = load_config(deployment(tmp_path, sqlite_config, policies="open", auth="none")).served()
    assert config.policies is None and config.auth is None and len(warnings) == 2
    assert config.audit is not None and config.audit.path == tmp_path / ".citygate" / "audit.jsonl"
    off, _ = load_config(
        deployment(tmp_path, sqlite_config, policies="open", auth="none", audit={"sink": "off"})
    ).served()
    assert off.audit is not None and off.audit.sink == "off"  # turned off in words only


@pytest.mark.slow
def test_serve_fails_closed_and_records_by_default(tmp_path: Path, sqlite_config: Config) -> None:
    command = [sys.executable, "-m", "gateway.cli", "serve", "--config"]
    refused = subprocess.run(
        [*command, str(deployment(tmp_path, sqlite_config))], capture_output=True, text=True, timeout=120, check=False
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("citygate: error: ") and "write `policies: open` for development" in refused.stderr
    port = free_port()
    opened = deployment(tmp_path, sqlite_config, policies="open", auth="none")
    server = subprocess.Popen(
        [*command, str(opened), "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until_serving(port, server, "citygate serve")
        body = json.dumps({"query": "{ transport_stations(limit: 1) { name } }"}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", body, {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            assert json.load(response)["data"]["transport_stations"]
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=60)
    assert "warning: policies: open: every column is served raw" in stderr
    assert "warning: auth: none: no caller is authenticated" in stderr
    assert audit.verify(tmp_path / ".citygate" / "audit.jsonl") == audit.Verdict(1)


def test_only_the_tables_a_deployment_names_are_served(sqlite_config: Config) -> None:
    departments = dict(sqlite_config.departments)
    transport = departments["transport"]
    unnamed = {name: spec for name, spec in transport.tables.items() if name != "vehicles"}
    departments["transport"] = transport.model_copy(update={"tables": unnamed})
    quiet = sqlite_config.model_copy(update={"departments": departments})
    gateway = Gateway.start(quiet, create_engine(quiet))
    try:
        assert "transport_vehicles" not in gateway.model.tables and "transport_stations" in gateway.model.tables
    finally:
        gateway.close()
    departments["transport"] = departments["transport"].model_copy(update={"expose": ["*"]})
    everything = sqlite_config.model_copy(update={"departments": departments})
    gateway = Gateway.start(everything, create_engine(everything))
    try:
        assert "transport_vehicles" in gateway.model.tables  # a pattern serves it again
    finally:
        gateway.close()


def test_a_column_no_sharing_list_names_is_confidential() -> None:
    from gateway.config import SharingConfig

    assert SharingConfig().default is SharingClass.CONFIDENTIAL


def test_the_concurrency_defaults_are_the_gateways_own_and_a_bad_value_names_its_key(
    tmp_path: Path, sqlite_config: Config
) -> None:
    concurrency = load_config(deployment(tmp_path, sqlite_config)).limits.concurrency
    assert concurrency.model_dump() == {
        "requests_per_caller": 4,
        "root_fields_per_request": 4,
        "root_fields_per_caller": 8,
        "root_field_threads": 32,
        "statements_per_caller": 8,
        "statement_threads": 32,
        "store_connections": 16,
        "console_estimates": 8,
    }
    with pytest.raises(ConfigError) as refused:
        load_config(deployment(tmp_path, sqlite_config, limits={"concurrency": {"statement_threads": 0, "x": 1}}))
    message = refused.value.message
    assert "limits.concurrency.statement_threads: input should be greater than or equal to 1 (got 0)" in message
    assert "limits.concurrency.x: unknown key; allowed keys: requests_per_caller," in message


def test_no_proxy_is_trusted_by_default_and_a_bad_one_names_its_key(tmp_path: Path, sqlite_config: Config) -> None:
    """Trusting a proxy lets it name the client: by default no one is trusted, and a value that
    names no network, or every address, stops the gateway from starting, naming the key."""
    assert load_config(deployment(tmp_path, sqlite_config)).server.trusted_proxies == []
    given = load_config(deployment(tmp_path, sqlite_config, server={"trusted_proxies": ["10.0.0.2", "fd00::/64"]}))
    assert given.server.trusted_proxies == ["10.0.0.2/32", "fd00::/64"]
    for bad, why in (
        ("nginx", "'nginx' is not an IP address or a network (CIDR, such as 172.30.0.0/24)"),
        ("10.0.0.2/24", "'10.0.0.2/24' has host bits set: write the network, 10.0.0.0/24"),
        ("0.0.0.0/0", "'0.0.0.0/0' trusts every address, so any client could name its own: name the proxies"),
    ):
        with pytest.raises(ConfigError) as refused:
            load_config(deployment(tmp_path, sqlite_config, server={"trusted_proxies": ["10.0.0.2", bad]}))
        assert f"citygate.yaml: server.trusted_proxies: {why}" in refused.value.message
