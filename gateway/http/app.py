"""The HTTP edge: GraphQL over HTTP on ``/graphql``, GraphiQL for browsers, health, readiness,
Prometheus ``/metrics``, the operator's ``/admin`` endpoints, and the console (``/console``: the
catalogue as the caller's role sees it, and "view as role" for an administrator).

Statuses follow the GraphQL-over-HTTP specification: with ``application/graphql-response+json``
a request that cannot be executed (parse, validation, variables) is 400 and anything executed
is 200; with the legacy ``application/json`` every well-formed request is 200. A malformed
request (bad JSON, no query, a mutation, an unknown operationName) is 400 either way. No
response carries SQL or a stack trace.

Two refusals come before a document is parsed. A caller over its requests per minute
(``limits``) is answered 429 with ``Retry-After``. Where trusted documents are configured, a
document not registered is refused (403, ``UNTRUSTED_DOCUMENT``, its hash in the message) for the
roles they cover; any caller may send a registered document by its hash alone.

Every GraphQL request, answered or refused at any step, leaves exactly one audit record, and
every response and log line names the gateway's own request id (``X-Request-Id``), unique, as
the record's ``request_id`` is. A caller's own ``X-Request-Id``, which any caller may reuse, is
recorded beside it (``client_request_id``), never instead of it. A repeated request whose plan
and rows are cached is answered on the event loop itself, without a hop to a worker thread.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hmac
import ipaddress
import itertools
import json
import logging
import math
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from cachetools import TTLCache
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from catalogue.errors import CitygateError, trace_without_messages
from gateway.config import LimitsConfig, TokenGuard
from gateway.console import catalogue as console_catalogue
from gateway.console.assets import Assets
from gateway.console.inspect import view_as
from gateway.console.pages import DemoPage, Pages
from gateway.execution import plans
from gateway.execution.fairness import CALLER, REQUESTS_AT_ONCE, Admission
from gateway.execution.gateway import Gateway
from gateway.execution.plans import MEMO_BYTES, encode
from gateway.execution.views import role_of
from gateway.graphql.documents import TrustedDocuments, document_hash, document_id
from gateway.http.ratelimit import WINDOW, Limiter
from gateway.http.wire import OneWriteProtocol, protocol
from gateway.identity.caller import Identity
from gateway.identity.tokens import Authenticator, AuthError, FetchNeeded
from gateway.observe.audit import AuditUnavailable, Filled, Template, recorded
from gateway.observe.audit import record as audit_record
from gateway.observe.logs import REQUEST_ID
from gateway.state import StateUnavailable

log = logging.getLogger("citygate.http")
access_log = logging.getLogger("citygate.access")

GRAPHQL_RESPONSE = "application/graphql-response+json"
MAX_BODY = 1 << 20  # 1 MiB: far above any real query, far below what could hurt the server
# Our own request ids: random per process, then counted (uuid4 per request costs a syscall).
_ID_PREFIX = os.urandom(6).hex()
_ids = itertools.count(1)
# The access log's entry of the request being served: its id, then what the handler learns
# (role, outcome, codes). Set by Edge.__call__ for every HTTP request, read when it is answered.
ACCESS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("citygate_access", default=None)
# Operator endpoints: no browser application on another origin may call them, whatever `cors` says.
_NO_CORS = ("/admin/", "/console/api/view-as", "/console/api/roles", "/metrics")


def _new_id() -> str:
    """A request id of this gateway: unique in the process, unguessable across processes."""
    return f"{_ID_PREFIX}-{next(_ids):x}"


@functools.lru_cache(maxsize=4096)
def network(address: str | None, ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> str:
    """The network an anonymous caller is counted by: its address cut to the prefix, since one
    client may hold a whole IPv6 /64 (or a block of IPv4 addresses) and rotate through it.

    >>> network("198.51.100.7"), network("198.51.100.7", 24), network("2001:db8:1:2:3:4:5:6")
    ('198.51.100.7/32', '198.51.100.0/24', '2001:db8:1:2::/64')
    >>> network("::ffff:198.51.100.7", 24)
    '198.51.100.0/24'
    """
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return f"{address}"  # not an IP address (a Unix socket, a test client): as it is
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # an IPv4 client on a dual-stack socket is an IPv4 client
    prefix = ipv4_prefix if ip.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


# How uvicorn serves the edge. The edge writes its own access log (`citygate.access`: with the
# request id, role and outcome, which uvicorn's cannot know); X-Forwarded-* are not rewritten
# (that middleware costs a layer per request), so anonymous callers are limited and shared
# fairly by the network that connects, which behind a proxy is the proxy's; and the server need
# not name itself.
# Each response leaves in one write (gateway/http/wire.py).
SERVER_OPTIONS: dict[str, Any] = {
    "access_log": False,
    "proxy_headers": False,
    "server_header": False,
    "http": OneWriteProtocol,
}


def server_options(limits: LimitsConfig) -> dict[str, Any]:
    """:data:`SERVER_OPTIONS` with the deployment's header timeout and connection cap."""
    return {**SERVER_OPTIONS, "http": protocol(limits.header_seconds, limits.max_connections)}


_GONE = ["CLIENT_DISCONNECTED"]  # the error codes of a request whose client hung up
BLOCKED = 100_000  # networks remembered as refused at once; the least recently seen go first
_GUESSES = "this network sent more refused tokens than the anonymous limit allows"
_SENT = {"query", "documentId", "extensions"}  # what names a GET request's document
_NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"  # Apollo's code: its clients then send the document
_CALLER_HEADERS = ("x-citygate-purpose", "x-citygate-role", "x-request-id")  # a client's own, beside HTTP's
_READ = {  # the request headers the edge reads (ASGI servers give their names in lower case)
    name.encode(): name
    for name in (
        "accept",
        "authorization",
        "content-length",
        "content-type",
        "x-citygate-purpose",
        "x-citygate-role",
        "x-request-id",
    )
}


@dataclass(slots=True)
class Reply:
    """What the edge answers a GraphQL request with, before it is put on the wire."""

    status: int
    body: bytes
    media_type: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # besides type and length
    head: list[tuple[bytes, bytes]] | None = None  # all of them, made once (a hot reply is sent again)

    def wire_headers(self) -> list[tuple[bytes, bytes]]:
        if self.head is None:
            self.head = [
                (b"content-type", _MEDIA[self.media_type]),
                (b"content-length", b"%d" % len(self.body)),
                *self.headers,
            ]
        return self.head


def _json(body: Any, status: int, media_type: str, encoded: bytes | None = None) -> Reply:
    return Reply(status, encoded if encoded is not None else encode(body), media_type)


def _response(reply: Reply) -> Response:
    """A reply as starlette sends it (the routes other than POST /graphql)."""
    response = Response(reply.body, status_code=reply.status, media_type=reply.media_type)
    for name, value in reply.headers:
        response.headers[name.decode("latin-1")] = value.decode("latin-1")
    return response


def _bad_request(message: str, media_type: str, status: int = 400) -> Reply:
    return _json({"errors": [{"message": message, "extensions": {"code": "BAD_REQUEST"}}]}, status, media_type)


MAX_DEPTH = 32  # levels of lists and objects in `variables`: a GraphQL input type has few


def _deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` levels deep (without
    recursion: a value 3,000 levels deep must not exhaust the stack)."""
    level: list[Any] = [value]
    for _ in range(limit):
        level = [
            item
            for v in level
            for item in (v.values() if isinstance(v, dict) else v if isinstance(v, list) else ())
            if isinstance(item, dict | list)
        ]
        if not level:
            return False
    return True


def _document_id(params: dict[str, Any]) -> str | None:
    """The hash a request names its document by: ``documentId``, or Apollo's
    ``extensions.persistedQuery.sha256Hash``; None if it names none. ValueError: not a hash."""
    extensions = params.get("extensions")
    if isinstance(extensions, str) and extensions:  # GET ?extensions=... is JSON text
        try:
            extensions = json.loads(extensions)
        except (ValueError, RecursionError):
            raise ValueError("`extensions` is not valid JSON") from None
    persisted = extensions.get("persistedQuery") if isinstance(extensions, dict) else None
    if "documentId" in params:
        sent = params["documentId"]
    elif isinstance(persisted, dict) and "sha256Hash" in persisted:
        sent = persisted["sha256Hash"]
    else:
        return None
    digest = document_id(sent)
    if digest is None:
        raise ValueError("the document id is not a SHA-256 (send sha256:<64 hex digits>)")
    return digest


def _variables(params: dict[str, Any]) -> dict[str, Any] | None:
    """The request's variables; ValueError: what is wrong with them."""
    variables = params.get("variables")
    if isinstance(variables, str) and variables:
        try:
            variables = json.loads(variables)
        except (ValueError, RecursionError):
            raise ValueError("`variables` is not valid JSON") from None
    if variables is not None and not isinstance(variables, dict):
        raise ValueError("`variables` must be an object")
    if variables and _deeper(variables, MAX_DEPTH):
        raise ValueError(f"`variables` nest deeper than {MAX_DEPTH} levels")
    return variables or None


def _parameters(params: dict[str, Any]) -> tuple[str | None, str | None, dict[str, Any] | None, str | None] | str:
    """The request's query, the hash it names its document by, its variables and operation
    name, or what is wrong with them. A request that names its document by hash may leave
    the query out."""
    query = params.get("query")
    try:
        document = _document_id(params)
        if not (isinstance(query, str) and query.strip()) and not (query is None and document is not None):
            return "the request has no `query` string"
        variables = _variables(params)
    except ValueError as error:
        return str(error)
    operation_name = params.get("operationName")
    if operation_name is not None and not isinstance(operation_name, str):
        return "`operationName` must be a string"
    return query, document, variables, operation_name or None


@dataclass(slots=True)
class Exchange:
    """One GraphQL request on its way through the edge: what its audit record will say."""

    request_id: str  # the gateway's own: the response's, the log lines' and the record's
    client_request_id: str | None  # the caller's X-Request-Id, as the record keeps it
    started: float
    headers: dict[str, str]
    media_type: str
    purpose: str | None
    client: str | None = None  # the address that connects: who an anonymous caller is, for the limits
    query: str | None = None
    document: str | None = None  # the hash the request named its document by, if it did
    operation_name: str | None = None
    identity: Identity | None = None
    result: plans.Response | None = None
    outcome: str = "ok"
    codes: list[str] = field(default_factory=list)
    template: Template | None = None  # a hot request's audit record, but for its own values
    console: dict[str, Any] | None = None  # a console request's own parts of its record (what it read)

    @classmethod
    def begin(cls, raw_headers: list[tuple[bytes, bytes]], client: tuple[str, int] | None = None) -> Exchange:
        # The headers the edge reads, decoded once (the first of repeated ones).
        headers: dict[str, str] = {}
        for raw_name, raw_value in raw_headers:
            name = _READ.get(raw_name)
            if name is not None and name not in headers:
                headers[name] = raw_value.decode("utf-8", "replace")  # a purpose may be 案件调查
        return cls(
            request_id=_request_id(),
            client_request_id=recorded(headers.get("x-request-id")),
            started=time.perf_counter(),
            headers=headers,
            media_type=GRAPHQL_RESPONSE if GRAPHQL_RESPONSE in headers.get("accept", "") else "application/json",
            purpose=recorded(headers.get("x-citygate-purpose")),
            client=client[0] if client else None,
        )


@dataclass(slots=True)
class Hot:
    """A repeated request's reply, sent again as long as everything it was made of stands:
    the caller's identity, the policies, and the very result-cache entries of its rows."""

    identity: Identity | None
    version: str  # the policy version
    rows: list[tuple[str, str, str, Any]]  # (route key, statement, release, the cached rows' object) per root field
    result: plans.Response
    reply: Reply
    outcome: str
    codes: list[str]
    query: str
    operation_name: str | None
    template: Template | None  # its audit record's fixed fields (None when the trail is off)


HOT_ENTRIES = 1024  # requests remembered as hot
HOT_BODY = 4096  # bytes: a larger request body is not remembered


def _outcome(result: plans.Response) -> tuple[str, list[str]]:
    """How an executed request went, and its error codes, for the trail and the metrics."""
    errors = result.body.get("errors")
    if not errors:
        return ("refused" if result.request_error else "ok"), []
    codes = sorted({str(e.get("extensions", {}).get("code", "INTERNAL")) for e in errors})
    if result.request_error:
        return "refused", codes
    data = result.body.get("data") or {}
    return ("partial" if any(v is not None for v in data.values()) else "error"), codes


def _record(exchange: Exchange, status: int, engine: str) -> dict[str, Any]:
    """The audit record of a finished request (:func:`gateway.observe.audit.record`)."""
    identity, result = exchange.identity, exchange.result
    made = audit_record(
        request_id=exchange.request_id,
        client_request_id=exchange.client_request_id,
        subject=identity.subject if identity is not None else None,
        role=identity.role if identity is not None else None,
        purpose=exchange.purpose,
        query=exchange.query,
        operation_name=recorded(exchange.operation_name),
        plan=result.plan if result is not None else None,
        document=exchange.document,
        claims=result.claims if result is not None else {},
        rows=result.rows if result is not None else {},
        cache=result.cache if result is not None else {},
        routes=result.routes if result is not None else {},
        engine=engine,
        duration_ms=(time.perf_counter() - exchange.started) * 1000,
        outcome=exchange.outcome,
        status=status,
        errors=exchange.codes,
        epsilon=result.epsilon if result is not None else None,
    )
    if exchange.console is not None:
        made.update(exchange.console)
    return made


def _request_id() -> str:
    """The id of the request being served (its access log entry's), or a new one."""
    entry = ACCESS.get()
    return str(entry["request_id"]) if entry is not None else _new_id()


def _caller(identity: Identity | None, net: str) -> str:
    """Who a request is, for its requests per minute and its fair shares: its token's subject,
    else the network it connects from (:func:`network`)."""
    if identity is not None and identity.subject:
        return f"subject:{identity.subject}"
    return f"network:{net}"


def _address(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def _error(message: str, code: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    """An operator endpoint's refusal, in the shape every other answer's errors have."""
    return JSONResponse({"errors": [{"message": message, "extensions": {"code": code}}]}, status, headers)


def _guarded(guard: TokenGuard, request: Request) -> bool:
    """Whether the request carries the guard's bearer token (compared in constant time)."""
    if guard.token is None:
        return False
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), guard.token.encode())


_MEDIA = {GRAPHQL_RESPONSE: GRAPHQL_RESPONSE.encode(), "application/json": b"application/json"}


class Edge:
    """The request handlers over one gateway, and the ASGI application in front of them.

    ``POST /graphql``, nearly every request, is served here in plain ASGI: a cached answer
    is a dictionary lookup and two ``send`` calls, and a framework's routing, middleware and
    request and response objects would cost more than that. Everything else (GraphiQL and
    ``GET /graphql``, health, metrics, admin, the lifespan) goes to a starlette application.
    """

    def __init__(
        self, gateway: Gateway, app: Starlette | None = None, example: str = "", demo: DemoPage | None = None
    ) -> None:
        self.gateway = gateway
        self.metrics = gateway.metrics
        self.engine_name = gateway.engine.name
        self.authenticator = Authenticator(gateway.config.auth) if gateway.config.auth is not None else None
        self.app = app
        # Hot requests, by (body, Authorization, X-Citygate-Role, media type); the event loop's
        # own, in insertion order (the oldest goes first).
        self.hot: dict[tuple[Any, ...], Hot] = {}
        self.admission = Admission(REQUESTS_AT_ONCE, parallelism=len(os.sched_getaffinity(0)))
        trusted = gateway.config.trusted_documents
        self.documents = TrustedDocuments(trusted) if trusted is not None else None
        self.limiter = Limiter(gateway.state)
        # Networks refused before their tokens are checked, and until when (the limiter's clock):
        # those whose failed tokens and admin guesses went past the anonymous limit. This
        # process's own: the counting is shared (the limiter's state), the shortcut need not be.
        self.blocked: TTLCache[str, float] = TTLCache(maxsize=BLOCKED, ttl=WINDOW, timer=self._now)
        limits = gateway.config.limits
        self.prefixes = (limits.ipv4_prefix, limits.ipv6_prefix)
        # CORS only where configured, and never on the operator's endpoints: otherwise no header
        # says another origin may call
        cors = gateway.config.cors
        self.front: ASGIApp = self.dispatch
        if cors.origins:
            self.front = CORSMiddleware(
                self.dispatch,
                allow_origins=cors.origins,
                allow_methods=["GET", "POST"],
                allow_headers=["authorization", "content-type", "accept", *_CALLER_HEADERS],
                expose_headers=["x-request-id", "retry-after"],
                max_age=cors.max_age,
            )
        # The console: pinned assets checked once, pages made once; department states and row
        # estimates read when the catalogue is first asked for, and again when they are old.
        self.assets = Assets.load()
        if self.assets.missing is not None:
            log.warning("GraphiQL will not start in browsers: %s", self.assets.missing)
        self.pages = Pages.make(self.assets, example, demo)
        self.probe = console_catalogue.Probe(lambda: gateway.health().departments)
        self.estimates = console_catalogue.Estimates(gateway.statistics.rows)

    def _now(self) -> float:
        return self.limiter.clock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every request, with its access log line once it is answered (or its client is gone)."""
        if scope["type"] != "http":
            await self.front(scope, receive, send)
            return
        started = time.perf_counter()
        entry: dict[str, Any] = {"request_id": _new_id(), "status": 499}  # nginx's: the client hung up
        token = ACCESS.set(entry)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
                headers = message.setdefault("headers", [])
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", entry["request_id"].encode("latin-1")))
            await send(message)

        try:
            path = scope["path"]
            front = self.dispatch if path.startswith(_NO_CORS) else self.front
            await front(scope, receive, sending)
        finally:
            ACCESS.reset(token)
            if access_log.isEnabledFor(logging.INFO):
                self.log_access(scope, entry, started)

    def log_access(self, scope: Scope, entry: dict[str, Any], started: float) -> None:
        """The request's access log line: who (role, network), what (method, route), how it
        went (status, outcome, codes) and how long it took. No query, variable, header value or
        token: the route is the path's pattern, never the path a caller wrote."""
        route = scope.get("route")
        pattern = getattr(route, "path", None) if route is not None else None
        if pattern is None and scope["path"] == "/graphql":
            pattern = "/graphql"  # POST /graphql is the edge's own, without a starlette route
        status = entry["status"]
        duration = round((time.perf_counter() - started) * 1000, 3)
        fields = {
            "method": scope["method"],
            "route": pattern,
            "status": status,
            "duration_ms": duration,
            "role": entry.get("role"),
            "outcome": entry.get("outcome"),
            "codes": entry.get("codes", []),
            "client": network(_address(scope), *self.prefixes),
        }
        level = logging.ERROR if status >= 500 else logging.INFO
        token = REQUEST_ID.set(entry["request_id"])
        try:
            message = "%s %s %d %.1f ms"
            access_log.log(level, message, scope["method"], pattern or "-", status, duration, extra={"fields": fields})
        finally:
            REQUEST_ID.reset(token)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/graphql":
            await self.post(scope, receive, send)
        else:
            assert self.app is not None
            await self.app(scope, receive, send)

    async def post(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = Exchange.begin(scope["headers"], scope.get("client"))
        token = REQUEST_ID.set(exchange.request_id)
        try:
            reply = await self.read_post(receive, exchange)
        except Exception:
            reply = self.failed(exchange)
        finally:
            REQUEST_ID.reset(token)
        reply = await self.finish(exchange, reply)
        if exchange.codes == _GONE:  # the client hung up: there is no one to answer
            return
        headers = [*reply.wire_headers(), (b"x-request-id", exchange.request_id.encode("latin-1"))]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def get(self, request: Request) -> Response:
        if "query" not in request.query_params and "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(self.pages.graphiql)  # GraphiQL: a page, not a request for data
        exchange = Exchange.begin(request.scope["headers"], request.scope.get("client"))
        token = REQUEST_ID.set(exchange.request_id)
        try:
            if not _SENT.intersection(request.query_params):
                reply = self.refuse(exchange, "send a query: POST application/json, or GET ?query=...")
            else:
                reply = await self.answer(exchange, dict(request.query_params))
        except Exception:
            reply = self.failed(exchange)
        finally:
            REQUEST_ID.reset(token)
        reply = await self.finish(exchange, reply)
        response = _response(reply)
        response.headers["X-Request-Id"] = exchange.request_id
        return response

    def failed(self, exchange: Exchange) -> Reply:
        """The reply to a request that failed unexpectedly (called in its ``except``): logged,
        answered 500, never shown."""
        # where it failed, not the exception's message: it may quote a stored value
        error = sys.exception()
        log.error("request failed: %s", trace_without_messages(error) if error is not None else "no exception")
        exchange.outcome, exchange.codes = "error", ["INTERNAL"]
        body = {"errors": [{"message": "internal error", "extensions": {"code": "INTERNAL"}}]}
        return _json(body, 500, exchange.media_type)

    async def finish(self, exchange: Exchange, reply: Reply) -> Reply:
        """The request's one audit record and its metrics; the reply to send once the record is
        written (and flushed). A record that cannot be written refuses the request instead:
        503 ``AUDIT_UNAVAILABLE``, since no answer leaves unrecorded; one that cannot be taken at
        all (it cannot be sealed, or the trail is closed) makes it a 500."""
        audit = self.gateway.audit
        if audit is not None:
            try:
                # a template holds no caller's id: a request that sends one is recorded whole
                if exchange.template is None or exchange.client_request_id is not None:
                    batch = audit.write(_record(exchange, reply.status, self.engine_name))
                else:
                    took = round((time.perf_counter() - exchange.started) * 1000, 3)
                    filled = Filled(exchange.template, time.time(), exchange.request_id, exchange.purpose, took)
                    batch = audit.write(filled)
                await batch.written()
            except AuditUnavailable as error:
                log.error("request %s refused: %s", exchange.request_id, error.detail)
                self.metrics.count_audit_refusal()
                exchange.outcome, exchange.codes = "error", [error.code]
                body = {"errors": [{"message": error.message, "extensions": {"code": error.code}}]}
                reply = _json(body, 503, exchange.media_type)
                reply.headers.append((b"retry-after", b"1"))
            except Exception:
                log.exception("the audit record of request %s could not be written", exchange.request_id)
                reply = self.failed(exchange)
        self.metrics.count_request(exchange.outcome, time.perf_counter() - exchange.started)
        entry = ACCESS.get()
        if entry is not None:
            refused = exchange.outcome == "unauthenticated"  # a refused token is no role's
            entry["role"] = None if refused else role_of(self.gateway.policies, exchange.identity)
            entry["outcome"], entry["codes"] = exchange.outcome, exchange.codes
        return reply

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
        except AuthError as error:
            exchange.outcome = {401: "unauthenticated", 403: "forbidden"}.get(error.status, "error")
            exchange.codes = [error.code]
            if error.subject is not None:  # the record names who asked for which role
                exchange.identity = Identity(
                    recorded(exchange.headers.get("x-citygate-role")) or "", subject=error.subject
                )
            reply = _json(
                {"errors": [{"message": error.message, "extensions": {"code": error.code}}]},
                error.status,
                exchange.media_type,
            )
            if error.status == 401:
                reply.headers.append((b"www-authenticate", b"Bearer"))
            return (self.failed_attempt(exchange) if error.status in (401, 403) else None) or reply

    def refuse(self, exchange: Exchange, message: str, status: int = 400, code: str = "BAD_REQUEST") -> Reply:
        exchange.outcome = "bad_request"
        exchange.codes = [code]
        return _bad_request(message, exchange.media_type, status)

    def deny(self, exchange: Exchange, status: int, message: str, code: str, **extensions: Any) -> Reply:
        """A well-formed request the gateway will not run (outcome ``refused``)."""
        exchange.outcome, exchange.codes = "refused", [code]
        exchange.result = exchange.template = None  # a hot request's answer is not what it got
        body = {"errors": [{"message": message, "extensions": {"code": code, **extensions}}]}
        return _json(body, status, exchange.media_type)

    def network_of(self, client: str | None) -> str:
        """The network an anonymous caller at ``client`` is counted by (``limits.ipv4_prefix``,
        ``limits.ipv6_prefix``)."""
        return network(client, *self.prefixes)

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
        subject = _caller(identity, self.network_of(exchange.client))
        try:
            if self.limiter.state.remote:
                wait = await run_in_threadpool(self.limiter.take, subject, per_minute)
            else:
                wait = self.limiter.take(subject, per_minute)
        except StateUnavailable as error:  # fail closed: no limit known, no request run
            log.error("request %s refused: %s", exchange.request_id, error.detail)
            reply = self.deny(exchange, 503, error.message, error.code)
            reply.headers.append((b"retry-after", b"1"))
            return reply
        if wait is None:
            return None
        who = f"role {role}" if role else "this gateway"
        return self.too_many(exchange, wait, f"{who} allows {per_minute} a minute")

    def too_many(self, exchange: Exchange, wait: float, why: str) -> Reply:
        seconds = max(1, math.ceil(wait))
        message = f"too many requests: {why}; try again in {seconds} s"
        reply = self.deny(exchange, 429, message, "RATE_LIMITED", retryAfter=seconds)
        reply.headers.append((b"retry-after", b"%d" % seconds))
        return reply

    def attempt_failed(self, client: str | None) -> float | None:
        """Count a refused token or admin guess from ``client`` against its network's anonymous
        allowance (a caller whose token fails is anonymous): None while it is within it, else the
        seconds its network is now refused for, before any token it sends is checked. So
        guessing costs the guesser, and a flood of bad tokens costs neither the verifier nor
        the trail more than the anonymous limit allows."""
        per_minute = self.gateway.limits("anonymous").requests_per_minute
        net = self.network_of(client)
        try:
            wait = self.limiter.take(f"network:{net}", per_minute)
        except StateUnavailable as error:  # fail closed: a guess not counted is not let through
            log.error("a refused token from %s was not counted: %s", net, error.detail)
            return 1.0
        if wait is not None:
            self.blocked[net] = self._now() + wait
        return wait

    def blocked_for(self, client: str | None) -> float | None:
        """The seconds ``client``'s network is still refused for (:meth:`attempt_failed`)."""
        until = self.blocked.get(self.network_of(client))
        wait = until - self._now() if until is not None else 0.0
        return wait if wait > 0 else None

    def refused_network(self, exchange: Exchange) -> Reply | None:
        wait = self.blocked_for(exchange.client)
        if wait is None:
            return None
        return self.too_many(exchange, wait, _GUESSES)

    def failed_attempt(self, exchange: Exchange) -> Reply | None:
        wait = self.attempt_failed(exchange.client)
        if wait is None:
            return None
        return self.too_many(exchange, wait, _GUESSES)

    def refresh_documents(self) -> None:
        """Read the trusted documents again if their manifest changed. Hot replies go with the
        old ones: one of them may answer a document no longer registered."""
        if self.documents is None:
            return
        try:
            changed = self.documents.refresh()
        except CitygateError as error:
            log.error("the trusted documents were not read again, the old ones stay: %s", error.message)
            return
        if changed:
            self.hot.clear()

    def trust(self, exchange: Exchange) -> str | Reply:
        """The document to run: the query sent, or the registered one its hash names; or the
        refusal of a document that is not registered, where the caller's role runs only those."""
        self.refresh_documents()  # a GET comes here without passing read_post
        query, digest, documents = exchange.query, exchange.document, self.documents
        role = role_of(self.gateway.policies, exchange.identity)
        covered = documents is not None and documents.covers(role)
        if query is None:
            assert digest is not None
            found = documents.documents.get(digest) if documents is not None else None
            if found is not None:
                exchange.query = found
                return found
            if not covered:  # Apollo's clients send the document itself on this code
                status = 400 if exchange.media_type == GRAPHQL_RESPONSE else 200
                return self.deny(exchange, status, "no document is registered by this hash; send the query", _NOT_FOUND)
        elif digest is not None and document_hash(query) != digest:
            return self.refuse(exchange, "the query's SHA-256 is not the hash the request sends")
        if covered:
            assert documents is not None
            digest = digest or document_hash(query or "")
            if digest not in documents.documents:
                who = f"role {role}" if role else "this gateway"
                message = f"document sha256:{digest} is not registered, and {who} runs only registered documents"
                return self.deny(exchange, 403, message, "UNTRUSTED_DOCUMENT", documentId=f"sha256:{digest}")
        assert query is not None
        return query

    async def answer(self, exchange: Exchange, params: dict[str, Any]) -> Reply:
        parsed = _parameters(params)
        if isinstance(parsed, str):
            return self.refuse(exchange, parsed)
        exchange.query, exchange.document, variables, operation_name = parsed
        exchange.operation_name = operation_name
        identity = await self.authenticate(exchange)
        if isinstance(identity, Reply):
            return identity
        exchange.identity = identity
        limited = await self.throttle(exchange)
        if limited is not None:
            return limited
        query = self.trust(exchange)
        if isinstance(query, Reply):
            return query
        result = self.gateway.execute_cached(query, variables, operation_name, identity)
        if result is None:
            caller = _caller(identity, self.network_of(exchange.client))
            async with self.admission.hold(caller):  # a caller's requests wait behind its own
                token = CALLER.set(caller)
                try:
                    result = await run_in_threadpool(self.gateway.execute, query, variables, operation_name, identity)
                finally:
                    CALLER.reset(token)
        exchange.result = result
        exchange.outcome, exchange.codes = _outcome(result)
        # A malformed request (a mutation, an unknown operationName) is 400 on either media
        # type, as the parser's own refusals are; docs/errors.md says so and a test holds it.
        refused = result.request_error and (exchange.media_type == GRAPHQL_RESPONSE or "BAD_REQUEST" in exchange.codes)
        status = 400 if refused else 200
        return _json(result.body, status, exchange.media_type, result.encoded)

    async def read_post(self, receive: Receive, exchange: Exchange) -> Reply:
        length = exchange.headers.get("content-length") or "0"
        if not (length.isascii() and length.isdigit()):
            return self.refuse(exchange, "the Content-Length header is not a number")
        if int(length) > MAX_BODY:
            return self.refuse(exchange, "the request body is larger than 1 MiB", 413)
        content_type = exchange.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return self.refuse(exchange, "send the request as application/json", 415)
        raw = await self.read_body(receive, exchange)
        if isinstance(raw, Reply):
            return raw
        key = (raw, exchange.headers.get("authorization"), exchange.headers.get("x-citygate-role"), exchange.media_type)
        self.refresh_documents()
        ready = await self.hot_reply(key, exchange)
        if ready is not None:
            return ready
        reply = await self.answer_json(raw, exchange)
        self.remember(key, exchange, reply)
        return reply

    async def hot_reply(self, key: tuple[Any, ...], exchange: Exchange) -> Reply | None:
        """A repeated request's ready reply while it stands, or its refusal; None: answer it."""
        if self.blocked:  # a network refused for its bad tokens gets no hot reply either
            refused = self.refused_network(exchange)
            if refused is not None:
                return refused
        hot = self.hot.get(key)
        if hot is not None and self.still_hot(hot, exchange):
            return await self.throttle(exchange) or hot.reply
        return None

    async def answer_json(self, raw: bytes, exchange: Exchange) -> Reply:
        try:
            params = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self.refuse(exchange, "the request body is not valid JSON")
        if not isinstance(params, dict):
            return self.refuse(exchange, "the request body must be a JSON object with a `query`")
        return await self.answer(exchange, params)

    def still_hot(self, hot: Hot, exchange: Exchange) -> bool:
        """Whether ``hot`` is still this request's answer; if so, the exchange says so too."""
        identity = None
        if self.authenticator is not None:
            try:
                identity = self.authenticator.identify(
                    exchange.headers.get("authorization"), exchange.headers.get("x-citygate-role"), fetch=False
                )
            except (AuthError, FetchNeeded):
                return False  # the usual path refuses it with the reason, or fetches the keys
        if identity != hot.identity or self.gateway.policy_version != hot.version or self.gateway.files_changed():
            return False  # (policy files another worker was told to read again: read first)
        results = self.gateway.results
        for route, sql, released, rows in hot.rows:
            if results.get(route, sql, released) is not rows:
                return False
        self.metrics.count_cached(len(hot.rows))
        exchange.query, exchange.operation_name = hot.query, hot.operation_name
        exchange.identity, exchange.result = identity, hot.result
        exchange.outcome, exchange.codes = hot.outcome, hot.codes
        exchange.template = hot.template
        return True

    def remember(self, key: tuple[Any, ...], exchange: Exchange, reply: Reply) -> None:
        """Keep a reply made wholly of cached parts (a plan's memo) to send again."""
        result = exchange.result
        plan = result.plan if result is not None else None
        memo = self.gateway.memo_of(plan) if plan is not None else None
        if memo is None or memo.response is not result or len(key[0]) > HOT_BODY or len(reply.body) > MEMO_BYTES:
            self.hot.pop(key, None)
            return
        assert result is not None and plan is not None and exchange.query is not None
        if len(self.hot) >= HOT_ENTRIES:
            del self.hot[next(iter(self.hot))]  # the oldest
        template = None
        if self.gateway.audit is not None:
            template = Template.of({**_record(exchange, reply.status, self.engine_name), "client_request_id": None})
        self.hot[key] = Hot(
            identity=exchange.identity,
            version=plan.version,  # the policies it was answered under, whatever came since
            rows=self.gateway.memo_parts(plan),
            result=result,
            reply=reply,
            outcome=exchange.outcome,
            codes=exchange.codes,
            query=exchange.query,
            operation_name=exchange.operation_name,
            template=template,
        )

    async def read_body(self, receive: Receive, exchange: Exchange) -> bytes | Reply:
        """The whole request body, or the refusal of one too large or never sent."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return self.refuse(exchange, "the client hung up before its request arrived", 400, _GONE[0])
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                return self.refuse(exchange, "the request body is larger than 1 MiB", 413)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Whether this instance can serve: 200 while its engine answers, or any store runs its
        own statements (the delegated route), even with departments down (their root fields
        fail alone, the others answer), so a load balancer never takes every replica out for
        one department or for the engine; 503 when no route answers, or while the audit trail
        cannot be written (every request would be refused). The body names each department's
        state and each route's, and the trail's (``ok`` or ``unavailable``; the log says why), to
        the operator (the admin token); anyone else learns only the status, since the states name
        stores, their addresses and their errors."""
        health = await run_in_threadpool(self.gateway.health)
        audit = self.gateway.audit
        trail = "off" if audit is None else "ok" if audit.trouble() is None else "unavailable"
        serving = health.serving and trail != "unavailable"
        every = health.ok and all(state == "ok" for state in health.routes.values())
        status = "ready" if every and serving else "degraded" if serving else "unavailable"
        body: dict[str, Any] = {"status": status}
        if request.headers.get("authorization") and self.guard(self.gateway.config.admin, request, "admin") is None:
            body |= {
                "engine": health.engine,
                "audit": trail,
                "departments": health.departments,
                "routes": health.routes,
            }
        return JSONResponse(body, status_code=200 if serving else 503, headers={"Cache-Control": "no-store"})

    def guard(self, guard: TokenGuard, request: Request, what: str) -> Response | None:
        """None if ``request`` carries ``guard``'s token; else its refusal: 401, or 429 once its
        network's wrong guesses (:meth:`attempt_failed`) are past the anonymous limit. A network
        past it is refused before its token is even compared."""
        client = _address(request.scope)
        wait = self.blocked_for(client)
        if wait is None:
            if _guarded(guard, request):
                return None
            wait = self.attempt_failed(client)
            if wait is None:
                message = f"a valid {what} token is required"
                return _error(message, "UNAUTHENTICATED", 401, {"WWW-Authenticate": "Bearer"})
        seconds = max(1, math.ceil(wait))
        message = f"too many requests: {_GUESSES}; try again in {seconds} s"
        return _error(message, "RATE_LIMITED", 429, {"Retry-After": str(seconds)})

    async def prometheus(self, request: Request) -> Response:
        guard = self.gateway.config.metrics
        refusal = self.guard(guard, request, "scrape") if guard.token is not None else None
        if refusal is not None:
            return refusal
        await run_in_threadpool(self.gateway.health)  # the health gauges, at most HEALTH_SECONDS old
        return Response(self.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def admin(self, request: Request) -> Response:
        refusal = self.admin_refusal(request)
        if refusal is not None:
            return refusal
        action = request.path_params["action"]
        if action == "cache/clear":
            department = request.query_params.get("department") or None
            if department is not None and department not in self.gateway.config.departments:
                return _error(f"no department {department!r}", "BAD_REQUEST", 404)
            dropped = self.gateway.results.clear(department)
            log.info("admin: result cache cleared (%s): %d entries", department or "all departments", dropped)
            return JSONResponse({"cleared": dropped, "department": department})
        if action == "policies/reload":
            try:
                version = await run_in_threadpool(self.gateway.reload_policies)
            except CitygateError as error:
                log.error("admin: policy reload failed: %s", error.message)
                return _error(error.message, "BAD_CONFIG", 422)
            return JSONResponse({"policy_version": version})
        actions = "cache/clear, policies/reload"
        return _error(f"no admin action {action!r}; the actions are {actions}", "BAD_REQUEST", 404)

    # -- the console ---------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/console")

    async def console_page(self, request: Request) -> Response:
        return HTMLResponse(self.pages.console)

    async def console_file(self, request: Request) -> Response:
        """A pinned asset (its path names its version: kept for good) or one of the console's
        own files (revalidated, since they change with the gateway)."""
        path = request.url.path
        asset = self.assets.files.get(path)
        if asset is not None:
            cache = "public, max-age=31536000, immutable"
            return Response(asset.body, media_type=asset.media_type, headers={"cache-control": cache})
        found = self.pages.static.get(path)
        if found is None:
            return _error(f"no console file {path}", "BAD_REQUEST", 404)
        return Response(found[0], media_type=found[1], headers={"cache-control": "no-cache"})

    async def catalogue(self, request: Request) -> Response:
        """``GET /console/api/catalogue?search=&department=``: the catalogue as the caller's role
        sees it. Identified, limited and audited as a GraphQL request is."""
        exchange = Exchange.begin(request.scope["headers"], request.scope.get("client"))
        exchange.media_type = "application/json"
        search = request.query_params.get("search", "")[:200]
        department = request.query_params.get("department", "")[:200]
        exchange.console = {"operation": {"hash": None, "name": "console: catalogue"}, "search": recorded(search)}
        token = REQUEST_ID.set(exchange.request_id)
        try:
            identity = await self.authenticate(exchange)
            if isinstance(identity, Reply):
                reply = identity
            else:
                exchange.identity = identity
                limited = await self.throttle(exchange)
                if limited is not None:
                    reply = limited
                else:
                    reply = await run_in_threadpool(self.catalogue_reply, exchange, search, department)
        except Exception:
            reply = self.failed(exchange)
        finally:
            REQUEST_ID.reset(token)
        response = _response(await self.finish(exchange, reply))
        response.headers["X-Request-Id"] = exchange.request_id
        return response

    def catalogue_reply(self, exchange: Exchange, search: str, department: str) -> Reply:
        gateway = self.gateway
        view = gateway.view(exchange.identity)
        states, probed = self.probe.read()
        found = console_catalogue.entries(
            view,
            gateway.catalogue.tables,
            gateway.config,
            self.estimates,
            states,
            gateway.unavailable,
            search,
            department,
        )
        shown = [(d["name"], r["name"]) for d in found for r in d["resources"]]
        assert exchange.console is not None
        exchange.console["access"] = [{"department": d, "table": t, "access": "catalogue"} for d, t in shown]
        exchange.console["rows"] = {"catalogue": len(shown)}
        body = {"role": view.role, "probed": probed, "resources": len(shown), "departments": found}
        return _json(body, 200, "application/json")

    def admin_refusal(self, request: Request) -> Response | None:
        refusal = self.guard(self.gateway.config.admin, request, "admin")
        if refusal is None:
            entry = ACCESS.get()
            if entry is not None:
                entry["role"] = "admin"  # the operator's token, for the access log
        return refusal

    async def roles(self, request: Request) -> Response:
        """``GET /console/api/roles`` (admin): the roles, and the claims each one's policies read."""
        refusal = self.admin_refusal(request)
        if refusal is not None:
            return refusal
        policies = self.gateway.policies
        names = ["anonymous", *sorted(set(policies.roles) - {"anonymous"})] if policies is not None else []

        def claims(role: str) -> list[str]:
            return list(self.gateway.view(Identity(role)).claim_names)

        found = await run_in_threadpool(lambda: [{"name": n, "claims": claims(n)} for n in names])
        return JSONResponse({"roles": found, "policy_version": self.gateway.policy_version})

    async def view_as(self, request: Request) -> Response:
        """``POST /console/api/view-as`` (admin) with ``{role, claims, query, variables}``: the
        role's schema, decisions, SQL and answer. Audited: the record names the role and says
        the console's administrator asked (``subject: console-admin``)."""
        exchange = Exchange.begin(request.scope["headers"], request.scope.get("client"))
        exchange.media_type = "application/json"
        exchange.console = {"operation": {"hash": None, "name": "console: view as role"}}
        refusal = self.admin_refusal(request)
        if refusal is not None:
            limited = refusal.status_code == 429
            exchange.outcome = "refused" if limited else "unauthenticated"
            exchange.codes = ["RATE_LIMITED" if limited else "UNAUTHENTICATED"]
            await self.finish(exchange, Reply(refusal.status_code, b"", "application/json"))
            return refusal
        try:
            params = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            params = None
        asked = self.view_as_request(params)
        if isinstance(asked, str):
            reply = self.refuse(exchange, asked)
        else:
            role, claims, query, variables = asked
            exchange.identity = Identity(role, claims, subject="console-admin")
            exchange.query = query
            try:
                page, result = await run_in_threadpool(view_as, self.gateway, role, claims, query, variables)
            except Exception:
                reply = self.failed(exchange)
            else:
                if result is not None:
                    exchange.result = result
                    exchange.outcome, exchange.codes = _outcome(result)
                    exchange.console = None  # the record is the query's own, as for /graphql
                reply = _json(page, 200, "application/json")
        return _response(await self.finish(exchange, reply))

    def view_as_request(self, params: Any) -> tuple[str, dict[str, str], str | None, dict[str, Any] | None] | str:
        """The role, claims, query and variables a view-as request asks for; or what is wrong."""
        if not isinstance(params, dict):
            return "send a JSON object with `role`, and optionally `claims`, `query` and `variables`"
        policies = self.gateway.policies
        role = params.get("role")
        known = {"anonymous", *policies.roles} if policies is not None else set()
        if not isinstance(role, str) or role not in known:
            return f"`role` must be one of {', '.join(sorted(known)) or '(no policies are configured)'}"
        claims = params.get("claims") or {}
        if not isinstance(claims, dict) or not all(isinstance(v, str) for v in claims.values()):
            return "`claims` must be an object of strings"
        query = params.get("query") or None
        if query is not None and not isinstance(query, str):
            return "`query` must be a string"
        variables = params.get("variables") or None
        if variables is not None and not isinstance(variables, dict):
            return "`variables` must be an object"
        return role, {str(k): v for k, v in claims.items()}, query, variables


def create_app(gateway: Gateway, example: str = "", demo: DemoPage | None = None) -> Edge:
    """The ASGI application over ``gateway``; ``example``: the query GraphiQL opens with;
    ``demo``: the demo roles' tokens and examples its pages offer (`citygate demo` only)."""
    edge = Edge(gateway, example=example, demo=demo)
    routes = [
        Route("/", edge.home, methods=["GET"]),
        Route("/console", edge.console_page, methods=["GET"]),
        Route("/console/assets/{path:path}", edge.console_file, methods=["GET"]),
        Route("/console/static/{path:path}", edge.console_file, methods=["GET"]),
        Route("/console/api/catalogue", edge.catalogue, methods=["GET"]),
        Route("/console/api/roles", edge.roles, methods=["GET"]),
        Route("/console/api/view-as", edge.view_as, methods=["POST"]),
        Route("/graphql", edge.get, methods=["GET"]),  # POST is the edge's own (Edge.post)
        Route("/healthz", edge.healthz, methods=["GET"]),
        Route("/readyz", edge.readyz, methods=["GET"]),
        Route("/metrics", edge.prometheus, methods=["GET"]),
        Route("/admin/{action:path}", edge.admin, methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # uvicorn ends a SIGTERM'd process by raising the signal again once it has shut down,
        # so code after `uvicorn.run` may never run: the trail is written here, at shutdown.
        await run_in_threadpool(gateway.flush)

    edge.app = Starlette(routes=routes, lifespan=lifespan)
    return edge
