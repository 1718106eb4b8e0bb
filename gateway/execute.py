"""Run a GraphQL request: parse and validate with graphql-core, compile each root field to one
statement, run it on the engine, and shape the rows into the response.

Compiled fields are not resolved field by field through graphql-core; only introspection
(``__schema``, ``__type``) runs through graphql-core's executor. Root fields of one request run
concurrently, and a root field whose department is down answers null with an error while the
others still answer (GraphQL partial results).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

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
from connectors.base import Engine
from gateway.compile import Compiled, CompileError, Context, collect_fields, compile_root_field
from gateway.config import Config
from gateway.errors import CitygateError, StoreUnavailableError
from gateway.schema import Model, build_model
from gateway.shape import shape
from policies.decide import TableDecision, decide
from policies.model import Policies, load_policies
from policies.rewrite import Context as PolicyContext
from policies.rewrite import PolicyViolation, enforce

log = logging.getLogger("citygate")

_UNKNOWN_FIELD = re.compile(r"Cannot query field '([^']+)' on type '([^']+)'\.(?: Did you mean (.+)\?)?")


@dataclass
class Response:
    """A GraphQL response and whether the request itself was refused (parse, validation)."""

    body: dict[str, Any]
    request_error: bool = False
    statements: int = 0


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


@dataclass(frozen=True)
class Identity:
    """Who asks: the one role a request acts as, and the claims its policies may use."""

    role: str
    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class View:
    """The gateway as one role sees it: its schema, and the policy rewrite of its queries."""

    role: str | None
    model: Model
    decisions: dict[tuple[str, str], TableDecision] | None = None
    types: dict[tuple[str, str], dict[str, LogicalType]] = field(default_factory=dict)

    def rewrite(self, tree: exp.Expr, claims: Mapping[str, Any]) -> exp.Expr:
        if self.decisions is None:
            return tree
        return enforce(tree, PolicyContext(self.decisions, self.types, claims))


@dataclass
class Gateway:
    """The schema over a configured engine, and the way to answer requests with it."""

    config: Config
    engine: Engine
    model: Model  # every table and column: what a deployment without policies serves
    catalogue: Catalogue = field(default_factory=Catalogue)
    policies: Policies | None = None
    unavailable: dict[str, str] = field(default_factory=dict)  # department -> why, at start-up
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8, thread_name_prefix="citygate"))
    _plans: LRUCache[Any, Plan] = field(default_factory=lambda: LRUCache(maxsize=2048))
    _plans_lock: threading.Lock = field(default_factory=threading.Lock)
    _views: dict[str | None, View] = field(default_factory=dict)

    @classmethod
    def start(cls, config: Config, engine: Engine) -> Gateway:
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
        return cls(
            config=config, engine=engine, model=model, catalogue=catalogue, policies=policies, unavailable=unavailable
        )

    def view(self, identity: Identity | None) -> View:
        """The role's view. With policies configured, a request without identity is anonymous:
        deny by default, and a role without a policy sees nothing."""
        role: str | None = None
        if self.policies is not None:
            role = identity.role if identity is not None else "anonymous"
        found = self._views.get(role)
        if found is not None:
            return found
        if self.policies is None or role is None:
            view = View(None, self.model)
        else:
            decisions: dict[tuple[str, str], TableDecision] = {}
            types: dict[tuple[str, str], dict[str, LogicalType]] = {}
            for table in self.catalogue.tables:
                key = (table.department, table.name)
                decisions[key] = decide(
                    self.policies,
                    role,
                    table.department,
                    table.name,
                    self._classes(table.department, table.name, [c.name for c in table.columns]),
                )
                types[key] = {c.name: c.type for c in table.columns}
            view = View(role, build_model(self.catalogue, self.config, decisions), decisions, types)
        self._views[role] = view
        return view

    def _classes(self, department: str, table: str, columns: list[str]) -> dict[str, SharingClass | None]:
        """Each column's sharing class from the catalogue configuration; unclassified: None."""
        table_config = self.config.departments[department].tables.get(table)
        if table_config is None or "sharing" not in table_config.model_fields_set:
            return dict.fromkeys(columns)
        return {c: table_config.sharing.of(c) for c in columns}

    # -- requests ----------------------------------------------------------------------------

    def _prepare(
        self, query: str, variables: Mapping[str, Any] | None, operation_name: str | None, model: Model
    ) -> Response | tuple[DocumentNode, OperationDefinitionNode, Context]:
        """Parse, validate, pick the operation and coerce its variables, or refuse the request."""
        try:
            document = parse(query)
        except GraphQLError as error:
            return _refused([_error(error.message, "GRAPHQL_PARSE_FAILED", locations=error.locations)])
        errors = validate(model.schema, document)
        if errors:
            return _refused(
                [_error(_friendly(e.message), "GRAPHQL_VALIDATION_FAILED", locations=e.locations) for e in errors]
            )
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

    def plan(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        operation_name: str | None = None,
        identity: Identity | None = None,
    ) -> Plan:
        """Parse, validate and compile a request once; a repeated request reuses its plan.

        The key holds the variables (the compiled trees carry values as literals), and the role
        and claims (the plan caches its policy-rewritten SQL), so two callers share a plan only
        when they would run the same statement.
        """
        view = self.view(identity)
        try:
            key = (
                query,
                operation_name,
                json.dumps(variables, sort_keys=True, default=str) if variables else "",
                view.role,
                json.dumps(dict(identity.claims), sort_keys=True, default=str) if identity else "",
            )
        except (TypeError, ValueError):
            return self._make_plan(query, variables, operation_name, view)
        with self._plans_lock:
            found = self._plans.get(key)
        if found is not None:
            return found
        made = self._make_plan(query, variables, operation_name, view)
        with self._plans_lock:
            self._plans[key] = made
        return made

    def _make_plan(
        self, query: str, variables: Mapping[str, Any] | None, operation_name: str | None, view: View
    ) -> Plan:
        prepared = self._prepare(query, variables, operation_name, view.model)
        if isinstance(prepared, Response):
            return Plan(refused=prepared)
        document, operation, ctx = prepared
        root_type = view.model.schema.query_type
        assert root_type is not None
        plan = Plan()
        introspection: dict[str, list[FieldNode]] = {}
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
        return plan

    def execute(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        operation_name: str | None = None,
        identity: Identity | None = None,
    ) -> Response:
        view = self.view(identity)
        claims = identity.claims if identity is not None else {}
        plan = self.plan(query, variables, operation_name, identity)
        if plan.refused is not None:
            return plan.refused
        data: dict[str, Any] = {key: plan.static.get(key) for key in plan.keys}
        errors_out: list[dict[str, Any]] = list(plan.errors)
        if plan.introspection is not None:
            document, operation, fields = plan.introspection
            data.update(self._introspect(document, operation, fields, variables, errors_out, view.model))

        statements = 0
        for key, outcome in self._run_all(plan.compiled, view, claims).items():
            if isinstance(outcome, CitygateError):
                extensions = {"department": outcome.department} if isinstance(outcome, StoreUnavailableError) else {}
                errors_out.append(
                    _error(outcome.message, outcome.code, path=[key], locations=[plan.locations[key]], **extensions)
                )
            else:
                data[key] = outcome
                statements += 1
        body: dict[str, Any] = {"data": data}
        if errors_out:
            body = {"errors": errors_out, "data": data}
        return Response(body, statements=statements)

    def _run_all(self, compiled: dict[str, Compiled], view: View, claims: Mapping[str, Any]) -> dict[str, Any]:
        if len(compiled) <= 1:
            return {key: self._run(c, view, claims) for key, c in compiled.items()}
        futures = {key: self.pool.submit(self._run, c, view, claims) for key, c in compiled.items()}
        return {key: future.result() for key, future in futures.items()}

    def _run(self, compiled: Compiled, view: View, claims: Mapping[str, Any]) -> Any:
        started = time.perf_counter()
        try:
            text = compiled.sql.get(self.engine.name)
            if text is None:
                text = compiled.sql[self.engine.name] = self.engine.sql(view.rewrite(compiled.tree, claims))
            result = self.engine.run(text, compiled.departments)
        except PolicyViolation as violation:  # fail closed: nothing runs, the caller learns no more
            log.error("policy check refused root field %s for role %s: %s", compiled.key, view.role, violation)
            return CitygateError("the query was refused by the confidentiality policy")
        except CitygateError as error:
            log.warning("root field %s failed: %s (%s)", compiled.key, error.message, error.detail or "")
            return error
        except Exception:  # an engine bug must not take the server down or leak a trace
            log.exception("root field %s failed", compiled.key)
            return CitygateError("internal error while running the query")
        value = shape(compiled, result.rows)
        log.debug(
            "root field %s: %d rows in %.1f ms", compiled.key, len(result.rows), (time.perf_counter() - started) * 1000
        )
        return value

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

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.engine.close()


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
