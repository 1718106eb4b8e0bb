"""A gateway: the schema over a configured engine, each role's view of it, and the way to
answer requests with them.

A request is planned once per plan key (:mod:`gateway.execution.planner`: parse, validate,
compile, weigh, and each root field's statement made as the role runs it), and the frozen plan
is run (:mod:`gateway.execution.runner`: root fields side by side, each on its route, rows from
the result cache when they are there, shaped into the response). Compiled fields are not
resolved field by field through graphql-core; only introspection (``__schema``, ``__type``)
runs through its executor. A root field whose department is down answers null with an error
while the others still answer (GraphQL partial results).

This module keeps what outlives a request: the catalogue and the schema, the policies and
their reloads, the views, health and the departments that come back.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlglot import exp

from catalogue.errors import (
    CitygateError,
    ConfigError,
    EngineUnavailableError,
)
from catalogue.model import Catalogue, Department
from catalogue.sql import departments_in
from connectors.base import Engine, Health
from connectors.native import NativeEngine, native_engines
from gateway.config import CatalogueSettings, Config, Limits
from gateway.execution.budget import RowBudget
from gateway.execution.cache import ResultCache
from gateway.execution.planner import Planner
from gateway.execution.plans import (
    Memo,
    Plan,
    Response,
    count_rows,
)
from gateway.execution.prepared import Batched, Refused, Statement
from gateway.execution.privacy import PrivacyBudgets, adopt
from gateway.execution.probes import Checks, mark_unproven
from gateway.execution.proof import Proof, prove_masks, refusal_text
from gateway.execution.routes import Routes
from gateway.execution.runner import Partly, Runner, spent_on
from gateway.execution.statements import Statements
from gateway.execution.unproven import Unproven
from gateway.execution.views import View, build_view, missing_claims, role_of, unclaimed_view, validate_decisions
from gateway.graphql.compile import (
    Compiled,
    CompileError,
)
from gateway.graphql.cost import Statistics
from gateway.graphql.errors import field_error
from gateway.graphql.introspection import introspect
from gateway.graphql.schema import Model, build_model
from gateway.identity.caller import Identity
from gateway.observe.audit import Sink, open_sink
from gateway.observe.metrics import Metrics
from gateway.observe.telemetry import Telemetry
from gateway.state import State
from policies.model import Policies, load_policies
from policies.noise import spend

log = logging.getLogger("citygate")

# How long one health check of the engine and the stores stands: probes and scrapes in between
# are answered from it, so a flood of them costs the stores one check per interval.
HEALTH_SECONDS = 2.0
# How often a gateway with departments left out at start-up checks them by itself.
REJOIN_SECONDS = 10.0


Stamp = tuple[tuple[int, int, int] | None, ...]  # each policy file's inode, time and size


def _stamp(config: Config) -> Stamp:
    found: list[tuple[int, int, int] | None] = []
    for path in config.policies.files if config.policies is not None else ():
        try:
            stat = os.stat(path)
            found.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
        except OSError:
            found.append(None)
    return tuple(found)


@dataclass
class Gateway:
    """The schema over a configured engine, and the way to answer requests with it."""

    config: Config
    engine: Engine
    model: Model  # every table and column: what a deployment without policies serves
    catalogue: Catalogue = field(default_factory=Catalogue)
    policies: Policies | None = None
    unavailable: dict[str, str] = field(default_factory=dict)  # department -> why, at start-up
    audit: Sink | None = None
    telemetry: Telemetry = field(default_factory=Telemetry)
    metrics: Metrics = field(default_factory=Metrics)
    # department -> its store's own engine (the delegated route); None: made from the config
    native: dict[str, NativeEngine] | None = None
    routes: Routes = field(init=False)
    statements: Statements = field(init=False)  # where statements run, each within its time
    results: ResultCache = field(init=False)
    state: State = field(init=False)  # shared by every worker and gateway on it: budgets, rate limits
    privacy: PrivacyBudgets = field(init=False)  # each role's noisy answers' spending
    planner: Planner = field(init=False)  # requests made into plans, once per plan key
    runner: Runner = field(init=False)  # plans run, each root field on its route
    unproven: Unproven = field(init=False)  # routes that take no statement until the masks are proven there
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _reloading: threading.Lock = field(default_factory=threading.Lock)  # one reload at a time
    _probing: threading.Lock = field(default_factory=threading.Lock)  # one health check at a time
    _health: tuple[float, Health] | None = None  # the last check: when, and what it found
    # why the shared state could not be read at the last check (None: it could); its detail
    # names the database, so it goes to the log and the operator, never to an anonymous probe
    state_trouble: str | None = None
    checks: Checks = field(default_factory=Checks)  # the health checks, each bounded in time
    _closed: threading.Event = field(default_factory=threading.Event)
    _refused_joins: dict[str, str] = field(default_factory=dict)  # department -> the policy version refusing it
    _views: dict[str | None, View] = field(default_factory=dict)
    _limits: dict[str | None, Limits] = field(init=False, default_factory=dict)  # role -> its limits, once
    recording: bool = True  # it answers requests: it writes the audit trail and spends from the shared state
    # One of several worker processes (`serve --workers N`): an admin reload reaches one of them,
    # so each request first looks at the policy files (:meth:`follow_files`).
    follows_files: bool = False
    _stamp: Stamp = ()  # the policy files when last read

    def __post_init__(self) -> None:
        cache = self.config.cache
        self.results = ResultCache(cache, {n: d.cache_ttl_seconds for n, d in self.config.departments.items()})
        # An offline command (schema, explain, policy) answers no request and spends nothing:
        # it leaves the deployment's shared state alone, and writes none into a data dir.
        self.state = State.open(self.config.state_url() if self.recording else "sqlite://")
        if self.recording:
            adopt(self.config.data_dir / "privacy-budget.json", self.state)  # an earlier version's
        self.privacy = PrivacyBudgets(self.state)
        concurrency = self.config.limits.concurrency
        self.statements = Statements(self.engine, self.catalogue, self.config.limits.statement_seconds, concurrency)
        self.statistics = Statistics(self._statistic)
        if self.native is None:
            self.native = _native(self.config)
        engine_config = self.config.engine
        self.routes = Routes(
            self.engine,
            self.catalogue,
            self.native,
            delegates=engine_config.delegate == "auto",
            kept=[name for name, spec in self.config.departments.items() if not spec.delegate],
            fallback=self.config.engine_settings() if engine_config.fallback == "embedded" else None,
        )
        self.planner = Planner(
            settings=self.config.limits,
            limits=self.limits,
            model=self.model,
            routes=self.routes,
            statistics=self.statistics,
            redact=self.engine.redact,
            cache=cache,
            telemetry=self.telemetry,
            metrics=self.metrics,
            batch=self.config.engine.batch_relationships == "auto",
        )
        self.runner = Runner(
            statements=self.statements,
            routes=self.routes,
            results=self.results,
            privacy=self.privacy,
            limits=self.limits,
            redact=self.engine.redact,
            engine_name=self.engine.name,
            telemetry=self.telemetry,
            metrics=self.metrics,
            concurrency=concurrency,
            memo_bytes=cache.plan_bytes,
            batch_keys=self.config.engine.batch_keys,
        )
        self.unproven = Unproven(self.routes, self._prove_again, self.planner.clear, self._reloading, self._closed)
        if self.audit is not None:
            self.metrics.watch_audit(self.audit.backlog, self.audit.trouble, self.audit.flushes)

    @classmethod
    def start(
        cls,
        config: Config,
        engine: Engine,
        telemetry: Telemetry | None = None,
        *,
        recording: bool = True,
        prove: bool = True,
    ) -> Gateway:
        """Introspect every department (a department that is down is left out and named), and
        refuse to serve policies whose masks are not proven to mean the same on every route
        (:mod:`gateway.execution.proof`; ``prove=False``: ``policy check``, which reports them).
        ``recording``: whether it answers requests and so writes the audit trail; the offline
        commands (schema, explain, policy) answer none, and neither open nor mention it."""
        departments: list[Department] = []
        unavailable: dict[str, str] = {}
        native = _native(config)
        for name in config.departments:
            try:
                departments.append(_introspect(engine, native, config, name))
            except CitygateError as error:
                unavailable[name] = error.message
                log.warning("department left out of the schema: %s", error.message)
        catalogue = Catalogue(tuple(departments))
        model = build_model(catalogue, config.catalogue_settings())
        stamp = _stamp(config)  # before reading: an edit meanwhile is read again
        policies = load_policies(config.policies.files) if config.policies is not None else None
        if recording and (config.audit is None or config.audit.sink == "off"):
            log.warning(
                "the audit trail is off (audit: sink: off): no request is recorded; remove it to record who reads what"
            )
        gateway = cls(
            config=config,
            engine=engine,
            model=model,
            catalogue=catalogue,
            policies=policies,
            unavailable=unavailable,
            native=native,
            audit=open_sink(config.audit) if recording else None,
            telemetry=telemetry or Telemetry.configure(config.telemetry),
            recording=recording,
        )
        gateway._stamp = stamp
        if policies is not None:
            try:
                validate_decisions(policies, catalogue, config.catalogue_settings())
                if prove:
                    gateway.require_proven(policies)
            except ConfigError:
                gateway.close()
                raise
        if unavailable or gateway.routes.unproven:  # with no probe or scrape to notice, it looks itself
            threading.Thread(target=gateway._watch, name="citygate-rejoin", daemon=True).start()
        return gateway

    def require_proven(self, policies: Policies) -> None:
        """:class:`ConfigError` unless every mask of ``policies`` gives the same values on every
        route and hides what it should (:func:`~gateway.execution.proof.prove_masks`)."""
        proof = prove_masks(self.routes, policies, self.catalogue, self.catalogue_settings)
        if proof.refusals:
            assert self.config.policies is not None
            raise ConfigError(refusal_text(proof.refusals, self.config.policies.files))
        self.unproven.take(proof)  # a route that did not answer serves once proven (Unproven)

    def _prove_again(self) -> Proof | None:  # the masks tried again under the policies in force (Unproven)
        policies = self.policies
        return None if policies is None else prove_masks(self.routes, policies, self.catalogue, self.catalogue_settings)

    def _watch(self) -> None:
        """Check again every :data:`REJOIN_SECONDS` until every department left out at start-up
        has joined (:meth:`rejoin`) and every route is proven (:class:`Unproven`), or it closes."""
        while (self.unavailable or self.routes.unproven) and not self._closed.wait(REJOIN_SECONDS):
            try:
                self.health()
            except Exception:  # the watch must outlive a failed check, or nothing rejoins
                log.exception("a health check for departments left out failed")

    def _statistic(self, statement: exp.Expr) -> Sequence[Any]:
        """Run one of the statistics' statements as the gateway itself (no policy: its answer
        only bounds what a query may cost), within the statement limit."""
        route = self.routes.pick(statement)  # the store's own, when one can run it
        return self.statements.run(
            self.routes.render(route, statement), departments_in(statement), 1, engine=route.engine
        )

    def limits(self, role: str | None) -> Limits:
        """``role``'s limits (``limits.roles``), decided once: every request and root field asks."""
        found = self._limits.get(role)
        if found is None:
            found = self._limits[role] = self.config.limits.of(role)
        return found

    @property
    def catalogue_settings(self) -> CatalogueSettings:
        """What the schema, the views and the proofs read of the configuration."""
        return self.config.catalogue_settings()

    @property
    def policy_version(self) -> str:
        return self.policies.version if self.policies is not None else "-"

    def files_changed(self) -> bool:
        """Whether the policy files differ from what this gateway last read (a few stat calls)."""
        return self.follows_files and _stamp(self.config) != self._stamp

    def follow_files(self) -> None:
        """Before a request of a worker: read the policy files again if they changed since it
        last read them, so no worker answers under policies an operator has replaced (the admin
        call or an edit reaches every worker by its next request, not a second later). A file
        that does not load leaves the old policies and is logged, once per change."""
        if not self.files_changed():
            return
        with self._reloading:
            stamp = _stamp(self.config)
            if stamp == self._stamp:  # another request read them meanwhile
                return
            try:
                version = self._reload()
                log.info("policy files changed: policies reloaded (%s)", version)
            except CitygateError as error:
                log.error("policy reload failed, the old policies stay: %s", error.message)
            finally:
                self._stamp = stamp

    def reload_policies(self) -> str:
        """Read the policy files again. Views and plans go (they hold the old decisions); cached
        results stay, since their key is the final SQL, which changes with any decision that
        changes what a caller sees. Returns the new policy version; a bad file changes nothing."""
        if self.config.policies is None:
            raise CitygateError("this gateway has no policies to reload")
        with self._reloading:  # SIGHUP's thread and the admin endpoint: the last to read wins
            stamp = _stamp(self.config)
            version = self._reload()
            self._stamp = stamp
            return version

    def _reload(self) -> str:
        assert self.config.policies is not None
        policies = load_policies(self.config.policies.files)
        validate_decisions(policies, self.catalogue, self.catalogue_settings)
        self.require_proven(policies)
        with self._lock:
            self.policies = policies
            self._views = {}
        self.planner.clear()
        log.info("policies reloaded: version %s", policies.version)
        return policies.version

    def view(self, identity: Identity | None) -> View:
        """The role's view. With policies configured, a request without identity is anonymous:
        deny by default, and a role without a policy sees nothing."""
        if self.follows_files:
            self.follow_files()
        policies = self.policies
        role = role_of(policies, identity)
        # a token without a claim its role requires sees nothing: a view of its own
        missing = missing_claims(policies, role, identity)
        kept = f"{role}\x00{','.join(missing)}" if missing else role  # NUL: no role name holds one
        found = self._views.get(kept)
        if found is not None:
            return found
        if policies is None or role is None:
            view = View(None, self.model, version=policies.version if policies is not None else "-")
        elif missing:
            view = unclaimed_view(role, missing, policies, self.catalogue, self.catalogue_settings)
        else:
            view = build_view(role, policies, self.catalogue, self.catalogue_settings)
        with self._lock:
            if self.policies is policies:  # not replaced by a reload meanwhile
                self._views[kept] = view
        return view

    # -- requests ----------------------------------------------------------------------------

    def plan(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        operation_name: str | None = None,
        identity: Identity | None = None,
        view: View | None = None,
        started: float | None = None,
    ) -> Plan:
        """The request's plan, made once per plan key (:class:`Planner`). ``view``: the role's
        view the request already took; ``started``: when its preparation began."""
        view = view or self.view(identity)
        return self.planner.plan(query, variables, operation_name, identity, view, started)

    def execute(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        operation_name: str | None = None,
        identity: Identity | None = None,
    ) -> Response:
        started = time.monotonic()
        view = self.view(identity)
        claims = view.used_claims(identity)
        plan = self.plan(query, variables, operation_name, identity, view, started)
        if plan.refused is not None:
            return plan.refused
        if plan.introspection is not None and not plan.compiled and not plan.errors:
            return self.planner.introspection_only(plan, query, variables, operation_name, view, claims)
        data: dict[str, Any] = {key: plan.static.get(key) for key in plan.keys}
        errors_out: list[dict[str, Any]] = list(plan.errors)
        if plan.introspection is not None:
            document, operation, fields = plan.introspection
            data.update(introspect(document, operation, fields, variables, errors_out, view.model))
        response = Response({}, plan=plan, claims=claims)
        budget = RowBudget(self.config.limits.max_rows)
        deadline = started + self.limits(view.role).plan_seconds
        for key, (outcome, cached, route) in self.runner.run_all(plan.statements, view, budget, deadline).items():
            response.routes[key] = route
            response.cache[key] = "miss" if isinstance(outcome, CitygateError) else cached
            if isinstance(outcome, CitygateError):
                errors_out.append(field_error(outcome, [key], [plan.locations[key]]))
                statement = plan.statements[key]
                noise = statement.noise if isinstance(statement, Statement) else None
                if noise and spent_on(outcome):  # a failure the rows caused keeps what it spent
                    response.epsilon[key] = spend(r for node in noise.values() for r in node.values())
            else:
                if isinstance(outcome, Partly):  # some of its fields failed alone (a store down)
                    errors_out.extend(field_error(e, path, [plan.locations[key]]) for path, e in outcome.errors)
                value = outcome.value if isinstance(outcome, Partly) else outcome
                data[key] = value
                response.rows[key] = count_rows(value)
                response.statements += cached != "hit"
                statement = plan.statements[key]
                noise = statement.noise if isinstance(statement, Statement) else None
                if noise and cached != "hit":  # a fresh draw; a cached one spent nothing
                    response.epsilon[key] = spend(r for node in noise.values() for r in node.values())
        response.body = {"errors": errors_out, "data": data} if errors_out else {"data": data}
        return response

    def execute_cached(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        operation_name: str | None = None,
        identity: Identity | None = None,
    ) -> Response | None:
        """The response, if it needs neither compiling nor the engine (its plan and every root
        field's rows are cached); else None. Cheap enough to run on the event loop."""
        # Policy files changed: they are read again off the loop, by the request's own path.
        view = None if self.files_changed() else self._views.get(role_of(self.policies, identity))
        if view is None:
            return None
        claims = view.used_claims(identity)
        key = self.planner.key(query, variables, operation_name, view, claims)
        plan = self.planner.cached(key) if key is not None else None
        if plan is None or plan.refused is not None or plan.introspection is not None or plan.errors:
            return None
        return self.runner.from_cache(plan, claims, self.config.limits.max_rows)

    def memo_of(self, plan: Plan) -> Memo | None:
        """``plan``'s last answer made wholly of cached rows, if it has one."""
        return self.runner.memo_of(plan)

    def memo_parts(self, plan: Plan) -> list[tuple[str, str, str, Sequence[Any]]]:
        """The cached rows ``plan``'s memo was made of, with what the result cache keeps each under."""
        return self.runner.memo_parts(plan)

    def compile(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        operation_name: str | None = None,
        identity: Identity | None = None,
    ) -> list[Compiled]:
        """The compiled data root fields of ``query``, from its plan (for tests and tools)."""
        return [s.compiled for s in self.prepared(query, variables, operation_name, identity)]

    def prepared(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        operation_name: str | None = None,
        identity: Identity | None = None,
    ) -> list[Statement | Batched | Refused]:
        """Each data root field's statement as ``identity``'s role runs it (or why it has none),
        from the very plan a request runs: what `citygate explain` and the console print.
        :class:`CompileError` if the query does not compile."""
        plan = self.plan(query, variables, operation_name, identity)
        refusals = plan.refused.body["errors"] if plan.refused is not None else plan.errors
        if refusals:
            raise CompileError("; ".join(e["message"] for e in refusals))
        return list(plan.statements.values())

    def health(self) -> Health:
        """:meth:`checked`, with the routes the masks are not proven on not ok, read at each call."""
        shown = mark_unproven(self.checked(), self.routes.unproven)
        self.metrics.record_health(shown.engine, shown.reachable, shown.departments, shown.routes)
        return shown

    def checked(self) -> Health:
        """The engine's and each department's health, checked at most every
        :data:`HEALTH_SECONDS`. While one check runs (a store that does not answer can hold it
        for its connect timeout), other callers get the last answer rather than a thread of
        their own waiting: only the very first check is waited for."""
        last = self._health
        if last is not None and time.monotonic() - last[0] < HEALTH_SECONDS:
            return last[1]
        if not self._probing.acquire(blocking=last is None):
            assert last is not None
            return last[1]
        try:
            if self._health is not None and self._health is not last:
                return self._health[1]  # checked while this caller waited for the first check
            found, self.state_trouble = self.checks.everything(self.engine, self.routes, self.state)
            self._health = (time.monotonic(), found)
            self.metrics.record_state(self.state_trouble is None)
        finally:
            self._probing.release()
        back = [d for d in self.unavailable if found.departments.get(d) == "ok"]
        if back:
            self.rejoin(back)
        self.unproven.wanted()  # a route left unproven may answer now
        return found

    def rejoin(self, departments: Sequence[str]) -> list[str]:
        """Read again departments left out at start-up (down or slow then) and serve them,
        without a restart: the schema, views and plans are made again, as a policy reload does.
        Returns those that joined; one that still cannot be read stays out, named."""
        with self._reloading:
            found = {}
            for name in departments:
                if name not in self.unavailable or self._refused_joins.get(name) == self.policy_version:
                    continue
                try:
                    found[name] = _introspect(self.engine, self.native or {}, self.config, name)
                except CitygateError as error:
                    log.info("department %s is still left out of the schema: %s", name, error.message)
            if not found:
                return []
            order = list(self.config.departments)  # the schema's order is the configuration's
            joined = sorted((*self.catalogue.departments, *found.values()), key=lambda d: order.index(d.name))
            catalogue = Catalogue(tuple(joined))
            self.routes.learn(catalogue)  # more tables known to the routes changes no route taken
            policies = self.policies
            if policies is not None:  # what start-up requires of the policies, over the new tables too
                try:
                    validate_decisions(policies, catalogue, self.catalogue_settings)
                    proof = prove_masks(self.routes, policies, catalogue, self.catalogue_settings)
                except CitygateError as error:
                    proof, text = Proof([], []), error.message
                else:
                    assert self.config.policies is not None
                    text = refusal_text(proof.refusals, self.config.policies.files) if proof.refusals else ""
                if text:  # not tried again under these policies: a proof costs statements on every route
                    log.error("departments %s stay out of the schema: %s", ", ".join(found), text)
                    self._refused_joins.update(dict.fromkeys(found, policies.version))
                    return []
                self.unproven.add(proof)  # the new tables' masks are untried where a route was down
            model = build_model(catalogue, self.catalogue_settings)
            with self._lock:
                self.catalogue = catalogue
                self.model = model
                self.statements.catalogue = catalogue
                self.unavailable = {d: why for d, why in self.unavailable.items() if d not in found}
                self._views = {}
                self.planner.model = model
            self.planner.clear()
        for name in found:
            log.warning("department %s answers again and joins the schema", name)
        return list(found)

    def flush(self) -> None:
        """Write every queued audit record and span, and stop recording (the server is stopping)."""
        if self.audit is not None:
            self.audit.close()
        self.telemetry.close()

    def close(self) -> None:
        """Stop: queued audit records are written first, then spans flushed, then the engine."""
        self._closed.set()
        self.runner.close()
        self.statements.close()
        self.flush()
        self.engine.close()
        self.routes.close()
        self.state.close()


def _introspect(engine: Engine, native: Mapping[str, NativeEngine], config: Config, name: str) -> Department:
    """Department ``name`` as its store has it, with the tables the configuration exposes."""
    try:
        found = engine.introspect_department(name)
    except EngineUnavailableError:
        # The engine does not answer (Trino is down): the gateway still starts, reading the
        # catalogue from the store itself, and serves what it can.
        if name not in native:
            raise
        found = native[name].introspect_department(name)
    # only the tables the configuration names or matches: a table the store gains later is not
    # served unasked
    spec = config.departments[name]
    return replace(found, tables=tuple(t for t in found.tables if spec.exposes(t.name)))


def _native(config: Config) -> dict[str, NativeEngine]:
    """department -> its store's own engine, for the delegated route (none when it is off)."""
    if config.engine.delegate != "auto":
        return {}
    names = [name for name, spec in config.departments.items() if spec.delegate]
    engines = native_engines(config.engine_settings(), config.limits.statement_seconds, names)
    return {department: engine for engine in engines for department in engine.departments}
