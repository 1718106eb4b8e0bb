"""Enforcement: the compiled tree, rewritten so that each table reference reads only what the
caller's role may see, before any engine sees it.

The steps are pure functions over the tree, applied in order (like sqlglot's optimizer RULES):

    qualify -> row filters and masks (one policy subquery per table) -> aggregate thresholds -> verify

Each reference to ``department.table`` becomes a subquery over the raw table that computes every
visible column's mask from the raw column, side by side, and applies the role's row filter with
the caller's claims as literals. The user's filters, orderings, groupings and aggregates outside
it therefore see masked values. Relationship joins and tie-breaks read hidden raw keys
(``__key_<column>``) that exist only inside the engine, so a masked or hashed key still links
records without being shown. A masked column the query only projects is masked where it is
projected, from the raw value the subquery passes on (``__raw_<column>``), so that the mask is
computed for the rows the query keeps rather than for every row of the table. The last step
fails closed if anything would leave unmasked, a passed-on raw value included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from catalogue.types import LogicalType
from policies.decide import TableDecision
from policies.masks import mask, tie
from policies.model import Treatment
from policies.rowfilter import bind, parse_filter

KEY = "key"  # meta mark on a column the compiler uses to join (a relationship key)
TIE = "tie"  # meta mark on a column the compiler orders by only to break ties
AGGREGATED = "aggregates"  # meta mark on a SELECT whose output is aggregated
RAW_TABLE = "policy_raw"  # meta mark on the raw table inside a policy subquery
RAW = "raw"  # hidden column of a policy subquery: a raw value whose mask is computed outside it
LATE = "policy_mask"  # meta mark on a mask computed outside its policy subquery


class PolicyViolation(Exception):
    """The rewritten tree would release data against the policy; the request is refused."""


@dataclass(frozen=True)
class Context:
    """What the rewrite needs: each table's decision, column types, and the caller's claims."""

    decisions: Mapping[tuple[str, str], TableDecision]
    types: Mapping[tuple[str, str], Mapping[str, LogicalType]]
    claims: Mapping[str, Any]


Step = Callable[[exp.Expr, Context], exp.Expr]


def hidden(mark: str, column: str) -> str:
    return f"__{mark}_{column}"


def _logical(node: exp.Expr) -> bool:
    return isinstance(node, exp.Table) and bool(node.db) and not node.catalog and not node.meta.get(RAW_TABLE)


def qualify(tree: exp.Expr, ctx: Context) -> exp.Expr:
    """Check every table the tree reads has a decision: deny what the policy does not know."""
    for table in tree.find_all(exp.Table):
        if _logical(table) and (table.db, table.name) not in ctx.decisions:
            raise PolicyViolation(f"no policy decision for {table.db}.{table.name}")
    return tree


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
        mark = column.meta.get("citygate")
        if mark in (KEY, TIE) and column.table:
            needs.setdefault(column.table, set()).add((mark, column.name))
            column.set("this", exp.to_identifier(hidden(mark, column.name), quoted=True))
        elif column.table:
            used.setdefault(column.table, set()).add(column.name)
            reads.setdefault(column.table, {}).setdefault(column.name, []).append(column)
    tables: dict[str, set[tuple[str, str]]] = {}
    for table in tree.find_all(exp.Table):
        if _logical(table):
            tables.setdefault(table.alias or table.name, set()).add((table.db, table.name))
    late = {
        alias: _mask_late(alias, next(iter(keys)), reads.get(alias, {}), ctx)
        for alias, keys in tables.items()
        if len(keys) == 1  # an alias that names two tables is left alone
    }

    def wrap(node: exp.Expr) -> exp.Expr:
        if not _logical(node):
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
        masked = late_mask(key, alias, name, treatment, types[name])
        deferred[name] = masked.find(exp.Column) is not None
        columns[0].replace(masked)
    return deferred


def late_mask(key: tuple[str, str], alias: str, name: str, treatment: Treatment, kind: LogicalType) -> exp.Expr:
    """The mask of column ``name`` of ``alias``, computed outside the policy subquery from the
    raw value it passes on as ``__raw_<name>``; marked so that :func:`verify` can check it."""
    raw = exp.Column(this=exp.to_identifier(hidden(RAW, name), quoted=True), table=exp.to_identifier(alias))
    masked = mask(treatment, raw, kind)
    if masked is raw:  # never for a masked treatment; a raw value must not pass as masked
        raise PolicyViolation(f"{key[0]}.{key[1]}.{name} has no mask")
    masked.meta[LATE] = (key, alias, name)
    return masked


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

    def column(name: str) -> exp.Expr:
        return exp.Column(this=exp.to_identifier(name, quoted=True), table=exp.to_identifier("raw"))

    # Only the columns the query reads: a mask nobody reads is not computed for every row.
    projections: list[exp.Expr] = [
        exp.alias_(mask(treatment, column(name), types[name]), exp.to_identifier(name, quoted=True))
        for name, treatment in decision.visible_columns.items()
        if name in used
    ]
    # Raw values whose masks are computed outside (see protect): only for masked columns.
    projections += [
        exp.alias_(column(name), exp.to_identifier(hidden(RAW, name), quoted=True))
        for name, reads_raw in sorted(deferred.items())
        if reads_raw and decision.columns[name].masked
    ]
    for mark, name in sorted(needs):
        treatment = decision.columns.get(name)
        if treatment is None:
            raise PolicyViolation(f"{table.db}.{table.name} has no column {name!r}")
        # Ties break on the raw key only where the role sees it raw; elsewhere on a keyed
        # digest of it, which is as deterministic and says nothing about the raw order.
        value = column(name) if mark == KEY or treatment.kind == "raw" else tie(column(name))
        projections.append(exp.alias_(value, exp.to_identifier(hidden(mark, name), quoted=True)))
    if not decision.visible:
        raise PolicyViolation(f"{table.db}.{table.name} has no column the role may read")
    if not projections:  # COUNT(*) reads rows, not columns; the row filter still applies
        projections.append(exp.alias_(exp.Literal.number(1), "__row"))
    select = exp.select(*projections).from_(raw)
    if decision.row_filter is not None:
        select = select.where(bind(parse_filter(decision.row_filter), ctx.claims))
    subquery = select.subquery(exp.to_identifier(alias))
    subquery.meta["policy"] = key
    return subquery


def thresholds(tree: exp.Expr, ctx: Context) -> exp.Expr:
    """Leave out any group, or whole aggregate, of fewer than k rows of an aggregate-only table."""
    for select in list(tree.find_all(exp.Select)):
        if not select.meta.get(AGGREGATED):
            continue
        ks = [
            ctx.decisions[s.meta["policy"]].k
            for s in select.find_all(exp.Subquery)
            if s.meta.get("policy") and ctx.decisions[s.meta["policy"]].access == "aggregate_only"
        ]
        if ks:
            select.having(exp.GTE(this=exp.Count(this=exp.Star()), expression=exp.Literal.number(max(ks))), copy=False)
    return tree


def verify(tree: exp.Expr, ctx: Context) -> exp.Expr:
    """Fail closed: every table read through its policy, aggregate-only data only aggregated,
    no hidden raw key in any output, and every passed-on raw value read only by its mask."""
    for table in tree.find_all(exp.Table):
        if _logical(table):
            raise PolicyViolation(f"{table.db}.{table.name} is read without its policy")
        if table.meta.get(RAW_TABLE) and not (
            isinstance(table.parent, exp.From)
            and isinstance(table.parent.parent, exp.Select)
            and isinstance(table.parent.parent.parent, exp.Subquery)
            and table.parent.parent.parent.meta.get("policy")
        ):
            raise PolicyViolation(f"raw {table.db}.{table.name} outside its policy subquery")
    for subquery in tree.find_all(exp.Subquery):
        key = subquery.meta.get("policy")
        if key and ctx.decisions[key].access == "aggregate_only":
            holder = subquery.find_ancestor(exp.Select)
            while holder is not None and not holder.meta.get(AGGREGATED):
                holder = holder.find_ancestor(exp.Select)
            if holder is None or holder.find_ancestor(exp.Exists) is not None:
                raise PolicyViolation(f"{key[0]}.{key[1]} is aggregate-only but is read row by row")
    for alias in tree.find_all(exp.Alias):
        if alias.alias.startswith("o") and any(
            c.name.startswith(("__key_", "__tie_")) for c in alias.find_all(exp.Column)
        ):
            raise PolicyViolation("a hidden key would leave in the response")
    _verify_late_masks(tree, ctx)
    return tree


def _verify_late_masks(tree: exp.Expr, ctx: Context) -> None:
    """A raw value passed out of a policy subquery is read only by its own column's mask, that
    mask is exactly the one the policy gives, and the subquery passes the column it names."""
    prefix = hidden(RAW, "")
    sources: dict[str, list[tuple[str, str]]] = {}
    for subquery in tree.find_all(exp.Subquery):
        key = subquery.meta.get("policy")
        if not key:
            continue
        sources.setdefault(subquery.alias, []).append(key)
        passed = [p for p in subquery.this.expressions if p.alias.startswith(prefix)]
        for projection in passed:
            name = projection.alias[len(prefix) :]
            treatment = ctx.decisions[key].columns.get(name)
            if not (
                treatment is not None
                and treatment.masked
                and isinstance(projection.this, exp.Column)
                and projection.this.name == name
                and projection.this.table == "raw"
            ):
                raise PolicyViolation(f"{key[0]}.{key[1]} passes on {projection.alias}, which no mask of it reads")
        reader = subquery.parent_select
        if passed and (reader is None or any(e.is_star for e in reader.expressions)):
            # `SELECT *` would pass the raw value on, past the check of its readers below
            raise PolicyViolation(f"{key[0]}.{key[1]} passes on raw values to a reader that is not checked")
    for column in tree.find_all(exp.Column):
        if not column.name.startswith(prefix):
            continue
        holder: exp.Expr | None = column
        while holder is not None and LATE not in holder.meta:
            if isinstance(holder, exp.Query):
                holder = None
                break
            holder = holder.parent
        if holder is None:
            raise PolicyViolation(f"raw {column.name[len(prefix) :]} is read outside its mask")
        key, alias, name = holder.meta[LATE]
        treatment = ctx.decisions[key].columns.get(name)
        if (
            sources.get(alias) != [key]
            or column.table != alias
            or column.name != hidden(RAW, name)
            or treatment is None
            or not treatment.masked
            or holder != late_mask(key, alias, name, treatment, ctx.types[key][name])
        ):
            raise PolicyViolation(f"the mask of {key[0]}.{key[1]}.{name} is not the policy's")


STEPS: tuple[Step, ...] = (qualify, protect, thresholds, verify)


def enforce(tree: exp.Expr, ctx: Context) -> exp.Expr:
    """The tree as the role may run it. The compiled tree is left untouched."""
    result = tree.copy()
    for step in STEPS:
        result = step(result, ctx)
    return result
