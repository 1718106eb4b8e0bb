"""Two gateways behind a load balancer, as compose/ deploys them.

Two `citygate serve` processes on loopback share one configuration (the stores, the Trino
cluster, Keycloak, the policy files and the hash key) and differ in what is per instance: the
port, the data directory and the audit trail. nginx from Debian runs compose/nginx/nginx.conf
in front of them, the service names replaced by loopback addresses.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from tests.conftest import REPO, free_port
from tests.own_postgres import Postgres
from tests.test_defaults import deployment as configured
from tests.test_keycloak import REALM, password_token, require_keycloak

# nginx and the services
pytestmark = pytest.mark.services

# the cluster's coordinator, where it takes clients (tools/services.py)
CLUSTER_PORT = os.environ.get("CITYGATE_TRINO_CLUSTER_HTTPS_PORT", "8092")
ADMIN_TOKEN = "scale-out-admin-token-0123456789"
HASH_KEY = "scale-out-hash-key-0123456789abcdef"
SITES = "{ environment_monitored_sites(order_by: [{site_id: asc}], limit: 3) { site_id site_name district } }"


@dataclass
class Deployment:
    balancer: int
    instances: dict[str, int]  # name -> port
    audit: dict[str, Path]
    policies: Path


def wait_ready(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"citygate serve on {port} exited: {log.read_text()[-2000:]}", pytrace=False)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"citygate serve on {port} was not ready in 180 s: {log.read_text()[-2000:]}", pytrace=False)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    require_keycloak()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx is missing: `make test` installs it (Debian package nginx-light)"
    root = tmp_path_factory.mktemp("scale-out")
    policies = root / "policies"
    shutil.copytree(REPO / "policies" / "demo", policies)
    processes: list[subprocess.Popen[bytes]] = []
    instances, audit = {}, {}
    env = {**os.environ, "CITYGATE_TRINO_HTTPS_PORT": CLUSTER_PORT}
    state = Postgres()  # their one shared state (budgets, rate limits), as compose's PostgreSQL is
    state.start()
    try:
        for name in ("gateway-a", "gateway-b"):
            port = free_port()
            data = root / name
            data.mkdir()
            config = {
                "include": str(REPO / "configs" / "services.yaml"),
                "policies": {
                    "files": [str(policies / "central.yaml"), str(policies / "health-floor.yaml")],
                    "hash_key": HASH_KEY,
                },
                "auth": {
                    "issuer": REALM,
                    "audience": "citygate",
                    "discovery": True,
                    "roles_claim": "realm_access.roles",
                },
                "audit": {"sink": "file", "path": str(data / "audit.jsonl")},
                "admin": {"token": ADMIN_TOKEN},
                "data_dir": str(data),
                "state": {"url": state.url},
                # three JVMs share this machine's cores with the tests: planning is not measured here
                "limits": {"plan_seconds": 30},
            }
            (data / "citygate.yaml").write_text(json.dumps(config))  # JSON is YAML
            log = data / "serve.log"
            with log.open("wb") as out:
                command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(data / "citygate.yaml")]
                processes.append(
                    subprocess.Popen([*command, "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
                )
            instances[name], audit[name] = port, data / "audit.jsonl"
        for process, (name, port) in zip(processes, instances.items(), strict=True):
            wait_ready(port, process, root / name / "serve.log")
        balancer = free_port()
        conf = (REPO / "compose" / "nginx" / "nginx.conf").read_text()
        conf = conf.replace("listen 8000;", f"listen 127.0.0.1:{balancer};")
        for name, port in instances.items():
            conf = conf.replace(f"{name}:8000", f"127.0.0.1:{port}")
        (root / "nginx.conf").write_text(conf)
        directives = f"daemon off; pid {root / 'nginx.pid'}; error_log {root / 'nginx.log'};"
        processes.append(subprocess.Popen([nginx, "-p", str(root), "-c", str(root / "nginx.conf"), "-g", directives]))
        deadline = time.monotonic() + 20
        while call(balancer, "GET", "/healthz")[0] != 200:
            assert time.monotonic() < deadline, (root / "nginx.log").read_text()
            time.sleep(0.2)
        yield Deployment(balancer, instances, audit, policies)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        state.remove()


def call(port: int, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)
    except (urllib.error.URLError, OSError):
        return 0, None


def ask(port: int, query: str, token: str) -> tuple[int, Any]:
    return call(port, "POST", "/graphql", {"query": query}, token)


def records(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


def settled(paths: list[Path], at_least: int) -> list[int]:
    """The trails' record counts once their total reaches ``at_least`` (the file sink writes in
    batches, a moment after the answer)."""
    deadline = time.monotonic() + 15
    while sum(counts := [records(p) for p in paths]) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    return counts


QUERIES = {
    "ines": SITES,
    "otto": "{ public_security_residents(order_by: [{id_card: asc}], limit: 3) { id_card phone district } }",
    "ana": "{ health_clinic_visits(order_by: [{visit_id: asc}], limit: 3) { visit_id id_card diagnosis } }",
}


def test_both_instances_answer_alike_and_keep_their_own_verified_trails(deployment: Deployment) -> None:
    trails = list(deployment.audit.values())
    before = sum(records(p) for p in trails)
    sent = 0
    for user, query in QUERIES.items():
        token = password_token(user)
        direct = [ask(port, query, token) for port in deployment.instances.values()]
        assert direct[0][0] == 200 and "errors" not in direct[0][1], direct[0]
        assert direct[0] == direct[1], user
        for _ in range(4):  # round robin: each instance gets some of them
            assert ask(deployment.balancer, query, token) == direct[0], user
        sent += 6
    counts = settled(trails, before + sent)
    assert sum(counts) == before + sent
    assert all(count > 0 for count in counts), counts  # nginx sent requests to each
    for trail in trails:
        verdict = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "audit", "verify", str(trail)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert verdict.returncode == 0 and "the chain holds" in verdict.stdout, verdict.stderr


def test_a_policy_reload_through_the_balancer_reaches_both(deployment: Deployment) -> None:
    token = password_token("ines")
    for port in deployment.instances.values():
        status, answer = ask(port, SITES, token)
        assert status == 200 and answer["data"]["environment_monitored_sites"][0]["site_name"]
    central = deployment.policies / "central.yaml"
    central.write_text(
        central.read_text().replace(
            "      public_security.residents: {access: deny}\n",
            "      public_security.residents: {access: deny}\n"
            "      environment.monitored_sites:\n        columns: {site_name: deny}\n",
            1,
        )
    )
    status, reloaded = call(deployment.balancer, "POST", "/admin/policies/reload", token=ADMIN_TOKEN)
    assert status == 200 and reloaded["policy_version"], reloaded
    for name, port in deployment.instances.items():
        deadline = time.monotonic() + 10  # the mirrored call to gateway-b runs beside the answer
        while (answer := ask(port, SITES, token)[1]).get("data"):
            assert time.monotonic() < deadline, f"{name} still serves the old policy"
            time.sleep(0.2)
        assert answer["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED", name
    for _ in range(4):
        assert ask(deployment.balancer, SITES, token)[1]["errors"][0]["extensions"]["code"] == (
            "GRAPHQL_VALIDATION_FAILED"
        )


def test_behind_nginx_each_client_is_counted_as_itself(tmp_path: Path, sqlite_config: Config) -> None:
    """compose's nginx.conf in front of a gateway that trusts it (on loopback, 127.0.0.1):
    clients connecting to nginx from 127.0.0.2, .3 and .4 are three callers with a limit each,
    and a wrong admin token sent through `/admin/` counts against its sender, not against nginx
    (whose address every client shares)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx is missing: `make test` installs it (Debian package nginx-light)"
    from tests.test_workers import served

    limits = {"requests_per_minute": 3, "roles": {"anonymous": {"requests_per_minute": 3}}}
    config = configured(
        tmp_path,
        sqlite_config,
        policies="open",
        auth="none",
        limits=limits,
        admin={"token": ADMIN_TOKEN},
        server={"trusted_proxies": ["127.0.0.1"]},
    )
    port, balancer = free_port(), free_port()
    conf = (
        (REPO / "compose" / "nginx" / "nginx.conf").read_text().replace("listen 8000;", f"listen 127.0.0.1:{balancer};")
    )
    conf = conf.replace("gateway-a:8000", f"127.0.0.1:{port}").replace("gateway-b:8000", f"127.0.0.1:{port}")
    (tmp_path / "nginx.conf").write_text(conf)
    directives = f"daemon off; pid {tmp_path / 'nginx.pid'}; error_log {tmp_path / 'nginx.log'};"

    def send(client: str, path: str, token: str | None = None) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", balancer, timeout=60, source_address=(client, 0))
        try:
            body = json.dumps({"query": "{ transport_stations(limit: 1) { name } }"})
            headers = {"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})}
            connection.request("POST", path, body, headers)
            return connection.getresponse().status
        finally:
            connection.close()

    with served(config, 1, port, tmp_path / "serve.log"):
        proxy = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", directives])
        try:
            deadline = time.monotonic() + 20
            while call(balancer, "GET", "/healthz")[0] != 200:
                assert time.monotonic() < deadline, (tmp_path / "nginx.log").read_text()
                time.sleep(0.2)
            assert [send("127.0.0.2", "/graphql") for _ in range(4)] == [200, 200, 200, 429]
            assert send("127.0.0.3", "/graphql") == 200
            guesses = [send("127.0.0.3", "/admin/cache/clear", "x" * 32) for _ in range(3)]
            assert set(guesses) <= {401, 429} and guesses[0] == 401
            assert send("127.0.0.3", "/graphql") == 429  # its guesses were its own
            assert send("127.0.0.4", "/graphql") == 200
        finally:
            proxy.terminate()
            proxy.wait(timeout=30)
