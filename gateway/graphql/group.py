"""The SQL of a ``group_by`` node: one row per group, ordered by its keys or by an aggregate of
each group, and paged (unless the table is noisy: then shape cuts the page from the released groups).
"""

from __future__ import annotations

from sqlglot import exp

from catalogue import names
from catalogue.names import AGGREGATED
from gateway.graphql.nodes import AGGREGATES, CompileContext, CompileError, Node, col, ident
from gateway.graphql.order import check_page, cut_page
from gateway.graphql.source import node_base


def group_sql(ctx: CompileContext, node: Node) -> exp.Select:
    select, alias, _, _ = node_base(ctx, node, [], ordered=False)
    order = _group_order(node)
    used = [c.name for e in [*node.outputs, *order] for c in e.find_all(exp.Column)]
    columns = sorted(set(used) | set(node.group_by))
    select = select.select(*[exp.alias_(col(alias, c), c, copy=False) for c in columns], copy=False)
    order += [exp.Ordered(this=exp.column(ident(c)), desc=False, nulls_first=False) for c in node.group_by]
    number = exp.Window(this=exp.RowNumber(), order=exp.Order(expressions=order))
    outputs = [exp.alias_(o.copy(), names.output(node.index, i), copy=False) for i, o in enumerate(node.outputs)]
    grouped = (
        exp.select(*outputs, exp.alias_(number, names.ROW_NUMBER, copy=False), copy=False)
        .from_(select.subquery("a", copy=False), copy=False)
        .group_by(*[exp.column(ident(c)) for c in node.group_by], copy=False)
    )
    grouped.meta[AGGREGATED] = True
    paged = exp.select("*", exp.alias_(exp.column(names.ROW_NUMBER), names.ID, copy=False), copy=False).from_(
        grouped.subquery("g", copy=False), copy=False
    )
    check_page(node.args, node.path)
    if node.table.noisy is not None:
        # A page cut before the groups are selected would hold a group by its exact rank
        # among those of k rows: the page is cut from the released groups (shape), by the
        # same order.
        return paged
    return cut_page(paged, node)


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
                order.append(_ordered(exp.column(ident(name)), value))
                continue
            # A null at any level orders by nothing, as it does in a list's `order_by`.
            for op, inner in value.items():
                if inner is None:
                    continue
                if op == "count":
                    order.append(_ordered(exp.Count(this=exp.Star()), inner))
                else:
                    order.extend(
                        _ordered(AGGREGATES[op](exp.column(ident(c))), v) for c, v in inner.items() if v is not None
                    )
    return order
