"""Planning: a request made into its plan once per plan key, and kept while the schema and the
policies stand. Parse and validate (graphql-core), weigh what it may read, compile each root
field (:mod:`gateway.graphql.compile`), then make the statement each runs as the caller's role
(:mod:`gateway.execution.prepared`). The plan is frozen; execution only runs it
(:mod:`gateway.execution.runner`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
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

from catalogue.errors import CitygateError, trace_without_messages
from gateway.config import CacheConfig, Limits, LimitsConfig
from gateway.execution.plans import (
    BASE,
    PER_CHARACTER,
    PER_NODE,
    Plan,
    Response,
    access,
    document_weight,
    encode,
    plan_weight,
    refused,
)
from gateway.execution.prepared import Batched, Refused, Statement, prepare
from gateway.execution.routes import Routes
from gateway.execution.views import View
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
from gateway.graphql.schema import Model
from gateway.identity.caller import Identity
from gateway.observe.metrics import Metrics
from gateway.observe.telemetry import Telemetry

log = logging.getLogger("citygate")


@dataclass
class Planner:
    """A gateway's plans, and the parsed documents and introspection answers they are made of,
    each in a cache bounded by bytes (``cache.plan_bytes``, ``cache.max_bytes``)."""

    settings: LimitsConfig  # the deployment's limits: tokens of a document, rows of a request
    limits: Callable[[str | None], Limits]  # a role's own limits
    model: Model  # every table and column (the audit names a refused column's table by it)
    routes: Routes
    statistics: Statistics
    redact: Callable[[str], str]  # an engine's text made fit for the log
    cache: CacheConfig
    telemetry: Telemetry = field(default_factory=Telemetry)
    metrics: Metrics = field(default_factory=Metrics)
    # engine.batch_relationships: root fields whose relationships reach other stores are cut
    # into one statement per store and level (gateway.graphql.parts)
    batch: bool = False
    plans: LRUCache[Any, Plan] = field(init=False)
    documents: LRUCache[Any, tuple[int, DocumentNode | Response]] = field(init=False)
    introspections: LRUCache[Any, bytes] = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.plans = LRUCache(maxsize=self.cache.plan_bytes, getsizeof=plan_weight)
        self.documents = LRUCache(maxsize=self.cache.plan_bytes, getsizeof=document_weight)
        self.introspections = LRUCache(maxsize=self.cache.max_bytes, getsizeof=len)

    def clear(self) -> None:
        """Forget every plan, document and introspection answer (the policies or the schema changed)."""
        with self._lock:
            self.plans.clear()
            self.documents.clear()
            self.introspections.clear()

    def cached(self, key: tuple[Any, ...]) -> Plan | None:
        """The plan kept under ``key``, if any (counted by the caller)."""
        with self._lock:
            return self.plans.get(key)

    def document(self, query: str, view: View) -> DocumentNode | Response:
        """The parsed and validated document, once per (query, role, policy version, and the
        claims the role requires that the token lacks: that view is empty)."""
        key = (query, view.role, view.version, view.missing_claims)
        with self._lock:
            found = self.documents.get(key)
        if found is not None:
            self.metrics.count_lookup("document", "hit")
            return found[1]
        self.metrics.count_lookup("document", "miss")
        with self.telemetry.stage("parse"):
            made = self._validated(query, view)
        with self._lock, contextlib.suppress(ValueError):
            # Weighed by the query, which the key holds whether it parsed or was refused: a flood
            # of distinct megabyte queries over the token limit is as heavy as one that parses.
            self.documents[key] = (BASE + PER_CHARACTER * len(query), made)
        return made

    def _validated(self, query: str, view: View) -> DocumentNode | Response:
        try:
            document = parse(query, max_tokens=self.settings.max_tokens)
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
                    graphql_error(
                        friendly(e.message, view.role, view.missing_claims), validation_code(e), locations=e.locations
                    )
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
        document = self.document(query, view)
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
        stores = {d: n.key for d, n in self.routes.native.items()} if self.batch and self.routes.delegating else None
        return (
            document,
            operation,
            CompileContext(model, fragments, coerced, cap=self.settings.max_rows + 1, stores=stores),
        )

    def key(
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
                view.missing_claims,  # the claims' values below may say it too; the view is another
                json.dumps(claims, sort_keys=True, default=str) if claims else "",
            )
        except (TypeError, ValueError, RecursionError):
            return None

    def plan(
        self,
        query: str,
        variables: Mapping[str, Any] | None,
        operation_name: str | None,
        identity: Identity | None,
        view: View,
        started: float | None = None,
    ) -> Plan:
        """Parse, validate and compile a request once; a repeated request reuses its plan.
        ``view``: the role's view the request took (a reload meanwhile must not give the plan
        another's); ``started``: when the request's preparation began (its
        ``limits.plan_seconds`` count from then)."""
        started = time.monotonic() if started is None else started
        key = self.key(query, variables, operation_name, view, view.used_claims(identity))
        if key is not None:
            with self._lock:
                found = self.plans.get(key)
            if found is not None:
                self.metrics.count_lookup("plan", "hit")
                return found
            self.metrics.count_lookup("plan", "miss")
        made = self._make_plan(query, variables, operation_name, view, identity, started)
        if key is None or made.transient:  # planned each time, or refused for time (not for good)
            return made
        # a field cut between stores keeps each part's tree too
        trees = [t for c in made.compiled.values() for t in (c.tree, *(p.compiled.tree for p in c.parts))]
        weight = PER_CHARACTER * (len(query) + len(key[2])) + sum(PER_NODE * sum(1 for _ in t.walk()) for t in trees)
        made = replace(made, weight=weight)
        with self._lock, contextlib.suppress(ValueError):  # one plan larger than the whole cache is not kept
            self.plans[key] = made
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
        cost, too_costly = self._weigh(compiled, limits, view)
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
            transient=any(isinstance(s, Refused | Batched) and not s.lasting for s in statements.values()),
        )
        return self._finished(query, view, plan)

    def _finished(self, query: str, view: View, plan: Plan) -> Plan:
        """``plan`` with what the audit trail records of it, encoded once, and its version."""
        audited = document_hash(query), orjson.Fragment(orjson.dumps(plan.access, option=orjson.OPT_SORT_KEYS))
        return replace(plan, audited=audited, version=view.version)

    def _statements(
        self, compiled: Mapping[str, Compiled], view: View, claims: Mapping[str, Any], deadline: float
    ) -> dict[str, Statement | Batched | Refused]:
        """Each root field's statement as the role runs it (:func:`prepare`), or why it has
        none. The rewrite, the last of the planning, starts only before ``deadline``; a store
        that fails while its text is made fails that root field, for this request only."""
        made: dict[str, Statement | Batched | Refused] = {}
        for key, field_plan in compiled.items():
            if time.monotonic() > deadline:
                error: CitygateError = TooSlow(too_slow(self.limits(view.role).plan_seconds), [key])
                made[key] = Refused(field_plan, error, error.message, lasting=False)
                continue
            try:
                with self.telemetry.stage("policy", role=view.role or ""):
                    made[key] = prepare(field_plan, view, claims, self.routes)
            except CitygateError as error:  # from the rewrite (a store's failure is prepare's Refused)
                detail = self.redact(error.detail or "")
                made[key] = Refused(
                    field_plan, error.with_traceback(None), f"{error.message} ({detail})", lasting=False
                )
            except Exception as error:  # a bug must not take the server down or leak a trace
                reason = self.redact(trace_without_messages(error))
                internal = CitygateError("internal error while running the query")
                made[key] = Refused(field_plan, internal, reason, lasting=False)
        return made

    def _weigh(self, compiled: Mapping[str, Compiled], limits: Limits, view: View) -> tuple[int, Response | None]:
        """The rows the statements of ``compiled`` may materialise at worst, or the request's
        refusal (else None) if that is more than its role may (:mod:`gateway.graphql.cost`). A root field
        whose stores do not answer the statistics is left to fail by itself, with its own error.

        The estimate counts every row of a table, not the rows the caller may see: a refusal
        that reads a table the role's rows are filtered on does not say it (an officer who may
        read one district's 1,240 residents must not learn there are 10,000, as the console's
        catalogue does not show it either)."""
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
        advice = f"give `{where}` a smaller `limit`, filter it with `where`, or ask for fewer levels"
        if _filtered(compiled, view):
            message = f"the query may read more rows at worst than the {limits.max_cost:,} its role may; {advice}"
            return cost, refused([graphql_error(message, "COST_LIMIT", limit=limits.max_cost)])
        message = (
            f"the query may read about {_rounded(cost):,} rows at worst, more than the {limits.max_cost:,} "
            f"its role may; {advice}"
        )
        return cost, refused([graphql_error(message, "COST_LIMIT", estimate=_rounded(cost), limit=limits.max_cost)])

    def introspection_only(
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
        key = self.key(query, variables, operation_name, view, None)
        with self._lock:
            encoded = self.introspections.get(key) if key is not None else None
        self.metrics.count_lookup("introspection", "hit" if encoded is not None else "miss")
        if encoded is None:
            assert plan.introspection is not None
            document, operation, fields = plan.introspection
            errors: list[dict[str, Any]] = []
            data = {k: plan.static.get(k) for k in plan.keys}
            data.update(introspect(document, operation, fields, variables, errors, view.model))
            body: dict[str, Any] = {"errors": errors, "data": data} if errors else {"data": data}
            encoded = encode(body)
            if key is not None and not errors and len(encoded) <= self.introspections.maxsize:
                with self._lock:
                    self.introspections[key] = encoded
            return Response(body, plan=plan, claims=claims, encoded=encoded)
        return Response(orjson.loads(encoded), plan=plan, claims=claims, encoded=encoded)


def _filtered(compiled: Mapping[str, Compiled], view: View) -> bool:
    """Whether any table ``compiled`` reads has its rows filtered for ``view``'s role."""
    if view.decisions is None:
        return False
    read = {(n.table.department, n.table.name) for field_plan in compiled.values() for n in field_plan.nodes}
    return any(decision.row_filter is not None for table, decision in view.decisions.items() if table in read)


def _rounded(number: int) -> int:
    """``number`` to two significant digits: an estimate says no more than it knows, and tells
    no caller a table's exact size."""
    digits = max(len(str(number)) - 2, 0)
    return round(number, -digits)
