"""The statement of one root field: every node's SQL as a CTE, and one ``UNION ALL`` that
returns all their rows, tagged by node (see :mod:`gateway.graphql.compile`).

A part of a root field cut between stores (:mod:`gateway.graphql.parts`) is made the same way
from its own nodes, with the keys it is given as one more CTE, and the raw keys its rows carry
for other stores' parts as links after the outputs (``__link<n>``).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlglot import exp

from catalogue import names
from catalogue.sql import keys_sql
from catalogue.types import LogicalType
from gateway.graphql.aggregate import aggregate_sql
from gateway.graphql.group import group_sql
from gateway.graphql.nodes import CompileContext, Node
from gateway.graphql.rows import rows_sql

_SQL = {"rows": rows_sql, "agg": aggregate_sql, "group": group_sql}


def statement_sql(ctx: CompileContext, nodes: Sequence[Node] | None = None) -> exp.Expr:
    """Every node as a CTE, and one UNION ALL that returns all their rows, tagged by node."""
    nodes = ctx.nodes if nodes is None else nodes
    ctes = [(node.cte, _SQL[node.kind](ctx, node)) for node in nodes]
    if ctx.tops:
        ctes.insert(0, (names.KEYS, keys_sql(LogicalType(ctx.key_kind))))
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
        for i, (index, key) in enumerate(ctx.links):
            value = exp.column(key) if index == node.index else exp.Null()
            projections.append(exp.alias_(value, names.link(i), copy=False))
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
