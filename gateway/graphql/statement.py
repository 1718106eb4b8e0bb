"""The statement of one root field: every node's SQL as a CTE, and one ``UNION ALL`` that
returns all their rows, tagged by node (see :mod:`gateway.graphql.compile`).
"""

from __future__ import annotations

from sqlglot import exp

from catalogue import names
from gateway.graphql.aggregate import aggregate_sql
from gateway.graphql.group import group_sql
from gateway.graphql.nodes import CompileContext
from gateway.graphql.rows import rows_sql

_SQL = {"rows": rows_sql, "agg": aggregate_sql, "group": group_sql}


def statement_sql(ctx: CompileContext) -> exp.Expr:
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
