"""Row filters and masks: each table reference becomes its policy subquery."""

from __future__ import annotations

from collections.abc import Mapping

from sqlglot import exp

from catalogue.names import KEY, MARK, RAW_VALUE, ROW, TIE, hidden
from policies.masks import mask
from policies.noise import clamp
from policies.rewrite.context import (
    POLICY,
    RAW_TABLE,
    Context,
    PolicyViolation,
    hidden_value,
    is_policy_table,
    late_mask,
    raw_column,
)
from policies.rowfilter import bind, parse_filter


def protect(tree: exp.Expr, ctx: Context) -> exp.Expr:
    """Replace each table reference by its policy subquery (masks and row filter).

    A masked column that the query reads once, as a plain projection (``t.name AS o1_0``), is
    masked where it is projected instead: the subquery passes the raw value on under a hidden
    name (``__raw_name``) and the projection becomes the mask of it. That is the subquery's own
    expression inlined, so it yields the same value on the same row, but it is computed only for
    the rows that survive the query's filters and joins rather than for every row of the table
    (a relationship's target table, typically). A column the query also filters, orders, groups
    or aggregates by keeps its mask inside the subquery, so all of those read the masked value.
    """
    needs: dict[str, set[tuple[str, str]]] = {}
    used: dict[str, set[str]] = {}
    reads: dict[str, dict[str, list[exp.Column]]] = {}
    for column in tree.find_all(exp.Column):
        mark = column.meta.get(MARK)
        if mark in (KEY, TIE) and column.table:
            needs.setdefault(column.table, set()).add((mark, column.name))
            column.set("this", exp.to_identifier(hidden(mark, column.name), quoted=True))
        elif column.table:
            used.setdefault(column.table, set()).add(column.name)
            reads.setdefault(column.table, {}).setdefault(column.name, []).append(column)
    tables: dict[str, set[tuple[str, str]]] = {}
    for table in tree.find_all(exp.Table):
        if is_policy_table(table):
            tables.setdefault(table.alias or table.name, set()).add((table.db, table.name))
    late = {
        alias: _mask_late(alias, next(iter(keys)), reads.get(alias, {}), ctx)
        for alias, keys in tables.items()
        if len(keys) == 1  # an alias that names two tables is left alone
    }

    def wrap(node: exp.Expr) -> exp.Expr:
        if not is_policy_table(node):
            return node
        assert isinstance(node, exp.Table)
        alias = node.alias or node.name
        deferred = late.get(alias, {})
        return _policy_subquery(
            node, alias, needs.get(alias, set()), used.get(alias, set()) - set(deferred), deferred, ctx
        )

    return tree.transform(wrap, copy=False)


def _projected(column: exp.Column) -> bool:
    """Whether ``column`` is itself one output of a SELECT (``t.c AS x``), not part of one."""
    alias = column.parent
    return isinstance(alias, exp.Alias) and isinstance(alias.parent, exp.Select) and alias.arg_key == "expressions"


def _mask_late(
    alias: str, key: tuple[str, str], reads: Mapping[str, list[exp.Column]], ctx: Context
) -> dict[str, bool]:
    """Mask the masked columns read once, as a projection, in that projection; return each
    such column and whether its mask reads the raw value (``nullify`` does not)."""
    decision, types = ctx.decisions[key], ctx.types[key]
    deferred: dict[str, bool] = {}
    for name, columns in reads.items():
        treatment = decision.columns.get(name)
        if treatment is None or not treatment.masked or len(columns) != 1 or not _projected(columns[0]):
            continue
        if decision.noise is not None and name in decision.noise.bounds:  # clamped in the subquery
            continue
        raw = exp.Column(this=exp.to_identifier(hidden(RAW_VALUE, name), quoted=True), table=exp.to_identifier(alias))
        masked = late_mask(key, name, treatment, types[name], raw)
        deferred[name] = masked.find(exp.Column) is not None
        columns[0].replace(masked)
    return deferred


def _policy_subquery(
    table: exp.Table,
    alias: str,
    needs: set[tuple[str, str]],
    used: set[str],
    deferred: Mapping[str, bool],
    ctx: Context,
) -> exp.Expr:
    key = (table.db, table.name)
    decision = ctx.decisions[key]
    types = ctx.types[key]
    raw = exp.Table(this=exp.to_identifier(table.name), db=exp.to_identifier(table.db))
    raw.meta[RAW_TABLE] = True
    raw.set("alias", exp.TableAlias(this=exp.to_identifier("raw")))

    # Only the columns the query reads: a mask nobody reads is not computed for every row.
    # A noisy table's bounded columns are clamped here, so that every sum of them is bounded.
    bounds = decision.noise.bounds if decision.noise is not None else {}
    projections: list[exp.Expr] = [
        exp.alias_(
            clamp(masked, bounds[name]) if name in bounds else masked,
            exp.to_identifier(name, quoted=True),
        )
        for name, treatment in decision.visible_columns.items()
        if name in used
        for masked in [mask(treatment, raw_column(name), types[name])]
    ]
    # Raw values whose masks are computed outside (see protect): only for masked columns.
    projections += [
        exp.alias_(raw_column(name), exp.to_identifier(hidden(RAW_VALUE, name), quoted=True))
        for name, reads_raw in sorted(deferred.items())
        if reads_raw and decision.columns[name].masked
    ]
    for mark, name in sorted(needs):
        treatment = decision.columns.get(name)
        if treatment is None:
            raise PolicyViolation(f"{table.db}.{table.name} has no column {name!r}")
        projections.append(
            exp.alias_(
                hidden_value(mark, name, treatment, types[name]), exp.to_identifier(hidden(mark, name), quoted=True)
            )
        )
    if not decision.visible:
        raise PolicyViolation(f"{table.db}.{table.name} has no column the role may read")
    if not projections:  # COUNT(*) reads rows, not columns; the row filter still applies
        projections.append(exp.alias_(exp.Literal.number(1), ROW))
    select = exp.select(*projections).from_(raw)
    if decision.row_filter is not None:
        select = select.where(bind(parse_filter(decision.row_filter), ctx.claims, types))
    subquery = select.subquery(exp.to_identifier(alias))
    subquery.meta[POLICY] = key
    return subquery
