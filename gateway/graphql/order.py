"""ORDER BY, LIMIT and OFFSET: a node's ordering (made total with the primary key) and its page.

A root list's page is a plain top-N (:func:`top_page`); a page per parent, or after
``distinct_on``, numbers the rows and keeps ``offset < n <= offset + limit`` (:func:`parent_page`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from catalogue import names
from catalogue.names import KEY, TIE
from catalogue.types import ORDERABLE
from gateway.graphql.nodes import CompileContext, CompileError, Node, col, marked
from gateway.graphql.schema import Relation, TableInfo


@dataclass
class Joins:
    """LEFT JOINs an ordering needs through object relationships, one per path."""

    joins: dict[tuple[str, ...], tuple[str, TableInfo, exp.Expr]] = field(default_factory=dict)

    def alias_for(
        self, ctx: CompileContext, path: tuple[str, ...], table: TableInfo, parent_alias: str, relation: Relation
    ) -> str:
        if path not in self.joins:
            alias = ctx.alias()
            on = marked(alias, relation.target_column, KEY).eq(marked(parent_alias, relation.column, KEY))
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
                    exp.Ordered(this=col(current_alias, name), desc=direction == "desc", nulls_first=nulls_first)
                )
            else:
                relation = current.relations[name]
                target = ctx.model.tables[relation.target]
                joined = joins.alias_for(ctx, (*trail, name), target, current_alias, relation)
                visit(target, joined, value, (*trail, name))

    for spec in order_by or []:
        visit(table, alias, spec, ())
    return terms


def total_order(terms: list[exp.Ordered], table: TableInfo, alias: str) -> list[exp.Ordered]:
    """Append the primary key (or every column) so that ties break the same way everywhere."""
    keys = table.primary_key or tuple(n for n, c in table.columns.items() if c.type.kind in ORDERABLE)
    return terms + [exp.Ordered(this=marked(alias, k, TIE), desc=False, nulls_first=False) for k in keys]


def check_page(args: dict[str, Any], path: list[str | int]) -> None:
    for name in ("limit", "offset"):
        if args.get(name) is not None and args[name] < 0:
            raise CompileError(f"`{name}` must not be negative", path)


def sorted_by(sort_aliases: list[tuple[str, exp.Ordered]]) -> list[exp.Ordered]:
    """The order terms again, over the aliases the inner SELECT gave their values."""
    return [
        exp.Ordered(this=exp.column(a), desc=o.args.get("desc"), nulls_first=o.args.get("nulls_first"))
        for a, o in sort_aliases
    ]


def top_page(node: Node, inner: exp.Select, sort_aliases: list[tuple[str, exp.Ordered]], cap: int | None) -> exp.Select:
    """A root field's page as ORDER BY ... LIMIT ... OFFSET: engines keep the top rows as they
    read (and Trino can hand the top-N to the store) instead of sorting the whole table to
    number every row, as a per-parent page must."""
    paged = exp.select("*", copy=False).from_(inner.subquery("b", copy=False), copy=False)
    order = sorted_by(sort_aliases)
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


def parent_page(
    node: Node, inner: exp.Select, sort_aliases: list[tuple[str, exp.Ordered]], partition: Sequence[exp.Expr]
) -> exp.Select:
    """Number rows in order (per parent) and keep the page ``offset < n <= offset + limit``."""
    distinct = node.args.get("distinct_on") or []
    source: exp.Expr = inner.subquery("b", copy=False)
    order = sorted_by(sort_aliases)
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
    return cut_page(paged, node)


def cut_page(select: exp.Select, node: Node) -> exp.Select:
    """Keep rows numbered ``offset < __rn <= offset + limit``."""
    offset, limit = node.args.get("offset") or 0, node.args.get("limit")
    if offset:
        select = select.where(exp.column(names.ROW_NUMBER) > offset, copy=False)
    if limit is not None:
        select = select.where(exp.column(names.ROW_NUMBER) <= offset + limit, copy=False)
    return select
