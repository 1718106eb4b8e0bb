"""Compile one root field of a GraphQL query into one sqlglot tree, and the plan to shape its rows.

Every level of the selection becomes a *node*: a common table expression over its parent's
(``n0`` for the root, ``n1`` for ``clinic_visits`` under it, ...). Each node numbers its rows
(``__id``) and remembers its parent's (``__parent``); the statement returns every node's rows
in one ``UNION ALL``, tagged with the node's number, so a query of any depth costs one engine
statement. :mod:`gateway.graphql.shape` turns those rows into the nested response.

Orderings are made total with the primary key, so the same query pages the same way on every
engine. User values enter the tree only as literal nodes; tables are referenced logically
(``department.table``) and located by the engine after the policy step has rewritten them.

This module walks the selection and builds the nodes; the SQL is made clause by clause, as
sqlglot's generator makes it node by node: :mod:`~gateway.graphql.nodes` (the types, errors and
how names and values enter SQL), :mod:`~gateway.graphql.where`, :mod:`~gateway.graphql.order`
and :mod:`~gateway.graphql.source` (the clauses), :mod:`~gateway.graphql.rows`,
:mod:`~gateway.graphql.aggregate` and :mod:`~gateway.graphql.group` (a node of each kind), and
:mod:`~gateway.graphql.statement` (all of them in one statement).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from graphql import (
    FieldNode,
    FragmentSpreadNode,
    GraphQLField,
    GraphQLIncludeDirective,
    GraphQLObjectType,
    GraphQLSkipDirective,
    InlineFragmentNode,
    SelectionSetNode,
)
from graphql.execution.values import get_argument_values, get_directive_values
from sqlglot import exp

from catalogue import names
from catalogue.sql import departments_in
from gateway.graphql.nodes import (
    AGGREGATES,
    CHILD_LIST,
    CHILD_ONE,
    COMPOSITE,
    CONST,
    MAX_TERMS,
    NESTED,
    VALUE,
    CompileContext,
    Compiled,
    CompileError,
    Node,
    Part,
    Slot,
    TooSlow,
    ident,
    too_slow,
)
from gateway.graphql.order import check_page
from gateway.graphql.parts import split
from gateway.graphql.scalars import OUTPUT
from gateway.graphql.schema import ColumnInfo, Relation, TableInfo
from gateway.graphql.statement import statement_sql

# The compiler's face: what the rest of the gateway imports from here (the types themselves
# live in gateway.graphql.nodes).
__all__ = [
    "CHILD_LIST",
    "CHILD_ONE",
    "COMPOSITE",
    "CONST",
    "MAX_TERMS",
    "NESTED",
    "VALUE",
    "CompileContext",
    "CompileError",
    "Compiled",
    "Node",
    "Part",
    "Slot",
    "TooSlow",
    "collect_fields",
    "compile_root_field",
    "too_slow",
]


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
    tree = statement_sql(ctx)
    compiled = Compiled(key, tree, tuple(ctx.nodes), initial, tuple(departments_in(tree)))
    if ctx.stores is None:
        return compiled
    return replace(compiled, parts=split(ctx, compiled, ctx.stores))


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
    check_page(args, path)
    node = Node(len(ctx.nodes), "rows", table, parent, relation, args, path, attach, mode)
    ctx.nodes.append(node)
    return node


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
            index = node.output(exp.column(ident(name)))
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
    check_page(args, path)
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
        column: exp.Expr = exp.column(ident(columns[0]))
        return exp.Count(this=exp.Distinct(expressions=[column]) if distinct else column)
    if distinct:
        raise CompileError("count(distinct: true) counts one column at a time", path)
    # Rows where every named column is set, as COUNT(a, b) would mean.
    every = exp.and_(
        *[exp.not_(exp.Is(this=exp.column(ident(c)), expression=exp.Null()), copy=False) for c in columns], copy=False
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
        index = node.output(AGGREGATES[op](exp.column(ident(name))))
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
                index = node.output(exp.column(ident(column_name)))
                keys.append((VALUE, key_name, index, OUTPUT[table.columns[column_name].type.kind], None))
            node.template.append((NESTED, key, keys))
        elif name == "aggregate":
            node.template.append((NESTED, key, _aggregate_template(ctx, node, table, _subselections(nodes), here)))
    _selecting_count(node)
    return node
