"""Tokens: what passes, what is refused with 401 (or 403), and the demo issuer end to end."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from starlette.testclient import TestClient

from datasets.demo import issue_token
from gateway.config import AuthConfig, Config
from gateway.execution.gateway import Gateway
from gateway.http.app import create_app
from gateway.identity.tokens import INVALID, UNKNOWN_KEY, Authenticator, AuthError, FetchNeeded
from tests.conftest import free_port, shared_engine, shared_secure_demo

ISSUER, AUDIENCE = "https://id.city.example", "citygate"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rsa = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    ec = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": [rsa.as_dict(private=False), ec.as_dict(private=False)]}))
    return {"rsa": rsa, "ec": ec, "jwks": path}


@pytest.fixture(scope="module")
def authenticator(keys: dict[str, Any]) -> Authenticator:
    return Authenticator(AuthConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=keys["jwks"]))


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "u1",
        "iat": now,
        "exp": now + 300,
        "roles": ["police", "supervisor"],
        "department": "public_security",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Any, alg: str, payload: dict[str, Any], kid: str | None = None) -> str:
    return jwt.encode({"alg": alg, "kid": kid or key.kid}, payload, key)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_valid_rs256_and_es256_tokens_pass(authenticator: Authenticator, keys: dict[str, Any]) -> None:
    identity = authenticator.identify("Bearer " + sign(keys["rsa"], "RS256", claims()))
    assert identity.role == "police" and identity.claims["department"] == "public_security"
    assert authenticator.identify("Bearer " + sign(keys["ec"], "ES256", claims())).role == "police"
    chosen = authenticator.identify("Bearer " + sign(keys["rsa"], "RS256", claims()), "supervisor")
    assert chosen.role == "supervisor"


def forged_tokens(keys: dict[str, Any]) -> dict[str, str]:
    now = int(time.time())
    body = b64(json.dumps(claims()).encode())
    public_pem = keys["rsa"].as_pem(private=False)
    hs_header = b64(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode())
    hs_signature = b64(hmac.new(public_pem, f"{hs_header}.{body}".encode(), hashlib.sha256).digest())
    other = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    unknown = RSAKey.generate_key(2048, parameters={"kid": "rsa-9"})
    valid = sign(keys["rsa"], "RS256", claims())
    return {
        "alg none": f"{b64(json.dumps({'alg': 'none'}).encode())}.{body}.",
        "HS256 signed with the public key": f"{hs_header}.{body}.{hs_signature}",
        "expired": sign(keys["rsa"], "RS256", claims(exp=now - 120)),
        "not yet valid": sign(keys["rsa"], "RS256", claims(nbf=now + 600)),
        "wrong issuer": sign(keys["rsa"], "RS256", claims(iss="https://evil.example")),
        "wrong audience": sign(keys["rsa"], "RS256", claims(aud="someone-else")),
        "bad signature": sign(other, "RS256", claims()),
        "unknown kid": sign(unknown, "RS256", claims()),
        "tampered payload": valid.split(".")[0]
        + "."
        + b64(json.dumps(claims(roles=["supervisor"]) | {"x": 1}).encode())
        + "."
        + valid.split(".")[2],
        "no roles": sign(keys["rsa"], "RS256", claims(roles=None)),
        "garbage": "not-a-token",
    }


def test_forged_and_invalid_tokens_are_401(authenticator: Authenticator, keys: dict[str, Any]) -> None:
    for name, token in forged_tokens(keys).items():
        with pytest.raises(AuthError) as caught:
            authenticator.identify("Bearer " + token)
        assert caught.value.status == 401, name
        assert "rsa" not in caught.value.message.lower() and ISSUER not in caught.value.message, name


def test_each_refused_token_says_why(authenticator: Authenticator, keys: dict[str, Any]) -> None:
    now = int(time.time())
    for body, why, then in (
        (claims(exp=now - 120), "the token has expired", "get a new token from the identity provider"),
        (claims(nbf=now + 600), "the token is not valid yet", "send it again in a moment"),
        (claims(iss="https://evil.example"), "the token was not issued for this gateway", "this gateway's audience"),
        (claims(aud="someone-else"), "the token was not issued for this gateway", "get a token from the identity"),
        (claims(exp="tomorrow"), "the token is not valid", "exactly as the identity provider issued it"),
    ):
        with pytest.raises(AuthError) as caught:
            authenticator.identify("Bearer " + sign(keys["rsa"], "RS256", body))
        # why, then what to do about it
        said, _, next_step = caught.value.message.partition("; ")
        assert said.startswith(why) and then in next_step, caught.value.message
    assert caught.value.message == INVALID
    tampered = sign(keys["rsa"], "RS256", claims())[:-4] + "abcd"  # a signature that does not hold
    with pytest.raises(AuthError) as caught:
        authenticator.identify("Bearer " + tampered)
    assert caught.value.message == INVALID


def test_unknown_key_names_the_next_step(authenticator: Authenticator) -> None:
    stranger = RSAKey.generate_key(2048, parameters={"kid": "rsa-unknown"})
    with pytest.raises(AuthError) as caught:
        authenticator.identify("Bearer " + sign(stranger, "RS256", claims()))
    assert caught.value.message == UNKNOWN_KEY
    assert "get a new token from the identity provider" in caught.value.message


def test_a_rewritten_jwks_file_is_read_again_without_a_restart(tmp_path: Path) -> None:
    """The operator rotates keys by rewriting `auth.jwks_file`: the new key works at once, and
    a key taken out of the file stops working for tokens not yet verified."""
    old = RSAKey.generate_key(2048, parameters={"kid": "old"})
    new = RSAKey.generate_key(2048, parameters={"kid": "new"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [old.as_dict(private=False)]}))
    rotating = Authenticator(AuthConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=path))
    assert rotating.identify("Bearer " + sign(old, "RS256", claims(sub="before"))).role == "police"
    replacement = tmp_path / "jwks.json.new"  # written aside and renamed, as a deploy does
    replacement.write_text(json.dumps({"keys": [new.as_dict(private=False)]}))
    replacement.replace(path)
    assert rotating.identify("Bearer " + sign(new, "RS256", claims(sub="after"))).role == "police"
    with pytest.raises(AuthError) as caught:
        rotating.identify("Bearer " + sign(old, "RS256", claims(sub="late")))
    assert caught.value.message == UNKNOWN_KEY
    path.write_text("{not json")  # a half-written file: the last keys go on serving
    assert rotating.identify("Bearer " + sign(new, "RS256", claims(sub="meanwhile"))).role == "police"


def test_a_role_the_token_does_not_carry_is_403(authenticator: Authenticator, keys: dict[str, Any]) -> None:
    with pytest.raises(AuthError) as caught:
        authenticator.identify("Bearer " + sign(keys["rsa"], "RS256", claims()), "health_analyst")
    assert caught.value.status == 403 and caught.value.code == "FORBIDDEN"


def test_no_token(keys: dict[str, Any]) -> None:
    strict = Authenticator(AuthConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=keys["jwks"]))
    with pytest.raises(AuthError):
        strict.identify(None)
    with pytest.raises(AuthError):
        strict.identify("Basic dXNlcjpwYXNz")
    lenient = Authenticator(AuthConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=keys["jwks"], anonymous=True))
    assert lenient.identify(None).role == "anonymous"


@pytest.fixture(scope="module")
def demo_client(sqlite_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    data_dir = tmp_path_factory.mktemp("demo-issuer")
    config = shared_secure_demo(sqlite_config, data_dir)
    gateway = Gateway.start(config, shared_engine(config))
    with TestClient(create_app(gateway)) as client:
        yield client, data_dir
    gateway.close()


def test_demo_issuer_tokens_over_http(demo_client: tuple[TestClient, Path]) -> None:
    client, data_dir = demo_client
    query = {"query": "{ public_security_residents(limit: 1, order_by: [{registered_at: asc}]) { id_card name } }"}
    anonymous = client.post("/graphql", json=query).json()
    assert anonymous["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    token = issue_token(data_dir, "health_analyst", {}, 60)
    answer = client.post("/graphql", json=query, headers={"authorization": f"Bearer {token}"}).json()
    [row] = answer["data"]["public_security_residents"]
    assert row["id_card"][6:14] == "********" and row["name"].endswith("*")
    refused = client.post("/graphql", json=query, headers={"authorization": "Bearer " + token[:-3] + "abc"})
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert refused.json() == {"errors": [{"message": INVALID, "extensions": {"code": "UNAUTHENTICATED"}}]}
    officer = issue_token(data_dir, "district_officer", {"district": "虎门"}, 60)
    rows = client.post(
        "/graphql",
        json={"query": "{ public_security_residents { district } }"},
        headers={"authorization": f"Bearer {officer}"},
    ).json()["data"]["public_security_residents"]
    assert rows and {r["district"] for r in rows} == {"虎门"}
    wrong_role = client.post(
        "/graphql", json=query, headers={"authorization": f"Bearer {token}", "x-citygate-role": "supervisor"}
    )
    assert wrong_role.status_code == 403


@contextlib.contextmanager
def jwks_server(served: dict[str, Any], delay: float = 0.0) -> Iterator[tuple[str, list[str]]]:
    """A key set served over HTTP on loopback (each answer after ``delay`` seconds but the
    first): its URL, and the paths fetched so far."""
    import http.server
    import threading

    fetches: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetches.append(self.path)
            if len(fetches) > 1:
                time.sleep(delay)
            body = json.dumps(served).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/jwks.json", fetches
    finally:
        server.shutdown()
        server.server_close()


def test_jwks_url_is_cached_and_refetched_for_a_new_kid() -> None:
    first = RSAKey.generate_key(2048, parameters={"kid": "old"})
    second = RSAKey.generate_key(2048, parameters={"kid": "new"})
    served = {"keys": [first.as_dict(private=False)]}
    with jwks_server(served) as (url, fetches):
        config = AuthConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=url, jwks_cache_seconds=3600)
        auth = Authenticator(config.model_copy(update={"jwks_refresh_seconds": 0}))
        assert auth.identify("Bearer " + sign(first, "RS256", claims())).role == "police"
        assert auth.identify("Bearer " + sign(first, "RS256", claims())).role == "police"
        assert len(fetches) == 1  # cached
        served["keys"].append(second.as_dict(private=False))  # the provider rotates
        assert auth.identify("Bearer " + sign(second, "RS256", claims())).role == "police"
        assert len(fetches) == 2  # an unknown kid fetched the set again, once


def test_keys_are_found_through_the_discovery_document() -> None:
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    encrypting = RSAKey.generate_key(2048, parameters={"kid": "enc-1", "use": "enc"})
    served = {"keys": [key.as_dict(private=False), encrypting.as_dict(private=False)]}
    with jwks_server(served) as (jwks, key_fetches):
        document: dict[str, Any] = {"jwks_uri": jwks}
        with jwks_server(document) as (discovery, documents):
            issuer = discovery.removesuffix("/jwks.json")
            document["issuer"] = issuer
            auth = Authenticator(AuthConfig(issuer=issuer, audience=AUDIENCE, discovery=True))
            token = "Bearer " + sign(key, "RS256", claims(iss=issuer))
            assert auth.identify(token).role == "police"
            assert documents == ["/.well-known/openid-configuration"] and len(key_fetches) == 1
            # a document naming another issuer is not this provider's (OIDC Discovery 4.3)
            document["issuer"] = "https://elsewhere.example"
            wary = Authenticator(AuthConfig(issuer=issuer, audience=AUDIENCE, discovery=True))
            with pytest.raises(AuthError) as caught:
                wary.identify(token)
            assert caught.value.status == 503
            # a configured URL is another address of the provider: its issuer is not compared
            direct = Authenticator(AuthConfig(issuer=issuer, audience=AUDIENCE, discovery=discovery))
            assert direct.identify(token).role == "police"
            # a key published for encryption verifies no signature, even one its holder signed with
            signing = {k: v for k, v in encrypting.as_dict(private=True).items() if k != "use"}
            with pytest.raises(AuthError, match="a key this gateway does not know"):
                direct.identify("Bearer " + sign(RSAKey.import_key(signing), "RS256", claims(iss=issuer)))


def test_exactly_one_source_of_keys() -> None:
    with pytest.raises(ValueError, match="exactly one of jwks_file, jwks_url and discovery"):
        AuthConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url="https://k.example/jwks", discovery=True)
    with pytest.raises(ValueError, match="discovery document's http"):
        AuthConfig(issuer=ISSUER, audience=AUDIENCE, discovery="yes")
    assert AuthConfig(issuer=ISSUER, audience=AUDIENCE, discovery="true").discovery is True


def test_random_kids_do_not_hammer_the_provider_nor_the_event_loop() -> None:
    """Found by a red-team review: each token with an unknown kid fetched the key set, on the
    event loop, so ten of them against a slow provider stalled every other request."""
    known = RSAKey.generate_key(2048, parameters={"kid": "known"})
    with jwks_server({"keys": [known.as_dict(private=False)]}) as (url, fetches):
        auth = Authenticator(AuthConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=url))
        token = "Bearer " + sign(known, "RS256", claims())
        with pytest.raises(FetchNeeded):  # the event loop's call: no I/O, the caller moves to a thread
            auth.identify(token, fetch=False)
        assert fetches == [] and auth.identify(token).role == "police" and len(fetches) == 1
        for n in range(5):
            stranger = RSAKey.generate_key(2048, parameters={"kid": f"random-{n}"})
            with pytest.raises(AuthError, match="a key this gateway does not know"):
                auth.identify("Bearer " + sign(stranger, "RS256", claims()), fetch=False)
        assert len(fetches) == 1  # within jwks_refresh_seconds of the last fetch: none again


def test_the_event_loop_never_waits_for_a_fetch_in_progress() -> None:
    """Found by a code review: the fetch held the lock the event loop's lookups take too."""
    known = RSAKey.generate_key(2048, parameters={"kid": "known"})
    with jwks_server({"keys": [known.as_dict(private=False)]}, delay=2.0) as (url, fetches):
        auth = Authenticator(AuthConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=url, jwks_refresh_seconds=0))
        token = "Bearer " + sign(known, "RS256", claims())
        assert auth.identify(token).role == "police"
        stranger = "Bearer " + sign(RSAKey.generate_key(2048, parameters={"kid": "new"}), "RS256", claims())

        def refetch() -> None:  # an unknown kid, on a worker thread: it fetches the set again
            with contextlib.suppress(AuthError):
                auth.identify(stranger)

        worker = threading.Thread(target=refetch)
        worker.start()
        while len(fetches) < 2:  # the worker's fetch has begun, and takes two seconds
            time.sleep(0.01)
        started = time.monotonic()
        assert auth.identify(token, fetch=False).role == "police"
        assert time.monotonic() - started < 0.5
        worker.join()


def test_an_unreachable_identity_provider_is_503() -> None:
    auth = Authenticator(AuthConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=f"http://127.0.0.1:{free_port()}/"))
    with pytest.raises(AuthError) as caught:
        auth.identify("Bearer " + sign(RSAKey.generate_key(2048, parameters={"kid": "k"}), "RS256", claims()))
    assert caught.value.status == 503 and caught.value.code == "UNAVAILABLE"
    assert caught.value.message == "the gateway cannot reach its identity provider's keys"


def test_hs256_only_with_a_configured_secret_and_claim_paths(keys: dict[str, Any]) -> None:
    from joserfc.jwk import OctKey

    secret = "a-shared-secret-of-at-least-32-chars!"
    auth = Authenticator(
        AuthConfig(
            issuer=ISSUER,
            audience=AUDIENCE,
            algorithms=["HS256"],
            hs256_secret=secret,
            roles_claim="https://city.example/claims.roles",
            claims_path="https://city.example/claims",
        )
    )
    namespaced = claims(roles=None) | {
        "https://city.example/claims": {"roles": ["district_officer"], "district": "虎门"}
    }
    identity = auth.identify("Bearer " + jwt.encode({"alg": "HS256"}, namespaced, OctKey.import_key(secret)))
    assert identity.role == "district_officer" and identity.claims == {"district": "虎门"}
    with pytest.raises(AuthError):  # an RS256 token is not accepted where only HS256 is allowed
        auth.identify("Bearer " + sign(keys["rsa"], "RS256", namespaced))
    with pytest.raises(ValueError, match="HS256 needs hs256_secret"):
        AuthConfig(issuer=ISSUER, audience=AUDIENCE, algorithms=["HS256"])


def test_a_cached_verification_still_expires_with_its_token(keys: dict[str, Any]) -> None:
    strict = Authenticator(AuthConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=keys["jwks"], leeway_seconds=0))
    token = "Bearer " + sign(keys["rsa"], "RS256", claims(exp=int(time.time()) + 1))
    assert strict.identify(token).role == strict.identify(token).role == "police"  # the second from the cache
    assert len(strict._verified) == 1
    later = time.time() + 2.1  # past `exp` for certain
    strict.clock = lambda: later
    with pytest.raises(AuthError, match="the token has expired"):
        strict.identify(token)
    forged = "Bearer " + sign(keys["rsa"], "RS256", claims())[:-4] + "AAAA"
    with pytest.raises(AuthError):
        strict.identify(forged)
    assert len(strict._verified) == 1  # refused tokens are never remembered


def test_keys_of_a_provider_that_went_away_stop_working_and_one_fetch_is_tried_at_a_time() -> None:
    """Found by a code review: after a failed fetch the old keys kept serving every caller but
    the one that fetched; and with no keys yet, every waiting caller fetched in turn."""
    known = RSAKey.generate_key(2048, parameters={"kid": "known"})
    with jwks_server({"keys": [known.as_dict(private=False)]}) as (url, _):
        config = AuthConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=url, jwks_cache_seconds=1)
        auth = Authenticator(config.model_copy(update={"jwks_refresh_seconds": 1}))
        assert auth.identify("Bearer " + sign(known, "RS256", claims())).role == "police"
    # the provider is gone; a token not seen before needs the keys (a seen one is remembered)
    time.sleep(2.1)
    refused = 0
    for n in range(5):
        with contextlib.suppress(AuthError):
            auth.identify("Bearer " + sign(known, "RS256", claims(jti=str(n))))
            continue
        refused += 1
    assert refused == 5  # past twice jwks_cache_seconds the keys are not served to anyone

    attempts: list[float] = []
    down = Authenticator(AuthConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=f"http://127.0.0.1:{free_port()}/"))
    load = down._load

    def counted() -> Any:
        attempts.append(time.monotonic())
        return load()

    down._load = counted  # type: ignore[method-assign]
    token = "Bearer " + sign(known, "RS256", claims())

    def ask() -> None:
        with contextlib.suppress(AuthError):
            down.identify(token)

    callers = [threading.Thread(target=ask) for _ in range(6)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(attempts) == 1  # the others waited for it, and took its answer
