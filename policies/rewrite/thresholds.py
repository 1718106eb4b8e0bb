"""Aggregate-only tables: groups, and whole aggregates, of fewer than k rows are left out."""

from __future__ import annotations

from sqlglot import exp

from catalogue.names import AGGREGATED
from policies.rewrite.context import POLICY, Context


def thresholds(tree: exp.Expr, ctx: Context) -> exp.Expr:
    """Leave out any group, or whole aggregate, of fewer than k rows of an aggregate-only table."""
    for select in list(tree.find_all(exp.Select)):
        if not select.meta.get(AGGREGATED):
            continue
        ks = [
            ctx.decisions[s.meta[POLICY]].k
            for s in select.find_all(exp.Subquery)
            if s.meta.get(POLICY) and ctx.decisions[s.meta[POLICY]].access == "aggregate_only"
        ]
        if ks:
            select.having(exp.GTE(this=exp.Count(this=exp.Star()), expression=exp.Literal.number(max(ks))), copy=False)
    return tree
