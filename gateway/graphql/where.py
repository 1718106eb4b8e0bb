"""The WHERE clause: a ``<root>_bool_exp`` as a predicate, and the comparison operators it may use.

Each operator takes the column, the user's value and the column's logical type, and builds its
node with the value as a typed literal (:func:`gateway.graphql.nodes.literal`).

>>> sorted(OPERATORS)[:3]
['_eq', '_gt', '_gte']
>>> OPERATORS["_in"](exp.column("x"), [], LogicalType("integer")).sql()
'FALSE'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlglot import exp

from catalogue.names import KEY
from catalogue.sql import logical_table
from catalogue.types import LogicalType
from gateway.graphql.nodes import CompileContext, CompileError, col, literal, marked
from gateway.graphql.schema import ColumnInfo, Relation, TableInfo
from policies.rowfilter import canonical_pattern, pattern_problem

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
        if name in _CONNECTIVES:
            terms.append(_CONNECTIVES[name](ctx, table, alias, value, here))
        elif name in table.columns:
            terms.extend(_comparisons(ctx, table.columns[name], alias, name, value, here))
        elif name in table.relations:
            terms.append(_exists(ctx, table.relations[name], alias, value, here))
        else:
            raise CompileError(f"unknown filter field {name!r} on {table.root}", here)
    if not terms:
        return None
    return exp.and_(*terms, copy=False) if len(terms) > 1 else terms[0]


Connective = Callable[[CompileContext, TableInfo, str, Any, list[str | int]], exp.Expr]


def _and(ctx: CompileContext, table: TableInfo, alias: str, value: list[Any], path: list[str | int]) -> exp.Expr:
    ctx.count(len(value), path)
    parts = [where_sql(ctx, table, alias, v, path) or exp.true() for v in value]
    return exp.and_(*parts, copy=False) if parts else exp.true()


def _or(ctx: CompileContext, table: TableInfo, alias: str, value: list[Any], path: list[str | int]) -> exp.Expr:
    ctx.count(len(value), path)
    parts = [where_sql(ctx, table, alias, v, path) or exp.true() for v in value]
    return exp.paren(exp.or_(*parts, copy=False), copy=False) if parts else exp.false()


def _not(ctx: CompileContext, table: TableInfo, alias: str, value: Any, path: list[str | int]) -> exp.Expr:
    inner = where_sql(ctx, table, alias, value, path)
    return exp.not_(exp.paren(inner, copy=False), copy=False) if inner is not None else exp.false()


_CONNECTIVES: dict[str, Connective] = {"_and": _and, "_or": _or, "_not": _not}


def _comparisons(
    ctx: CompileContext,
    column: ColumnInfo,
    alias: str,
    name: str,
    operators: Mapping[str, Any],
    path: list[str | int],
) -> list[exp.Expr]:
    """``{_gte: 3, _lt: 9}`` on one column: a comparison each."""
    terms: list[exp.Expr] = []
    for op, operand in operators.items():
        if operand is None:
            raise CompileError(f"`{op}: null` compares with nothing; use _is_null", [*path, op])
        ctx.count(len(operand) if isinstance(operand, list) else 1, [*path, op])
        terms.append(OPERATORS[op](col(alias, name), operand, column.type))
    return terms


def _exists(
    ctx: CompileContext, relation: Relation, alias: str, condition: Mapping[str, Any], path: list[str | int]
) -> exp.Expr:
    """A condition on a related table: EXISTS a row of it, joined on the relationship's keys, that meets it."""
    target = ctx.model.tables[relation.target]
    inner_alias = ctx.alias()
    link = marked(inner_alias, relation.target_column, KEY).eq(marked(alias, relation.column, KEY))
    nested = where_sql(ctx, target, inner_alias, condition, path)
    predicate = exp.and_(link, nested, copy=False) if nested is not None else link
    subquery = (
        exp.select(exp.Literal.number(1), copy=False)
        .from_(logical_table(target.department, target.name).as_(inner_alias, copy=False), copy=False)
        .where(predicate, copy=False)
    )
    return exp.Exists(this=subquery)
