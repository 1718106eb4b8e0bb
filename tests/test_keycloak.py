"""Keycloak as the identity provider: real tokens from the realm in configs/keycloak.

Keycloak runs beside the other services (`make services`, port CITYGATE_KEYCLOAK_PORT, 8180 by
default) with the realm imported at its start. The gateway finds the realm's keys through its
OIDC discovery document. Key rotation goes through Keycloak's admin REST API; "Keycloak down"
is a relay in front of it that the test closes, since the Keycloak itself serves other tests.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from datasets.datagen import City
from datasets.demo import secure_demo
from gateway.config import AuthConfig, Config
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.http.app import create_app
from gateway.identity.caller import Identity
from gateway.identity.tokens import EXPIRED, INVALID, NOT_FOR_US, UNKNOWN_KEY
from tools.relay import Relay

# Keycloak, started by `make services`
pytestmark = pytest.mark.services

PORT = int(os.environ.get("CITYGATE_KEYCLOAK_PORT", "8180"))
KEYCLOAK = f"http://127.0.0.1:{PORT}"
REALM = f"{KEYCLOAK}/realms/citygate"
PASSWORD = os.environ.get("CITYGATE_DB_PASSWORD", "citygate-dev")  # the services' dev password
APP_SECRET = json.loads((Path(__file__).parent.parent / "configs" / "keycloak" / "citygate-realm.json").read_text())
APP_SECRET = next(c["secret"] for c in APP_SECRET["clients"] if c["clientId"] == "citygate-app")


def post_form(url: str, form: dict[str, str], token: str | None = None) -> dict[str, Any]:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode())  # noqa: S310 - loopback
    if token:
        request.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        answer: dict[str, Any] = json.load(response)
        return answer


def password_token(user: str, client: str = "citygate-people", base: str = KEYCLOAK) -> str:
    form = {"grant_type": "password", "client_id": client, "username": user, "password": PASSWORD}
    return str(post_form(f"{base}/realms/citygate/protocol/openid-connect/token", form)["access_token"])


def app_token() -> str:
    form = {"grant_type": "client_credentials", "client_id": "citygate-app", "client_secret": APP_SECRET}
    return str(post_form(f"{REALM}/protocol/openid-connect/token", form)["access_token"])


def payload(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def header(token: str) -> dict[str, Any]:
    part = token.split(".", maxsplit=1)[0]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


class Admin:
    """Keycloak's admin REST API, as the bootstrap admin of the master realm."""

    def __init__(self) -> None:
        form = {"grant_type": "password", "client_id": "admin-cli", "username": "admin", "password": PASSWORD}
        self.token = str(post_form(f"{KEYCLOAK}/realms/master/protocol/openid-connect/token", form)["access_token"])

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{KEYCLOAK}/admin/realms/citygate{path}", data=data, method=method)  # noqa: S310
        request.add_header("authorization", f"Bearer {self.token}")
        request.add_header("content-type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            text = response.read()
        return json.loads(text) if text else None


def require_keycloak() -> str:
    """The realm's issuer, once Keycloak answers its discovery document; else the test fails."""
    try:
        with urllib.request.urlopen(f"{REALM}/.well-known/openid-configuration", timeout=5) as response:  # noqa: S310
            assert json.load(response)["issuer"] == REALM
    except (urllib.error.URLError, OSError) as error:
        pytest.fail(f"Keycloak is not reachable at {KEYCLOAK} ({error}); start it with `make services`", pytrace=False)
    return REALM


@pytest.fixture(scope="module")
def keycloak() -> str:
    return require_keycloak()


def keycloak_auth(**changes: Any) -> AuthConfig:
    settings: dict[str, Any] = {
        "issuer": REALM,
        "audience": "citygate",
        "discovery": True,
        "roles_claim": "realm_access.roles",
        "leeway_seconds": 0,
    }
    return AuthConfig(**(settings | changes))


def serve(sqlite_config: Config, data_dir: Path, auth: AuthConfig) -> tuple[Gateway, TestClient]:
    config = secure_demo(sqlite_config, data_dir).model_copy(update={"auth": auth})
    gateway = Gateway.start(config, create_engine(config))
    return gateway, TestClient(create_app(gateway))


@pytest.fixture(scope="module")
def served(
    keycloak: str, sqlite_config: Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, TestClient]]:
    gateway, client = serve(sqlite_config, tmp_path_factory.mktemp("keycloak"), keycloak_auth())
    with client:
        yield gateway, client
    gateway.close()


def ask(client: TestClient, query: str, token: str, role: str | None = None) -> Any:
    headers = {"authorization": f"Bearer {token}"} | ({"x-citygate-role": role} if role else {})
    return client.post("/graphql", json={"query": query}, headers=headers)


QUERIES = (
    "{ public_security_residents(order_by: [{id_card: asc}], limit: 3) { id_card name phone district } }",
    "{ market_regulation_enterprises(order_by: [{credit_code: asc}], limit: 3) { name district legal_rep_id_card } }",
    "{ health_clinic_visits_aggregate { aggregate { count } } }",
    "{ environment_monitored_sites(order_by: [{site_id: asc}], limit: 2) { site_name district } }",
)
# user in the realm -> the role and claims the realm gives them
PEOPLE = {
    "ana": ("health_analyst", {"department": "health"}),
    "otto": ("district_officer", {"district": "南城"}),
    "hu": ("district_officer", {"district": "虎门"}),
    "ines": ("env_inspector", {"department": "environment"}),
    "paul": ("police", {"department": "public_security"}),
    "sue": ("supervisor", {}),
}


@pytest.mark.parametrize("user", sorted(PEOPLE))
def test_each_person_sees_what_the_policies_say_for_their_role(served: tuple[Gateway, TestClient], user: str) -> None:
    gateway, client = served
    role, claims = PEOPLE[user]
    token = password_token(user)
    assert payload(token)["realm_access"]["roles"] == [role]
    for query in QUERIES:
        answer = ask(client, query, token)
        assert answer.status_code == 200
        # the same answer the policies give the role and claims directly (their own tests hold
        # those to the demo city's contract)
        assert answer.json() == gateway.execute(query, identity=Identity(role, claims)).body, (user, query)


def test_the_contract_holds_for_keycloak_tokens(served: tuple[Gateway, TestClient]) -> None:
    _, client = served
    residents = QUERIES[0]
    officer = ask(client, "{ public_security_residents { district } }", password_token("otto")).json()
    assert {r["district"] for r in officer["data"]["public_security_residents"]} == {"南城"}
    analyst = ask(client, residents, password_token("ana")).json()["data"]["public_security_residents"]
    assert all(r["id_card"][6:14] == "********" and r["phone"] is None for r in analyst)
    police = ask(client, residents, password_token("paul")).json()["data"]["public_security_residents"]
    assert all(r["id_card"].isdigit() or r["id_card"][-1] == "X" for r in police)
    supervisor = ask(client, residents, password_token("sue")).json()["data"]["public_security_residents"]
    assert all(r["id_card"].startswith("h:") for r in supervisor)
    inspector = ask(client, residents, password_token("ines")).json()
    assert inspector["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


REALM_FILE = json.loads((Path(__file__).parent.parent / "configs" / "keycloak" / "citygate-realm.json").read_text())


def test_a_citizen_reads_their_own_rows_with_the_identity_number_keycloak_verified(
    served: tuple[Gateway, TestClient], city: City
) -> None:
    """The realm keeps the person's identity number as a user attribute only an administrator
    may set, and a protocol mapper puts it in the token as the claim `id_card`."""
    [user] = [u for u in REALM_FILE["users"] if u["username"] == "citizen"]
    [person] = user["attributes"]["id_card"]
    try:
        token = password_token("citizen")
    except urllib.error.HTTPError as error:
        pytest.fail(
            f"Keycloak at {KEYCLOAK} has no user `citizen` ({error}): it was started from an older realm file; "
            "`python -m tools.services stop --only keycloak`, then `make services`",
            pytrace=False,
        )
    assert payload(token)["id_card"] == person and payload(token)["realm_access"]["roles"] == ["citizen"]
    _, client = served
    query = """{ public_security_residents { id_card name phone }
      health_clinic_visits { id_card diagnosis resident { id_card } }
      market_regulation_enterprises { legal_rep_id_card } }"""
    data = ask(client, query, token).json()["data"]
    me = next(r for r in city.dicts("public_security", "residents") if r["id_card"] == person)
    assert data["public_security_residents"] == [{"id_card": person, "name": me["name"], "phone": me["phone"]}]
    visits = [v for v in city.dicts("health", "clinic_visits") if v["id_card"] == person]
    assert sorted(v["diagnosis"] for v in data["health_clinic_visits"]) == sorted(v["diagnosis"] for v in visits)
    assert {(v["id_card"], v["resident"]["id_card"]) for v in data["health_clinic_visits"]} == {(person, person)}
    assert {e["legal_rep_id_card"] for e in data["market_regulation_enterprises"]} == {person}
    assert "id_card" not in payload(password_token("sue"))  # the mapper adds nothing to who has none


def test_an_application_with_client_credentials(served: tuple[Gateway, TestClient]) -> None:
    gateway, client = served
    token = app_token()
    assert payload(token)["preferred_username"] == "service-account-citygate-app"
    sites = QUERIES[3]
    answer = ask(client, sites, token).json()
    assert answer["data"]["environment_monitored_sites"]
    assert answer == gateway.execute(sites, identity=Identity("env_inspector", {"department": "environment"})).body
    residents = ask(client, QUERIES[0], token).json()
    assert residents["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


def keycloak_example() -> tuple[dict[str, str], dict[str, Any]]:
    """The application's example in docs/api.md ("A token from Keycloak"), as the doc writes
    it: the form of its token request, and the GraphQL request it then sends."""
    doc = (Path(__file__).parent.parent / "docs" / "api.md").read_text(encoding="utf-8")
    section = doc.split("### A token from Keycloak", 1)[1].split("**A person**", 1)[0]
    [script] = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    token_call, graphql_call = script.split("\ncurl ", 1)
    form = dict(field.split("=", 1) for field in re.findall(r"-d (\w+=[^ )]+)", token_call))
    [body] = re.findall(r"-d '(\{.*\})'", graphql_call)
    return form, json.loads(body)


def test_the_documented_application_example_runs(served: tuple[Gateway, TestClient]) -> None:
    """docs/api.md's commands for an application, run as written: its token request gets a
    token, and its query, sent with it, answers rows (it asked for a column that is not there)."""
    _, client = served
    form, body = keycloak_example()
    assert form["grant_type"] == "client_credentials" and form["client_id"] == "citygate-app"
    token = str(post_form(f"{REALM}/protocol/openid-connect/token", form)["access_token"])
    answer = client.post("/graphql", json=body, headers={"authorization": f"Bearer {token}"})
    assert answer.status_code == 200 and "errors" not in answer.json(), answer.json()
    sites = answer.json()["data"]["environment_monitored_sites"]
    assert len(sites) == 3 and all(site["site_name"] for site in sites)


def test_the_roles_claim_is_chosen_in_config(
    keycloak: str, sqlite_config: Config, tmp_path: Path, served: tuple[Gateway, TestClient]
) -> None:
    token = password_token("multi")
    assert payload(token)["citygate_roles"] == ["police", "supervisor"]
    _, client = served  # realm_access.roles: the header picks one of the token's roles
    ids = "{ public_security_residents(order_by: [{id_card: asc}], limit: 1) { id_card } }"
    as_supervisor = ask(client, ids, token, role="supervisor").json()
    assert as_supervisor["data"]["public_security_residents"][0]["id_card"].startswith("h:")
    as_police = ask(client, ids, token, role="police").json()
    assert as_police["data"]["public_security_residents"][0]["id_card"][:6] == "441900"
    gateway, custom = serve(sqlite_config, tmp_path, keycloak_auth(roles_claim="citygate_roles"))
    with custom:
        # the custom claim carries the same roles: each gives what the policies give it
        for role in ("supervisor", "police"):
            direct = gateway.execute(ids, identity=Identity(role, {"department": "public_security"})).body
            assert ask(custom, ids, token, role=role).json() == direct
        assert ask(custom, ids, token, role="env_inspector").status_code == 403
    gateway.close()


def test_expired_foreign_and_tampered_tokens_are_401(served: tuple[Gateway, TestClient]) -> None:
    _, client = served
    query = QUERIES[3]
    # Keycloak counts in whole seconds (exp = iat + lifespan, iat truncated): a three-second token
    # is valid for at least two, a one-second one could expire before its first use.
    short = password_token("ines", client="citygate-short")
    assert ask(client, query, short).status_code == 200
    time.sleep(max(0.0, payload(short)["exp"] - time.time()) + 1.1)
    expired = ask(client, query, short)
    assert expired.status_code == 401 and expired.json()["errors"][0]["message"] == EXPIRED

    other = password_token("ines", client="other-app")  # a token of the realm for another audience
    assert "aud" not in payload(other) or "citygate" not in payload(other)["aud"]
    refused = ask(client, query, other)
    assert refused.status_code == 401
    assert refused.json()["errors"][0]["message"] == NOT_FOR_US

    # the same realm and keys, reached as `localhost`: Keycloak names that address as issuer
    foreign = password_token("ines", base=f"http://localhost:{PORT}")
    assert payload(foreign)["iss"] == f"http://localhost:{PORT}/realms/citygate"
    refused = ask(client, query, foreign)
    assert refused.status_code == 401
    assert refused.json()["errors"][0]["message"] == NOT_FOR_US

    token = password_token("otto")
    head, _, signature = token.split(".")
    claims = payload(token) | {"district": "虎门"}
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    tampered = ask(client, "{ public_security_residents { district } }", f"{head}.{forged}.{signature}")
    assert tampered.status_code == 401 and tampered.json()["errors"][0]["message"] == INVALID


def test_a_rotated_realm_key_is_followed_without_a_restart(
    keycloak: str, sqlite_config: Config, tmp_path: Path
) -> None:
    refresh = 1
    gateway, client = serve(sqlite_config, tmp_path, keycloak_auth(jwks_refresh_seconds=refresh))
    query = QUERIES[3]
    with client:
        assert ask(client, query, password_token("ines")).status_code == 200  # keys fetched
        unused_old = password_token("ines")  # signed by the old key, never shown to the gateway
        admin = Admin()
        realm_id = admin.call("GET", "")["id"]
        providers = admin.call("GET", "/components?type=org.keycloak.keys.KeyProvider")
        old = [p for p in providers if p["providerId"] == "rsa-generated"]
        admin.call(
            "POST",
            "/components",
            {
                "name": f"rotated-{int(time.time())}",
                "providerId": "rsa-generated",
                "providerType": "org.keycloak.keys.KeyProvider",
                "parentId": realm_id,
                "config": {"priority": [str(1000 + int(time.time()) % 1000)], "enabled": ["true"], "active": ["true"]},
            },
        )
        for provider in old:
            admin.call("DELETE", f"/components/{provider['id']}")
        new = password_token("ines")
        assert header(new)["kid"] != header(unused_old)["kid"]
        time.sleep(refresh)  # an unknown kid fetches the keys again at most this often
        assert ask(client, query, new).status_code == 200
        refused = ask(client, query, unused_old)
        assert refused.status_code == 401
        assert refused.json()["errors"][0]["message"] == UNKNOWN_KEY
    gateway.close()


def test_keys_cached_while_keycloak_is_down_then_503(keycloak: str, sqlite_config: Config, tmp_path: Path) -> None:
    relay = Relay(PORT)
    cache = 2
    # Keycloak (in development mode) names the address it was asked at in its discovery
    # document, so the keys' URL goes through the relay too.
    discovery = f"http://127.0.0.1:{relay.port}/realms/citygate/.well-known/openid-configuration"
    auth = keycloak_auth(discovery=discovery, jwks_cache_seconds=cache, jwks_refresh_seconds=1)
    gateway, client = serve(sqlite_config, tmp_path, auth)
    query = QUERIES[3]
    tokens = [password_token("ines") for _ in range(3)]
    with client:
        assert ask(client, query, tokens[0]).status_code == 200
        fetched = time.monotonic()
        relay.close()  # Keycloak is now out of the gateway's reach
        time.sleep(cache + 0.2)  # stale: the fetch fails, the cached keys still serve
        assert time.monotonic() - fetched < 2 * cache
        assert ask(client, query, tokens[1]).status_code == 200
        time.sleep(max(0.0, fetched + 2 * cache + 0.2 - time.monotonic()))
        down = ask(client, query, tokens[2])
        assert down.status_code == 503
        assert down.json()["errors"][0] == {
            "message": "the gateway cannot reach its identity provider's keys",
            "extensions": {"code": "UNAVAILABLE"},
        }
    gateway.close()


def test_the_services_tell_a_keycloak_started_from_an_older_realm_file(tmp_path: Path) -> None:
    """Keycloak keeps its realm in memory, imported from the copy made at start: a Keycloak
    started from an older realm file (one without the citizen) is not current."""
    from tools.services import KEYCLOAK_REALM, realm_current

    imports = tmp_path / "import"
    assert not realm_current(imports)  # never started here
    imports.mkdir()
    older = json.loads(KEYCLOAK_REALM.read_text(encoding="utf-8"))
    older["users"] = [u for u in older["users"] if u["username"] != "citizen"]
    (imports / KEYCLOAK_REALM.name).write_text(json.dumps(older), encoding="utf-8")
    assert not realm_current(imports)
    (imports / KEYCLOAK_REALM.name).write_bytes(KEYCLOAK_REALM.read_bytes())
    assert realm_current(imports)
