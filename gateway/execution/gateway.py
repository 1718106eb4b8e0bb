"""Run a GraphQL request: parse and validate with graphql-core, compile each root field to one
statement, run it on the engine, and shape the rows into the response.

Compiled fields are not resolved field by field through graphql-core; only introspection
(``__schema``, ``__type``) runs through graphql-core's executor. Root fields of one request run
concurrently, and a root field whose department is down answers null with an error while the
others still answer (GraphQL partial results).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import operator
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from cachetools import LRUCache
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    parse,
    validate,
)
from graphql.execution.values import get_variable_values
from graphql.utilities import get_operation_ast
from sqlglot import exp

from catalogue.errors import (
    CitygateError,
    ConfigError,
    EngineUnavailableError,
    NoiseRequiredError,
    PolicyRefused,
    PrivacyBudgetExhausted,
    StoreUnavailableError,
    trace_without_messages,
)
from catalogue.model import Catalogue, Department
from catalogue.sql import departments_in
from connectors.base import Engine, Health
from connectors.native import NativeEngine, native_engines
from gateway.config import Config, Limits
from gateway.execution.budget import RowBudget
from gateway.execution.cache import ResultCache
from gateway.execution.fairness import (
    CALLER,
    CALLER_ROOT_FIELDS,
    ROOT_FIELDS_AT_ONCE,
    STATEMENTS_AT_ONCE,
    Shares,
    busy,
)
from gateway.execution.plans import (
    BASE,
    MEMO_BYTES,
    PER_CHARACTER,
    PER_NODE,
    Memo,
    Plan,
    Response,
    access,
    count_rows,
    document_weight,
    encode,
    plan_weight,
    refused,
)
from gateway.execution.prepared import Refused, Statement, fallback, prepare
from gateway.execution.privacy import PrivacyBudgets, adopt
from gateway.execution.probes import Checks
from gateway.execution.proof import prove_masks, refusal_text
from gateway.execution.routes import Route, Routes
from gateway.execution.statements import Statements
from gateway.execution.views import View, build_view, role_of, validate_decisions
from gateway.graphql.compile import (
    MAX_TERMS,
    CompileContext,
    Compiled,
    CompileError,
    Node,
    TooSlow,
    collect_fields,
    compile_root_field,
    too_slow,
)
from gateway.graphql.cost import Statistics, measure, rows, too_many_values, written
from gateway.graphql.documents import document_hash
from gateway.graphql.errors import UNKNOWN_FIELD, friendly, graphql_error, location, validation_code
from gateway.graphql.introspection import introspect
from gateway.graphql.schema import Model, build_model
from gateway.graphql.shape import shape
from gateway.identity.caller import Identity
from gateway.observe.audit import Sink, open_sink
from gateway.observe.metrics import Metrics
from gateway.observe.telemetry import Telemetry
from gateway.state import State, StateUnavailable
from policies.model import Policies, load_policies
from policies.noise import noisy_rows, spend

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
    # Root fields of requests that have several, side by side (see _run_all).
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(32, thread_name_prefix="citygate"))
    statements: Statements = field(init=False)  # where statements run, each within its time
    root_fields: Shares = field(default_factory=lambda: Shares(CALLER_ROOT_FIELDS))  # per caller, in `pool`
    results: ResultCache = field(init=False)
    state: State = field(init=False)  # shared by every worker and gateway on it: budgets, rate limits
    privacy: PrivacyBudgets = field(init=False)  # each role's noisy answers' spending
    _plans: LRUCache[Any, Plan] = field(init=False)
    # each cached plan's last answer, kept beside the plan (which never changes) while it is cached
    _memos: weakref.WeakKeyDictionary[Plan, Memo] = field(default_factory=weakref.WeakKeyDictionary)
    _documents: LRUCache[Any, tuple[int, DocumentNode | Response]] = field(init=False)
    _introspections: LRUCache[Any, bytes] = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _reloading: threading.Lock = field(default_factory=threading.Lock)  # one reload at a time
    _probing: threading.Lock = field(default_factory=threading.Lock)  # one health check at a time
    _health: tuple[float, Health] | None = None  # the last check: when, and what it found
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
        self._plans = LRUCache(maxsize=cache.plan_bytes, getsizeof=plan_weight)
        self._documents = LRUCache(maxsize=cache.plan_bytes, getsizeof=document_weight)
        self._introspections = LRUCache(maxsize=cache.max_bytes, getsizeof=len)
        self.statements = Statements(
            self.engine,
            self.catalogue,
            self.config.limits.statement_seconds,
            shares=Shares(STATEMENTS_AT_ONCE, parallelism=self.engine.parallelism),
        )
        self.statistics = Statistics(self._statistic)
        if self.native is None:
            self.native = _native(self.config)
        self.routes = Routes(self.config, self.engine, self.catalogue, self.native)
        if self.audit is not None:
            self.metrics.watch_audit(self.audit.backlog, self.audit.trouble)

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
        model = build_model(catalogue, config)
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
                validate_decisions(policies, catalogue, config)
                if prove:
                    gateway.require_proven(policies)
            except ConfigError:
                gateway.close()
                raise
        if unavailable:  # with no probe or scrape to notice, the gateway looks for them itself
            threading.Thread(target=gateway._watch, name="citygate-rejoin", daemon=True).start()
        return gateway

    def require_proven(self, policies: Policies) -> None:
        """:class:`ConfigError` unless every mask of ``policies`` gives the same values on every
        route and hides what it should (:func:`~gateway.execution.proof.prove_masks`)."""
        refusals = prove_masks(self.routes, policies, self.catalogue, self.config)
        if refusals:
            assert self.config.policies is not None
            raise ConfigError(refusal_text(refusals, self.config.policies.files))

    def _watch(self) -> None:
        """Check again every :data:`REJOIN_SECONDS` until every department left out at start-up
        has joined (:meth:`rejoin`, from :meth:`health`), or the gateway closes."""
        while self.unavailable and not self._closed.wait(REJOIN_SECONDS):
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
    def _unresponsive(self) -> dict[str, float]:
        """The departments left alone for now, and until when (:class:`Statements`)."""
        return self.statements.unresponsive

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
        validate_decisions(policies, self.catalogue, self.config)
        self.require_proven(policies)
        with self._lock:
            self.policies = policies
            self._views = {}
            self._plans.clear()
            self._documents.clear()
            self._introspections.clear()
        log.info("policies reloaded: version %s", policies.version)
        return policies.version

    def view(self, identity: Identity | None) -> View:
        """The role's view. With policies configured, a request without identity is anonymous:
        deny by default, and a role without a policy sees nothing."""
        if self.follows_files:
            self.follow_files()
        policies = self.policies
        role = role_of(policies, identity)
        found = self._views.get(role)
        if found is not None:
            return found
        if policies is None or role is None:
            view = View(None, self.model, version=policies.version if policies is not None else "-")
        else:
            view = build_view(role, policies, self.catalogue, self.config)
        with self._lock:
            if self.policies is policies:  # not replaced by a reload meanwhile
                self._views[role] = view
        return view

    # -- requests ----------------------------------------------------------------------------

    def _document(self, query: str, view: View) -> DocumentNode | Response:
        """The parsed and validated document, once per (query, role, policy version)."""
        key = (query, view.role, view.version)
        with self._lock:
            found = self._documents.get(key)
        if found is not None:
            self.metrics.count_lookup("document", "hit")
            return found[1]
        self.metrics.count_lookup("document", "miss")
        with self.telemetry.stage("parse"):
            made = self._validated(query, view)
        with self._lock, contextlib.suppress(ValueError):
            # Weighed by the query, which the key holds whether it parsed or was refused: a flood
            # of distinct megabyte queries over the token limit is as heavy as one that parses.
            self._documents[key] = (BASE + PER_CHARACTER * len(query), made)
        return made

    def _validated(self, query: str, view: View) -> DocumentNode | Response:
        try:
            document = parse(query, max_tokens=self.config.limits.max_tokens)
        except GraphQLError as error:
            return refused([graphql_error(error.message, "GRAPHQL_PARSE_FAILED", locations=error.locations)])
        too_many = written(document).over(self.limits(view.role))
        if too_many is not None:  # refused before validation, which takes time in its square
            return refused([graphql_error(too_many, "COST_LIMIT")])
        writes = [
            d for d in document.definitions if isinstance(d, OperationDefinitionNode) and d.operation.value != "query"
        ]
        if writes:  # before validation, whose words ("not configured for mutations") say less
            message = f"{writes[0].operation.value} operations are not supported; citygate is read-only"
            return refused([graphql_error(message, "BAD_REQUEST", locations=[location(writes[0])])])
        errors = validate(view.model.schema, document)
        if errors:
            invalid = refused(
                [
                    graphql_error(friendly(e.message, view.role), validation_code(e), locations=e.locations)
                    for e in errors
                ]
            )
            invalid.plan = Plan(refused=invalid, access=self._refused_fields(errors))
            return invalid
        return document

    def _refused_fields(self, errors: list[GraphQLError]) -> list[dict[str, Any]]:
        """For the audit: the columns a refused request asked for that its role may not see."""
        denied: list[dict[str, Any]] = []
        for error in errors:
            match = UNKNOWN_FIELD.match(error.message)
            table = self.model.tables.get(match.group(2)) if match else None
            if match and table is not None and match.group(1) in table.all_columns:
                denied.append(
                    {"department": table.department, "table": table.name, "columns": {match.group(1): "denied"}}
                )
        return denied

    def _prepare(
        self, query: str, variables: Mapping[str, Any] | None, operation_name: str | None, view: View
    ) -> Response | tuple[DocumentNode, OperationDefinitionNode, CompileContext]:
        """Parse, validate, pick the operation and coerce its variables, or refuse the request."""
        document = self._document(query, view)
        if isinstance(document, Response):
            return document
        model = view.model
        operation = get_operation_ast(document, operation_name)
        if operation is None:
            message = (
                f"no operation named {operation_name!r}"
                if operation_name
                else "the document has several operations; send operationName"
            )
            return refused([graphql_error(message, "BAD_REQUEST")])
        if operation.operation != OperationType.QUERY:
            message = f"{operation.operation.value} operations are not supported; citygate is read-only"
            return refused([graphql_error(message, "BAD_REQUEST")])
        if too_many_values(variables):
            message = (
                f"the variables hold more values than the filters of one request may use (more than {MAX_TERMS} "
                "conditions, `_in` values counted each); ask for less in one request"
            )
            return refused([graphql_error(message, "COST_LIMIT")])
        coerced = get_variable_values(model.schema, operation.variable_definitions or (), dict(variables or {}))
        if isinstance(coerced, list):
            return refused([graphql_error(e.message, "BAD_USER_INPUT", locations=e.locations) for e in coerced])
        fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        return document, operation, CompileContext(model, fragments, coerced, cap=self.config.limits.max_rows + 1)

    def _key(
        self, query: str, variables: Mapping[str, Any] | None, operation_name: str | None, view: View, claims: Any
    ) -> tuple[Any, ...] | None:
        """The plan key. It holds the variables (compiled trees carry values as literals), the
        role, the policy version, and the claims the role's policies read (the plan caches its
        rewritten SQL), so two callers share a plan only when they would run the same statement.
        None when the variables cannot be keyed."""
        try:
            return (
                query,
                operation_name,
                json.dumps(variables, sort_keys=True, default=str) if variables else "",
                view.role,
                view.version,
                json.dumps(claims, sort_keys=True, default=str) if claims else "",
            )
        except (TypeError, ValueError, RecursionError):
            return None

    def plan(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        operation_name: str | None = None,
        identity: Identity | None = None,
        view: View | None = None,
        started: float | None = None,
    ) -> Plan:
        """Parse, validate and compile a request once; a repeated request reuses its plan.
        ``view``: the role's view the request already took (a reload meanwhile must not give
        the plan another's); ``started``: when the request's preparation began (its
        ``limits.plan_seconds`` count from then)."""
        started = time.monotonic() if started is None else started
        view = view or self.view(identity)
        key = self._key(query, variables, operation_name, view, view.used_claims(identity))
        if key is not None:
            with self._lock:
                found = self._plans.get(key)
            if found is not None:
                self.metrics.count_lookup("plan", "hit")
                return found
            self.metrics.count_lookup("plan", "miss")
        made = self._make_plan(query, variables, operation_name, view, identity, started)
        if key is None or made.transient:  # planned each time, or refused for time (not for good)
            return made
        weight = PER_CHARACTER * (len(query) + len(key[2])) + sum(
            PER_NODE * sum(1 for _ in c.tree.walk()) for c in made.compiled.values()
        )
        made = replace(made, weight=weight)
        with self._lock, contextlib.suppress(ValueError):  # one plan larger than the whole cache is not kept
            self._plans[key] = made
        return made

    def _make_plan(
        self,
        query: str,
        variables: Mapping[str, Any] | None,
        operation_name: str | None,
        view: View,
        identity: Identity | None,
        started: float,
    ) -> Plan:
        """Parse, validate and compile the request, weigh it, then make each root field's
        statement as the role runs it: the whole of a plan, made once."""
        limits = self.limits(view.role)
        prepared = self._prepare(query, variables, operation_name, view)
        if isinstance(prepared, Response):
            return self._finished(query, view, prepared.plan or Plan(refused=prepared))
        document, operation, ctx = prepared
        ctx.deadline, ctx.seconds = started + limits.plan_seconds, limits.plan_seconds
        root_type = view.model.schema.query_type
        assert root_type is not None
        too_much = measure(ctx, operation.selection_set, limits.max_fields).over(limits)
        if too_much is not None:  # refused before anything is compiled
            return self._finished(query, view, Plan(refused=refused([graphql_error(too_much, "COST_LIMIT")])))
        keys: list[str] = []
        static: dict[str, str] = {}
        compiled: dict[str, Compiled] = {}
        errors: list[dict[str, Any]] = []
        locations: dict[str, dict[str, int]] = {}
        introspection: dict[str, list[FieldNode]] = {}
        with self.telemetry.stage("compile"):
            for key, nodes in collect_fields(ctx, [operation.selection_set]).items():
                name = nodes[0].name.value
                keys.append(key)
                locations[key] = location(nodes[0])
                if name == "__typename":
                    static[key] = root_type.name
                elif name.startswith("__"):
                    introspection[key] = nodes
                else:
                    try:
                        compiled[key] = compile_root_field(ctx, key, nodes, root_type)
                    except TooSlow as error:  # the whole request: it may pass when the gateway is less busy
                        return Plan(refused=refused([graphql_error(error.message, error.code)]), transient=True)
                    except CompileError as error:
                        errors.append(
                            graphql_error(
                                error.message, error.code, path=error.path or [key], locations=[locations[key]]
                            )
                        )
        cost, too_costly = self._weigh(compiled, limits)
        if too_costly is not None:
            plan = Plan(refused=too_costly, access=access(compiled.values(), view), cost=cost)
            return self._finished(query, view, plan)
        statements = self._statements(compiled, view, view.used_claims(identity), ctx.deadline)
        plan = Plan(
            keys=tuple(keys),
            static=static,
            compiled=compiled,
            statements=statements,
            errors=tuple(errors),
            locations=locations,
            introspection=(document, operation, introspection) if introspection else None,
            access=access(compiled.values(), view),
            cost=cost,
            transient=any(isinstance(s, Refused) and not s.lasting for s in statements.values()),
        )
        return self._finished(query, view, plan)

    def _finished(self, query: str, view: View, plan: Plan) -> Plan:
        """``plan`` with what the audit trail records of it, encoded once, and its version."""
        audited = document_hash(query), orjson.Fragment(orjson.dumps(plan.access, option=orjson.OPT_SORT_KEYS))
        return replace(plan, audited=audited, version=view.version)

    def _statements(
        self, compiled: Mapping[str, Compiled], view: View, claims: Mapping[str, Any], deadline: float
    ) -> dict[str, Statement | Refused]:
        """Each root field's statement as the role runs it (:func:`prepare`), or why it has
        none. The rewrite, the last of the planning, starts only before ``deadline``; a store
        that fails while its text is made fails that root field, for this request only."""
        made: dict[str, Statement | Refused] = {}
        for key, field_plan in compiled.items():
            if time.monotonic() > deadline:
                error: CitygateError = TooSlow(too_slow(self.limits(view.role).plan_seconds), [key])
                made[key] = Refused(field_plan, error, error.message, lasting=False)
                continue
            try:
                with self.telemetry.stage("policy", role=view.role or ""):
                    made[key] = prepare(field_plan, view, claims, self.routes)
            except CitygateError as error:  # a store asked while rendering (its collation, its types)
                detail = self.engine.redact(error.detail or "")
                made[key] = Refused(
                    field_plan, error.with_traceback(None), f"{error.message} ({detail})", lasting=False
                )
            except Exception as error:  # a bug must not take the server down or leak a trace
                reason = self.engine.redact(trace_without_messages(error))
                internal = CitygateError("internal error while running the query")
                made[key] = Refused(field_plan, internal, reason, lasting=False)
        return made

    def _weigh(self, compiled: Mapping[str, Compiled], limits: Limits) -> tuple[int, Response | None]:
        """The rows the statements of ``compiled`` may materialise at worst, or the request's
        refusal (else None) if that is more than its role may (:mod:`gateway.graphql.cost`). A root field
        whose stores do not answer the statistics is left to fail by itself, with its own error."""
        cost = 0
        worst: tuple[int, str, Node | None] = (-1, "", None)
        for key, field_plan in compiled.items():
            try:
                total, node = rows(field_plan, self.statistics)
            except CitygateError as error:
                log.info("no estimate for root field %s: %s", key, error.message)
                continue
            cost += total
            if total > worst[0]:
                worst = (total, key, node)
        if cost <= limits.max_cost:
            return cost, None
        _, key, node = worst
        where = ".".join(str(p) for p in node.path) if node is not None else key
        message = (
            f"the query may read about {_rounded(cost):,} rows at worst, more than the {limits.max_cost:,} "
            f"its role may; give `{where}` a smaller `limit`, filter it with `where`, or ask for fewer levels"
        )
        return cost, refused([graphql_error(message, "COST_LIMIT", estimate=_rounded(cost), limit=limits.max_cost)])

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
            return self._introspection_only(plan, query, variables, operation_name, view, claims)
        data: dict[str, Any] = {key: plan.static.get(key) for key in plan.keys}
        errors_out: list[dict[str, Any]] = list(plan.errors)
        if plan.introspection is not None:
            document, operation, fields = plan.introspection
            data.update(introspect(document, operation, fields, variables, errors_out, view.model))
        response = Response({}, plan=plan, claims=claims)
        budget = RowBudget(self.config.limits.max_rows)
        deadline = started + self.limits(view.role).plan_seconds
        for key, (outcome, cached, route) in self._run_all(plan.statements, view, budget, deadline).items():
            response.routes[key] = route
            response.cache[key] = "miss" if isinstance(outcome, CitygateError) else cached
            if isinstance(outcome, CitygateError):
                extensions: dict[str, Any] = {}
                if isinstance(outcome, StoreUnavailableError):
                    extensions["department"] = outcome.department
                elif isinstance(outcome, PrivacyBudgetExhausted):
                    extensions["renews"] = outcome.renews.strftime("%Y-%m-%dT%H:%M:%SZ")
                errors_out.append(
                    graphql_error(
                        outcome.message, outcome.code, path=[key], locations=[plan.locations[key]], **extensions
                    )
                )
            else:
                data[key] = outcome
                response.rows[key] = count_rows(outcome)
                response.statements += cached != "hit"
                statement = plan.statements[key]
                noise = statement.noise if isinstance(statement, Statement) else None
                if noise and cached != "hit":  # a fresh draw; a cached one spent nothing
                    response.epsilon[key] = spend(r for node in noise.values() for r in node.values())
        response.body = {"errors": errors_out, "data": data} if errors_out else {"data": data}
        return response

    def _introspection_only(
        self,
        plan: Plan,
        query: str,
        variables: Mapping[str, Any] | None,
        operation_name: str | None,
        view: View,
        claims: dict[str, Any],
    ) -> Response:
        """An introspection request, answered once per (document, variables, role, policy
        version): over a large catalogue graphql-core takes seconds to compute it, and every
        GraphiQL page load asks for it. Kept encoded (a tenth of its size as Python objects) in
        a cache bounded by bytes."""
        key = self._key(query, variables, operation_name, view, None)
        with self._lock:
            encoded = self._introspections.get(key) if key is not None else None
        self.metrics.count_lookup("introspection", "hit" if encoded is not None else "miss")
        if encoded is None:
            assert plan.introspection is not None
            document, operation, fields = plan.introspection
            errors: list[dict[str, Any]] = []
            data = {k: plan.static.get(k) for k in plan.keys}
            data.update(introspect(document, operation, fields, variables, errors, view.model))
            body: dict[str, Any] = {"errors": errors, "data": data} if errors else {"data": data}
            encoded = encode(body)
            if key is not None and not errors and len(encoded) <= self._introspections.maxsize:
                with self._lock:
                    self._introspections[key] = encoded
            return Response(body, plan=plan, claims=claims, encoded=encoded)
        return Response(orjson.loads(encoded), plan=plan, claims=claims, encoded=encoded)

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
        key = self._key(query, variables, operation_name, view, claims)
        if key is None:
            return None
        with self._lock:
            plan = self._plans.get(key)
        if plan is None or plan.refused is not None or plan.introspection is not None or plan.errors:
            return None
        rows, left = [], self.config.limits.max_rows
        for statement in plan.statements.values():
            found = (
                self.results.get(statement.route.key, statement.text, statement.release)
                if isinstance(statement, Statement)
                else None
            )
            if found is None or len(found) > left:  # over the row limit: the full path says so
                return None
            rows.append(found)
            left -= len(found)
        self.metrics.count_cached(len(rows))
        # The same cached rows as last time (the very objects; cache entries are never changed
        # in place): the same answer, shaped and encoded already. Within one plan the claims
        # are the same too (the plan's key holds them).
        memo = self._memos.get(plan)
        if memo is not None and all(map(operator.is_, memo.rows, rows)):
            return memo.response
        data: dict[str, Any] = {key: plan.static.get(key) for key in plan.keys}
        counts: dict[str, int] = {}
        for (name, statement), found in zip(plan.statements.items(), rows, strict=True):
            assert isinstance(statement, Statement)
            with self.telemetry.stage("shape"):
                data[name] = value = shape(statement.compiled, found, statement.builders)
            counts[name] = count_rows(value)
        body = {"data": data}
        response = Response(
            body,
            plan=plan,
            rows=counts,
            cache=dict.fromkeys(plan.statements, "hit"),
            routes={name: _route_name(s) for name, s in plan.statements.items()},
            claims=claims,
            encoded=encode(body),
        )
        if len(response.encoded or b"") <= MEMO_BYTES:
            self._memos[plan] = Memo(tuple(rows), response)
        return response

    def memo_of(self, plan: Plan) -> Memo | None:
        """``plan``'s last answer made wholly of cached rows, if it has one."""
        return self._memos.get(plan)

    def memo_parts(self, plan: Plan) -> list[tuple[str, str, str, Sequence[Any]]]:
        """The cached rows ``plan``'s memo was made of, each with what the result cache keeps it
        under (route key, statement text, release): the memo stands while each is still there."""
        memo = self._memos.get(plan)
        assert memo is not None
        return [
            (statement.route.key, statement.text, statement.release, found)
            for statement, found in zip(plan.statements.values(), memo.rows, strict=True)
            if isinstance(statement, Statement)
        ]

    def _run_all(
        self, statements: Mapping[str, Statement | Refused], view: View, budget: RowBudget, deadline: float
    ) -> dict[str, tuple[Any, str, str]]:
        if len(statements) <= 1:
            return {key: self._run(statement, view, budget) for key, statement in statements.items()}
        # Root fields side by side, each in a thread carrying the request's context (request id,
        # span, caller), but at most ROOT_FIELDS_AT_ONCE of one request at a time: a request of
        # many aliases waits behind itself, not others behind it.
        caller = CALLER.get()
        deadline = time.monotonic() + self.limits(view.role).statement_seconds
        waiting = list(statements.items())
        running: dict[Future[tuple[Any, str, str]], str] = {}
        done: dict[str, tuple[Any, str, str]] = {}
        while waiting or running:
            while waiting and len(running) < ROOT_FIELDS_AT_ONCE:
                if not self.root_fields.acquire(caller, 0 if running else max(0.0, deadline - time.monotonic())):
                    if running:  # one of its own ends first
                        break
                    key, _ = waiting.pop(0)
                    done[key] = (busy(), "off", "-")
                    continue
                key, statement = waiting.pop(0)
                future = self.pool.submit(contextvars.copy_context().run, self._run, statement, view, budget)
                future.add_done_callback(lambda _, c=caller: self.root_fields.release(c))  # type: ignore[misc]
                running[future] = key
            if running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    done[running.pop(future)] = future.result()
        return {key: done[key] for key in statements}

    def _refusal(self, refused_field: Refused, view: View) -> CitygateError:
        """What a root field without a statement answers, said in the server log as the
        request's own failure would be (the caller gets only the error)."""
        key, error = refused_field.compiled.key, refused_field.error
        if isinstance(error, NoiseRequiredError):
            log.warning("root field %s for role %s: %s", key, view.role, refused_field.reason)
        elif isinstance(error, PolicyRefused):
            log.error("policy check refused root field %s for role %s: %s", key, view.role, refused_field.reason)
        else:
            log.warning("root field %s failed: %s", key, refused_field.reason)
            self.metrics.engine_errors.labels(engine=self.engine.name, code=error.code, route="-").inc()
        return error

    def _run(self, statement: Statement | Refused, view: View, budget: RowBudget) -> tuple[Any, str, str]:
        """The root field's value (or its error), whether the cache answered it, and the route
        it took. Its rows count against the request's ``budget`` (see :class:`RowBudget`)."""
        if isinstance(statement, Refused):  # nothing runs, nothing is spent
            return self._refusal(statement, view), "off", "-"
        started = time.perf_counter()
        compiled, route = statement.compiled, statement.route
        engine = route.engine.name
        cached = "off"
        try:
            try:
                rows, cached = self._fetch(route, statement.text, statement, view, budget)
            except EngineUnavailableError:
                other = fallback(statement, self.routes)
                if other is None:
                    raise
                route, text = other
                engine = route.engine.name
                rows, cached = self._fetch(route, text, statement, view, budget)
            self.metrics.count_lookup("result", cached)
            budget.take(len(rows))
        except CitygateError as error:
            detail = self.engine.redact(error.detail or "")
            log.warning("root field %s failed: %s (%s)", compiled.key, error.message, detail)
            self.metrics.engine_errors.labels(engine=engine, code=error.code, route=route.name).inc()
            return error, cached, route.name
        except Exception as error:  # an engine bug must not take the server down or leak a trace
            # where it failed, not what it said: an engine's message may quote the values it read
            # or its key material
            log.error("root field %s failed: %s", compiled.key, self.engine.redact(trace_without_messages(error)))
            self.metrics.engine_errors.labels(engine=engine, code="INTERNAL", route=route.name).inc()
            return CitygateError("internal error while running the query"), cached, route.name
        with self.telemetry.stage("shape"):
            value = shape(compiled, rows, statement.builders)
        elapsed = time.perf_counter() - started
        for department in compiled.departments:
            self.metrics.statement_seconds.labels(department=department, engine=engine, route=route.name).observe(
                elapsed
            )
        log.debug(
            "root field %s: %d rows in %.1f ms on %s (cache %s)",
            compiled.key,
            len(rows),
            elapsed * 1000,
            engine,
            cached,
        )
        return value, cached, route.name

    def _fetch(
        self, route: Route, text: str, statement: Statement, view: View, budget: RowBudget
    ) -> tuple[Sequence[Any], str]:
        """``statement``'s rows as ``text`` on ``route`` (from the result cache, or run there),
        and whether the cache answered."""
        statement_seconds = self.limits(view.role).statement_seconds
        departments = statement.compiled.departments
        noise = statement.noise

        def run() -> Sequence[Any]:
            # A noisy answer spends its role's budget before it runs, on whichever route, and is
            # kept in the cache with its noise: asked again, the same draw comes back and costs
            # nothing, so repeating a question averages no noise away. A run that fails (on the
            # engine before its fallback, too) released nothing and gives its spending back.
            cost = spend(r for node in noise.values() for r in node.values())
            if cost:
                self._spend(view, cost)
            try:
                with self.telemetry.stage(
                    "engine", engine=route.engine.name, route=route.name, departments=",".join(departments)
                ):
                    # the whole limit, not what this request has left: a run may be shared with
                    # another request's (the result cache runs one for all who wait on it)
                    rows = self.statements.run(text, departments, budget.rows, statement_seconds, route.engine)
            except BaseException:
                if cost:  # nothing was released
                    assert view.role is not None and view.privacy is not None
                    try:
                        self.privacy.refund(view.role, cost, view.privacy)
                    except StateUnavailable as error:  # the spending stands: fail closed
                        log.error("could not give back epsilon %g of role %s: %s", cost, view.role, error.detail)
                raise
            return noisy_rows(rows, noise) if cost else rows

        # "off": a department forbids caching, or the answer is too big to keep
        return self.results.fetch(route.key, text, departments, run, statement.release)

    def _spend(self, view: View, cost: float) -> None:
        """Spend ``cost`` of the role's privacy budget, or refuse the answer."""
        if view.role is None or view.privacy is None:  # the policy model requires a budget
            raise PolicyRefused()
        self.privacy.spend(view.role, cost, view.privacy)

    # -- tools -----------------------------------------------------------------------------

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
    ) -> list[Statement | Refused]:
        """Each data root field's statement as ``identity``'s role runs it (or why it has none),
        from the very plan a request runs: what `citygate explain` and the console print.
        :class:`CompileError` if the query does not compile."""
        plan = self.plan(query, variables, operation_name, identity)
        refusals = plan.refused.body["errors"] if plan.refused is not None else plan.errors
        if refusals:
            raise CompileError("; ".join(e["message"] for e in refusals))
        return list(plan.statements.values())

    def health(self) -> Health:
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
            found = self._check()
            self._health = (time.monotonic(), found)
            self.metrics.record_health(found.engine, found.reachable, found.departments, found.routes)
        finally:
            self._probing.release()
        back = [d for d in self.unavailable if found.departments.get(d) == "ok"]
        if back:
            self.rejoin(back)
        return found

    def _check(self) -> Health:
        """The engine, each department through it and each store's own route, checked side by
        side, each within :data:`~gateway.execution.probes.CHECK_SECONDS`: a store that stopped
        answering mid-conversation is named, and holds neither the probe nor the others' checks."""
        engine = self.engine
        checks: dict[str, Callable[[], object]] = {"": engine.ping}
        checks |= {f"department:{d}": functools.partial(engine.ping_department, d) for d in engine.departments}
        checks |= self.routes.pings()
        states = self.checks.run(checks)
        reachable = states.pop("") == "ok"
        departments = {d: states.pop(f"department:{d}") for d in engine.departments}
        if not reachable:
            departments = dict.fromkeys(departments, "unknown: the engine does not answer")
        routes = {engine.name: "ok" if reachable else "the engine does not answer", **states}
        return Health(engine.name, reachable, departments, routes=routes)

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
                    validate_decisions(policies, catalogue, self.config)
                    refusals = prove_masks(self.routes, policies, catalogue, self.config)
                except CitygateError as error:
                    refusals, text = [], error.message
                else:
                    assert self.config.policies is not None
                    text = refusal_text(refusals, self.config.policies.files) if refusals else ""
                if text:  # not tried again under these policies: a proof costs statements on every route
                    log.error("departments %s stay out of the schema: %s", ", ".join(found), text)
                    self._refused_joins.update(dict.fromkeys(found, policies.version))
                    return []
            model = build_model(catalogue, self.config)
            with self._lock:
                self.catalogue = catalogue
                self.model = model
                self.statements.catalogue = catalogue
                self.unavailable = {d: why for d, why in self.unavailable.items() if d not in found}
                self._views = {}
                self._plans.clear()
                self._documents.clear()
                self._introspections.clear()
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
        self.pool.shutdown(wait=False, cancel_futures=True)
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


def _route_name(statement: Statement | Refused) -> str:
    return statement.route.name if isinstance(statement, Statement) else "-"


def _rounded(number: int) -> int:
    """``number`` to two significant digits: an estimate says no more than it knows, and tells
    no caller a table's exact size."""
    digits = max(len(str(number)) - 2, 0)
    return round(number, -digits)
