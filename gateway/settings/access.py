"""Who may call the gateway and how: the policies and their key, bearer tokens, the tokens
that guard operator endpoints, registered documents, browser origins, and the proxies whose
word on a client's address is taken."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.settings.base import Model


class PoliciesConfig(Model):
    """Where the confidentiality policies are and the secret the `hash` mask is keyed with."""

    files: list[Path] = Field(min_length=1)
    hash_key: str = Field(min_length=16, description="HMAC key of the hash mask; from the environment")
    check_min_distinct: int = Field(
        50, ge=2, description="`policy check`: a hash or partial mask over fewer distinct values is a code book"
    )
    check_min_candidates: int = Field(
        1000,
        ge=2,
        description="`policy check`: a masked identifier a role's view narrows to fewer raw values is found "
        "(the policy files' `checks.min_candidates` wins)",
    )


Algorithm = Literal["RS256", "ES256", "EdDSA", "HS256"]
ASYMMETRIC: tuple[Algorithm, ...] = ("RS256", "ES256", "EdDSA")


class AuthConfig(Model):
    """How requests prove who they are: bearer JWTs from the city's identity provider."""

    issuer: str
    audience: str
    jwks_file: Path | None = None
    jwks_url: str | None = None
    # the keys' URL from the provider's OIDC discovery document (its `jwks_uri`), read again with
    # every fetch of the keys: `true` reads `<issuer>/.well-known/openid-configuration` and checks
    # that it names this issuer; a URL reads that document (a provider this gateway reaches by
    # another address than the one its tokens name)
    discovery: bool | str = False
    jwks_cache_seconds: int = Field(300, ge=0)
    # an unknown `kid` fetches the set again at most this often: random kids must not make the
    # gateway hammer the identity provider
    jwks_refresh_seconds: int = Field(10, ge=0)
    algorithms: list[Algorithm] = Field(default_factory=lambda: list(ASYMMETRIC))
    hs256_secret: str | None = Field(None, min_length=32)
    leeway_seconds: int = Field(30, ge=0, le=300)
    # a dot path into the token's claims: Keycloak's realm roles are `realm_access.roles`, its
    # roles of the audience's client `resource_access.<client>.roles`
    roles_claim: str = "roles"
    claims_path: str | None = None  # where the attributes policies use live (default: the top level)
    anonymous: bool = False  # requests without a token act as `anonymous` (else 401)

    @field_validator("discovery", mode="before")
    @classmethod
    def _discovery_flag(cls, value: object) -> object:
        # `${CITYGATE_OIDC_DISCOVERY:-true}` arrives as text
        value = {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value
        if isinstance(value, str) and not value.startswith(("https://", "http://")):
            raise ValueError("discovery: give true, false or the discovery document's http(s) URL")
        return value

    @model_validator(mode="after")
    def _keys(self) -> AuthConfig:
        if "HS256" in self.algorithms and not self.hs256_secret:
            raise ValueError("HS256 needs hs256_secret (a shared secret of at least 32 characters)")
        if self.hs256_secret and "HS256" not in self.algorithms:
            raise ValueError("hs256_secret is set but HS256 is not among the algorithms")
        asymmetric = [a for a in self.algorithms if a != "HS256"]
        given = [self.jwks_file is not None, self.jwks_url is not None, bool(self.discovery)]
        if asymmetric and sum(given) != 1:
            raise ValueError("give exactly one of jwks_file, jwks_url and discovery")
        return self

    @property
    def fetches_keys(self) -> bool:
        """Whether the keys come over the network (and are cached, and fetched again)."""
        return self.jwks_url is not None or bool(self.discovery)

    def discovery_url(self) -> str | None:
        """Where the OIDC discovery document is, if the keys are found through one.

        >>> AuthConfig(issuer="https://idp/realms/city", audience="citygate", discovery=True).discovery_url()
        'https://idp/realms/city/.well-known/openid-configuration'
        """
        if isinstance(self.discovery, str):
            return self.discovery
        return f"{self.issuer.rstrip('/')}/.well-known/openid-configuration" if self.discovery else None


class TokenGuard(Model):
    """A bearer token that guards an operator endpoint; unset means the endpoint is open
    (`/metrics`) or off (`/admin/*`)."""

    token: str | None = Field(None, min_length=16)

    @field_validator("token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value  # `${TOKEN:-}` with TOKEN unset


class TrustedDocumentsConfig(Model):
    """Registered GraphQL documents, and the roles that may run only those.

    ``store`` is a manifest (JSON: the SHA-256 of each document's text -> the text), written by
    ``citygate documents register``. Any caller may send a registered document by its hash
    alone; a caller whose role ``roles`` names (or every caller, with ``all``) may run nothing
    else. Roles are as the policies name them; ``anonymous`` is a caller without a token.
    """

    store: Path
    roles: list[str] | Literal["all"] = "all"

    def covers(self, role: str | None) -> bool:
        """Whether ``role`` (None: a deployment without policies) runs registered documents only."""
        return self.roles == "all" or (role is not None and role in self.roles)


class CorsConfig(Model):
    """Browser applications on other origins that may call the API (CORS); none by default."""

    # origins as a browser sends them (`https://app.city.internal`); `*` allows any origin and
    # then no credentials (a bearer token in `Authorization` still works: it is not a cookie)
    origins: list[str] = Field(default_factory=list)
    max_age: int = Field(600, ge=0)  # seconds a browser may keep a preflight's answer


class ServerConfig(Model):
    """How the gateway meets the connections it serves."""

    # the proxies in front of the gateway (addresses, or networks as CIDR) whose
    # `X-Forwarded-For` names the client: from one of them the client is the right-most address
    # in it that is not itself a trusted proxy, never the left-most (a client writes anything
    # there); from anyone else the header is ignored. No proxy by default: the client is the address
    # that connects, which behind a proxy is the proxy's for every caller
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return [_proxy_network(given) for given in value]


def _proxy_network(given: str) -> str:
    """A trusted proxy's address or network as ``ipaddress`` writes it, or why it cannot be.

    >>> _proxy_network("172.30.0.10"), _proxy_network("fd00:30::/64")
    ('172.30.0.10/32', 'fd00:30::/64')
    >>> _proxy_network("172.30.0.10/24")
    Traceback (most recent call last):
    ...
    ValueError: '172.30.0.10/24' has host bits set: write the network, 172.30.0.0/24
    """
    try:
        network = ipaddress.ip_network(given.strip())
    except ValueError:
        try:
            loose = ipaddress.ip_network(given.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{given!r} is not an IP address or a network (CIDR, such as 172.30.0.0/24)") from None
        raise ValueError(f"{given!r} has host bits set: write the network, {loose}") from None
    if network.prefixlen == 0:
        raise ValueError(f"{given!r} trusts every address, so any client could name its own: name the proxies")
    return str(network)
