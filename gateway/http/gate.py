"""Who a request is and whether it may run now: its token (:meth:`Gate.authenticate`), its
requests per minute (:meth:`Gate.throttle`), both in that order for every audited request
(:meth:`Gate.admit`), the operator's token (:meth:`Gate.guard`), and the networks refused for
guessing.

A caller is its token's subject, an anonymous one the network it connects from
(:func:`gateway.http.envelope.network`). A refused token, or a wrong operator token
(:meth:`Gate.guard`), counts against its network's anonymous allowance; a network past it is
refused before any token it sends is checked, so guessing costs the guesser, and a flood of bad
tokens costs neither the verifier nor the trail more than the anonymous limit allows: a refusal
of the throttle before anyone is known (``Exchange.throttled``) is recorded once per network
and minute, the rest counted (:mod:`gateway.http.floods`).

Behind proxies the gateway trusts (``server.trusted_proxies``) the address that connects is a
proxy's, shared by every caller: there the client is the one the proxies name in
``X-Forwarded-For`` (:func:`forwarded`), for all of the above and for the access log.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
from collections.abc import Sequence
from typing import cast

from cachetools import TTLCache
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Scope
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from gateway.config import AuthConfig, TokenGuard
from gateway.execution.gateway import Gateway
from gateway.execution.views import role_of
from gateway.http.envelope import ACCESS, Exchange, Reply, address, deny, error, network
from gateway.http.ratelimit import WINDOW, Limiter
from gateway.identity.caller import Identity
from gateway.identity.tokens import Authenticator, AuthError, FetchNeeded
from gateway.observe.audit import recorded
from gateway.state import StateUnavailable

log = logging.getLogger("citygate.http")

BLOCKED = 100_000  # networks remembered as refused at once; the least recently seen go first
GUESSES = "this network sent more refused tokens than the anonymous limit allows"


def caller(identity: Identity | None, net: str) -> str:
    """Who a request is, for its requests per minute and its fair shares: its token's subject,
    else the network it connects from (:func:`gateway.http.envelope.network`).

    >>> caller(Identity("police", subject="u-7"), "198.51.100.7/32"), caller(None, "198.51.100.7/32")
    ('subject:u-7', 'network:198.51.100.7/32')
    """
    if identity is not None and identity.subject:
        return f"subject:{identity.subject}"
    return f"network:{net}"


def forwarded(app: ASGIApp, proxies: Sequence[str]) -> ASGIApp:
    """``app`` with each request's client (``scope["client"]``) the one named by the trusted
    ``proxies`` (networks, as ``server.trusted_proxies`` holds them) that it came through.

    uvicorn's own middleware does it as it should: only for a connection from a trusted proxy,
    and the client is the right-most address of ``X-Forwarded-For`` that is not a trusted proxy
    itself, the one the last trusted proxy saw connect. What lies left of it was written by the
    client, or by proxies no one vouches for. An IPv4 network is trusted in its IPv6-mapped form
    too: a dual-stack socket names an IPv4 peer so.

    >>> sorted(map(str, forwarded(print, ["172.30.0.10/32"]).trusted_hosts.trusted_networks))
    ['172.30.0.10/32', '::ffff:ac1e:a/128']
    """
    if not proxies:
        return app
    trusted = []
    for proxy in proxies:
        network = ipaddress.ip_network(proxy)
        trusted.append(str(network))
        if network.version == 4:
            trusted.append(f"::ffff:{network.network_address}/{96 + network.prefixlen}")
    # one ASGI, typed twice: uvicorn's messages are TypedDicts, starlette's mappings
    return cast(ASGIApp, ProxyHeadersMiddleware(app, trusted_hosts=trusted))  # type: ignore[arg-type]


class Gate:
    """The identity and the limits of the requests to one gateway: ``auth``, how callers prove
    who they are (None: every caller is anonymous); ``admin``, the operator's token;
    ``prefixes``, the networks anonymous callers are counted by (``limits.ipv4_prefix``,
    ``limits.ipv6_prefix``)."""

    def __init__(
        self,
        gateway: Gateway,
        auth: AuthConfig | None,
        admin: TokenGuard,
        prefixes: tuple[int, int],
    ) -> None:
        self.gateway = gateway
        self.authenticator = Authenticator(auth) if auth is not None else None
        self.admin = admin
        self.limiter = Limiter(gateway.state)
        # Networks refused before their tokens are checked, and until when (the limiter's clock):
        # those whose failed tokens and admin guesses went past the anonymous limit. This
        # process's own: the counting is shared (the limiter's state), the shortcut need not be.
        self.blocked: TTLCache[str, float] = TTLCache(maxsize=BLOCKED, ttl=WINDOW, timer=self.now)
        self.prefixes = prefixes

    def now(self) -> float:
        """The limiter's clock (a test moves it), read each time: it may be replaced."""
        return self.limiter.clock()

    async def admit(self, exchange: Exchange) -> Reply | None:
        """Let an audited request in, or refuse it: its token checked (:meth:`authenticate`),
        its identity set on ``exchange``, then its requests per minute counted
        (:meth:`throttle`). Returns the refusal (401, 403, 429 or 503), the outcome and codes
        already noted on ``exchange`` for its record; None: it may run, as
        ``exchange.identity``."""
        identity = await self.authenticate(exchange)
        if isinstance(identity, Reply):
            return identity
        exchange.identity = identity
        return await self.throttle(exchange)

    def admit_operator(self, exchange: Exchange, scope: Scope) -> Reply | None:
        """Let an audited request of the operator in (the console's view as role), or refuse
        it: it carries the admin token (:meth:`guard`); it is not counted per minute, nor has it
        an identity of its own (it names the role it acts as). Returns the refusal, its outcome
        and code noted on ``exchange``; None: it may run."""
        refusal = self.guard(self.admin, scope, "admin")
        if refusal is not None:
            limited = refusal.status == 429
            exchange.outcome = "refused" if limited else "unauthenticated"
            exchange.codes = ["RATE_LIMITED" if limited else "UNAUTHENTICATED"]
        return refusal

    def guard(self, token: TokenGuard, scope: Scope, what: str) -> Reply | None:
        """None if the request of ``scope`` carries ``token`` as its bearer token (compared in
        constant time); else its refusal: 401, or 429 once its network's wrong guesses
        (:meth:`attempt_failed`) are past the anonymous limit. A network past it is refused
        before its token is even compared. ``what`` names the token in the refusal; the admin
        token also names the caller's role in the access log (``admin``). The one guard of the
        operator's endpoints (:mod:`gateway.http.admin`) and the console's."""
        client = address(scope)
        wait = self.blocked_for(client)
        if wait is None:
            if token.token is not None:
                scheme, _, sent = Headers(scope=scope).get("authorization", "").partition(" ")
                if scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), token.token.encode()):
                    entry = ACCESS.get()
                    if what == "admin" and entry is not None:
                        entry["role"] = "admin"  # the operator's token, for the access log
                    return None
            wait = self.attempt_failed(client)
            if wait is None:
                refusal = error(f"a valid {what} token is required", "UNAUTHENTICATED", 401)
                refusal.headers.append((b"www-authenticate", b"Bearer"))
                return refusal
        seconds = max(1, math.ceil(wait))
        refusal = error(f"too many requests: {GUESSES}; try again in {seconds} s", "RATE_LIMITED", 429)
        refusal.headers.append((b"retry-after", b"%d" % seconds))
        return refusal

    def network_of(self, client: str | None) -> str:
        """The network an anonymous caller at ``client`` is counted by (``limits.ipv4_prefix``,
        ``limits.ipv6_prefix``)."""
        return network(client, *self.prefixes)

    async def authenticate(self, exchange: Exchange) -> Identity | Reply | None:
        """The caller's identity; a 401/403 reply when the token is refused. Fetching the
        identity provider's keys is left to a worker thread, never done on the event loop."""
        if self.authenticator is None:
            return None
        refused = self.refused_network(exchange)
        if refused is not None:
            return refused
        authorization, role = exchange.headers.get("authorization"), exchange.headers.get("x-citygate-role")
        try:
            try:
                return self.authenticator.identify(authorization, role, fetch=False)
            except FetchNeeded:
                return await run_in_threadpool(self.authenticator.identify, authorization, role)
        except AuthError as refusal:
            exchange.outcome = {401: "unauthenticated", 403: "forbidden"}.get(refusal.status, "error")
            exchange.codes = [refusal.code]
            if refusal.subject is not None:  # the record names who asked for which role
                exchange.identity = Identity(
                    recorded(exchange.headers.get("x-citygate-role")) or "", subject=refusal.subject
                )
            reply = error(refusal.message, refusal.code, refusal.status, exchange.media_type)
            if refusal.status == 401:
                reply.headers.append((b"www-authenticate", b"Bearer"))
            return (self.failed_attempt(exchange) if refusal.status in (401, 403) else None) or reply

    async def throttle(self, exchange: Exchange) -> Reply | None:
        """The 429 of a caller over its requests per minute (its role's ``limits``), else None.
        A caller is its token's subject, an anonymous one the network it connects from. A state
        on a server (PostgreSQL) is asked from a worker thread, never on the event loop; the
        default SQLite file answers in microseconds and is asked here."""
        identity = exchange.identity
        role = role_of(self.gateway.policies, identity)
        per_minute = self.gateway.limits(role).requests_per_minute
        if not per_minute:
            return None
        subject = caller(identity, self.network_of(exchange.client))
        try:
            if self.limiter.state.remote:
                wait = await run_in_threadpool(self.limiter.take, subject, per_minute)
            else:
                wait = self.limiter.take(subject, per_minute)
        except StateUnavailable as unavailable:  # fail closed: no limit known, no request run
            log.error("request %s refused: %s", exchange.request_id, unavailable.detail)
            reply = deny(exchange, 503, unavailable.message, unavailable.code)
            reply.headers.append((b"retry-after", b"1"))
            return reply
        if wait is None:
            return None
        if subject.startswith("network:"):  # no subject: refused before anyone is known
            exchange.throttled = subject.removeprefix("network:")
        who = f"role {role}" if role else "this gateway"
        return self.too_many(exchange, wait, f"{who} allows {per_minute} a minute")

    def too_many(self, exchange: Exchange, wait: float, why: str) -> Reply:
        seconds = max(1, math.ceil(wait))
        message = f"too many requests: {why}; try again in {seconds} s"
        reply = deny(exchange, 429, message, "RATE_LIMITED", retryAfter=seconds)
        reply.headers.append((b"retry-after", b"%d" % seconds))
        return reply

    def attempt_failed(self, client: str | None) -> float | None:
        """Count a refused token or admin guess from ``client`` against its network's anonymous
        allowance (a caller whose token fails is anonymous): None while it is within it, else the
        seconds its network is now refused for, before any token it sends is checked."""
        per_minute = self.gateway.limits("anonymous").requests_per_minute
        net = self.network_of(client)
        try:
            wait = self.limiter.take(f"network:{net}", per_minute)
        except StateUnavailable as unavailable:  # fail closed: a guess not counted is not let through
            log.error("a refused token from %s was not counted: %s", net, unavailable.detail)
            return 1.0
        if wait is not None:
            self.blocked[net] = self.now() + wait
        return wait

    def blocked_for(self, client: str | None) -> float | None:
        """The seconds ``client``'s network is still refused for (:meth:`attempt_failed`)."""
        until = self.blocked.get(self.network_of(client))
        wait = until - self.now() if until is not None else 0.0
        return wait if wait > 0 else None

    def refused_network(self, exchange: Exchange) -> Reply | None:
        wait = self.blocked_for(exchange.client)
        if wait is None:
            return None
        exchange.throttled = self.network_of(exchange.client)  # its token is not even looked at
        return self.too_many(exchange, wait, GUESSES)

    def failed_attempt(self, exchange: Exchange) -> Reply | None:
        wait = self.attempt_failed(exchange.client)
        if wait is None:
            return None
        exchange.throttled = self.network_of(exchange.client)  # its token was refused: no one is known
        return self.too_many(exchange, wait, GUESSES)
