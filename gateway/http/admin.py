"""The operator's endpoints, each behind the gate's one guard (:meth:`gateway.http.gate.Gate.guard`).

- ``GET /healthz``: the process answers;
- ``GET /readyz``: whether this instance can serve (its details to the admin token only);
- ``GET /metrics``: Prometheus' exposition, behind ``metrics.token`` where one is set;
- ``POST /admin/cache/clear`` and ``POST /admin/policies/reload``, behind ``admin.token``.

The console's administrator endpoints (:mod:`gateway.http.console`: roles, view as role) stand
behind the same guard.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from catalogue.errors import CitygateError
from gateway.config import TokenGuard
from gateway.execution.gateway import Gateway
from gateway.http.envelope import error, response
from gateway.http.gate import Gate

log = logging.getLogger("citygate.http")


class Operator:
    """The operator's endpoints over one gateway; ``metrics``: the token that guards
    ``/metrics`` (unset: open). The admin token is the gate's."""

    def __init__(self, gateway: Gateway, gate: Gate, metrics: TokenGuard) -> None:
        self.gateway = gateway
        self.gate = gate
        self.metrics = metrics

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
        one department or for the engine; 503 when no route answers, while the audit trail
        cannot be written (every request would be refused), or while the shared state cannot be
        read (every rate-limited request and every noisy answer would be refused). A route the
        masks are not proven on takes no statement, so it is not ``ok`` even when it answers
        ("masks not proven yet: ..."), nor does it make the instance ready. The body names
        each department's state and each route's, the trail's (``ok`` or ``unavailable``; the log
        says why) and the shared state's (``ok`` or why not), to the operator (the admin token);
        anyone else learns only the status, since the states name stores, their addresses and
        their errors. The state is checked with the rest, at most every ``HEALTH_SECONDS``."""
        health = await run_in_threadpool(self.gateway.health)
        audit = self.gateway.audit
        trail = "off" if audit is None else "ok" if audit.trouble() is None else "unavailable"
        state = self.gateway.state_trouble or "ok"
        serving = health.serving and trail != "unavailable" and state == "ok"
        every = health.ok and all(state == "ok" for state in health.routes.values())
        status = "ready" if every and serving else "degraded" if serving else "unavailable"
        body: dict[str, Any] = {"status": status}
        operator = bool(request.headers.get("authorization"))
        if operator and self.gate.guard(self.gate.admin, request.scope, "admin") is None:
            body |= {
                "engine": health.engine,
                "audit": trail,
                "state": state,
                "departments": health.departments,
                "routes": health.routes,
            }
        return JSONResponse(body, status_code=200 if serving else 503, headers={"Cache-Control": "no-store"})

    async def prometheus(self, request: Request) -> Response:
        token = self.metrics
        refusal = self.gate.guard(token, request.scope, "scrape") if token.token is not None else None
        if refusal is not None:
            return response(refusal)
        await run_in_threadpool(self.gateway.health)  # the health gauges, at most HEALTH_SECONDS old
        exposition = self.gateway.metrics.exposition()
        return Response(exposition, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def admin(self, request: Request) -> Response:
        refusal = self.gate.guard(self.gate.admin, request.scope, "admin")
        if refusal is not None:
            return response(refusal)
        action = request.path_params["action"]
        if action == "cache/clear":
            department = request.query_params.get("department") or None
            if department is not None and department not in self.gateway.catalogue_settings.departments:
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
