"""The HTTP edge: GraphQL over HTTP on ``/graphql``, GraphiQL for browsers, health, readiness,
Prometheus ``/metrics`` and the operator's ``/admin`` endpoints.

Statuses follow the GraphQL-over-HTTP specification: with ``application/graphql-response+json``
a request that cannot be executed (parse, validation, variables) is 400 and anything executed
is 200; with the legacy ``application/json`` every well-formed request is 200. A malformed HTTP
request (bad JSON, no query) is 400 either way. No response carries SQL or a stack trace.

Every GraphQL request, answered or refused at any step, leaves exactly one audit record, and
every response names its request id (``X-Request-Id``, the caller's own when it sends a sane
one). A repeated request whose plan and rows are cached is answered on the event loop itself,
without a hop to a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from strawberry.http.ides import get_graphql_ide_html

from gateway.config import TokenGuard
from gateway.errors import CitygateError
from gateway.execute import Gateway, Identity, Plan, encode
from gateway.execute import Response as Result
from gateway.identity import Authenticator, AuthError
from gateway.logs import REQUEST_ID

log = logging.getLogger("citygate.http")

GRAPHQL_RESPONSE = "application/graphql-response+json"
MAX_BODY = 1 << 20  # 1 MiB: far above any real query, far below what could hurt the server
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # a caller's request id we may echo and log
# Our own request ids: random per process, then counted (uuid4 per request costs a syscall).
_ID_PREFIX = os.urandom(6).hex()
_ids = itertools.count(1)


def _json(body: Any, status: int, media_type: str, encoded: bytes | None = None) -> Response:
    return Response(encoded if encoded is not None else encode(body), status_code=status, media_type=media_type)


def _bad_request(message: str, media_type: str, status: int = 400) -> Response:
    return _json({"errors": [{"message": message, "extensions": {"code": "BAD_REQUEST"}}]}, status, media_type)


def _parameters(params: dict[str, Any]) -> tuple[str, dict[str, Any] | None, str | None] | str:
    """The request's query, variables and operation name, or what is wrong with them."""
    query = params.get("query")
    if not isinstance(query, str) or not query.strip():
        return "the request has no `query` string"
    variables = params.get("variables")
    if isinstance(variables, str) and variables:
        try:
            variables = json.loads(variables)
        except ValueError:
            return "`variables` is not valid JSON"
    if variables is not None and not isinstance(variables, dict):
        return "`variables` must be an object"
    operation_name = params.get("operationName")
    if operation_name is not None and not isinstance(operation_name, str):
        return "`operationName` must be a string"
    return query, variables or None, operation_name or None


@dataclass
class Exchange:
    """One GraphQL request on its way through the edge: what its audit record will say."""

    request_id: str
    started: float
    headers: dict[str, str]
    media_type: str
    purpose: str | None
    query: str | None = None
    operation_name: str | None = None
    identity: Identity | None = None
    result: Result | None = None
    outcome: str = "ok"
    codes: list[str] = field(default_factory=list)


def _outcome(result: Result) -> tuple[str, list[str]]:
    """How an executed request went, and its error codes, for the trail and the metrics."""
    errors = result.body.get("errors") or []
    codes = sorted({str(e.get("extensions", {}).get("code", "INTERNAL")) for e in errors})
    if result.request_error:
        return "refused", codes
    if not errors:
        return "ok", codes
    data = result.body.get("data") or {}
    return ("partial" if any(v is not None for v in data.values()) else "error"), codes


def _operation_hash(query: str, plan: Plan | None) -> str:
    """The query's SHA-256 (128 bits of it), once per plan."""
    if plan is not None and plan.operation_hash is not None:
        return plan.operation_hash
    digest = hashlib.sha256(query.encode()).hexdigest()[:32]
    if plan is not None:
        plan.operation_hash = digest
    return digest


def _record(exchange: Exchange, status: int, engine: str) -> dict[str, Any]:
    """The audit record of a finished request. It names columns and treatments, never values."""
    identity = exchange.identity
    result = exchange.result
    plan = result.plan if result is not None else None
    record: dict[str, Any] = {
        "time": time.time(),  # the sink writes it as ISO 8601
        "request_id": exchange.request_id,
        "subject": identity.subject if identity is not None else None,
        "role": identity.role if identity is not None else None,
        "claims": result.claims if result is not None else {},
        "purpose": exchange.purpose,
        "operation": {
            "hash": _operation_hash(exchange.query, plan) if exchange.query else None,
            "name": exchange.operation_name,
        },
        "access": plan.access if plan is not None else [],
        "rows": result.rows if result is not None else {},
        "engine": engine,
        "cache": result.cache if result is not None else {},
        "duration_ms": round((time.perf_counter() - exchange.started) * 1000, 3),
        "outcome": exchange.outcome,
        "status": status,
        "errors": exchange.codes,
    }
    return record


def _guarded(guard: TokenGuard, request: Request) -> bool:
    """Whether the request carries the guard's bearer token (compared in constant time)."""
    if guard.token is None:
        return False
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), guard.token.encode())


class Edge:
    """The request handlers over one gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.metrics = gateway.metrics
        self.authenticator = Authenticator(gateway.config.auth) if gateway.config.auth is not None else None

    def authenticate(self, request: Request, exchange: Exchange) -> Identity | Response | None:
        """The caller's identity; a 401/403 response when the token is refused."""
        if self.authenticator is None:
            return None
        try:
            return self.authenticator.identify(
                exchange.headers.get("authorization"), exchange.headers.get("x-citygate-role")
            )
        except AuthError as error:
            exchange.outcome = "unauthenticated" if error.status == 401 else "forbidden"
            exchange.codes = [error.code]
            response = _json(
                {"errors": [{"message": error.message, "extensions": {"code": error.code}}]},
                error.status,
                exchange.media_type,
            )
            if error.status == 401:
                response.headers["WWW-Authenticate"] = "Bearer"
            return response

    def refuse(self, exchange: Exchange, message: str, status: int = 400) -> Response:
        exchange.outcome = "bad_request"
        exchange.codes = ["BAD_REQUEST"]
        return _bad_request(message, exchange.media_type, status)

    async def answer(self, request: Request, exchange: Exchange, params: dict[str, Any]) -> Response:
        parsed = _parameters(params)
        if isinstance(parsed, str):
            return self.refuse(exchange, parsed)
        query, variables, operation_name = parsed
        exchange.query, exchange.operation_name = query, operation_name
        identity = self.authenticate(request, exchange)
        if isinstance(identity, Response):
            return identity
        exchange.identity = identity
        try:
            result = self.gateway.execute_cached(query, variables, operation_name, identity)
            if result is None:
                result = await run_in_threadpool(self.gateway.execute, query, variables, operation_name, identity)
        except Exception:  # the last guard: log it, never show it
            log.exception("request failed")
            exchange.outcome, exchange.codes = "error", ["INTERNAL"]
            body = {"errors": [{"message": "internal error", "extensions": {"code": "INTERNAL"}}]}
            return _json(body, 500, exchange.media_type)
        exchange.result = result
        exchange.outcome, exchange.codes = _outcome(result)
        status = 400 if result.request_error and exchange.media_type == GRAPHQL_RESPONSE else 200
        return _json(result.body, status, exchange.media_type, result.encoded)

    async def read_post(self, request: Request, exchange: Exchange) -> Response:
        if int(exchange.headers.get("content-length") or 0) > MAX_BODY:
            return self.refuse(exchange, "the request body is larger than 1 MiB", 413)
        content_type = exchange.headers.get("content-type", "").split(";")[0].strip()
        if content_type != "application/json":
            return self.refuse(exchange, "send the request as application/json", 415)
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return self.refuse(exchange, "the request body is larger than 1 MiB", 413)
        try:
            params = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self.refuse(exchange, "the request body is not valid JSON")
        if not isinstance(params, dict):
            return self.refuse(exchange, "the request body must be a JSON object with a `query`")
        return await self.answer(request, exchange, params)

    async def graphql(self, request: Request) -> Response:
        if request.method == "GET" and "query" not in request.query_params:
            if "text/html" in request.headers.get("accept", ""):
                return HTMLResponse(get_graphql_ide_html())
            return _bad_request("send a query: POST application/json, or GET ?query=...", "application/json")
        # The headers once, as a dict (the first of repeated ones): each lookup through
        # starlette's Headers scans them all again.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(request.scope["headers"])}
        offered = headers.get("x-request-id", "")
        purpose = headers.get("x-citygate-purpose")
        exchange = Exchange(
            request_id=offered if _SANE_ID.match(offered) else f"{_ID_PREFIX}-{next(_ids):x}",
            started=time.perf_counter(),
            headers=headers,
            media_type=GRAPHQL_RESPONSE if GRAPHQL_RESPONSE in headers.get("accept", "") else "application/json",
            purpose="".join(c for c in purpose if c.isprintable())[:200] if purpose else None,
        )
        token = REQUEST_ID.set(exchange.request_id)
        try:
            if request.method == "GET":
                response = await self.answer(request, exchange, dict(request.query_params))
            else:
                response = await self.read_post(request, exchange)
        finally:
            REQUEST_ID.reset(token)
        response.headers["X-Request-Id"] = exchange.request_id
        if self.gateway.audit is not None:
            self.gateway.audit.write(_record(exchange, response.status_code, self.gateway.engine.name))
        self.metrics.count_request(exchange.outcome)
        self.metrics.request_seconds.observe(time.perf_counter() - exchange.started)
        return response

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        health = await run_in_threadpool(self.gateway.engine.health)
        body = {
            "status": "ready" if health.ok else "degraded",
            "engine": health.engine,
            "departments": health.departments,
        }
        if not health.departments and not health.ok:
            body["status"] = "engine unreachable"
        return JSONResponse(body, status_code=200 if health.ok else 503)

    async def prometheus(self, request: Request) -> Response:
        guard = self.gateway.config.metrics
        if guard.token is not None and not _guarded(guard, request):
            return JSONResponse({"error": "a valid scrape token is required"}, 401, {"WWW-Authenticate": "Bearer"})
        return Response(self.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def admin(self, request: Request) -> Response:
        if not _guarded(self.gateway.config.admin, request):
            return JSONResponse({"error": "a valid admin token is required"}, 401, {"WWW-Authenticate": "Bearer"})
        action = request.path_params["action"]
        if action == "cache/clear":
            department = request.query_params.get("department") or None
            if department is not None and department not in self.gateway.config.departments:
                return JSONResponse({"error": f"no department {department!r}"}, 404)
            dropped = self.gateway.results.clear(department)
            log.info("admin: result cache cleared (%s): %d entries", department or "all departments", dropped)
            return JSONResponse({"cleared": dropped, "department": department})
        if action == "policies/reload":
            try:
                version = await run_in_threadpool(self.gateway.reload_policies)
            except CitygateError as error:
                log.error("admin: policy reload failed: %s", error.message)
                return JSONResponse({"error": error.message}, 422)
            return JSONResponse({"policy_version": version})
        return JSONResponse({"error": f"no admin action {action!r}"}, 404)


def create_app(gateway: Gateway) -> Starlette:
    """The ASGI application over ``gateway``."""
    edge = Edge(gateway)
    routes = [
        Route("/graphql", edge.graphql, methods=["GET", "POST"]),
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

    return Starlette(routes=routes, lifespan=lifespan)
