"""Who is asking: bearer JWTs verified against the identity provider's keys.

A token must be signed with an allowed algorithm by a key of the configured JWKS (a file, a URL,
or the URL the provider's OIDC discovery document names; fetched keys are cached, and an unknown
``kid`` fetches them again, at most every ``jwks_refresh_seconds``, for key rotation; a file is
read again whenever it changes), come from
the configured issuer for the configured audience, and be within ``exp``/``nbf`` give or take a
small leeway. The request then acts as one of the token's roles: the one ``X-Citygate-Role``
names, else the first. Every refusal says what is wrong in words that reveal nothing about keys
or claims. JOSE work is done by joserfc, authlib's own successor to ``authlib.jose``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cachetools import TTLCache
from joserfc import jwt
from joserfc.errors import (
    ExpiredTokenError,
    InvalidClaimError,
    InvalidKeyIdError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet, OctKey

from catalogue.errors import CitygateError
from catalogue.types import text_problem
from gateway.config import AuthConfig
from gateway.identity.caller import Identity

log = logging.getLogger("citygate.identity")


# Refusals a client can act on say what to do next.
EXPIRED = "the token has expired; get a new token from the identity provider and send it again"
UNKNOWN_KEY = (
    "the token was signed by a key this gateway does not know; get a new token from the identity "
    "provider this gateway trusts (if that provider has just rotated its keys, try again in a minute)"
)
NOT_FOR_US = (
    "the token was not issued for this gateway (another issuer, or another audience); get a token from "
    "the identity provider this gateway trusts, for this gateway's audience (your client's settings there)"
)
NOT_YET = (
    "the token is not valid yet; if it was just issued, the identity provider's clock and this "
    "gateway's disagree: send it again in a moment, and have the clocks synchronised (NTP)"
)
INVALID = (
    "the token is not valid (malformed, altered, or signed with an algorithm this gateway does not "
    "accept); send the token exactly as the identity provider issued it, or get a new one"
)


class AuthError(CitygateError):
    """The request is not authenticated (401) or may not act as the role it asks for (403)."""

    code = "UNAUTHENTICATED"

    def __init__(self, message: str, status: int = 401, subject: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.subject = subject  # whose valid token asked for a role it does not carry (403)
        if status == 403:
            self.code = "FORBIDDEN"
        elif status == 503:
            self.code = "UNAVAILABLE"


class FetchNeeded(Exception):
    """Verifying the token needs the key set fetched from its URL: network I/O, which the event
    loop leaves to a worker thread (``identify(..., fetch=True)`` there)."""


class Authenticator:
    """Verifies bearer tokens; ``clock`` gives the wall-clock time their ``exp``, ``nbf`` and
    ``iat`` are checked against (injected in tests, as the rate limiter's is)."""

    def __init__(self, auth: AuthConfig, clock: Callable[[], float] = time.time) -> None:
        self.auth = auth
        self.clock = clock
        self._lock = threading.Lock()  # the verified tokens
        self._fetching = threading.Lock()  # one fetch of the keys at a time
        self._keys: KeySet | None = None
        self._fetched = -float("inf")
        self._file_stamp: tuple[int, int, int] | None = None  # the jwks_file's, when it was read
        self._retry_at = -float("inf")
        self._claims = jwt.JWTClaimsRegistry(
            now=lambda: int(self.clock()),
            leeway=auth.leeway_seconds,
            iss={"essential": True, "value": auth.issuer},
            aud={"essential": True, "value": auth.audience},
            exp={"essential": True},
        )
        # Verified tokens, by their exact text: a repeated request skips the signature check.
        # An entry lives at most a minute (a key removed from the JWKS stops working within it)
        # and never past the token's own expiry, which is checked again at every use.
        self._verified: TTLCache[str, dict[str, Any]] = TTLCache(maxsize=10_000, ttl=60)

    # -- keys ------------------------------------------------------------------------------

    def _keyset(self, refresh: bool = False, fetch: bool = True) -> KeySet:
        """The keys; fetched again when stale, or (``refresh``, for an unknown ``kid``) when the
        last fetch is older than ``jwks_refresh_seconds``. One fetch at a time, under its own
        lock: the event loop's calls (``fetch`` false) only read the keys there are, and never
        wait for a fetch."""
        keys = self._ready(refresh)
        if keys is not None:
            return keys
        if self.auth.fetches_keys and not fetch:
            raise FetchNeeded
        with self._fetching:
            keys = self._ready(refresh)  # fetched, or failed, while this one waited
            if keys is not None:
                return keys
            try:
                loaded = self._load()
            except (OSError, ValueError, KeyError, JoseError) as error:
                # Try again in jwks_refresh_seconds; meanwhile the last keys serve, but only up
                # to twice their time: a key withdrawn from the set must stop working some time.
                log.warning("the identity provider's keys could not be fetched: %s", error)
                self._retry_at = time.monotonic() + self.auth.jwks_refresh_seconds
                keys = self._usable()
                if keys is None:
                    raise _unreachable() from None
                return keys
            self._keys, self._fetched = loaded, time.monotonic()
            return loaded

    def _ready(self, refresh: bool) -> KeySet | None:
        """The keys if they need no fetch; None if they do; 503 if there are none to use and
        the last fetch failed too recently to try again."""
        keys = self._usable()
        if keys is None and time.monotonic() < self._retry_at:
            raise _unreachable()
        return keys if keys is not None and not self._due(refresh) else None

    def _usable(self) -> KeySet | None:
        """The keys, unless a failed provider has left them older than twice their time."""
        if self.auth.fetches_keys and time.monotonic() - self._fetched > 2 * self.auth.jwks_cache_seconds:
            return None
        return self._keys

    def _due(self, refresh: bool) -> bool:
        """Whether the keys must be fetched again: those from a URL when stale, those from a
        file when the file changed (an operator rotates keys by rewriting it, no restart)."""
        if self.auth.jwks_file is not None:
            return self._keys is None or _stamp(self.auth.jwks_file) != self._file_stamp
        if not self.auth.fetches_keys:
            return False
        now = time.monotonic()
        if now < self._retry_at:  # the last fetch failed: not before its retry time
            return False
        age = now - self._fetched
        return age > self.auth.jwks_cache_seconds or (refresh and age >= self.auth.jwks_refresh_seconds)

    def _load(self) -> KeySet:
        keys: list[dict[str, Any]] = []
        if self.auth.jwks_file is not None:
            # The stamp is taken before the read: a file rewritten during it is read again.
            self._file_stamp = _stamp(self.auth.jwks_file)
            keys = json.loads(self.auth.jwks_file.read_text(encoding="utf-8"))["keys"]
        elif self.auth.fetches_keys:
            keys = _fetch_json(self._jwks_url())["keys"]
        # Shared-secret keys come only from the configuration, never from a published set.
        public = [k for k in keys if k.get("kty") != "oct"]
        imported = list(KeySet.import_key_set({"keys": public}).keys) if public else []
        if self.auth.hs256_secret:
            imported.append(OctKey.import_key(self.auth.hs256_secret))
        return KeySet(imported)

    def _jwks_url(self) -> str:
        """The configured key set's URL, or the one the discovery document names now: read
        again at every fetch, so a provider that moves its keys is followed too."""
        discovery = self.auth.discovery_url()
        if discovery is None:
            assert self.auth.jwks_url is not None
            return self.auth.jwks_url
        document = _fetch_json(discovery)
        # OpenID Connect Discovery 1.0, section 4.3: the document's issuer must be the one it
        # was found from; a configured URL is another address of the same provider.
        if self.auth.discovery is True and document.get("issuer") != self.auth.issuer:
            raise ValueError(f"the discovery document names issuer {document.get('issuer')!r}, not the configured one")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise ValueError("the discovery document names no jwks_uri")
        return jwks_uri

    # -- requests --------------------------------------------------------------------------

    def identify(self, authorization: str | None, role: str | None = None, fetch: bool = True) -> Identity:
        """The identity a request acts as, or :class:`AuthError`; :class:`FetchNeeded` if that
        needs the keys fetched and ``fetch`` is false."""
        if not authorization:
            if self.auth.anonymous and not role:
                return Identity("anonymous")
            raise AuthError("a bearer token is required (Authorization: Bearer <token>)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("send the token as Authorization: Bearer <token>")
        claims = self._verify(token.strip(), fetch)
        roles = _path(claims, self.auth.roles_claim)
        if isinstance(roles, str):
            roles = [roles]
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
            raise AuthError("the token carries no role")
        attributes = _path(claims, self.auth.claims_path) if self.auth.claims_path else claims
        if not isinstance(attributes, Mapping):
            attributes = {}
        used = [*((self.auth.roles_claim, r) for r in roles), *attributes.items()]
        for name, value in [("sub", claims.get("sub")), *used]:
            problem = _claim_problem(value)
            if problem is not None:
                named = f"`{name}` " if isinstance(name, str) and name.isprintable() and len(name) <= 64 else ""
                raise AuthError(f"the token's {named}claim {problem}")
        subject = str(claims["sub"]) if claims.get("sub") is not None else None
        if role and role not in roles:
            message = f"the token does not carry the role {role!r} named by X-Citygate-Role"
            raise AuthError(message, status=403, subject=subject)
        return Identity(
            role or roles[0],
            {k: v for k, v in attributes.items() if isinstance(v, str | int | float)},
            subject=subject,
        )

    def _verify(self, token: str, fetch: bool) -> dict[str, Any]:
        with self._lock:
            known = self._verified.get(token)
        if known is not None:
            if self.clock() > known["exp"] + self.auth.leeway_seconds:
                raise AuthError(EXPIRED)
            return known
        claims = self._check(token, fetch)
        if isinstance(claims.get("exp"), int | float):
            with self._lock:
                self._verified[token] = claims
        return claims

    def _check(self, token: str, fetch: bool) -> dict[str, Any]:
        algorithms = list(self.auth.algorithms)
        try:
            try:
                decoded = jwt.decode(token, self._keyset(fetch=fetch), algorithms=algorithms)
            except InvalidKeyIdError:
                if not self.auth.fetches_keys:
                    raise
                decoded = jwt.decode(token, self._keyset(refresh=True, fetch=fetch), algorithms=algorithms)
            self._claims.validate(decoded.claims)
        except ExpiredTokenError:
            raise AuthError(EXPIRED) from None
        except InvalidKeyIdError:
            raise AuthError(UNKNOWN_KEY) from None
        except (InvalidClaimError, MissingClaimError) as error:
            raise AuthError(_CLAIM_REASONS.get(error.claim, INVALID)) from None
        except (JoseError, ValueError):
            raise AuthError(INVALID) from None
        return dict(decoded.claims)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when a key file is rewritten or replaced (an editor's or a deploy's rename);
    None if it is gone, which the next read reports."""
    try:
        found = path.stat()
    except OSError:
        return None
    return (found.st_ino, found.st_mtime_ns, found.st_size)


def _fetch_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - the configured provider's URL
        document = json.load(response)
    if not isinstance(document, dict):
        raise ValueError(f"{url} did not answer a JSON object")
    return document


MAX_CLAIM = 256  # characters in a claim the gateway uses: a subject, a role, a row filter's value


def _claim_problem(value: Any) -> str | None:
    """What keeps a claim from being used and recorded, if anything: it is checked as a query's
    string values are (an engine cannot take a NUL or a lone surrogate, nor can the audit trail's
    JSON), and bounded, since every record repeats it.

    >>> _claim_problem("南城"), _claim_problem(chr(0xD800)), _claim_problem("x" * 300)
    (None, 'holds a lone surrogate', 'is longer than 256 characters')
    """
    if not isinstance(value, str):
        return None
    problem = text_problem(value)
    if problem is not None:
        return f"holds {problem}"
    return f"is longer than {MAX_CLAIM} characters" if len(value) > MAX_CLAIM else None


def _unreachable() -> AuthError:
    return AuthError("the gateway cannot reach its identity provider's keys", status=503)


# Why a token whose claim fails is refused; any other claim (a malformed `exp`, `sub`, ...)
# makes it not valid (INVALID). joserfc raises one error class for all of them, naming the claim.
_CLAIM_REASONS = {
    "nbf": NOT_YET,
    "iat": NOT_YET,
    "iss": NOT_FOR_US,
    "aud": NOT_FOR_US,
}


def _path(claims: Any, path: str) -> Any:
    """Follow a dot path through nested claims; a key that itself holds dots (a namespace URL
    such as ``https://city.example/claims``) is matched whole, longest first.

    >>> _path({"https://city.example/claims": {"roles": ["a"]}}, "https://city.example/claims.roles")
    ['a']
    """
    if not isinstance(claims, Mapping):
        return None
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        key = ".".join(parts[:cut])
        if key in claims:
            rest = ".".join(parts[cut:])
            return _path(claims[key], rest) if rest else claims[key]
    return None
