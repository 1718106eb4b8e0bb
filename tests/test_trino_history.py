"""Trino's query history shows no one else the hash key (issue 28, finding 3).

A statement with a hash mask carries the mask's key to Trino (connectors/trino.py renders
``HMAC_SHA256(..., TO_UTF8('<key>'))``), and Trino keeps recent statements' text in
``system.runtime.queries``. The services' Trinos (tools/services.py) take a client's query only
on their HTTPS port, from a user in their password file, and their access control shows each
user its own queries alone. So after hashed requests through a gateway another Trino user finds
no key material in the history, while Trino's admin, who may see every query, finds the
gateway's statements there (the history does hold them); and a client without credentials is
refused on every port.
"""

from __future__ import annotations

import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from catalogue.sql import tie_key
from gateway.config import Config, PoliciesConfig
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.identity.caller import Identity
from tests.policy_support import POLICY_FILES
from tests.test_routes import HASHED
from tools.services import TRINO_ADMIN, TRINO_GATEWAY, TRINO_OTHER, Settings, trino_client

# Trino, the single and the cluster, as `make services` starts them
pytestmark = pytest.mark.services

SERVICES = Settings.from_env()
# This module's own key, so that what is found can only come from its requests.
KEY = f"history-{secrets.token_hex(16)}"
TRINOS = {"single": SERVICES.trino_https_port, "cluster": SERVICES.cluster_https_port}


def key_material(key: str) -> list[str]:
    """Every 16-character run of the key as a statement may hold it: as written, in hex, and
    the tie-break key derived from it. A statement quoting any of them gives the key away."""
    forms = [key, key.encode().hex(), tie_key(key.encode())]
    return sorted({form[i : i + 16].lower() for form in forms for i in range(len(form) - 15)})


def leaks(text: str, key: str = KEY) -> list[str]:
    lowered = text.lower()
    return [run for run in key_material(key) if run in lowered]


def history(port: int, user: str, where: str = "") -> list[tuple[str, str]]:
    """(user, statement) of every query Trino on ``port`` shows ``user``."""
    with trino_client(SERVICES, port, user) as conn:
        cursor = conn.cursor()
        cursor.execute(f'SELECT "user", query FROM system.runtime.queries {where}')
        return [(str(row[0]), str(row[1])) for row in cursor.fetchall()]


@pytest.fixture(scope="module", params=list(TRINOS))
def hashed(request: pytest.FixtureRequest, services_config: Config) -> Iterator[int]:
    """Trino's HTTPS port, after a supervisor's hashed request through a gateway on it."""
    port = TRINOS[request.param]
    trino = services_config.engine.trino.model_copy(update={"port": port})
    config = services_config.with_delegate("never").model_copy(
        update={
            "engine": services_config.engine.model_copy(update={"trino": trino}),
            "policies": PoliciesConfig(files=POLICY_FILES, hash_key=KEY),
        }
    )
    gateway = Gateway.start(config, create_engine(config))
    try:
        response = gateway.execute(HASHED, identity=Identity("supervisor", {}))
    finally:
        gateway.close()
    assert "errors" not in response.body, response.body
    assert all(r["id_card"].startswith("h:") for r in response.body["data"]["public_security_residents"])
    yield port


def test_another_user_finds_no_key_material_in_the_history(hashed: int) -> None:
    seen = history(hashed, TRINO_OTHER)
    # it sees its own query (this one, running) and no one else's
    assert {user for user, _ in seen} == {TRINO_OTHER}, sorted({user for user, _ in seen})
    assert leaks("\n".join(query for _, query in seen)) == []


def test_the_admin_sees_that_the_history_holds_the_key(hashed: int) -> None:
    """The control: the gateway's hashed statements are there, key and all, for the one user
    trusted to see every query; what another user is shown is a filter, not an empty history."""
    gateway_queries = history(hashed, TRINO_ADMIN, f"WHERE \"user\" = '{TRINO_GATEWAY}'")
    assert any(leaks(query) for _, query in gateway_queries), "no statement of the gateway holds the key"


def test_the_gateways_own_history_is_its_own(hashed: int) -> None:
    """The gateway sees its statements, and no other user's."""
    assert {user for user, _ in history(hashed, TRINO_GATEWAY)} == {TRINO_GATEWAY}


def test_no_one_may_act_as_the_gateway(hashed: int) -> None:
    """Another user's login that asks to run as ``citygate`` (whose queries it would then
    see) is refused."""
    import trino

    conn = trino_client(SERVICES, hashed, TRINO_GATEWAY, login=TRINO_OTHER)
    with conn, pytest.raises(trino.exceptions.TrinoQueryError) as refused:
        cursor = conn.cursor()
        cursor.execute("SELECT query FROM system.runtime.queries")
        cursor.fetchall()
    assert "Access Denied" in str(refused.value)
    assert "impersonate" in str(refused.value)


def anonymous_query(url: str, **options: Any) -> int:
    """The HTTP status of a query for the history posted to ``url`` with a bare user name and
    no credentials (0: the port did not take it at all)."""
    query = b"SELECT query FROM system.runtime.queries"
    request = urllib.request.Request(url, data=query, headers={"X-Trino-User": TRINO_GATEWAY})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10, **options) as response:  # noqa: S310 - loopback
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return 0


PORTS = {
    "single, plain": f"http://127.0.0.1:{SERVICES.trino_port}",
    "single, https": f"https://localhost:{SERVICES.trino_https_port}",
    "cluster coordinator, plain": f"http://127.0.0.1:{SERVICES.cluster_port}",
    "cluster coordinator, https": f"https://localhost:{SERVICES.cluster_https_port}",
    "cluster worker": f"http://127.0.0.1:{SERVICES.worker_port}",
}


@pytest.mark.parametrize("port", list(PORTS))
def test_a_client_without_credentials_is_refused_on_every_port(port: str) -> None:
    import ssl

    context = ssl.create_default_context(cafile=str(SERVICES.tls / "ca.pem"))
    url = PORTS[port]
    # the port answers (Trino's public /v1/info): a refusal below is Trino's, not a closed port
    with urllib.request.urlopen(f"{url}/v1/info", timeout=10, context=context) as info:  # noqa: S310 - loopback
        assert info.status == 200
    status = anonymous_query(f"{url}/v1/statement", context=context)
    assert status in (401, 403, 404), f"{port}: Trino took a query without credentials (HTTP {status})"


def test_trino_writes_no_statement_text_to_its_logs(hashed: int) -> None:
    """Neither node's server log nor HTTP request log holds the key, and no event listener (which
    Trino would hand every statement's text) is configured."""
    name = "trino" if hashed == SERVICES.trino_https_port else "trino-coordinator"
    root = SERVICES.state / name
    logs = [root / "server.log", *sorted((root / "data" / "var" / "log").glob("*.log"))]
    assert logs[0].exists(), f"no server log at {logs[0]}: is this the services' own Trino?"
    for log in logs:
        assert leaks(log.read_text(errors="replace")) == [], log
    etc = root / "etc"
    assert not (etc / "event-listener.properties").exists()
    assert "event-listener" not in (etc / "config.properties").read_text()
