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
import json
import logging
import operator
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
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
    SelectionSetNode,
    execute_sync,
    parse,
    validate,
)
from graphql.execution.values import get_variable_values
from graphql.utilities import get_operation_ast
from sqlglot import exp

from catalogue.model import Catalogue, Department, SharingClass
from catalogue.types import LogicalType
from connectors.base import Engine, logical_table
from gateway.audit import Sink, open_sink
from gateway.cache import ResultCache
from gateway.compile import Compiled, CompileError, Context, collect_fields, compile_root_field
from gateway.config import Config
from gateway.errors import (
    CitygateError,
    ConfigError,
    EngineUnavailableError,
    ResultTooLarge,
    StatementTimeout,
    StoreUnavailableError,
)
from gateway.metrics import Metrics
from gateway.schema import Model, build_model
from gateway.shape import shape
from gateway.telemetry import Telemetry
from policies.decide import TableDecision, decide
from policies.model import Policies, load_policies
from policies.rewrite import KEY, TIE, PolicyViolation, enforce
from policies.rewrite import Context as PolicyContext
from policies.rowfilter import claims_used, parse_filter

log = logging.getLogger("citygate")

_UNKNOWN_FIELD = re.compile(r"Cannot query field '([^']+)' on type '([^']+)'\.(?: Did you mean (.+)\?)?")


@dataclass
class Response:
    """A GraphQL response, whether the request itself was refused (parse, validation), and
    what the audit trail records of it."""

    body: dict[str, Any]
    request_error: bool = False
    statements: int = 0  # statements the engine ran (cache hits excluded)
    plan: Plan | None = None
    rows: dict[str, int] = field(default_factory=dict)  # response key -> rows returned
    cache: dict[str, str] = field(default_factory=dict)  # response key -> hit, miss or off
    claims: dict[str, Any] = field(default_factory=dict)  # the claims the role's policies use
    encoded: bytes | None = None  # the body as JSON, when it was encoded already


class RowBudget:
    """The rows one request may still return (``limits.max_rows``), shared by its root fields.

    A statement reads at most the limit (the engines stop there: a run may serve several
    requests at once), and its rows are then taken from what this request has left; root
    fields run side by side, so together they may read up to the limit each, but the request's
    answer holds at most the limit in all."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.left = rows
        self._lock = threading.Lock()

    def take(self, count: int) -> None:
        """Count ``count`` rows against the budget; :class:`ResultTooLarge` once it is spent."""
        with self._lock:
            if count > self.left:
                raise ResultTooLarge(self.rows)
            self.left -= count


@dataclass(frozen=True)
class Memo:
    """A cached plan's last answer: the cached rows it came from (the very objects), and the
    response made of them, shaped and encoded. Nothing changes either once made."""

    rows: tuple[Any, ...]
    response: Response


def encode(body: Any) -> bytes:
    """A response body as compact UTF-8 JSON."""
    return orjson.dumps(body)


@dataclass
class Plan:
    """What a request compiles to: reused as long as the schema stands."""

    refused: Response | None = None
    keys: list[str] = field(default_factory=list)  # response keys, in order
    static: dict[str, Any] = field(default_factory=dict)  # root __typename
    compiled: dict[str, Compiled] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    locations: dict[str, dict[str, int]] = field(default_factory=dict)
    introspection: tuple[DocumentNode, OperationDefinitionNode, dict[str, list[FieldNode]]] | None = None
    access: list[dict[str, Any]] = field(default_factory=list)  # the audit's account of what it reads
    memo: Memo | None = None  # set by the cached path (Gateway.execute_cached)
    audited: tuple[str, orjson.Fragment] | None = None  # the query's hash and `access` as JSON, made once
    weight: int = 0  # its estimated size in memory, for the plan cache's budget
    version: str = "-"  # the policies' version it was made under


# The masks that fit only some kinds of column (the others fit any).
_FITS = {"year": ("date", "timestamp"), "bucket": ("integer", "bigint", "double", "decimal")}


# What a plan or a parsed document holds in memory, as measured with tracemalloc: about 100
# bytes per character of the query (the document's nodes) and 450 per node of a compiled tree.
_PER_CHARACTER, _PER_NODE, _BASE = 100, 450, 4096
MEMO_BYTES = 16 << 10  # a larger answer is shaped again from the cached rows, not kept encoded


def _plan_weight(plan: Plan) -> int:
    return _BASE + MEMO_BYTES + plan.weight  # the memo comes later: counted at its largest


def _document_weight(entry: tuple[int, DocumentNode | Response]) -> int:
    return entry[0]


@dataclass(frozen=True)
class Identity:
    """Who asks: the one role a request acts as, the claims its policies may use, and the
    token's subject for the audit trail."""

    role: str
    claims: Mapping[str, Any] = field(default_factory=dict)
    subject: str | None = None


def _join_columns(model: Model) -> dict[tuple[str, str], frozenset[str]]:
    """The columns of each table that the role's relationships join on, at either end."""
    keys: dict[tuple[str, str], set[str]] = {}
    for table in model.tables.values():
        for relation in table.relations.values():
            target = model.tables.get(relation.target)
            if target is None:  # a relationship into a table the role may not read links nothing
                continue
            keys.setdefault((table.department, table.name), set()).add(relation.column)
            keys.setdefault((target.department, target.name), set()).add(relation.target_column)
    return {key: frozenset(columns) for key, columns in keys.items()}


@dataclass
class View:
    """The gateway as one role sees it: its schema, and the policy rewrite of its queries."""

    role: str | None
    model: Model
    decisions: dict[tuple[str, str], TableDecision] | None = None
    types: dict[tuple[str, str], dict[str, LogicalType]] = field(default_factory=dict)
    claim_names: tuple[str, ...] = ()  # the claims this role's row filters read
    keys: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)  # columns relationships join on
    version: str = "-"  # the policies' version it was made of: every cache key holds this one

    def used_claims(self, identity: Identity | None) -> dict[str, Any]:
        """The caller's claims that this role's policies read: all that can change its SQL."""
        if identity is None or not self.claim_names:
            return {}
        return {name: identity.claims.get(name) for name in self.claim_names}

    def rewrite(self, tree: exp.Expr, claims: Mapping[str, Any]) -> exp.Expr:
        if self.decisions is None:
            return tree
        return enforce(tree, PolicyContext(self.decisions, self.types, claims, self.keys))


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
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8, thread_name_prefix="citygate"))
    # Where statements run, so that a request waits for one no longer than the limit allows.
    statements: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(32, thread_name_prefix="citygate-statement")
    )
    _unresponsive: dict[str, float] = field(default_factory=dict)  # department -> left alone until
    _probes: dict[str, Future[bool]] = field(default_factory=dict)  # department -> its probe now out
    results: ResultCache = field(init=False)
    _plans: LRUCache[Any, Plan] = field(init=False)
    _documents: LRUCache[Any, tuple[int, DocumentNode | Response]] = field(init=False)
    _introspections: LRUCache[Any, bytes] = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _reloading: threading.Lock = field(default_factory=threading.Lock)  # one reload at a time
    _views: dict[str | None, View] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cache = self.config.cache
        self.results = ResultCache(cache, {n: d.cache_ttl_seconds for n, d in self.config.departments.items()})
        self._plans = LRUCache(maxsize=cache.plan_bytes, getsizeof=_plan_weight)
        self._documents = LRUCache(maxsize=cache.plan_bytes, getsizeof=_document_weight)
        self._introspections = LRUCache(maxsize=cache.max_bytes, getsizeof=len)
        if self.audit is not None:
            self.metrics.watch_backlog(self.audit.backlog)

    @classmethod
    def start(cls, config: Config, engine: Engine, telemetry: Telemetry | None = None) -> Gateway:
        """Introspect every department (a department that is down is left out and named)."""
        departments: list[Department] = []
        unavailable: dict[str, str] = {}
        for name in config.departments:
            try:
                departments.append(engine.introspect_department(name))
            except CitygateError as error:
                unavailable[name] = error.message
                log.warning("department left out of the schema: %s", error.message)
        catalogue = Catalogue(tuple(departments))
        model = build_model(catalogue, config)
        policies = load_policies(config.policies.files) if config.policies is not None else None
        if config.audit is None:
            log.warning("the audit trail is off: configure `audit` to record who reads what")
        gateway = cls(
            config=config,
            engine=engine,
            model=model,
            catalogue=catalogue,
            policies=policies,
            unavailable=unavailable,
            audit=open_sink(config.audit),
            telemetry=telemetry or Telemetry.configure(config.telemetry),
        )
        if policies is not None:
            try:
                gateway._check_decisions(policies)
            except ConfigError:
                gateway.close()
                raise
        return gateway

    def _check_decisions(self, policies: Policies) -> None:
        """Every role's decision on every table can be made and fits the table: a row filter
        over a column the table lacks, or `year` of a text column, fails here, naming its key,
        rather than at each of the role's requests."""
        tables = [(t, self._classes(t.department, t.name, [c.name for c in t.columns])) for t in self.catalogue.tables]
        for role in sorted(policies.roles):
            for table, classes in tables:
                try:
                    decision = decide(policies, role, table.department, table.name, classes)
                except ValueError as error:
                    raise ConfigError(f"policies: {error}") from None
                for column in table.columns:
                    treatment = decision.columns.get(column.name)
                    fits = _FITS.get(treatment.kind) if treatment is not None else None
                    if treatment is not None and fits is not None and column.type.kind not in fits:
                        raise ConfigError(
                            f"policies: role {role}: {table.department}.{table.name}.{column.name} is "
                            f"{column.type.kind}, which {treatment} cannot mask ({decision.reasons[column.name]})"
                        )

    @property
    def policy_version(self) -> str:
        return self.policies.version if self.policies is not None else "-"

    def reload_policies(self) -> str:
        """Read the policy files again. Views and plans go (they hold the old decisions); cached
        results stay, since their key is the final SQL, which changes with any decision that
        changes what a caller sees. Returns the new policy version; a bad file changes nothing."""
        if self.config.policies is None:
            raise CitygateError("this gateway has no policies to reload")
        with self._reloading:  # SIGHUP's thread and the admin endpoint: the last to read wins
            return self._reload()

    def _reload(self) -> str:
        assert self.config.policies is not None
        policies = load_policies(self.config.policies.files)
        self._check_decisions(policies)
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
        policies = self.policies
        role = _role(policies, identity)
        found = self._views.get(role)
        if found is not None:
            return found
        if policies is None or role is None:
            view = View(None, self.model, version=policies.version if policies is not None else "-")
        else:
            decisions: dict[tuple[str, str], TableDecision] = {}
            types: dict[tuple[str, str], dict[str, LogicalType]] = {}
            claims: set[str] = set()
            for table in self.catalogue.tables:
                key = (table.department, table.name)
                decision = decisions[key] = decide(
                    policies,
                    role,
                    table.department,
                    table.name,
                    self._classes(table.department, table.name, [c.name for c in table.columns]),
                )
                if decision.row_filter is not None:
                    claims |= claims_used(parse_filter(decision.row_filter))
                types[key] = {c.name: c.type for c in table.columns}
            model = build_model(self.catalogue, self.config, decisions)
            view = View(
                role, model, decisions, types, tuple(sorted(claims)), _join_columns(model), version=policies.version
            )
        with self._lock:
            if self.policies is policies:  # not replaced by a reload meanwhile
                self._views[role] = view
        return view

    def _classes(self, department: str, table: str, columns: list[str]) -> dict[str, SharingClass | None]:
        """Each column's sharing class from the catalogue configuration; unclassified: None."""
        table_config = self.config.departments[department].tables.get(table)
        if table_config is None or "sharing" not in table_config.model_fields_set:
            return dict.fromkeys(columns)
        return {c: table_config.sharing.of(c) for c in columns}

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
            self._documents[key] = (_BASE + _PER_CHARACTER * len(query), made)
        return made

    def _validated(self, query: str, view: View) -> DocumentNode | Response:
        try:
            document = parse(query, max_tokens=self.config.limits.max_tokens)
        except GraphQLError as error:
            return _refused([_error(error.message, "GRAPHQL_PARSE_FAILED", locations=error.locations)])
        errors = validate(view.model.schema, document)
        if errors:
            refused = _refused(
                [_error(_friendly(e.message), "GRAPHQL_VALIDATION_FAILED", locations=e.locations) for e in errors]
            )
            refused.plan = Plan(refused=refused, access=self._refused_fields(errors))
            return refused
        return document

    def _refused_fields(self, errors: list[GraphQLError]) -> list[dict[str, Any]]:
        """For the audit: the columns a refused request asked for that its role may not see."""
        access: list[dict[str, Any]] = []
        for error in errors:
            match = _UNKNOWN_FIELD.match(error.message)
            table = self.model.tables.get(match.group(2)) if match else None
            if match and table is not None and match.group(1) in table.all_columns:
                access.append(
                    {"department": table.department, "table": table.name, "columns": {match.group(1): "denied"}}
                )
        return access

    def _prepare(
        self, query: str, variables: Mapping[str, Any] | None, operation_name: str | None, view: View
    ) -> Response | tuple[DocumentNode, OperationDefinitionNode, Context]:
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
            return _refused([_error(message, "BAD_REQUEST")])
        if operation.operation != OperationType.QUERY:
            message = f"{operation.operation.value} operations are not supported; citygate is read-only"
            return _refused([_error(message, "BAD_REQUEST")])
        coerced = get_variable_values(model.schema, operation.variable_definitions or (), dict(variables or {}))
        if isinstance(coerced, list):
            return _refused([_error(e.message, "BAD_USER_INPUT", locations=e.locations) for e in coerced])
        fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        return document, operation, Context(model, fragments, coerced)

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
    ) -> Plan:
        """Parse, validate and compile a request once; a repeated request reuses its plan.
        ``view``: the role's view the request already took (a reload meanwhile must not give
        the plan another's)."""
        view = view or self.view(identity)
        key = self._key(query, variables, operation_name, view, view.used_claims(identity))
        if key is not None:
            with self._lock:
                found = self._plans.get(key)
            if found is not None:
                self.metrics.count_lookup("plan", "hit")
                return found
            self.metrics.count_lookup("plan", "miss")
        made = self._make_plan(query, variables, operation_name, view)
        made.version = view.version
        if key is None:  # variables that cannot be keyed: planned each time
            return made
        made.weight = _PER_CHARACTER * (len(query) + len(key[2])) + sum(
            _PER_NODE * sum(1 for _ in c.tree.walk()) for c in made.compiled.values()
        )
        with self._lock, contextlib.suppress(ValueError):  # one plan larger than the whole cache is not kept
            self._plans[key] = made
        return made

    def _make_plan(
        self, query: str, variables: Mapping[str, Any] | None, operation_name: str | None, view: View
    ) -> Plan:
        prepared = self._prepare(query, variables, operation_name, view)
        if isinstance(prepared, Response):
            return prepared.plan or Plan(refused=prepared)
        document, operation, ctx = prepared
        root_type = view.model.schema.query_type
        assert root_type is not None
        plan = Plan()
        introspection: dict[str, list[FieldNode]] = {}
        with self.telemetry.stage("compile"):
            for key, nodes in collect_fields(ctx, [operation.selection_set]).items():
                name = nodes[0].name.value
                plan.keys.append(key)
                plan.locations[key] = _location(nodes[0])
                if name == "__typename":
                    plan.static[key] = root_type.name
                elif name.startswith("__"):
                    introspection[key] = nodes
                else:
                    try:
                        plan.compiled[key] = compile_root_field(ctx, key, nodes, root_type)
                    except CompileError as error:
                        plan.errors.append(
                            _error(error.message, error.code, path=error.path or [key], locations=[plan.locations[key]])
                        )
        if introspection:
            plan.introspection = (document, operation, introspection)
        plan.access = _access(plan.compiled.values(), view)
        return plan

    def execute(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        operation_name: str | None = None,
        identity: Identity | None = None,
    ) -> Response:
        view = self.view(identity)
        claims = view.used_claims(identity)
        plan = self.plan(query, variables, operation_name, identity, view)
        if plan.refused is not None:
            return plan.refused
        if plan.introspection is not None and not plan.compiled and not plan.errors:
            return self._introspection_only(plan, query, variables, operation_name, view, claims)
        data: dict[str, Any] = {key: plan.static.get(key) for key in plan.keys}
        errors_out: list[dict[str, Any]] = list(plan.errors)
        if plan.introspection is not None:
            document, operation, fields = plan.introspection
            data.update(self._introspect(document, operation, fields, variables, errors_out, view.model))
        response = Response({}, plan=plan, claims=claims)
        budget = RowBudget(self.config.limits.max_rows)
        for key, (outcome, cached) in self._run_all(plan.compiled, view, claims, budget).items():
            response.cache[key] = "miss" if isinstance(outcome, CitygateError) else cached
            if isinstance(outcome, CitygateError):
                extensions = {"department": outcome.department} if isinstance(outcome, StoreUnavailableError) else {}
                errors_out.append(
                    _error(outcome.message, outcome.code, path=[key], locations=[plan.locations[key]], **extensions)
                )
            else:
                data[key] = outcome
                response.rows[key] = _count(outcome)
                response.statements += cached != "hit"
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
            data.update(self._introspect(document, operation, fields, variables, errors, view.model))
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
        view = self._views.get(_role(self.policies, identity))
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
        engine = self.engine.name
        rows, left = [], self.config.limits.max_rows
        for compiled in plan.compiled.values():
            found = self.results.get(engine, compiled.sql.get(engine))
            if found is None or len(found) > left:  # over the row limit: the full path says so
                return None
            rows.append(found)
            left -= len(found)
        self.metrics.count_cached(len(rows))
        # The same cached rows as last time (the very objects; cache entries are never changed
        # in place): the same answer, shaped and encoded already. Within one plan the claims
        # are the same too (the plan's key holds them).
        memo = plan.memo
        if memo is not None and all(map(operator.is_, memo.rows, rows)):
            return memo.response
        data: dict[str, Any] = {key: plan.static.get(key) for key in plan.keys}
        counts: dict[str, int] = {}
        for name, found in zip(plan.compiled, rows, strict=True):
            with self.telemetry.stage("shape"):
                data[name] = value = shape(plan.compiled[name], found)
            counts[name] = _count(value)
        body = {"data": data}
        response = Response(
            body, plan=plan, rows=counts, cache=dict.fromkeys(plan.compiled, "hit"), claims=claims, encoded=encode(body)
        )
        if len(response.encoded or b"") <= MEMO_BYTES:
            plan.memo = Memo(tuple(rows), response)
        return response

    def _run_all(
        self, compiled: dict[str, Compiled], view: View, claims: Mapping[str, Any], budget: RowBudget
    ) -> dict[str, tuple[Any, str]]:
        if len(compiled) <= 1:
            return {key: self._run(c, view, claims, budget) for key, c in compiled.items()}
        # Each root field in its own thread, carrying the request's context (request id, span).
        futures = {
            key: self.pool.submit(contextvars.copy_context().run, self._run, c, view, claims, budget)
            for key, c in compiled.items()
        }
        return {key: future.result() for key, future in futures.items()}

    def _run(self, compiled: Compiled, view: View, claims: Mapping[str, Any], budget: RowBudget) -> tuple[Any, str]:
        """The root field's value (or its error), and whether the cache answered it. Its rows
        count against the request's ``budget`` (see :class:`RowBudget`)."""
        started = time.perf_counter()
        engine = self.engine.name
        cached = "off"
        try:
            text = compiled.sql.get(engine)
            if text is None:
                with self.telemetry.stage("policy", role=view.role or ""):
                    tree = view.rewrite(compiled.tree, claims)
                text = compiled.sql[engine] = self.engine.sql(tree)

            def run() -> Sequence[Any]:
                with self.telemetry.stage("engine", engine=engine, departments=",".join(compiled.departments)):
                    # the whole limit, not what this request has left: a run may be shared with
                    # another request's (the result cache runs one for all who wait on it)
                    return self._statement(text, compiled.departments, budget.rows)

            # "off": a department forbids caching, or the answer is too big to keep
            rows, cached = self.results.fetch(engine, text, compiled.departments, run)
            self.metrics.count_lookup("result", cached)
            budget.take(len(rows))
        except PolicyViolation as violation:  # fail closed: nothing runs, the caller learns no more
            log.error("policy check refused root field %s for role %s: %s", compiled.key, view.role, violation)
            return CitygateError("the query was refused by the confidentiality policy"), cached
        except CitygateError as error:
            detail = self.engine.redact(error.detail or "")
            log.warning("root field %s failed: %s (%s)", compiled.key, error.message, detail)
            self.metrics.engine_errors.labels(engine=engine, code=error.code).inc()
            return error, cached
        except Exception:  # an engine bug must not take the server down or leak a trace
            log.exception("root field %s failed", compiled.key)
            self.metrics.engine_errors.labels(engine=engine, code="INTERNAL").inc()
            return CitygateError("internal error while running the query"), cached
        with self.telemetry.stage("shape"):
            value = shape(compiled, rows)
        elapsed = time.perf_counter() - started
        for department in compiled.departments:
            self.metrics.statement_seconds.labels(department=department, engine=engine).observe(elapsed)
        log.debug("root field %s: %d rows in %.1f ms (cache %s)", compiled.key, len(rows), elapsed * 1000, cached)
        return value, cached

    def _statement(self, text: str, departments: Sequence[str], max_rows: int) -> Sequence[Any]:
        """Run one statement, waiting at most ``limits.statement_seconds`` from its start.

        A store that accepts connections and never answers would otherwise hold the request,
        and a thread, for good (DuckDB's MySQL scanner has no timeout of its own). When the
        time runs out, each department the statement reads is probed with a one-row read: one
        that does not answer that either is left alone for as long again (requests naming it
        fail at once, holding no thread); if all answer, the statement was merely slow, and
        only it fails. A statement still queued behind others when the time runs out is
        dropped unrun, and says the gateway is busy."""
        limit = self.config.limits.statement_seconds
        now = time.monotonic()
        silent = sorted(d for d in departments if self._unresponsive.get(d, 0.0) > now)
        if silent:
            names = ", ".join(silent)
            raise StoreUnavailableError(
                silent[0], f"department {names} did not answer within {limit:g} s; tried again soon"
            )
        began: list[float] = []

        def run() -> Sequence[Any]:
            began.append(time.monotonic())
            return self.engine.run(text, departments, max_rows).rows

        future = self.statements.submit(contextvars.copy_context().run, run)
        try:
            return future.result(timeout=limit)
        except TimeoutError:  # concurrent.futures' own since Python 3.11
            pass
        if not began and future.cancel():
            raise EngineUnavailableError("the gateway is too busy to run the query now; try again")
        try:  # it ran late: it has the rest of its own time
            return future.result(timeout=max(0.0, began[0] + limit - time.monotonic()) if began else limit)
        except TimeoutError:
            pass
        silent = [d for d in departments if not self._answers(d)]
        if silent:
            until = time.monotonic() + limit
            with self._lock:
                self._unresponsive.update(dict.fromkeys(silent, until))
            raise StoreUnavailableError(silent[0], f"department {', '.join(silent)} did not answer within {limit:g} s")
        raise StatementTimeout(limit)

    def _answers(self, department: str, within: float = 2.0) -> bool:
        """Whether ``department``'s store gives one row of a table within ``within`` seconds.

        Each probe runs on a thread of its own, never queued behind statements (a pool full of
        slow statements would make a healthy store look silent), and one at a time per
        department: a later probe waits on the one still out."""
        table = next((t for t in self.catalogue.tables if t.department == department), None)
        if table is None:
            return True
        with self._lock:
            probe = self._probes.get(department)
            if probe is None or probe.done():
                probe = self._probes[department] = Future()
                statement = exp.select(exp.Literal.number(1)).from_(logical_table(department, table.name)).limit(1)
                threading.Thread(target=self._probe, args=(probe, statement), daemon=True).start()
        try:
            return probe.result(timeout=within)
        except TimeoutError:
            return False

    def _probe(self, probe: Future[bool], statement: exp.Select) -> None:
        try:
            self.engine.execute(statement)
        except StoreUnavailableError:  # it answered that it cannot be reached
            probe.set_result(False)
            return
        except Exception as error:  # the store answered, if only to refuse
            log.debug("probe of %s: %s", statement.sql(), error)
        probe.set_result(True)

    def _introspect(
        self,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        fields: dict[str, list[FieldNode]],
        variables: Mapping[str, Any] | None,
        errors: list[dict[str, Any]],
        model: Model,
    ) -> dict[str, Any]:
        """Introspection fields through graphql-core's own executor, on a document holding only
        them, over the role's own schema: it shows nothing the role may not query."""
        selections = tuple(node for nodes in fields.values() for node in nodes)
        only = OperationDefinitionNode(
            operation=OperationType.QUERY,
            name=operation.name,
            variable_definitions=operation.variable_definitions,
            directives=(),
            selection_set=SelectionSetNode(selections=selections),
        )
        definitions = [only, *(d for d in document.definitions if isinstance(d, FragmentDefinitionNode))]
        result = execute_sync(
            model.schema, DocumentNode(definitions=tuple(definitions)), variable_values=dict(variables or {})
        )
        for error in result.errors or []:
            errors.append(_error(error.message, "INTERNAL", path=error.path))
        return dict(result.data or {})

    # -- tools -----------------------------------------------------------------------------

    def compile(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        operation_name: str | None = None,
        identity: Identity | None = None,
    ) -> list[Compiled]:
        """The compiled data root fields of ``query``, from its plan (for `citygate explain` and tests)."""
        plan = self.plan(query, variables, operation_name, identity)
        refusals = plan.refused.body["errors"] if plan.refused is not None else plan.errors
        if refusals:
            raise CompileError("; ".join(e["message"] for e in refusals))
        return list(plan.compiled.values())

    def flush(self) -> None:
        """Write every queued audit record and span, and stop recording (the server is stopping)."""
        if self.audit is not None:
            self.audit.close()
        self.telemetry.close()

    def close(self) -> None:
        """Stop: queued audit records are written first, then spans flushed, then the engine."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.statements.shutdown(wait=False, cancel_futures=True)
        self.flush()
        self.engine.close()


def _role(policies: Policies | None, identity: Identity | None) -> str | None:
    """The role a request acts as: none without policies, else its own or `anonymous`."""
    if policies is None:
        return None
    return identity.role if identity is not None else "anonymous"


def _access(compiled: Any, view: View) -> list[dict[str, Any]]:
    """What the root fields read, table by table, with the treatment each column gets; join
    and tie-break keys, read raw inside the engine and never returned, listed apart."""
    read: dict[tuple[str, str], tuple[set[str], set[str]]] = {}
    for field_plan in compiled:
        aliases: dict[str, tuple[str, str]] = {}
        for table in field_plan.tree.find_all(exp.Table):
            if table.db:
                aliases[table.alias_or_name] = (table.db, table.name)
                read.setdefault((table.db, table.name), (set(), set()))
        for column in field_plan.tree.find_all(exp.Column):
            owner = aliases.get(column.table)
            if owner is not None:
                columns, keys = read[owner]
                (keys if column.meta.get("citygate") in (KEY, TIE) else columns).add(column.name)
    access = []
    for (department, table), (columns, keys) in sorted(read.items()):
        decision = view.decisions.get((department, table)) if view.decisions is not None else None
        entry: dict[str, Any] = {
            "department": department,
            "table": table,
            "access": decision.access if decision is not None else "allow",
            "columns": {c: str(decision.columns[c]) if decision is not None else "raw" for c in sorted(columns)},
        }
        if keys:
            entry["keys"] = sorted(keys)
        if decision is not None and decision.row_filter is not None:
            entry["row_filter"] = decision.row_filter
        access.append(entry)
    return access


def _count(value: Any) -> int:
    """Rows a root field returned: list items, or one object (``_by_pk``, ``_aggregate``)."""
    if isinstance(value, list):
        return len(value)
    return 0 if value is None else 1


def _friendly(message: str) -> str:
    """graphql-core's unknown-field message, as one that says what to change."""
    match = _UNKNOWN_FIELD.match(message)
    if not match:
        return message
    field_name, type_name, suggestions = match.groups()
    text = f'unknown field "{field_name}" on "{type_name}"'
    if suggestions:
        options = re.findall(r"'([^']+)'", suggestions)
        text += "; did you mean " + " or ".join(f'"{o}"' for o in options) + "?"
    return text


def _location(node: FieldNode) -> dict[str, int]:
    loc = node.loc
    if loc is None:
        return {"line": 1, "column": 1}
    return {"line": loc.start_token.line, "column": loc.start_token.column}


def _error(message: str, code: str, *, path: Any = None, locations: Any = None, **extensions: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message}
    if locations:
        error["locations"] = [
            loc if isinstance(loc, dict) else {"line": loc.line, "column": loc.column} for loc in locations
        ]
    if path:
        error["path"] = list(path)
    error["extensions"] = {"code": code, **extensions}
    return error


def _refused(errors: list[dict[str, Any]]) -> Response:
    return Response({"errors": errors}, request_error=True)
