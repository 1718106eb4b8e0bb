"""The console over HTTP, a sub-application mounted at ``/console`` (what it shows is
:mod:`gateway.console`'s):

- ``GET /console``: the page; ``/console/assets/...`` and ``/console/static/...``: its files;
- ``GET /console/api/catalogue?search=&department=``: the catalogue as the caller's role sees
  it, identified, limited and audited as a GraphQL request is;
- ``GET /console/api/roles`` and ``POST /console/api/view-as`` (admin): the roles, and what a
  role sees, audited.

The audited requests go through the edge's one envelope (:class:`gateway.http.envelope.Envelope`)
and are let in by its one gate (:meth:`gateway.http.gate.Gate.admit`, the administrator's by
:meth:`~gateway.http.gate.Gate.admit_operator`); the administrator's through the gate's one guard
(:meth:`gateway.http.gate.Gate.guard`).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from gateway.console import catalogue
from gateway.console.assets import Assets
from gateway.console.inspect import view_as
from gateway.console.pages import DemoPage, Pages
from gateway.execution.gateway import Gateway
from gateway.http.envelope import Envelope, Exchange, Reply, error, outcome, refuse, reply_json, response
from gateway.http.gate import Gate
from gateway.identity.caller import Identity
from gateway.observe.audit import recorded

log = logging.getLogger("citygate.http")

_JSON = "application/json"
_IMMUTABLE = "public, max-age=31536000, immutable"


class Console:
    """The console's pages and endpoints over one gateway. Its pinned assets are checked once
    and its pages made once; department states and row estimates are read when the catalogue
    is first asked for, and again when they are old."""

    def __init__(
        self,
        gateway: Gateway,
        envelope: Envelope,
        gate: Gate,
        estimates_at_once: int,
        example: str = "",
        demo: DemoPage | None = None,
    ) -> None:
        """``estimates_at_once``: how many row estimates it reads side by side
        (``limits.concurrency.console_estimates``)."""
        self.gateway = gateway
        self.envelope = envelope
        self.gate = gate
        self.assets = Assets.load()
        if self.assets.missing is not None:
            log.warning("GraphiQL will not start in browsers: %s", self.assets.missing)
        self.pages = Pages.make(self.assets, example, demo)
        self.probe = catalogue.Probe(lambda: gateway.health().departments)
        self.estimates = catalogue.Estimates(gateway.statistics.rows, at_once=estimates_at_once)

    def routes(self) -> list[BaseRoute]:
        """The home page's redirect, the console's page, and the application mounted under it."""
        mounted = [
            Route("/", self.slash, methods=["GET"]),
            Route("/assets/{path:path}", self.file, methods=["GET"]),
            Route("/static/{path:path}", self.file, methods=["GET"]),
            Route("/api/catalogue", self.catalogue, methods=["GET"]),
            Route("/api/roles", self.roles, methods=["GET"]),
            Route("/api/view-as", self.view_as, methods=["POST"]),
        ]
        return [
            Route("/", self.home, methods=["GET"]),
            Route("/console", self.page, methods=["GET"]),
            Mount("/console", routes=mounted),
        ]

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/console")

    async def slash(self, request: Request) -> Response:
        """``/console/``: the page's own address (as starlette redirects an unmounted one)."""
        return RedirectResponse(str(request.url.replace(path="/console")))

    async def page(self, request: Request) -> Response:
        return HTMLResponse(self.pages.console)

    async def file(self, request: Request) -> Response:
        """A pinned asset (its path names its version: kept for good) or one of the console's
        own files (revalidated, since they change with the gateway)."""
        path = request.url.path
        asset = self.assets.files.get(path)
        if asset is not None:
            return Response(asset.body, media_type=asset.media_type, headers={"cache-control": _IMMUTABLE})
        found = self.pages.static.get(path)
        if found is None:
            return response(error(f"no console file {path}", "BAD_REQUEST", 404))
        return Response(found[0], media_type=found[1], headers={"cache-control": "no-cache"})

    async def catalogue(self, request: Request) -> Response:
        """``GET /console/api/catalogue?search=&department=``: the catalogue as the caller's role
        sees it. Identified, limited and audited as a GraphQL request is."""
        search = request.query_params.get("search", "")[:200]
        department = request.query_params.get("department", "")[:200]
        asked = {"operation": {"hash": None, "name": "console: catalogue"}, "search": recorded(search)}
        exchange = Exchange.begin(request.scope, _JSON, asked)
        return response(await self.envelope.serve(exchange, self.catalogue_reply, (search, department)))

    async def catalogue_reply(self, exchange: Exchange, asked: tuple[str, str]) -> Reply:
        refused = await self.gate.admit(exchange)
        if refused is not None:
            return refused
        return await run_in_threadpool(self.entries, exchange, *asked)

    def entries(self, exchange: Exchange, search: str, department: str) -> Reply:
        gateway = self.gateway
        view = gateway.view(exchange.identity)
        states, probed = self.probe.read()
        found = catalogue.entries(
            view,
            gateway.catalogue.tables,
            gateway.catalogue_settings,
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
        return reply_json(body, 200, _JSON)

    async def roles(self, request: Request) -> Response:
        """``GET /console/api/roles`` (admin): the roles, and the claims each one's policies read."""
        refusal = self.gate.guard(self.gate.admin, request.scope, "admin")
        if refusal is not None:
            return response(refusal)
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
        exchange = Exchange.begin(request.scope, _JSON, {"operation": {"hash": None, "name": "console: view as role"}})
        return response(await self.envelope.serve(exchange, self.view_as_reply, request))

    async def view_as_reply(self, exchange: Exchange, request: Request) -> Reply:
        refused = self.gate.admit_operator(exchange, request.scope)
        if refused is not None:
            return refused
        try:
            params = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            params = None
        asked = self.view_as_request(params)
        if isinstance(asked, str):
            return refuse(exchange, asked)
        role, claims, query, variables = asked
        exchange.identity = Identity(role, claims, subject="console-admin")
        exchange.query = query
        page, result = await run_in_threadpool(view_as, self.gateway, role, claims, query, variables)
        if result is not None:
            exchange.result = result
            exchange.outcome, exchange.codes = outcome(result)
            exchange.console = None  # the record is the query's own, as for /graphql
        return reply_json(page, 200, _JSON)

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
