"""The HTTP edge: GraphQL over HTTP on ``/graphql``, GraphiQL for browsers, and, mounted beside
it, the operator's endpoints (:mod:`gateway.http.admin`: health, readiness, Prometheus
``/metrics``, ``/admin``) and the console (:mod:`gateway.http.console`).

Statuses follow the GraphQL-over-HTTP specification: with ``application/graphql-response+json``
a request that cannot be executed (parse, validation, variables) is 400 and anything executed
is 200; with the legacy ``application/json`` every well-formed request is 200. A malformed
request (bad JSON, no query, a mutation, an unknown operationName) is 400 either way. No
response carries SQL or a stack trace.

Two refusals come before a document is parsed. A caller over its requests per minute
(``limits``, :mod:`gateway.http.gate`) is answered 429 with ``Retry-After``. Where trusted
documents are configured, a document not registered is refused (403, ``UNTRUSTED_DOCUMENT``, its
hash in the message) for the roles they cover; any caller may send a registered document by its
hash alone.

Every GraphQL request, answered or refused at any step, leaves exactly one audit record
(:mod:`gateway.http.envelope`), but for a flood the throttle refuses before anyone is known,
which is counted (:mod:`gateway.http.floods`); and every response and log line names the gateway's own request
id (``X-Request-Id``), unique, as the record's ``request_id`` is. A caller's own
``X-Request-Id``, which any caller may reuse, is recorded beside it (``client_request_id``),
never instead of it. A repeated request whose plan and rows are cached is answered on the event
loop itself, without a hop to a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from catalogue.errors import CitygateError
from gateway.config import LimitsConfig
from gateway.console.pages import DemoPage
from gateway.execution import plans
from gateway.execution.fairness import CALLER, Admission
from gateway.execution.gateway import Gateway
from gateway.execution.plans import MEMO_BYTES
from gateway.execution.views import role_of
from gateway.graphql.documents import TrustedDocuments, document_hash
from gateway.http.admin import Operator
from gateway.http.console import Console
from gateway.http.envelope import (
    ACCESS,
    GRAPHQL_RESPONSE,
    Envelope,
    Exchange,
    Reply,
    deny,
    log_access,
    new_id,
    outcome,
    record,
    refuse,
    reply_json,
    response,
)
from gateway.http.floods import Floods
from gateway.http.gate import Gate, caller, forwarded
from gateway.http.params import parameters
from gateway.http.ratelimit import Limiter
from gateway.http.wire import OneWriteProtocol, protocol
from gateway.identity.caller import Identity
from gateway.identity.tokens import AuthError, FetchNeeded
from gateway.observe.audit import Template

__all__ = ["GRAPHQL_RESPONSE", "MAX_BODY", "SERVER_OPTIONS", "Edge", "create_app", "server_options"]

log = logging.getLogger("citygate.http")
access_log = logging.getLogger("citygate.access")

MAX_BODY = 1 << 20  # 1 MiB: far above any real query, far below what could hurt the server
# Operator endpoints: no browser application on another origin may call them, whatever `cors` says.
_NO_CORS = ("/admin/", "/console/api/view-as", "/console/api/roles", "/metrics")

# How uvicorn serves the edge. The edge writes its own access log (`citygate.access`: with the
# request id, role and outcome, which uvicorn's cannot know); uvicorn rewrites no X-Forwarded-*
# (by default it would believe any process on the gateway's own machine): the edge takes the
# client from them only behind the proxies `server.trusted_proxies` names, a layer only there
# (gateway.http.gate.forwarded), in every worker process alike; and the server need not name
# itself.
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
_SENT = {"query", "documentId", "extensions"}  # what names a GET request's document
_NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"  # Apollo's code: its clients then send the document
_CALLER_HEADERS = ("x-citygate-purpose", "x-citygate-role", "x-request-id")  # a client's own, beside HTTP's


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


class Edge:
    """The request handlers over one gateway, and the ASGI application in front of them.

    ``POST /graphql``, nearly every request, is served here in plain ASGI: a cached answer
    is a dictionary lookup and two ``send`` calls, and a framework's routing, middleware and
    request and response objects would cost more than that. Everything else (GraphiQL and
    ``GET /graphql``, the console, health, metrics, admin, the lifespan) goes to a starlette
    application.
    """

    def __init__(
        self, gateway: Gateway, app: Starlette | None = None, example: str = "", demo: DemoPage | None = None
    ) -> None:
        self.gateway = gateway
        self.metrics = gateway.metrics
        self.engine_name = gateway.engine.name
        self.app = app
        # The edge's composition: each part gets the settings it reads, none the whole Config.
        config = gateway.config
        limits = config.limits
        self.gate = Gate(gateway, config.auth, config.admin, (limits.ipv4_prefix, limits.ipv6_prefix))
        self.envelope = Envelope(gateway, Floods(self.gate.now))
        # the gate's, read here on the hot path without a hop
        self.authenticator, self.blocked = self.gate.authenticator, self.gate.blocked
        # Hot requests, by (body, Authorization, X-Citygate-Role, media type); the event loop's
        # own, in insertion order (the oldest goes first).
        self.hot: dict[tuple[Any, ...], Hot] = {}
        concurrency = limits.concurrency
        self.admission = Admission(concurrency.requests_per_caller, parallelism=len(os.sched_getaffinity(0)))
        trusted = config.trusted_documents
        self.documents = TrustedDocuments(trusted) if trusted is not None else None
        self.read = self.read_post  # POST's handler, bound once: no method object per request
        self.console = Console(gateway, self.envelope, self.gate, concurrency.console_estimates, example, demo)
        self.operator = Operator(gateway, self.gate, config.metrics)
        # CORS only where configured, and never on the operator's endpoints: otherwise no header
        # says another origin may call
        cors = config.cors
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
        # Behind trusted proxies, the client they name is the caller's address for everything
        # after (gate, envelope, access log); without any, no layer at all.
        proxies = config.server.trusted_proxies
        self.front, self.operated = forwarded(self.front, proxies), forwarded(self.dispatch, proxies)

    @property
    def limiter(self) -> Limiter:
        """The requests per minute of every caller (:class:`gateway.http.gate.Gate`'s)."""
        return self.gate.limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every request, with its access log line once it is answered (or its client is gone)
        and its request id (:data:`gateway.http.envelope.ACCESS`) in ``X-Request-Id``."""
        if scope["type"] != "http":
            await self.front(scope, receive, send)
            return
        started = time.perf_counter()
        entry: dict[str, Any] = {"request_id": new_id(), "status": 499}  # nginx's: the client hung up
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
            front = self.operated if path.startswith(_NO_CORS) else self.front
            await front(scope, receive, sending)
        finally:
            ACCESS.reset(token)
            if access_log.isEnabledFor(logging.INFO):
                log_access(scope, entry, started, self.gate.prefixes)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/graphql":
            await self.post(scope, receive, send)
        else:
            assert self.app is not None
            await self.app(scope, receive, send)

    async def post(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = Exchange.begin(scope)
        reply = await self.envelope.serve(exchange, self.read, receive)
        if exchange.codes == _GONE:  # the client hung up: there is no one to answer
            return
        headers = [*reply.wire_headers(), (b"x-request-id", exchange.request_id.encode("latin-1"))]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def get(self, request: Request) -> Response:
        if "query" not in request.query_params and "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(self.console.pages.graphiql)  # GraphiQL: a page, not a request for data
        exchange = Exchange.begin(request.scope)
        return response(await self.envelope.serve(exchange, self.answer_get, request))

    async def answer_get(self, exchange: Exchange, request: Request) -> Reply:
        if not _SENT.intersection(request.query_params):
            return refuse(exchange, "send a query: POST application/json, or GET ?query=...")
        return await self.answer(exchange, dict(request.query_params))

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
                return deny(exchange, status, "no document is registered by this hash; send the query", _NOT_FOUND)
        elif digest is not None and document_hash(query) != digest:
            return refuse(exchange, "the query's SHA-256 is not the hash the request sends")
        if covered:
            assert documents is not None
            digest = digest or document_hash(query or "")
            if digest not in documents.documents:
                who = f"role {role}" if role else "this gateway"
                message = f"document sha256:{digest} is not registered, and {who} runs only registered documents"
                return deny(exchange, 403, message, "UNTRUSTED_DOCUMENT", documentId=f"sha256:{digest}")
        assert query is not None
        return query

    async def answer(self, exchange: Exchange, params: dict[str, Any]) -> Reply:
        parsed = parameters(params)
        if isinstance(parsed, str):
            return refuse(exchange, parsed)
        exchange.query, exchange.document, variables, operation_name = parsed
        exchange.operation_name = operation_name
        refusal = await self.gate.admit(exchange)
        if refusal is not None:
            return refusal
        identity = exchange.identity
        query = self.trust(exchange)
        if isinstance(query, Reply):
            return query
        result = self.gateway.execute_cached(query, variables, operation_name, identity)
        if result is None:
            who = caller(identity, self.gate.network_of(exchange.client))
            async with self.admission.hold(who):  # a caller's requests wait behind its own
                token = CALLER.set(who)
                try:
                    result = await run_in_threadpool(self.gateway.execute, query, variables, operation_name, identity)
                finally:
                    CALLER.reset(token)
        exchange.result = result
        exchange.outcome, exchange.codes = outcome(result)
        # A malformed request (a mutation, an unknown operationName) is 400 on either media
        # type, as the parser's own refusals are; docs/errors.md says so and a test holds it.
        refused = result.request_error and (exchange.media_type == GRAPHQL_RESPONSE or "BAD_REQUEST" in exchange.codes)
        status = 400 if refused else 200
        return reply_json(result.body, status, exchange.media_type, result.encoded)

    async def read_post(self, exchange: Exchange, receive: Receive) -> Reply:
        length = exchange.headers.get("content-length") or "0"
        if not (length.isascii() and length.isdigit()):
            return refuse(exchange, "the Content-Length header is not a number")
        if int(length) > MAX_BODY:
            return refuse(exchange, "the request body is larger than 1 MiB", 413)
        content_type = exchange.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return refuse(exchange, "send the request as application/json", 415)
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
            refused = self.gate.refused_network(exchange)
            if refused is not None:
                return refused
        hot = self.hot.get(key)
        if hot is not None and self.still_hot(hot, exchange):
            return await self.gate.throttle(exchange) or hot.reply
        return None

    async def answer_json(self, raw: bytes, exchange: Exchange) -> Reply:
        try:
            params = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return refuse(exchange, "the request body is not valid JSON")
        if not isinstance(params, dict):
            return refuse(exchange, "the request body must be a JSON object with a `query`")
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
            template = Template.of({**record(exchange, reply.status, self.engine_name), "client_request_id": None})
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
                return refuse(exchange, "the client hung up before its request arrived", 400, _GONE[0])
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                return refuse(exchange, "the request body is larger than 1 MiB", 413)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def create_app(gateway: Gateway, example: str = "", demo: DemoPage | None = None) -> Edge:
    """The ASGI application over ``gateway``; ``example``: the query GraphiQL opens with;
    ``demo``: the demo roles' tokens and examples its pages offer (`citygate demo` only)."""
    edge = Edge(gateway, example=example, demo=demo)
    routes = [
        *edge.console.routes(),
        Route("/graphql", edge.get, methods=["GET"]),  # POST is the edge's own (Edge.post)
        *edge.operator.routes(),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # uvicorn ends a SIGTERM'd process by raising the signal again once it has shut down,
        # so code after `uvicorn.run` may never run: the trail is written here, at shutdown,
        # with the count of each flood's refusals not yet recorded (gateway/http/floods.py).
        edge.envelope.close()
        await run_in_threadpool(gateway.flush)

    edge.app = Starlette(routes=routes, lifespan=lifespan)
    return edge
