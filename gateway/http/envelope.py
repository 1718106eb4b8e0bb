"""The request envelope: what every audited request gets, whichever handler answers it.

Every GraphQL request (``POST`` and ``GET /graphql``) and every console request that reads
data (the catalogue, view as role) goes through :meth:`Envelope.serve` once: it carries the
gateway's own request id into the logs (:data:`gateway.observe.logs.REQUEST_ID`), turns an
unexpected failure into a 500 that shows nothing (:meth:`Envelope.failed`), writes the request's
one audit record before the answer leaves, counts it in the metrics and tells the access log
how it went. A handler only answers: it takes the :class:`Exchange` and returns a
:class:`Reply`, noting on the exchange what the record must say.

Every HTTP request, audited or not, leaves one access log line (:func:`log_access`) and
carries ``X-Request-Id``; the edge's ASGI entry (:class:`gateway.http.app.Edge`) keeps its
:data:`ACCESS` entry.

>>> error("no such department", "BAD_REQUEST", 404).body
b'{"errors":[{"message":"no such department","extensions":{"code":"BAD_REQUEST"}}]}'
"""

from __future__ import annotations

import contextvars
import functools
import ipaddress
import itertools
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.responses import Response
from starlette.routing import Mount
from starlette.types import Scope

from catalogue.errors import trace_without_messages
from gateway.execution import plans
from gateway.execution.gateway import Gateway
from gateway.execution.plans import encode
from gateway.execution.views import role_of
from gateway.http.floods import Floods
from gateway.identity.caller import Identity
from gateway.observe.audit import AuditUnavailable, Filled, Template, recorded
from gateway.observe.audit import record as audit_record
from gateway.observe.logs import REQUEST_ID

log = logging.getLogger("citygate.http")
access_log = logging.getLogger("citygate.access")

GRAPHQL_RESPONSE = "application/graphql-response+json"
_MEDIA = {GRAPHQL_RESPONSE: GRAPHQL_RESPONSE.encode(), "application/json": b"application/json"}
# Our own request ids: random per process, then counted (uuid4 per request costs a syscall).
_ID_PREFIX = os.urandom(6).hex()
_ids = itertools.count(1)
# The access log's entry of the request being served: its id, then what the handler learns
# (role, outcome, codes). Set by Edge.__call__ for every HTTP request, read when it is answered.
ACCESS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("citygate_access", default=None)
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


def new_id() -> str:
    """A request id of this gateway: unique in the process, unguessable across processes."""
    return f"{_ID_PREFIX}-{next(_ids):x}"


def _request_id() -> str:
    """The id of the request being served (its access log entry's), or a new one."""
    entry = ACCESS.get()
    return str(entry["request_id"]) if entry is not None else new_id()


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


def address(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


@dataclass(slots=True)
class Reply:
    """What the edge answers a request with, before it is put on the wire."""

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


def reply_json(body: Any, status: int, media_type: str, encoded: bytes | None = None) -> Reply:
    return Reply(status, encoded if encoded is not None else encode(body), media_type)


def error(message: str, code: str, status: int, media_type: str = "application/json", **extensions: Any) -> Reply:
    """The one shape of every refusal and failure the edge answers (GraphQL's errors list)."""
    body = {"errors": [{"message": message, "extensions": {"code": code, **extensions}}]}
    return reply_json(body, status, media_type)


def response(reply: Reply) -> Response:
    """A reply as starlette sends it (the routes other than POST /graphql)."""
    made = Response(reply.body, status_code=reply.status, media_type=reply.media_type)
    for name, value in reply.headers:
        made.headers[name.decode("latin-1")] = value.decode("latin-1")
    return made


@dataclass(slots=True)
class Exchange:
    """One audited request on its way through the edge: what its audit record will say."""

    request_id: str  # the gateway's own: the response's, the log lines' and the record's
    client_request_id: str | None  # the caller's X-Request-Id, as the record keeps it
    started: float
    headers: dict[str, str]
    media_type: str
    purpose: str | None
    # the client's address (the one trusted proxies name, else the one that connects): who an
    # anonymous caller is, for the limits
    client: str | None = None
    query: str | None = None
    document: str | None = None  # the hash the request named its document by, if it did
    operation_name: str | None = None
    identity: Identity | None = None
    result: plans.Response | None = None
    outcome: str = "ok"
    codes: list[str] = field(default_factory=list)
    template: Template | None = None  # a hot request's audit record, but for its own values
    console: dict[str, Any] | None = None  # a console request's own parts of its record (what it read)
    throttled: str | None = None  # the network a refusal of the throttle before identity counts for

    @classmethod
    def begin(cls, scope: Scope, media_type: str | None = None, console: dict[str, Any] | None = None) -> Exchange:
        """The exchange of the request ``scope`` is; ``media_type``: its answer's, whatever
        it accepts (the console's are JSON); ``console``: its record's own parts."""
        headers: dict[str, str] = {}  # the headers the edge reads, decoded once (the first of repeated ones)
        for raw_name, raw_value in scope["headers"]:
            name = _READ.get(raw_name)
            if name is not None and name not in headers:
                headers[name] = raw_value.decode("utf-8", "replace")  # a purpose may be 案件调查
        client = scope.get("client")
        if media_type is None:
            media_type = GRAPHQL_RESPONSE if GRAPHQL_RESPONSE in headers.get("accept", "") else "application/json"
        return cls(
            request_id=_request_id(),
            client_request_id=recorded(headers.get("x-request-id")),
            started=time.perf_counter(),
            headers=headers,
            media_type=media_type,
            purpose=recorded(headers.get("x-citygate-purpose")),
            client=client[0] if client else None,
            console=console,
        )


def refuse(exchange: Exchange, message: str, status: int = 400, code: str = "BAD_REQUEST") -> Reply:
    """A malformed request (outcome ``bad_request``)."""
    exchange.outcome = "bad_request"
    exchange.codes = [code]
    return error(message, code, status, exchange.media_type)


def deny(exchange: Exchange, status: int, message: str, code: str, **extensions: Any) -> Reply:
    """A well-formed request the gateway will not run (outcome ``refused``)."""
    exchange.outcome, exchange.codes = "refused", [code]
    exchange.result = exchange.template = None  # a hot request's answer is not what it got
    return error(message, code, status, exchange.media_type, **extensions)


def outcome(result: plans.Response) -> tuple[str, list[str]]:
    """How an executed request went, and its error codes, for the trail and the metrics."""
    errors = result.body.get("errors")
    if not errors:
        return ("refused" if result.request_error else "ok"), []
    codes = sorted({str(e.get("extensions", {}).get("code", "INTERNAL")) for e in errors})
    if result.request_error:
        return "refused", codes
    data = result.body.get("data") or {}
    return ("partial" if any(v is not None for v in data.values()) else "error"), codes


def record(exchange: Exchange, status: int, engine: str) -> dict[str, Any]:
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


Given = TypeVar("Given")


class Envelope:
    """Serves audited requests over one gateway (:meth:`serve`)."""

    def __init__(self, gateway: Gateway, floods: Floods) -> None:
        self.gateway = gateway
        self.metrics = gateway.metrics
        self.engine_name = gateway.engine.name
        self.floods = floods  # the throttle's refusals before identity: one record per network and window

    async def serve(
        self, exchange: Exchange, handler: Callable[[Exchange, Given], Awaitable[Reply]], given: Given
    ) -> Reply:
        """``handler(exchange, given)``'s reply once the request's one audit record is written
        (and flushed), counted in the metrics and the access log. A record that cannot be
        written refuses the request instead: 503 ``AUDIT_UNAVAILABLE``, since no answer leaves
        unrecorded; one that cannot be taken at all (it cannot be sealed, or the trail is
        closed) makes it a 500. (One coroutine: this is every GraphQL request's path.)"""
        token = REQUEST_ID.set(exchange.request_id)
        try:
            reply = await handler(exchange, given)
        except Exception:
            reply = self.failed(exchange)
        finally:
            REQUEST_ID.reset(token)
        audit = self.gateway.audit
        counted = self.floods.due() if audit is not None else []
        if audit is not None and exchange.throttled is not None:
            before = self.floods.refused(exchange.throttled)
            if before is None:  # counted in its network's `throttled` record (gateway/http/floods.py)
                audit = None
                self.metrics.count_unrecorded()
            else:
                counted += before
        if audit is not None:
            try:
                for summary in counted:  # sealed before this record: they go with its write
                    audit.write(summary)
                # a template holds no caller's id: a request that sends one is recorded whole
                if exchange.template is None or exchange.client_request_id is not None:
                    batch = audit.write(record(exchange, reply.status, self.engine_name))
                else:
                    took = round((time.perf_counter() - exchange.started) * 1000, 3)
                    filled = Filled(exchange.template, time.time(), exchange.request_id, exchange.purpose, took)
                    batch = audit.write(filled)
                await batch.written()
            except AuditUnavailable as unavailable:
                log.error("request %s refused: %s", exchange.request_id, unavailable.detail)
                self.metrics.count_audit_refusal()
                exchange.outcome, exchange.codes = "error", [unavailable.code]
                reply = error(unavailable.message, unavailable.code, 503, exchange.media_type)
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

    def close(self) -> None:
        """At shutdown: record the count of each flood's refusals not yet recorded."""
        audit = self.gateway.audit
        if audit is None:
            return
        for counted in self.floods.rest():
            try:
                audit.write(counted)
            except Exception as failure:  # the metric still holds the count
                log.error("a count of unrecorded refusals was not written: %s", failure)

    def failed(self, exchange: Exchange) -> Reply:
        """The reply to a request that failed unexpectedly (called in its ``except``): logged,
        answered 500, never shown."""
        # where it failed, not the exception's message: it may quote a stored value
        exception = sys.exception()
        log.error("request failed: %s", trace_without_messages(exception) if exception is not None else "no exception")
        exchange.outcome, exchange.codes = "error", ["INTERNAL"]
        return error("internal error", "INTERNAL", 500, exchange.media_type)


def log_access(scope: Scope, entry: dict[str, Any], started: float, prefixes: tuple[int, int]) -> None:
    """The request's access log line: who (role, network), what (method, route), how it went
    (status, outcome, codes) and how long it took. No query, variable, header value or token:
    the route is the path's pattern, never the path a caller wrote."""
    route = scope.get("route")
    pattern = None if route is None or isinstance(route, Mount) else getattr(route, "path", None)
    if pattern is not None:  # a mounted application's route: its pattern under the mount
        root = scope.get("root_path", "")
        pattern = root[len(scope.get("app_root_path", root)) :] + pattern
    elif scope["path"] == "/graphql":
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
        "client": network(address(scope), *prefixes),
    }
    level = logging.ERROR if status >= 500 else logging.INFO
    token = REQUEST_ID.set(entry["request_id"])
    try:
        message = "%s %s %d %.1f ms"
        access_log.log(level, message, scope["method"], pattern or "-", status, duration, extra={"fields": fields})
    finally:
        REQUEST_ID.reset(token)
