"""Which outputs of a rewritten statement are noisy statistics, and what each costs: read off
the tree after :func:`~policies.rewrite.verify` passed it, so that every count and sum of a
noisy table, on every path that aggregates it, gets its noise.

Every read of a noisy table spends (:func:`spends`, a step before the last check): each
aggregation of it counts its groups' rows with noise, and that count decides which groups
appear (partition selection, :func:`policies.noise.select`). A group's presence, or a whole
aggregate's, is then itself a noisy release, paid for like a count; a statement that would
depend on the table's rows any other way (a filter or ordering through it, an EXISTS, rows
not aggregated) is refused (:class:`~policies.rewrite.context.NoiseRequired`)."""

from __future__ import annotations

from sqlglot import exp

from catalogue.names import AGGREGATED, SELECTS, is_output
from catalogue.types import WHOLE
from policies.decide import TableDecision
from policies.noise import Release, Selection, least_threshold, sensitivity
from policies.rewrite.context import POLICY, Context, NoiseRequired, PolicyViolation


def spends(tree: exp.Expr, ctx: Context) -> exp.Expr:
    """Refuse a statement that reads a noisy table otherwise than aggregated, with the count
    that selects its groups, and with any page cut only after that selection."""
    for subquery in tree.find_all(exp.Subquery):
        key = subquery.meta.get(POLICY)
        if not key or ctx.decisions[key].noise is None:
            continue
        holder = _aggregation_of(subquery)
        if holder is None or _selecting(holder) is None or holder.find_ancestor(exp.Exists) is not None:
            raise NoiseRequired(f"{key[0]}.{key[1]}")
        # A page cut in the statement would hold a group by its exact rank among those of k
        # rows; the gateway cuts it from the selected groups instead.
        outer = _from_of(holder.parent) if isinstance(holder.parent, exp.Subquery) else None
        cuts = [holder.args.get("limit"), holder.args.get("offset")]
        cuts += [outer.args.get(k) for k in ("where", "limit", "offset", "qualify")] if outer is not None else []
        if any(cuts):
            raise PolicyViolation(f"{key[0]}.{key[1]} has noise, but its groups are cut before they are selected")
        if not _returned_as_rows(outer or holder, tree):
            raise NoiseRequired(f"{key[0]}.{key[1]}")
    return tree


def _returned_as_rows(select: exp.Select, tree: exp.Expr) -> bool:
    """Whether ``select`` is a node of the statement whose rows only leave it: a CTE read by
    arms of the statement's UNION that pass its columns on as they are. The noise is added to
    those rows by the gateway; an exact count read anywhere else (a filter, a join, another
    node) would let the answer depend on it without noise."""
    cte = select.parent
    if not isinstance(cte, exp.CTE):
        return False
    for table in tree.find_all(exp.Table):
        if table.name != cte.alias_or_name or table.db:
            continue
        arm = _from_of(table)
        if arm is None or not isinstance(arm.parent, exp.Union | exp.Subquery):
            return False
        if any(arm.args.get(k) for k in ("where", "joins", "group", "having", "qualify", "limit", "offset")):
            return False
        if any(
            not isinstance(p.this if isinstance(p, exp.Alias) else p, exp.Column | exp.Literal | exp.Null)
            for p in arm.expressions
        ):
            return False
    return True


def _from_of(node: exp.Expr | None) -> exp.Select | None:
    """The SELECT whose FROM ``node`` is, if it is one."""
    if node is None or not isinstance(node.parent, exp.From) or not isinstance(node.parent.parent, exp.Select):
        return None
    return node.parent.parent


def _aggregation_of(subquery: exp.Subquery) -> exp.Select | None:
    """The aggregating SELECT over a policy subquery, as the compiler builds it: the subquery
    is the FROM of one plain SELECT, which is the FROM of the aggregating one."""
    step = _from_of(subquery)
    holder = _from_of(step.parent) if step is not None else None
    return holder if holder is not None and holder.meta.get(AGGREGATED) else None


def _selecting(select: exp.Select) -> exp.Alias | None:
    """The output of ``select`` that counts its groups' rows to select them, if it has one."""
    for projection in select.expressions:
        if not isinstance(projection, exp.Alias) or not is_output(projection.alias_or_name):
            continue
        if isinstance(projection.this, exp.Count) and projection.this.meta.get(SELECTS):
            return projection
    return None


def releases(tree: exp.Expr, ctx: Context) -> dict[str, Release]:
    """Each output (``o<node>_<i>``) that aggregates a noisy table, with its release.

    An output of such an aggregation is a group's key (released as the selection decides), a
    count, or a sum of a bounded column; anything else is refused here too, should an earlier
    step have let it by."""
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
        found.update(_released(select, decision, ctx))
    return found


def _released(select: exp.Select, decision: TableDecision, ctx: Context) -> dict[str, Release]:
    noise = decision.noise
    assert noise is not None
    selecting = _selecting(select)
    if selecting is None:
        raise NoiseRequired(f"{decision.department}.{decision.table}")
    threshold = noise.threshold or least_threshold(noise.epsilon, decision.k, noise.delta)
    selection = Selection(threshold, decision.k)
    kinds = ctx.types[(decision.department, decision.table)]
    selects = Release("count", noise.epsilon, 1, integral=True, selects=selection)
    found: dict[str, Release] = {selecting.alias_or_name: selects}
    for projection in select.expressions:
        name = projection.alias_or_name
        value = projection.this if isinstance(projection, exp.Alias) else projection
        if projection is selecting or not is_output(name) or value.find(exp.AggFunc) is None:
            continue
        if isinstance(value, exp.Count):
            # the selecting count asked for again (under another alias) is the same draw
            same = value == selecting.this
            found[name] = Release("same", 0.0, 1, True) if same else Release("count", noise.epsilon, 1, True)
        elif isinstance(value, exp.Sum) and isinstance(value.this, exp.Column) and value.this.name in noise.bounds:
            column = value.this.name
            integral = kinds[column].kind in WHOLE
            found[name] = Release("sum", noise.epsilon, sensitivity(noise.bounds[column]), integral)
        else:
            raise PolicyViolation(f"{decision.department}.{decision.table} has noise, which {value.sql()} lacks")
    return found
