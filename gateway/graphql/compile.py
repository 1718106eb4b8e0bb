"""Compile one root field of a GraphQL query into one sqlglot tree, and the plan to shape its rows.

Every level of the selection becomes a *node*: a common table expression over its parent's
(``n0`` for the root, ``n1`` for ``clinic_visits`` under it, ...). Each node numbers its rows
(``__id``) and remembers its parent's (``__parent``); the statement returns every node's rows
in one ``UNION ALL``, tagged with the node's number, so a query of any depth costs one engine
statement. :mod:`gateway.graphql.shape` turns those rows into the nested response.

Orderings are made total with the primary key, so the same query pages the same way on every
engine. User values enter the tree only as literal nodes; tables are referenced logically
(``department.table``) and located by the engine after the policy step has rewritten them.

>>> from gateway.graphql.compile import OPERATORS
>>> sorted(OPERATORS)[:3]
['_eq', '_gt', '_gte']
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLField,
    GraphQLIncludeDirective,
    GraphQLObjectType,
    GraphQLSkipDirective,
    InlineFragmentNode,
    SelectionSetNode,
)
from graphql.execution.values import VariableValues, get_argument_values, get_directive_values
from sqlglot import exp

from catalogue import names
from catalogue.errors import CitygateError
from catalogue.names import AGGREGATED, KEY, TIE
from catalogue.sql import departments_in, logical_table
from catalogue.types import LITERALS, ORDERABLE, LogicalType, text_problem
from gateway.graphql.scalars import OUTPUT
from gateway.graphql.schema import ColumnInfo, Model, Relation, TableInfo
from policies.noise import Release
from policies.rowfilter import canonical_pattern, pattern_problem

# Template slot kinds (see gateway.graphql.shape).
VALUE, CONST, NESTED, CHILD_LIST, CHILD_ONE, COMPOSITE = range(6)
Slot = tuple[Any, ...]


class CompileError(CitygateError):
    """The query asks for something the compiler cannot express; the message says what."""

    code = "BAD_USER_INPUT"

    def __init__(self, message: str, path: Sequence[str | int] = ()) -> None:
        super().__init__(message)
        self.path = list(path)


class TooManyTerms(CompileError):
    """A request's filters hold more conditions than any request may (:data:`MAX_TERMS`)."""

    code = "COST_LIMIT"


class TooSlow(CompileError):
    """The work before the engine took longer than the caller's role may (``limits.plan_seconds``)."""

    code = "COST_LIMIT"


def too_slow(seconds: float) -> str:
    return (
        f"the query took more than {seconds:g} s to prepare (parse, check, compile and apply the policies), "
        "more than its role may; ask for fewer fields or simpler filters"
    )


# Conditions (each comparison, and each value of `_in` and `_nin`) in all of one request's
# filters. Variables are not bounded by `limits.max_tokens`: an `_and` of 30,000 `_neq` in them
# took 72 s to compile and rewrite, growing worse than linearly.
MAX_TERMS = 2_000


# -- operator tables -----------------------------------------------------------------------

Comparison = Callable[[exp.Expr, Any, LogicalType], exp.Expr]


def _binary(kind: type[exp.Binary]) -> Comparison:
    def build(column: exp.Expr, value: Any, t: LogicalType) -> exp.Expr:
        node: exp.Expr = kind(this=column, expression=literal(value, t))
        return node

    return build


def _in(column: exp.Expr, values: list[Any], t: LogicalType) -> exp.Expr:
    # Hasura's semantics: `_in: []` matches nothing.
    if not values:
        return exp.false()
    return exp.In(this=column, expressions=[literal(v, t) for v in values])


def _nin(column: exp.Expr, values: list[Any], t: LogicalType) -> exp.Expr:
    # `_nin: []` matches everything.
    if not values:
        return exp.true()
    return exp.not_(exp.In(this=column, expressions=[literal(v, t) for v in values]), copy=False)


def _is_null(column: exp.Expr, value: bool, t: LogicalType) -> exp.Expr:
    check = exp.Is(this=column, expression=exp.Null())
    return check if value else exp.not_(check, copy=False)


def _check_pattern(pattern: str) -> None:
    problem = pattern_problem(pattern)
    if problem is not None:
        raise CompileError(problem)


def _like(kind: type[exp.Expr], negate: bool) -> Comparison:
    """``_like`` and its kin as PostgreSQL (and Hasura) read them: ``%`` and ``_`` wildcards,
    ``\\`` escaping a wildcard or itself. Said in the SQL (``ESCAPE '\\'``), since engines
    differ when it is not: DuckDB has no escape, and Trino hands a PostgreSQL store its LIKE
    with PostgreSQL's default one."""

    def build(column: exp.Expr, value: str, t: LogicalType) -> exp.Expr:
        _check_pattern(value)
        matched = kind(this=column, expression=literal(canonical_pattern(value), LogicalType("string")))
        node = exp.Escape(this=matched, expression=exp.Literal.string("\\"))
        return exp.not_(node, copy=False) if negate else node

    return build


OPERATORS: dict[str, Comparison] = {
    "_eq": _binary(exp.EQ),
    "_neq": _binary(exp.NEQ),
    "_gt": _binary(exp.GT),
    "_gte": _binary(exp.GTE),
    "_lt": _binary(exp.LT),
    "_lte": _binary(exp.LTE),
    "_in": _in,
    "_nin": _nin,
    "_is_null": _is_null,
    "_like": _like(exp.Like, False),
    "_nlike": _like(exp.Like, True),
    "_ilike": _like(exp.ILike, False),
    "_nilike": _like(exp.ILike, True),
}

AGGREGATES: dict[str, Callable[[exp.Expr], exp.Expr]] = {
    "sum": lambda e: exp.Sum(this=e),
    # Averages are taken in double precision on every engine: Trino's AVG over a decimal
    # rounds to the column's scale, DuckDB's does not.
    "avg": lambda e: exp.Avg(this=exp.cast(e, exp.DataType(this=exp.DataType.Type.DOUBLE), copy=False)),
    "min": lambda e: exp.Min(this=e),
    "max": lambda e: exp.Max(this=e),
}


def literal(value: Any, kind: LogicalType) -> exp.Expr:
    """A user's value as a typed literal node: the only way values enter SQL.

    >>> literal("南城' OR '1'='1", LogicalType("string")).sql("trino")
    "'南城'' OR ''1''=''1'"
    """
    if value is None:
        raise CompileError("null is not a value to compare with; use _is_null")
    problem = text_problem(value) if isinstance(value, str) else None
    if problem is not None:
        raise CompileError(f"a string value may not contain {problem}")
    if kind.kind == "decimal" and kind.precision is not None:
        # An engine casts the literal to the column's type to compare them, and fails on one
        # that does not fit (a cast overflow), naming neither the field nor the fix.
        whole = kind.precision - (kind.scale or 0)
        number = Decimal(value)
        if number and number.adjusted() + 1 > whole:
            raise CompileError(f"{value} does not fit a {kind} column: at most {whole} digits before the point")
    return LITERALS[kind.kind](value)


def _ident(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def _col(table: str, name: str) -> exp.Column:
    return exp.Column(this=_ident(name), table=exp.to_identifier(table))


def _marked(table: str, name: str, mark: str) -> exp.Column:
    """A column read for the compiler's own use: a relationship key (joined on its raw value
    inside the engine) or a tie-break; the policy step knows it by this mark."""
    column = _col(table, name)
    column.meta[names.MARK] = mark
    return column


# -- the plan ------------------------------------------------------------------------------


@dataclass
class Node:
    """One level of the selection: a CTE whose rows become objects (or aggregates)."""

    index: int
    kind: str  # "rows", "agg" or "group"
    table: TableInfo
    parent: Node | None
    relation: Relation | None
    args: dict[str, Any]
    path: list[str | int]
    attach: tuple[str, ...]  # where the node's objects go in the parent object
    mode: str  # "append", "set" or "first"
    template: list[Slot] = field(default_factory=list)
    outputs: list[exp.Expr] = field(default_factory=list)  # over the node's alias / base columns
    keys: dict[str, str] = field(default_factory=dict)  # column -> hidden alias, for children's joins
    group_by: list[str] = field(default_factory=list)

    @property
    def cte(self) -> str:
        return f"n{self.index}"

    def output(self, expression: exp.Expr) -> int:
        self.outputs.append(expression)
        return len(self.outputs) - 1

    def key(self, column: str) -> str:
        return self.keys.setdefault(column, names.node_key(len(self.keys)))


@dataclass(frozen=True)
class Compiled:
    """One root field: its response key, the tree to run (before the role's policies: see
    :mod:`gateway.execution.prepared`), and how to shape the rows. Never changed once made."""

    key: str
    tree: exp.Expr
    nodes: tuple[Node, ...]
    # the response value before any row arrives: None (one object), [] (a list), or an
    # aggregate's ("composite", template)
    initial: list[Any] | tuple[str, list[Slot]] | None
    departments: tuple[str, ...]

    def positions(self, outputs: Mapping[str, Release]) -> dict[int, dict[int, Release]]:
        """``outputs`` (by output name) by node and position in the statement's rows: after
        ``__node``, ``__parent`` and ``__id``, every node's outputs in turn (as shape reads them)."""
        offsets, position = {}, 3
        for node in self.nodes:
            offsets[node.index] = position
            position += len(node.outputs)
        found: dict[int, dict[int, Release]] = {}
        for name, release in outputs.items():
            node_index, index = (int(part) for part in name[1:].split("_"))
            found.setdefault(node_index, {})[offsets[node_index] + index] = release
        return found


@dataclass
class CompileContext:
    model: Model
    fragments: Mapping[str, FragmentDefinitionNode]
    variables: VariableValues | None
    nodes: list[Node] = field(default_factory=list)
    aliases: int = 0
    terms: int = 0  # conditions in the request's filters so far
    # rows a root list may read without a `limit` of its own, and a nested list's rows of all
    # its parents together: one more than a request may return (limits.max_rows), so that the
    # engine stops reading there, and the fetch that finds one row too many says so
    cap: int | None = None
    deadline: float = math.inf  # time.monotonic() past which preparing the request stops (TooSlow)
    seconds: float = math.inf  # the role's limits.plan_seconds, for the message

    def in_time(self, path: list[str | int]) -> None:
        if time.monotonic() > self.deadline:
            raise TooSlow(too_slow(self.seconds), path)

    def count(self, terms: int, path: list[str | int]) -> None:
        self.terms += terms
        self.in_time(path)
        if self.terms > MAX_TERMS:
            raise TooManyTerms(
                f"the query's filters hold more than {MAX_TERMS} conditions (`_in` values counted each); "
                "ask for less in one request",
                path,
            )

    def alias(self) -> str:
        self.aliases += 1
        return f"t{self.aliases}"


def collect_fields(
    ctx: CompileContext, selection_sets: Sequence[SelectionSetNode | None]
) -> dict[str, list[FieldNode]]:
    """Fields by response key, through fragments and inline fragments, honouring @skip/@include."""
    fields: dict[str, list[FieldNode]] = {}
    visited: set[str] = set()

    def included(node: FieldNode | FragmentSpreadNode | InlineFragmentNode) -> bool:
        skip = get_directive_values(GraphQLSkipDirective, node, ctx.variables)
        if skip and skip.get("if"):
            return False
        include = get_directive_values(GraphQLIncludeDirective, node, ctx.variables)
        return not (include is not None and not include.get("if"))

    def visit(selection_set: SelectionSetNode | None) -> None:
        if selection_set is None:
            return
        for selection in selection_set.selections:
            if not included(selection):  # type: ignore[arg-type]
                continue
            if isinstance(selection, FieldNode):
                key = selection.alias.value if selection.alias else selection.name.value
                fields.setdefault(key, []).append(selection)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name not in visited and name in ctx.fragments:
                    visited.add(name)
                    visit(ctx.fragments[name].selection_set)
            elif isinstance(selection, InlineFragmentNode):
                visit(selection.selection_set)

    for selection_set in selection_sets:
        visit(selection_set)
    return fields


def _subselections(nodes: list[FieldNode]) -> list[SelectionSetNode | None]:
    return [n.selection_set for n in nodes]


def compile_root_field(ctx: CompileContext, key: str, nodes: list[FieldNode], root_type: GraphQLObjectType) -> Compiled:
    """Compile the root field answered under ``key``."""
    ctx.in_time([key])
    name = nodes[0].name.value
    kind, table = ctx.model.roots[name]
    field_def = root_type.fields[name]
    args = _arguments(ctx, field_def, nodes[0], [key])
    ctx.nodes = []
    ctx.aliases = 0
    if kind in ("list", "by_pk"):
        if kind == "by_pk":
            args = {"where": {"_and": [{k: {"_eq": args[k]}} for k in table.primary_key]}, "limit": 1}
        node = _rows_node(ctx, table, None, None, args, [key], (key,), "first" if kind == "by_pk" else "append")
        _object_template(ctx, node, _subselections(nodes), [key])
        initial: list[Any] | tuple[str, list[Slot]] | None = None if kind == "by_pk" else []
    elif kind == "aggregate":
        template = _aggregate_field(ctx, table, None, None, args, _subselections(nodes), [key], (key,))
        initial = ("composite", template)
    else:
        node = _group_node(ctx, table, args, _subselections(nodes), [key])
        initial = []
    tree = _statement(ctx)
    return Compiled(key, tree, tuple(ctx.nodes), initial, tuple(departments_in(tree)))


def _arguments(ctx: CompileContext, field_def: GraphQLField, node: FieldNode, path: list[str | int]) -> dict[str, Any]:
    try:
        return get_argument_values(field_def, node, ctx.variables)
    except Exception as error:  # graphql-core raises GraphQLError with a precise message
        raise CompileError(str(error), path) from None


# -- building nodes ------------------------------------------------------------------------


def _rows_node(
    ctx: CompileContext,
    table: TableInfo,
    parent: Node | None,
    relation: Relation | None,
    args: dict[str, Any],
    path: list[str | int],
    attach: tuple[str, ...],
    mode: str,
) -> Node:
    _check_page(args, path)
    node = Node(len(ctx.nodes), "rows", table, parent, relation, args, path, attach, mode)
    ctx.nodes.append(node)
    return node


def _check_page(args: dict[str, Any], path: list[str | int]) -> None:
    for name in ("limit", "offset"):
        if args.get(name) is not None and args[name] < 0:
            raise CompileError(f"`{name}` must not be negative", path)


def _object_template(
    ctx: CompileContext, node: Node, selections: list[SelectionSetNode | None], path: list[str | int]
) -> None:
    table = node.table
    object_type = ctx.model.schema.get_type(table.root)
    assert isinstance(object_type, GraphQLObjectType)
    for key, nodes in collect_fields(ctx, selections).items():
        name = nodes[0].name.value
        here = [*path, key]
        if name == "__typename":
            node.template.append((CONST, key, table.root))
        elif name in table.columns:
            column = table.columns[name]
            index = node.output(exp.column(_ident(name)))
            node.template.append((VALUE, key, index, OUTPUT[column.type.kind], None))
        elif name in table.relations:
            relation = table.relations[name]
            target = ctx.model.tables[relation.target]
            args = _arguments(ctx, object_type.fields[name], nodes[0], here)
            node.key(relation.column)
            if relation.kind == "object":
                child = _rows_node(ctx, target, node, relation, {"limit": 1}, here, (key,), "first")
                node.template.append((CHILD_ONE, key))
            else:
                child = _rows_node(ctx, target, node, relation, args, here, (key,), "append")
                node.template.append((CHILD_LIST, key))
            _object_template(ctx, child, _subselections(nodes), here)
        elif name.endswith("_aggregate") and name[: -len("_aggregate")] in table.relations:
            relation = table.relations[name[: -len("_aggregate")]]
            target = ctx.model.tables[relation.target]
            args = _arguments(ctx, object_type.fields[name], nodes[0], here)
            node.key(relation.column)
            template = _aggregate_field(ctx, target, node, relation, args, _subselections(nodes), here, (key,))
            node.template.append((COMPOSITE, key, template))
        else:  # validation keeps this from happening
            raise CompileError(f"field {name!r} cannot be compiled", here)


def _aggregate_field(
    ctx: CompileContext,
    table: TableInfo,
    parent: Node | None,
    relation: Relation | None,
    args: dict[str, Any],
    selections: list[SelectionSetNode | None],
    path: list[str | int],
    attach: tuple[str, ...],
) -> list[Slot]:
    """``{ aggregate { ... } nodes { ... } }``: an aggregate node and a rows node side by side."""
    _check_page(args, path)
    template: list[Slot] = []
    for key, nodes in collect_fields(ctx, selections).items():
        name = nodes[0].name.value
        here = [*path, key]
        if name == "__typename":
            template.append((CONST, key, f"{table.root}_aggregate"))
        elif name == "nodes":
            child = _rows_node(ctx, table, parent, relation, args, here, (*attach, key), "append")
            _object_template(ctx, child, _subselections(nodes), here)
            template.append((CHILD_LIST, key))
        elif name == "aggregate":
            node = Node(len(ctx.nodes), "agg", table, parent, relation, args, here, (*attach, key), "set")
            ctx.nodes.append(node)
            node.template = _aggregate_template(ctx, node, table, _subselections(nodes), here)
            _selecting_count(node)
            template.append((NESTED, key, node.template))
    return template


def _selecting_count(node: Node) -> None:
    """A noisy table's aggregate counts its rows whatever the caller asked: the noisy count
    decides whether each group appears (partition selection), and spends (policies.noise).
    The response shows it only where the caller asked for the count: then it is that count
    (one draw, spent once), unless groups are sized by their entities (``k_distinct``), which
    the policy step counts in this output instead."""
    if node.table.noisy is None:
        return
    own = next((o for o in node.outputs if o == exp.Count(this=exp.Star())), None)
    if own is not None and not node.table.entities:
        own.meta[names.SELECTS] = True
        return
    count = exp.Count(this=exp.Star())
    count.meta[names.SELECTS] = True
    node.output(count)


def _aggregate_template(
    ctx: CompileContext, node: Node, table: TableInfo, selections: list[SelectionSetNode | None], path: list[str | int]
) -> list[Slot]:
    fields_type = ctx.model.schema.get_type(f"{table.root}_aggregate_fields")
    assert isinstance(fields_type, GraphQLObjectType)
    template: list[Slot] = []
    for key, nodes in collect_fields(ctx, selections).items():
        name = nodes[0].name.value
        here = [*path, key]
        if name == "__typename":
            template.append((CONST, key, f"{table.root}_aggregate_fields"))
        elif name == "count":
            args = _arguments(ctx, fields_type.fields["count"], nodes[0], here)
            index = node.output(_count(args.get("columns") or [], bool(args.get("distinct")), here))
            template.append((VALUE, key, index, None, 0))
        else:
            template.append((NESTED, key, _per_column(ctx, node, table, name, nodes, here)))
    return template


def _count(columns: list[str], distinct: bool, path: list[str | int]) -> exp.Expr:
    if not columns:
        if distinct:
            raise CompileError("count(distinct: true) needs `columns`", path)
        return exp.Count(this=exp.Star())
    if len(columns) == 1:
        column: exp.Expr = exp.column(_ident(columns[0]))
        return exp.Count(this=exp.Distinct(expressions=[column]) if distinct else column)
    if distinct:
        raise CompileError("count(distinct: true) counts one column at a time", path)
    # Rows where every named column is set, as COUNT(a, b) would mean.
    every = exp.and_(
        *[exp.not_(exp.Is(this=exp.column(_ident(c)), expression=exp.Null()), copy=False) for c in columns], copy=False
    )
    return exp.Count(this=exp.Case(ifs=[exp.If(this=every, true=exp.Literal.number(1))]))


def _per_column(
    ctx: CompileContext, node: Node, table: TableInfo, op: str, nodes: list[FieldNode], path: list[str | int]
) -> list[Slot]:
    """``sum { cost }``, ``min { visit_date }``...: one output per column."""
    template: list[Slot] = []
    for key, column_nodes in collect_fields(ctx, _subselections(nodes)).items():
        name = column_nodes[0].name.value
        if name == "__typename":
            template.append((CONST, key, f"{table.root}_{op}_fields"))
            continue
        column = table.columns[name]
        index = node.output(AGGREGATES[op](exp.column(_ident(name))))
        convert = _aggregate_output(op, column)
        template.append((VALUE, key, index, convert, None))
    return template


def _aggregate_output(op: str, column: ColumnInfo) -> Callable[[Any], Any] | None:
    if op == "avg":
        return float
    if op == "sum":
        return {"integer": str, "bigint": str, "double": float, "decimal": str}[column.type.kind]
    return OUTPUT[column.type.kind]


def _group_node(
    ctx: CompileContext,
    table: TableInfo,
    args: dict[str, Any],
    selections: list[SelectionSetNode | None],
    path: list[str | int],
) -> Node:
    by = list(dict.fromkeys(args["by"]))
    if not by:
        raise CompileError("`by` needs at least one column", path)
    node = Node(len(ctx.nodes), "group", table, None, None, args, path, (path[0],), "append")  # type: ignore[arg-type]
    node.group_by = by
    ctx.nodes.append(node)
    for key, nodes in collect_fields(ctx, selections).items():
        name = nodes[0].name.value
        here = [*path, key]
        if name == "__typename":
            node.template.append((CONST, key, f"{table.root}_group_by"))
        elif name == "keys":
            keys: list[Slot] = []
            for key_name, key_nodes in collect_fields(ctx, _subselections(nodes)).items():
                column_name = key_nodes[0].name.value
                if column_name == "__typename":
                    keys.append((CONST, key_name, f"{table.root}_group_keys"))
                    continue
                if column_name not in by:
                    raise CompileError(f"key {column_name!r} is not one of the columns in `by`", [*here, key_name])
                index = node.output(exp.column(_ident(column_name)))
                keys.append((VALUE, key_name, index, OUTPUT[table.columns[column_name].type.kind], None))
            node.template.append((NESTED, key, keys))
        elif name == "aggregate":
            node.template.append((NESTED, key, _aggregate_template(ctx, node, table, _subselections(nodes), here)))
    _selecting_count(node)
    return node


# -- filters and orderings -----------------------------------------------------------------


def where_sql(
    ctx: CompileContext, table: TableInfo, alias: str, condition: Mapping[str, Any] | None, path: list[str | int]
) -> exp.Expr | None:
    """A ``<root>_bool_exp`` as a predicate over ``alias``; relationships become EXISTS."""
    if not condition:
        return None
    terms: list[exp.Expr] = []
    for name, value in condition.items():
        here = [*path, name]
        if value is None:
            raise CompileError(f"`{name}: null` is not a condition; leave it out", here)
        if name == "_and":
            ctx.count(len(value), here)
            parts = [where_sql(ctx, table, alias, v, here) or exp.true() for v in value]
            terms.append(exp.and_(*parts, copy=False) if parts else exp.true())
        elif name == "_or":
            ctx.count(len(value), here)
            parts = [where_sql(ctx, table, alias, v, here) or exp.true() for v in value]
            terms.append(exp.paren(exp.or_(*parts, copy=False), copy=False) if parts else exp.false())
        elif name == "_not":
            inner = where_sql(ctx, table, alias, value, here)
            terms.append(exp.not_(exp.paren(inner, copy=False), copy=False) if inner is not None else exp.false())
        elif name in table.columns:
            column = table.columns[name]
            for op, operand in value.items():
                if operand is None:
                    raise CompileError(f"`{op}: null` compares with nothing; use _is_null", [*here, op])
                ctx.count(len(operand) if isinstance(operand, list) else 1, [*here, op])
                terms.append(OPERATORS[op](_col(alias, name), operand, column.type))
        elif name in table.relations:
            relation = table.relations[name]
            target = ctx.model.tables[relation.target]
            inner_alias = ctx.alias()
            link = _marked(inner_alias, relation.target_column, KEY).eq(_marked(alias, relation.column, KEY))
            nested = where_sql(ctx, target, inner_alias, value, here)
            predicate = exp.and_(link, nested, copy=False) if nested is not None else link
            subquery = (
                exp.select(exp.Literal.number(1), copy=False)
                .from_(logical_table(target.department, target.name).as_(inner_alias, copy=False), copy=False)
                .where(predicate, copy=False)
            )
            terms.append(exp.Exists(this=subquery))
        else:
            raise CompileError(f"unknown filter field {name!r} on {table.root}", here)
    if not terms:
        return None
    return exp.and_(*terms, copy=False) if len(terms) > 1 else terms[0]


@dataclass
class Joins:
    """LEFT JOINs an ordering needs through object relationships, one per path."""

    joins: dict[tuple[str, ...], tuple[str, TableInfo, exp.Expr]] = field(default_factory=dict)

    def alias_for(
        self, ctx: CompileContext, path: tuple[str, ...], table: TableInfo, parent_alias: str, relation: Relation
    ) -> str:
        if path not in self.joins:
            alias = ctx.alias()
            on = _marked(alias, relation.target_column, KEY).eq(_marked(parent_alias, relation.column, KEY))
            self.joins[path] = (alias, table, on)
        return self.joins[path][0]


def order_terms(
    ctx: CompileContext,
    table: TableInfo,
    alias: str,
    order_by: Sequence[Mapping[str, Any]] | None,
    joins: Joins,
    path: list[str | int],
) -> list[exp.Ordered]:
    terms: list[exp.Ordered] = []

    def visit(current: TableInfo, current_alias: str, spec: Mapping[str, Any], trail: tuple[str, ...]) -> None:
        for name, value in spec.items():
            if value is None:
                continue
            if name in current.columns:
                direction, nulls_first = value
                terms.append(
                    exp.Ordered(this=_col(current_alias, name), desc=direction == "desc", nulls_first=nulls_first)
                )
            else:
                relation = current.relations[name]
                target = ctx.model.tables[relation.target]
                joined = joins.alias_for(ctx, (*trail, name), target, current_alias, relation)
                visit(target, joined, value, (*trail, name))

    for spec in order_by or []:
        visit(table, alias, spec, ())
    return terms


def _total(terms: list[exp.Ordered], table: TableInfo, alias: str) -> list[exp.Ordered]:
    """Append the primary key (or every column) so that ties break the same way everywhere."""
    keys = table.primary_key or tuple(n for n, c in table.columns.items() if c.type.kind in ORDERABLE)
    return terms + [exp.Ordered(this=_marked(alias, k, TIE), desc=False, nulls_first=False) for k in keys]


# -- SQL for each node ---------------------------------------------------------------------


def _node_base(
    ctx: CompileContext, node: Node, extra: list[exp.Expr], ordered: bool = True
) -> tuple[exp.Select, str, Joins, list[exp.Ordered]]:
    """FROM the table (joined to the parent's CTE), WHERE, plus the order terms it needs."""
    alias = ctx.alias()
    table = node.table
    select = exp.select(*extra, copy=False).from_(
        logical_table(table.department, table.name).as_(alias, copy=False), copy=False
    )
    if node.parent is not None and node.relation is not None:
        parent = node.parent
        select = select.join(
            exp.Table(this=exp.to_identifier(parent.cte)).as_("p", copy=False),
            on=_marked(alias, node.relation.target_column, KEY).eq(exp.column(parent.keys[node.relation.column], "p")),
            copy=False,
        )
        select = select.select(exp.alias_(exp.column(names.ID, "p"), names.PARENT, copy=False), copy=False)
    condition = where_sql(ctx, table, alias, node.args.get("where"), [*node.path, "where"])
    if condition is not None:
        select = select.where(condition, copy=False)
    joins = Joins()
    order = order_terms(
        ctx, table, alias, node.args.get("order_by") if ordered else None, joins, [*node.path, "order_by"]
    )
    for join_alias, target, on in joins.joins.values():
        select = select.join(
            logical_table(target.department, target.name).as_(join_alias, copy=False),
            on=on,
            join_type="left",
            copy=False,
        )
    if node.relation is not None and node.relation.kind == "object":
        # At most one row per parent: nothing to order, and a tie-break on a key the role may
        # see only hashed would hash the whole related table for nothing.
        return select, alias, joins, order
    return select, alias, joins, _total(order, table, alias)


def _qualify(expression: exp.Expr, alias: str) -> exp.Expr:
    """Point the unqualified column references of an output at ``alias``."""
    expression = expression.copy()
    for column in expression.find_all(exp.Column):
        if not column.table:
            column.set("table", exp.to_identifier(alias))
    return expression


def _sorted_by(sort_aliases: list[tuple[str, exp.Ordered]]) -> list[exp.Ordered]:
    """The order terms again, over the aliases the inner SELECT gave their values."""
    return [
        exp.Ordered(this=exp.column(a), desc=o.args.get("desc"), nulls_first=o.args.get("nulls_first"))
        for a, o in sort_aliases
    ]


def _top(node: Node, inner: exp.Select, sort_aliases: list[tuple[str, exp.Ordered]], cap: int | None) -> exp.Select:
    """A root field's page as ORDER BY ... LIMIT ... OFFSET: engines keep the top rows as they
    read (and Trino can hand the top-N to the store) instead of sorting the whole table to
    number every row, as a per-parent page must."""
    paged = exp.select("*", copy=False).from_(inner.subquery("b", copy=False), copy=False)
    order = _sorted_by(sort_aliases)
    if order:
        paged = paged.order_by(*order, copy=False)
    offset, limit = node.args.get("offset") or 0, node.args.get("limit")
    if limit is None:
        limit = cap
    if limit is not None:
        paged = paged.limit(limit, copy=False)
    if offset:
        paged = paged.offset(offset, copy=False)
    return paged


def _paged(
    node: Node, inner: exp.Select, sort_aliases: list[tuple[str, exp.Ordered]], partition: Sequence[exp.Expr]
) -> exp.Select:
    """Number rows in order (per parent) and keep the page ``offset < n <= offset + limit``."""
    distinct = node.args.get("distinct_on") or []
    source: exp.Expr = inner.subquery("b", copy=False)
    order = _sorted_by(sort_aliases)
    if distinct:
        first = exp.Window(
            this=exp.RowNumber(),
            partition_by=[*partition, *[exp.column(names.distinct(i)) for i in range(len(distinct))]],
            order=exp.Order(expressions=order) if order else None,
        )
        source = (
            exp.select("*", copy=False)
            .from_(
                exp.select(exp.Star(), exp.alias_(first, names.FIRST, copy=False), copy=False)
                .from_(source, copy=False)
                .subquery("f", copy=False),
                copy=False,
            )
            .where(exp.column(names.FIRST).eq(1), copy=False)
            .subquery("d", copy=False)
        )
    number = exp.Window(
        this=exp.RowNumber(), partition_by=partition or None, order=exp.Order(expressions=order) if order else None
    )
    ranked = (
        exp.select(exp.Star(), exp.alias_(number, names.ROW_NUMBER, copy=False), copy=False)
        .from_(source, copy=False)
        .subquery("r", copy=False)
    )
    paged = exp.select("*", copy=False).from_(ranked, copy=False)
    return _page(paged, node)


def _page(select: exp.Select, node: Node) -> exp.Select:
    """Keep rows numbered ``offset < __rn <= offset + limit``."""
    offset, limit = node.args.get("offset") or 0, node.args.get("limit")
    if offset:
        select = select.where(exp.column(names.ROW_NUMBER) > offset, copy=False)
    if limit is not None:
        select = select.where(exp.column(names.ROW_NUMBER) <= offset + limit, copy=False)
    return select


def _rows_sql(ctx: CompileContext, node: Node) -> exp.Select:
    select, alias, _, order = _node_base(ctx, node, [])
    outputs = [
        exp.alias_(_qualify(o, alias), names.output(node.index, i), copy=False) for i, o in enumerate(node.outputs)
    ]
    keys = [exp.alias_(_marked(alias, c, KEY), k, copy=False) for c, k in node.keys.items()]
    sorts = [(names.sort(i), o) for i, o in enumerate(order)]
    distinct = [
        exp.alias_(_col(alias, c), names.distinct(i), copy=False)
        for i, c in enumerate(node.args.get("distinct_on") or [])
    ]
    select = select.select(
        *outputs, *keys, *[exp.alias_(o.this, a, copy=False) for a, o in sorts], *distinct, copy=False
    )
    partition = [exp.column(names.PARENT)] if node.parent is not None else []
    relation = node.relation
    one_each = (
        relation is not None and relation.kind == "object" and node.table.primary_key == (relation.target_column,)
    )
    if one_each:
        # Joined on the target's primary key: at most one row per parent, nothing to cut.
        paged, number = select, [exp.Ordered(this=exp.column(names.PARENT))]
    elif partition or distinct:
        paged = _paged(node, select, sorts, partition)
        number = [*[exp.Ordered(this=p) for p in partition], exp.Ordered(this=exp.column(names.ROW_NUMBER))]
    else:
        paged = _top(node, select, sorts, ctx.cap)
        number = _sorted_by(sorts)
    # A global row number: children find their parent by it.
    ident = exp.Window(this=exp.RowNumber(), order=exp.Order(expressions=number) if number else None)
    level = exp.select("*", exp.alias_(ident, names.ID, copy=False), copy=False).from_(
        paged.subquery("g", copy=False), copy=False
    )
    if partition and not one_each and ctx.cap is not None:
        # A nested list's rows, of every parent together, are cut where a root list's are: one
        # more than a request may return, so the engine keeps no more (a top-N, not the whole
        # level) and the fetch still sees that the answer is too large.
        level = level.order_by(*number, copy=False).limit(ctx.cap, copy=False)
    return level


def _agg_sql(ctx: CompileContext, node: Node) -> exp.Select:
    select, alias, _, order = _node_base(ctx, node, [])
    columns = sorted({c.name for o in node.outputs for c in o.find_all(exp.Column)})
    # COUNT(*) alone reads no column, but a SELECT needs one.
    select = select.select(
        *[exp.alias_(_col(alias, c), c, copy=False) for c in columns]
        or [exp.alias_(exp.Literal.number(1), names.ONE, copy=False)],
        copy=False,
    )
    partition = [exp.column(names.PARENT)] if node.parent is not None else []
    if any(node.args.get(k) is not None for k in ("limit", "offset", "distinct_on")):
        sorts = [(names.sort(i), o) for i, o in enumerate(order)]
        select = select.select(*[exp.alias_(o.this, a, copy=False) for a, o in sorts], copy=False)
        select = select.select(
            *[
                exp.alias_(_col(alias, c), names.distinct(i), copy=False)
                for i, c in enumerate(node.args.get("distinct_on") or [])
            ],
            copy=False,
        )
        top = not partition and not node.args.get("distinct_on")
        source = _top(node, select, sorts, None) if top else _paged(node, select, sorts, partition)
    else:
        source = select
    outputs = [exp.alias_(o.copy(), names.output(node.index, i), copy=False) for i, o in enumerate(node.outputs)]
    aggregated = exp.select(*outputs, copy=False).from_(source.subquery("a", copy=False), copy=False)
    aggregated.meta[AGGREGATED] = True
    if partition:
        return aggregated.select(
            exp.column(names.PARENT), exp.alias_(exp.column(names.PARENT), names.ID, copy=False), copy=False
        ).group_by(exp.column(names.PARENT), copy=False)
    return aggregated.select(exp.alias_(exp.Literal.number(1), names.ID, copy=False), copy=False)


def _group_sql(ctx: CompileContext, node: Node) -> exp.Select:
    select, alias, _, _ = _node_base(ctx, node, [], ordered=False)
    order = _group_order(node)
    used = [c.name for e in [*node.outputs, *order] for c in e.find_all(exp.Column)]
    columns = sorted(set(used) | set(node.group_by))
    select = select.select(*[exp.alias_(_col(alias, c), c, copy=False) for c in columns], copy=False)
    order += [exp.Ordered(this=exp.column(_ident(c)), desc=False, nulls_first=False) for c in node.group_by]
    number = exp.Window(this=exp.RowNumber(), order=exp.Order(expressions=order))
    outputs = [exp.alias_(o.copy(), names.output(node.index, i), copy=False) for i, o in enumerate(node.outputs)]
    grouped = (
        exp.select(*outputs, exp.alias_(number, names.ROW_NUMBER, copy=False), copy=False)
        .from_(select.subquery("a", copy=False), copy=False)
        .group_by(*[exp.column(_ident(c)) for c in node.group_by], copy=False)
    )
    grouped.meta[AGGREGATED] = True
    paged = exp.select("*", exp.alias_(exp.column(names.ROW_NUMBER), names.ID, copy=False), copy=False).from_(
        grouped.subquery("g", copy=False), copy=False
    )
    _check_page(node.args, node.path)
    if node.table.noisy is not None:
        # A page cut before the groups are selected would hold a group by its exact rank
        # among those of k rows: the page is cut from the released groups (shape), by the
        # same order.
        return paged
    return _page(paged, node)


def _ordered(expression: exp.Expr, value: tuple[str, bool]) -> exp.Ordered:
    direction, nulls_first = value
    return exp.Ordered(this=expression, desc=direction == "desc", nulls_first=nulls_first)


def _group_order(node: Node) -> list[exp.Ordered]:
    """A group_by's ordering: by its keys, or by an aggregate of each group."""
    order: list[exp.Ordered] = []
    for spec in node.args.get("order_by") or []:
        for name, value in spec.items():
            if value is None:
                continue
            if name != "aggregate":
                if name not in node.group_by:
                    raise CompileError(
                        f"cannot order by {name!r}: it is not one of the columns in `by`", [*node.path, "order_by"]
                    )
                order.append(_ordered(exp.column(_ident(name)), value))
                continue
            # A null at any level orders by nothing, as it does in a list's `order_by`.
            for op, inner in value.items():
                if inner is None:
                    continue
                if op == "count":
                    order.append(_ordered(exp.Count(this=exp.Star()), inner))
                else:
                    order.extend(
                        _ordered(AGGREGATES[op](exp.column(_ident(c))), v) for c, v in inner.items() if v is not None
                    )
    return order


_SQL = {"rows": _rows_sql, "agg": _agg_sql, "group": _group_sql}


def _statement(ctx: CompileContext) -> exp.Expr:
    """Every node as a CTE, and one UNION ALL that returns all their rows, tagged by node."""
    nodes = ctx.nodes
    ctes = [(node.cte, _SQL[node.kind](ctx, node)) for node in nodes]
    branches: list[exp.Select] = []
    for node in nodes:
        projections: list[exp.Expr] = [
            exp.alias_(exp.Literal.number(node.index), names.NODE, copy=False),
            exp.alias_(exp.column(names.PARENT) if node.parent is not None else exp.Null(), names.PARENT, copy=False),
            exp.column(names.ID),
        ]
        for other in nodes:
            for i in range(len(other.outputs)):
                name = names.output(other.index, i)
                projections.append(exp.column(name) if other is node else exp.alias_(exp.Null(), name, copy=False))
        branches.append(exp.select(*projections, copy=False).from_(node.cte, copy=False))
    union: exp.Select | exp.Union = branches[0]
    for branch in branches[1:]:
        union = exp.union(union, branch, distinct=False, copy=False)
    statement = (
        exp.select("*", copy=False)
        .from_(union.subquery("u", copy=False), copy=False)
        .order_by(names.NODE, names.ID, copy=False)
    )
    for name, cte in ctes:
        statement = statement.with_(name, as_=cte, copy=False)
    return statement
