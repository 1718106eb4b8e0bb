"""The operator's endpoints and the one guard in front of them.

- ``GET /healthz``: the process answers;
- ``GET /readyz``: whether this instance can serve (its details to the admin token only);
- ``GET /metrics``: Prometheus' exposition, behind ``metrics.token`` where one is set;
- ``POST /admin/cache/clear`` and ``POST /admin/policies/reload``, behind ``admin.token``.

The console's administrator endpoints (:mod:`gateway.http.console`: roles, view as role) stand
behind the same :func:`guard`.
"""

from __future__ import annotations

import hmac
import logging
import math
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from catalogue.errors import CitygateError
from gateway.config import TokenGuard
from gateway.execution.gateway import Gateway
from gateway.http.envelope import ACCESS, Reply, address, error, response
from gateway.http.gate import GUESSES, Gate

log = logging.getLogger("citygate.http")


def guard(gate: Gate, token: TokenGuard, request: Request, what: str) -> Reply | None:
    """None if ``request`` carries ``token`` as its bearer token (compared in constant time);
    else its refusal: 401, or 429 once its network's wrong guesses (:meth:`Gate.attempt_failed`)
    are past the anonymous limit. A network past it is refused before its token is even
    compared. ``what`` names the token in the refusal; the admin token also names the caller's
    role in the access log (``admin``)."""
    client = address(request.scope)
    wait = gate.blocked_for(client)
    if wait is None:
        if token.token is not None:
            scheme, _, sent = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), token.token.encode()):
                entry = ACCESS.get()
                if what == "admin" and entry is not None:
                    entry["role"] = "admin"  # the operator's token, for the access log
                return None
        wait = gate.attempt_failed(client)
        if wait is None:
            refusal = error(f"a valid {what} token is required", "UNAUTHENTICATED", 401)
            refusal.headers.append((b"www-authenticate", b"Bearer"))
            return refusal
    seconds = max(1, math.ceil(wait))
    refusal = error(f"too many requests: {GUESSES}; try again in {seconds} s", "RATE_LIMITED", 429)
    refusal.headers.append((b"retry-after", b"%d" % seconds))
    return refusal


class Operator:
    """The operator's endpoints over one gateway."""

    def __init__(self, gateway: Gateway, gate: Gate) -> None:
        self.gateway = gateway
        self.gate = gate

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/admin/{action:path}", self.admin, methods=["POST"]),
        ]

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
        operator = bool(request.headers.get("authorization"))
        if operator and guard(self.gate, self.gateway.config.admin, request, "admin") is None:
            body |= {
                "engine": health.engine,
                "audit": trail,
                "departments": health.departments,
                "routes": health.routes,
            }
        return JSONResponse(body, status_code=200 if serving else 503, headers={"Cache-Control": "no-store"})

    async def prometheus(self, request: Request) -> Response:
        token = self.gateway.config.metrics
        refusal = guard(self.gate, token, request, "scrape") if token.token is not None else None
        if refusal is not None:
            return response(refusal)
        await run_in_threadpool(self.gateway.health)  # the health gauges, at most HEALTH_SECONDS old
        exposition = self.gateway.metrics.exposition()
        return Response(exposition, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def admin(self, request: Request) -> Response:
        refusal = guard(self.gate, self.gateway.config.admin, request, "admin")
        if refusal is not None:
            return response(refusal)
        action = request.path_params["action"]
        if action == "cache/clear":
            department = request.query_params.get("department") or None
            if department is not None and department not in self.gateway.config.departments:
                return response(error(f"no department {department!r}", "BAD_REQUEST", 404))
            dropped = self.gateway.results.clear(department)
            log.info("admin: result cache cleared (%s): %d entries", department or "all departments", dropped)
            return JSONResponse({"cleared": dropped, "department": department})
        if action == "policies/reload":
            try:
                version = await run_in_threadpool(self.gateway.reload_policies)
            except CitygateError as failure:
                log.error("admin: policy reload failed: %s", failure.message)
                return response(error(failure.message, "BAD_CONFIG", 422))
            return JSONResponse({"policy_version": version})
        actions = "cache/clear, policies/reload"
        return response(error(f"no admin action {action!r}; the actions are {actions}", "BAD_REQUEST", 404))
