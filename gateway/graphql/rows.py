"""The SQL of a rows node: the objects of a list, a ``by_pk`` or an object relationship, paged
(per parent when nested) and numbered so that their children find them.
"""

from __future__ import annotations

from sqlglot import exp

from catalogue import names
from catalogue.names import KEY
from gateway.graphql.nodes import CompileContext, Node, col, marked
from gateway.graphql.order import parent_page, sorted_by, top_page
from gateway.graphql.source import node_base


def _qualify(expression: exp.Expr, alias: str) -> exp.Expr:
    """Point the unqualified column references of an output at ``alias``."""
    expression = expression.copy()
    for column in expression.find_all(exp.Column):
        if not column.table:
            column.set("table", exp.to_identifier(alias))
    return expression


def rows_sql(ctx: CompileContext, node: Node) -> exp.Select:
    select, alias, _, order = node_base(ctx, node, [])
    outputs = [
        exp.alias_(_qualify(o, alias), names.output(node.index, i), copy=False) for i, o in enumerate(node.outputs)
    ]
    keys = [exp.alias_(marked(alias, c, KEY), k, copy=False) for c, k in node.keys.items()]
    sorts = [(names.sort(i), o) for i, o in enumerate(order)]
    distinct = [
        exp.alias_(col(alias, c), names.distinct(i), copy=False)
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
        paged = parent_page(node, select, sorts, partition)
        number = [*[exp.Ordered(this=p) for p in partition], exp.Ordered(this=exp.column(names.ROW_NUMBER))]
    else:
        paged = top_page(node, select, sorts, ctx.cap)
        number = sorted_by(sorts)
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
