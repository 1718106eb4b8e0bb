"""The SQL of an aggregate node (``<table>_aggregate { aggregate { ... } }``): one row of
aggregates for the whole page, or one per parent when nested.
"""

from __future__ import annotations

from sqlglot import exp

from catalogue import names
from catalogue.names import AGGREGATED
from gateway.graphql.nodes import CompileContext, Node, col
from gateway.graphql.order import parent_page, top_page
from gateway.graphql.source import node_base


def aggregate_sql(ctx: CompileContext, node: Node) -> exp.Select:
    select, alias, _, order = node_base(ctx, node, [])
    columns = sorted({c.name for o in node.outputs for c in o.find_all(exp.Column)})
    # COUNT(*) alone reads no column, but a SELECT needs one.
    select = select.select(
        *[exp.alias_(col(alias, c), c, copy=False) for c in columns]
        or [exp.alias_(exp.Literal.number(1), names.ONE, copy=False)],
        copy=False,
    )
    partition = [exp.column(names.PARENT)] if node.parent is not None else []
    if any(node.args.get(k) is not None for k in ("limit", "offset", "distinct_on")):
        sorts = [(names.sort(i), o) for i, o in enumerate(order)]
        select = select.select(*[exp.alias_(o.this, a, copy=False) for a, o in sorts], copy=False)
        select = select.select(
            *[
                exp.alias_(col(alias, c), names.distinct(i), copy=False)
                for i, c in enumerate(node.args.get("distinct_on") or [])
            ],
            copy=False,
        )
        top = not partition and not node.args.get("distinct_on")
        source = top_page(node, select, sorts, None) if top else parent_page(node, select, sorts, partition)
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
