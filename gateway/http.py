"""The HTTP edge: GraphQL over HTTP on ``/graphql``, GraphiQL for browsers, health and readiness.

Statuses follow the GraphQL-over-HTTP specification: with ``application/graphql-response+json``
a request that cannot be executed (parse, validation, variables) is 400 and anything executed
is 200; with the legacy ``application/json`` every well-formed request is 200. A malformed HTTP
request (bad JSON, no query) is 400 either way. No response carries SQL or a stack trace.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from strawberry.http.ides import get_graphql_ide_html

from gateway.execute import Gateway, Identity
from gateway.identity import Authenticator, AuthError

log = logging.getLogger("citygate.http")

GRAPHQL_RESPONSE = "application/graphql-response+json"
MAX_BODY = 1 << 20  # 1 MiB: far above any real query, far below what could hurt the server


def _json(body: Any, status: int, media_type: str) -> Response:
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(content, status_code=status, media_type=media_type)


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


def create_app(gateway: Gateway) -> Starlette:
    """The ASGI application over ``gateway``."""
    authenticator = Authenticator(gateway.config.auth) if gateway.config.auth is not None else None

    def authenticate(request: Request, media_type: str) -> Identity | Response | None:
        """The caller's identity; a 401/403 response when the token is refused."""
        if authenticator is None:
            return None
        try:
            return authenticator.identify(request.headers.get("authorization"), request.headers.get("x-citygate-role"))
        except AuthError as error:
            response = _json(
                {"errors": [{"message": error.message, "extensions": {"code": error.code}}]}, error.status, media_type
            )
            if error.status == 401:
                response.headers["WWW-Authenticate"] = "Bearer"
            return response

    async def answer(request: Request, params: dict[str, Any]) -> Response:
        media_type = GRAPHQL_RESPONSE if GRAPHQL_RESPONSE in request.headers.get("accept", "") else "application/json"
        parsed = _parameters(params)
        if isinstance(parsed, str):
            return _bad_request(parsed, media_type)
        query, variables, operation_name = parsed
        identity = authenticate(request, media_type)
        if isinstance(identity, Response):
            return identity
        try:
            result = await run_in_threadpool(gateway.execute, query, variables, operation_name, identity)
        except Exception:  # the last guard: log it, never show it
            log.exception("request failed")
            body = {"errors": [{"message": "internal error", "extensions": {"code": "INTERNAL"}}]}
            return _json(body, 500, media_type)
        status = 400 if result.request_error and media_type == GRAPHQL_RESPONSE else 200
        return _json(result.body, status, media_type)

    async def graphql_post(request: Request) -> Response:
        media_type = GRAPHQL_RESPONSE if GRAPHQL_RESPONSE in request.headers.get("accept", "") else "application/json"
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            return _bad_request("the request body is larger than 1 MiB", media_type, 413)
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type != "application/json":
            return _bad_request("send the request as application/json", media_type, 415)
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return _bad_request("the request body is larger than 1 MiB", media_type, 413)
        try:
            params = json.loads(raw)
        except ValueError:
            return _bad_request("the request body is not valid JSON", media_type)
        if not isinstance(params, dict):
            return _bad_request("the request body must be a JSON object with a `query`", media_type)
        return await answer(request, params)

    async def graphql_get(request: Request) -> Response:
        if "query" in request.query_params:
            return await answer(request, dict(request.query_params))
        if "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(get_graphql_ide_html())
        return _bad_request("send a query: POST application/json, or GET ?query=...", "application/json")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        health = await run_in_threadpool(gateway.engine.health)
        body = {
            "status": "ready" if health.ok else "degraded",
            "engine": health.engine,
            "departments": health.departments,
        }
        if not health.departments and not health.ok:
            body["status"] = "engine unreachable"
        return JSONResponse(body, status_code=200 if health.ok else 503)

    return Starlette(
        routes=[
            Route("/graphql", graphql_post, methods=["POST"]),
            Route("/graphql", graphql_get, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ]
    )
