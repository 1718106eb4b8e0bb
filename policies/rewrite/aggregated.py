"""The last step's check of an aggregate-only table: read whole, filtered and grouped only by
its groups' columns, and aggregated (:func:`verify_aggregated`)."""

from __future__ import annotations

from typing import Any

from sqlglot import exp

from catalogue.names import AGGREGATED, ENTITY, ONE, SELECTS, hidden
from policies.decide import TableDecision
from policies.noise import CLAMPED
from policies.rewrite.context import Context, PolicyViolation


def verify_aggregated(subquery: exp.Subquery, key: tuple[str, str], ctx: Context) -> None:
    """An aggregate-only table is read whole, filtered and grouped only by the columns its
    groups may use, and aggregated: sum, avg, min and max only of the other columns.

    So no page, order, distinct, join or window chooses single rows before they are
    aggregated, and nothing links them to another table's records: the policy subquery passes
    on no key or tie-break (see :func:`_policy_outputs`)."""
    decision = ctx.decisions[key]
    name = f"{key[0]}.{key[1]}"
    dims = decision.group_by if decision.group_by is not None else frozenset(decision.visible_columns)
    measures = frozenset(decision.visible_columns) - (decision.group_by or frozenset())
    # As the compiler builds it: the subquery is the FROM of one plain SELECT, which is the
    # FROM of the aggregating one.
    step, holder = _from_of(subquery), None
    if isinstance(step, exp.Select) and isinstance(step.parent, exp.Subquery):
        holder = _from_of(step.parent)
    if not (
        isinstance(step, exp.Select)
        and not step.meta.get(AGGREGATED)
        and isinstance(holder, exp.Select)
        and holder.meta.get(AGGREGATED)
        and holder.find_ancestor(exp.Exists) is None
    ):
        raise PolicyViolation(f"{name} is aggregate-only but is read row by row")
    passed = _aggregate_input(step, subquery.alias_or_name, dims, name)
    _unchosen(holder, name, windows=True)
    group = holder.args.get("group")
    for column in group.find_all(exp.Column) if group is not None else ():
        if column.name not in dims:
            raise PolicyViolation(f"{name} is aggregate-only but is grouped by {column.name}")
    # All of the aggregating SELECT but its source, nested queries included.
    above = [n for k, v in holder.args.items() if k not in ("from", "from_") for n in _walk(v)]
    for function in (n for n in above if isinstance(n, exp.AggFunc)):
        # COUNT, SUM, AVG, MIN and MAX of bare columns only: ARRAY_AGG(cost) or ANY_VALUE(cost)
        # is each row's value, and SUM(CASE WHEN cost = x ...) a filter.
        counted = isinstance(function, exp.Count) and _all_set(function.this)
        if not isinstance(function, _AGGREGATES) or not (_bare(function.this) or counted):
            raise PolicyViolation(f"{name} is aggregate-only but is aggregated by {function.sql()}")
        if isinstance(function, exp.Count):
            continue
        for column in function.find_all(exp.Column):
            if column.name not in measures:
                raise PolicyViolation(f"{name} is aggregate-only but aggregates {column.name} by value")
    if decision.noise is not None:
        _noisy(subquery, [n for n in above if isinstance(n, exp.AggFunc)], decision, name)
    _columns_above(holder, above, passed, dims, decision, name)


def _columns_above(
    holder: exp.Select,
    above: list[exp.Expr],
    passed: set[str],
    dims: frozenset[str],
    decision: TableDecision,
    name: str,
) -> None:
    """The aggregating SELECT reads the entity only to count it, and the other columns it is
    given only inside aggregates, or as the groups' keys."""
    entity = hidden(ENTITY, decision.k_distinct) if decision.k_distinct is not None else None
    for column in (n for n in above if isinstance(n, exp.Column)):
        if column.name == entity and not _counts_entities(column):
            raise PolicyViolation(f"{name} is aggregate-only but reads {entity} otherwise than to count it")
        outside = column.find_ancestor(exp.AggFunc, exp.Group, exp.Window) is None
        if column.name in passed and outside and not (column.name in dims and _grouped(holder, column.name)):
            raise PolicyViolation(f"{name} is aggregate-only but {column.name} leaves ungrouped")


def _noisy(subquery: exp.Subquery, functions: list[exp.AggFunc], decision: TableDecision, name: str) -> None:
    """A noisy table releases counts, and sums of its bounded columns clamped in its policy
    subquery; nothing else its noise is not calibrated to. Min and max are one row's value, an
    average a sum over a count released without noise; groups ordered by an exact aggregate
    would rank them by it."""
    assert decision.noise is not None
    clamped = {
        p.alias_or_name
        for p in subquery.this.expressions
        if isinstance(p, exp.Alias) and p.this.meta.get(CLAMPED) == decision.noise.bounds.get(p.alias_or_name)
    }
    for function in functions:
        if function.find_ancestor(exp.Window) is not None:
            raise PolicyViolation(f"{name} has noise but its groups are ordered by {function.sql()}")
        if isinstance(function, exp.Count):
            continue
        column = function.this.this if isinstance(function.this, exp.Cast) else function.this
        if not isinstance(function, exp.Sum) or not isinstance(column, exp.Column) or column.name not in clamped:
            raise PolicyViolation(f"{name} has noise, which {function.sql()} is not released with")


def _aggregate_input(select: exp.Select, alias: str, dims: frozenset[str], name: str) -> set[str]:
    """Check the one SELECT between an aggregate-only table's policy subquery (``alias``) and its
    aggregation: it passes columns on under their own names and filters by groups' columns
    only. Return the columns it passes on."""
    _unchosen(select, name, windows=False)
    passed: set[str] = set()
    for projection in select.expressions:
        this = projection.this if isinstance(projection, exp.Alias) else projection
        if isinstance(this, exp.Column) and this.table == alias and projection.alias_or_name == this.name:
            passed.add(this.name)
        elif not (isinstance(this, exp.Literal) and projection.alias_or_name == ONE):
            raise PolicyViolation(f"{name} is aggregate-only but gives {projection.alias_or_name}, not a column")
    where = select.args.get("where")
    for column in where.find_all(exp.Column) if where is not None else ():
        if column.table != alias or column.name not in dims:
            raise PolicyViolation(f"{name} is aggregate-only but is filtered by {column.name}")
    # No negation and no union: a total minus the complement of a group is that group, which
    # the threshold left out (the schema offers neither; this holds for any tree).
    for node in where.walk() if where is not None else ():
        if isinstance(node, _COMPLEMENTS):
            raise PolicyViolation(f"{name} is aggregate-only but is filtered by {node.key.upper()}")
    return passed


_COMPLEMENTS = (exp.Not, exp.NEQ, exp.Or, exp.In, exp.Is, exp.NullSafeNEQ)


def _counts_entities(column: exp.Column) -> bool:
    """Whether ``column`` is read only as ``COUNT(DISTINCT column)`` in a HAVING, or as the
    noisy count that selects a noisy table's groups."""
    distinct, count = column.parent, column.parent.parent if column.parent is not None else None
    return (
        isinstance(distinct, exp.Distinct)
        and isinstance(count, exp.Count)
        and len(distinct.expressions) == 1
        and (count.find_ancestor(exp.Having) is not None or bool(count.meta.get(SELECTS)))
    )


def _from_of(node: exp.Expr) -> exp.Expr | None:
    """The query whose FROM ``node`` is, if it is one."""
    return node.parent.parent if isinstance(node.parent, exp.From) else None


_AGGREGATES = (exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max)


def _bare(argument: exp.Expr | None) -> bool:
    """A column (cast, as AVG's is, or several under COUNT's DISTINCT), or COUNT's star."""
    if isinstance(argument, exp.Distinct):
        return all(isinstance(e, exp.Column) for e in argument.expressions)
    if isinstance(argument, exp.Cast):
        argument = argument.this
    return isinstance(argument, exp.Column | exp.Star)


def _all_set(argument: exp.Expr | None) -> bool:
    """COUNT's argument for several columns, as the compiler writes it: ``CASE WHEN NOT a IS
    NULL AND NOT b IS NULL THEN 1 END``, which tests nothing but that each is set."""
    if not isinstance(argument, exp.Case) or argument.args.get("default") or len(argument.args["ifs"]) != 1:
        return False
    [branch] = argument.args["ifs"]
    if branch.args.get("true") != exp.Literal.number(1):
        return False
    tests = list(branch.this.flatten()) if isinstance(branch.this, exp.And) else [branch.this]
    return all(
        isinstance(t, exp.Not)
        and isinstance(t.this, exp.Is)
        and isinstance(t.this.this, exp.Column)
        and isinstance(t.this.expression, exp.Null)
        for t in tests
    )


def _walk(value: Any) -> list[exp.Expr]:
    values = value if isinstance(value, list) else [value]
    return [n for v in values if isinstance(v, exp.Expr) for n in v.walk()]


def _unchosen(select: exp.Select, name: str, windows: bool) -> None:
    """No page, order, distinct or join on ``select``; windows only over groups, after them."""
    chosen = [k for k in ("limit", "offset", "order", "distinct", "joins", "qualify") if select.args.get(k)]
    if chosen or (not windows and select.find(exp.Window) is not None):
        raise PolicyViolation(f"{name} is aggregate-only but single rows are chosen before it is aggregated")


def _grouped(select: exp.Select, column: str) -> bool:
    group = select.args.get("group")
    return group is not None and any(isinstance(e, exp.Column) and e.name == column for e in group.expressions)
