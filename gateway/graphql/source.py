"""FROM, JOIN and WHERE of a node, shared by every node kind: the node's table, joined to its
parent's CTE, filtered by its ``where``, with the LEFT JOINs and order terms its ``order_by`` needs.
"""

from __future__ import annotations

from sqlglot import exp

from catalogue import names
from catalogue.names import KEY
from catalogue.sql import logical_table
from gateway.graphql.nodes import CompileContext, Node, marked
from gateway.graphql.order import Joins, order_terms, total_order
from gateway.graphql.where import where_sql


def node_base(
    ctx: CompileContext, node: Node, extra: list[exp.Expr], ordered: bool = True
) -> tuple[exp.Select, str, Joins, list[exp.Ordered]]:
    """FROM the table (joined to the parent's CTE), WHERE, plus the order terms it needs."""
    alias = ctx.alias()
    table = node.table
    select = exp.select(*extra, copy=False).from_(
        logical_table(table.department, table.name).as_(alias, copy=False), copy=False
    )
    if node.index in ctx.tops and node.relation is not None:
        # Its parents are another store's: it joins on the keys the gateway gives it (one
        # parameter, gateway.graphql.parts), and its rows say which key each belongs to by
        # the key's place in the list (a number, as every other node's parent is).
        select = select.join(
            exp.Table(this=exp.to_identifier(names.KEYS)).as_("p", copy=False),
            on=marked(alias, node.relation.target_column, KEY).eq(exp.column(names.KEY_VALUE, "p")),
            copy=False,
        )
        select = select.select(exp.alias_(exp.column(names.KEY_PLACE, "p"), names.PARENT, copy=False), copy=False)
    elif node.parent is not None and node.relation is not None:
        parent = node.parent
        select = select.join(
            exp.Table(this=exp.to_identifier(parent.cte)).as_("p", copy=False),
            on=marked(alias, node.relation.target_column, KEY).eq(exp.column(parent.keys[node.relation.column], "p")),
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
    return select, alias, joins, total_order(order, table, alias)
