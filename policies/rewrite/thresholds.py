"""Aggregate-only tables: groups, and whole aggregates, of fewer than k rows are left out; of
fewer than k distinct entities where the policy names the entity column (``k_distinct``)."""

from __future__ import annotations

from sqlglot import exp

from catalogue.names import AGGREGATED, ENTITY, SELECTS, hidden
from policies.decide import TableDecision
from policies.masks import tie
from policies.rewrite.context import POLICY, Context, raw_column


def thresholds(tree: exp.Expr, ctx: Context) -> exp.Expr:
    """Leave out any group, or whole aggregate, of fewer than k rows of an aggregate-only table,
    and of fewer than k distinct entities where its policy names ``k_distinct``.

    Five visits of one patient are five rows but one person: counting rows alone, k = 5 would
    release that patient's costs. The entity travels to the HAVING as a keyed digest of it
    (:func:`~policies.masks.tie`), so no raw value leaves the policy subquery and COUNT(DISTINCT)
    counts the same people it would over the raw value."""
    for select in list(tree.find_all(exp.Select)):
        if not select.meta.get(AGGREGATED):
            continue
        policed = [
            (s, ctx.decisions[s.meta[POLICY]])
            for s in select.find_all(exp.Subquery)
            if s.meta.get(POLICY) and ctx.decisions[s.meta[POLICY]].access == "aggregate_only"
        ]
        if not policed:
            continue
        k = max(d.k for _, d in policed)
        select.having(exp.GTE(this=exp.Count(this=exp.Star()), expression=exp.Literal.number(k)), copy=False)
        for subquery, decision in policed:
            if decision.k_distinct is not None:
                _count_entities(select, subquery, decision, ctx)
    return tree


def _count_entities(select: exp.Select, subquery: exp.Subquery, decision: TableDecision, ctx: Context) -> None:
    """Pass the entity's digest from the policy subquery through the plain SELECT over it (as
    the compiler builds an aggregate) and require k distinct ones in the aggregating SELECT.
    Any other shape is left as it is, and refused by :func:`~policies.rewrite.verify`."""
    column = decision.k_distinct
    assert column is not None
    name = hidden(ENTITY, column)
    inner, step = subquery.this, subquery.parent.parent if isinstance(subquery.parent, exp.From) else None
    if not (isinstance(inner, exp.Select) and isinstance(step, exp.Select) and isinstance(step.parent, exp.Subquery)):
        return
    kind = ctx.types[(decision.department, decision.table)][column]
    inner.select(exp.alias_(tie(raw_column(column), kind), exp.to_identifier(name, quoted=True)), copy=False)
    step.select(
        exp.alias_(exp.column(exp.to_identifier(name, quoted=True), table=subquery.alias_or_name), name, quoted=True),
        copy=False,
    )
    entities = exp.Count(
        this=exp.Distinct(
            expressions=[exp.column(exp.to_identifier(name, quoted=True), table=step.parent.alias_or_name)]
        )
    )
    select.having(exp.GTE(this=entities, expression=exp.Literal.number(decision.k)), copy=False)
    if decision.noise is not None:
        # What decides whether a group appears is then its people, not its rows: the noisy
        # count that selects groups counts them (one row changes it by at most one too).
        for projection in select.expressions:
            if isinstance(projection.this, exp.Count) and projection.this.meta.get(SELECTS):
                projection.this.set("this", entities.this.copy())
