"""Which outputs of a rewritten statement are noisy statistics, and what each costs: read off
the tree after :func:`~policies.rewrite.verify` passed it, so that every count and sum of a
noisy table, on every path that aggregates it, gets its noise."""

from __future__ import annotations

from sqlglot import exp

from catalogue.names import AGGREGATED, is_output
from catalogue.types import WHOLE
from policies.noise import Release, sensitivity
from policies.rewrite.context import POLICY, Context, PolicyViolation


def releases(tree: exp.Expr, ctx: Context) -> dict[str, Release]:
    """Each output (``o<node>_<i>``) that aggregates a noisy table, with its release.

    An output of such an aggregation is a group's key (released as it is: k decides which
    groups appear), a count, or a sum of a bounded column; anything else is refused here too,
    should an earlier step have let it by."""
    found: dict[str, Release] = {}
    for select in tree.find_all(exp.Select):
        if not select.meta.get(AGGREGATED):
            continue
        noisy = [
            ctx.decisions[s.meta[POLICY]]
            for s in select.find_all(exp.Subquery)
            if s.meta.get(POLICY) and ctx.decisions[s.meta[POLICY]].noise is not None
        ]
        if not noisy:
            continue
        [decision] = noisy  # an aggregate-only table is aggregated alone (verify: no joins)
        noise = decision.noise
        assert noise is not None
        kinds = ctx.types[(decision.department, decision.table)]
        for projection in select.expressions:
            name = projection.alias_or_name
            value = projection.this if isinstance(projection, exp.Alias) else projection
            if not is_output(name) or value.find(exp.AggFunc) is None:
                continue
            if isinstance(value, exp.Count):
                found[name] = Release("count", noise.epsilon, 1, integral=True)
            elif isinstance(value, exp.Sum) and isinstance(value.this, exp.Column) and value.this.name in noise.bounds:
                column = value.this.name
                integral = kinds[column].kind in WHOLE
                found[name] = Release("sum", noise.epsilon, sensitivity(noise.bounds[column]), integral)
            else:
                raise PolicyViolation(f"{decision.department}.{decision.table} has noise, which {value.sql()} lacks")
    return found
