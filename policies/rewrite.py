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
computed for the rows the query keeps rather than for every row of the table; a node's plain
output is masked in the statement's last SELECT, after its page is cut. The last step fails
closed if anything would leave unmasked: it follows every passed-on raw value through the
statement's scopes and admits it only as a pass-through or as the input of its own mask, and
follows hidden keys and tie-breaks the same way, admitting them only where they link or order
records.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.scope import Scope, ScopeType, traverse_scope

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
OUTPUT = re.compile(r"o\d+_\d+")  # a node's output, as the compiler names it (gateway.compile)


class PolicyViolation(Exception):
    """The rewritten tree would release data against the policy; the request is refused."""


@dataclass(frozen=True)
class Context:
    """What the rewrite needs: each table's decision, column types, and the caller's claims."""

    decisions: Mapping[tuple[str, str], TableDecision]
    types: Mapping[tuple[str, str], Mapping[str, LogicalType]]
    claims: Mapping[str, Any]
    keys: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)  # columns relationships join on


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
        raw = exp.Column(this=exp.to_identifier(hidden(RAW, name), quoted=True), table=exp.to_identifier(alias))
        masked = late_mask(key, name, treatment, types[name], raw)
        deferred[name] = masked.find(exp.Column) is not None
        columns[0].replace(masked)
    return deferred


def late_mask(key: tuple[str, str], name: str, treatment: Treatment, kind: LogicalType, raw: exp.Column) -> exp.Expr:
    """The mask of column ``name`` of table ``key``, computed outside the policy subquery from
    ``raw``, the raw value it passes on; marked so that :func:`verify` can check it."""
    masked = mask(treatment, raw, kind)
    if masked is raw:  # never for a masked treatment; a raw value must not pass as masked
        raise PolicyViolation(f"{key[0]}.{key[1]}.{name} has no mask")
    masked.meta[LATE] = (key, name)
    return masked


def defer(tree: exp.Expr, ctx: Context) -> exp.Expr:
    """Move each mask that is a node's plain output (``mask(t1.__raw_c) AS o0_1``) to the
    statement's last SELECT, which returns the node's rows (``mask(__raw_o0_1) AS o0_1``).

    Between the two, only layers that pass every column on (``SELECT *``) cut the node's page
    and number its rows, so the mask is computed for the rows of the page rather than for every
    row the page is cut from: a list ordered by a keyed digest reads the whole table, and would
    otherwise mask all of it. :func:`verify` follows the raw value all the way.
    """
    readers: dict[str, list[exp.Column]] = {}
    for column in tree.find_all(exp.Column):
        if not column.table and OUTPUT.fullmatch(column.name):
            readers.setdefault(column.name, []).append(column)
    for masked in [node for node in tree.walk() if LATE in node.meta]:
        output, raw = masked.parent, masked.find(exp.Column)
        if raw is None or not (isinstance(output, exp.Alias) and OUTPUT.fullmatch(output.alias)):
            continue  # a mask that reads nothing (nullify), or not a node's output
        found = readers.get(output.alias, [])
        if len(found) != 1 or not (isinstance(found[0].parent, exp.Select) and found[0].arg_key == "expressions"):
            continue
        key, name = masked.meta[LATE]
        carried = hidden(RAW, output.alias)
        later = late_mask(key, name, ctx.decisions[key].columns[name], ctx.types[key][name], exp.column(carried))
        found[0].replace(exp.alias_(later, output.alias, copy=False))
        output.replace(exp.alias_(raw, carried, copy=False))
    return tree


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
    projections: list[exp.Expr] = [
        exp.alias_(mask(treatment, _raw_column(name), types[name]), exp.to_identifier(name, quoted=True))
        for name, treatment in decision.visible_columns.items()
        if name in used
    ]
    # Raw values whose masks are computed outside (see protect): only for masked columns.
    projections += [
        exp.alias_(_raw_column(name), exp.to_identifier(hidden(RAW, name), quoted=True))
        for name, reads_raw in sorted(deferred.items())
        if reads_raw and decision.columns[name].masked
    ]
    for mark, name in sorted(needs):
        treatment = decision.columns.get(name)
        if treatment is None:
            raise PolicyViolation(f"{table.db}.{table.name} has no column {name!r}")
        projections.append(
            exp.alias_(
                _hidden_value(mark, name, treatment, types[name]), exp.to_identifier(hidden(mark, name), quoted=True)
            )
        )
    if not decision.visible:
        raise PolicyViolation(f"{table.db}.{table.name} has no column the role may read")
    if not projections:  # COUNT(*) reads rows, not columns; the row filter still applies
        projections.append(exp.alias_(exp.Literal.number(1), "__row"))
    select = exp.select(*projections).from_(raw)
    if decision.row_filter is not None:
        select = select.where(bind(parse_filter(decision.row_filter), ctx.claims, types))
    subquery = select.subquery(exp.to_identifier(alias))
    subquery.meta["policy"] = key
    return subquery


def _raw_column(name: str) -> exp.Column:
    """Column ``name`` of the raw table, inside a policy subquery."""
    return exp.Column(this=exp.to_identifier(name, quoted=True), table=exp.to_identifier("raw"))


def _hidden_value(mark: str, name: str, treatment: Treatment, kind: LogicalType) -> exp.Expr:
    """What a policy subquery passes on as a relationship key (the raw value) or a tie-break.

    Ties break on the raw key only where the role sees it raw; elsewhere on a keyed digest of
    it, which is as deterministic and says nothing about the raw order."""
    return _raw_column(name) if mark == KEY or treatment.kind == "raw" else tie(_raw_column(name), kind)


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
    no hidden raw key in any output, every passed-on raw value read only by its mask, and every
    relationship key and tie-break only linking or ordering records."""
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
            _verify_aggregated(subquery, key, ctx)
    _verify_names(tree)
    _verify_flows(tree, ctx)
    return tree


def _verify_aggregated(subquery: exp.Subquery, key: tuple[str, str], ctx: Context) -> None:
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
        # is each row's value, and SUM(CASE WHEN cost = x ...) a filter (found by a code review).
        counted = isinstance(function, exp.Count) and _all_set(function.this)
        if not isinstance(function, _AGGREGATES) or not (_bare(function.this) or counted):
            raise PolicyViolation(f"{name} is aggregate-only but is aggregated by {function.sql()}")
        if isinstance(function, exp.Count):
            continue
        for column in function.find_all(exp.Column):
            if column.name not in measures:
                raise PolicyViolation(f"{name} is aggregate-only but aggregates {column.name} by value")
    for column in (n for n in above if isinstance(n, exp.Column)):
        outside = column.find_ancestor(exp.AggFunc, exp.Group, exp.Window) is None
        if column.name in passed and outside and not (column.name in dims and _grouped(holder, column.name)):
            raise PolicyViolation(f"{name} is aggregate-only but {column.name} leaves ungrouped")


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
        elif not (isinstance(this, exp.Literal) and projection.alias_or_name == "__one"):
            raise PolicyViolation(f"{name} is aggregate-only but gives {projection.alias_or_name}, not a column")
    where = select.args.get("where")
    for column in where.find_all(exp.Column) if where is not None else ():
        if column.table != alias or column.name not in dims:
            raise PolicyViolation(f"{name} is aggregate-only but is filtered by {column.name}")
    return passed


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


HIDDEN = re.compile(r"__(key|tie)_.*|__[ksd]\d+")  # keys, tie-breaks, sort and distinct values
JOIN_ONLY = re.compile(r"__key_.*|__k\d+")  # raw keys: they link records, and do nothing else
_ARM = frozenset({"__node", "__parent", "__id"})


def _verify_names(tree: exp.Expr) -> None:
    """No output reads a hidden key, tie-break or sort value; each arm of the statement's UNION
    returns only its node tag, parent, row number and outputs; no raw key orders rows.

    By name, as the compiler names them; :func:`_verify_flows` follows the values themselves,
    whatever they are named."""
    for alias in tree.find_all(exp.Alias):
        if OUTPUT.fullmatch(alias.alias.lower()) and any(
            HIDDEN.fullmatch(c.name.lower()) for c in alias.find_all(exp.Column)
        ):
            raise PolicyViolation("a hidden key would leave in the response")
    for union in tree.find_all(exp.SetOperation):  # UNION, and INTERSECT or EXCEPT, which it never builds
        for arm in (union.left, union.right):
            if isinstance(arm, exp.Select) and not all(_arm_output(p) for p in arm.expressions):
                raise PolicyViolation("the statement would return something other than its nodes' outputs")
    for order in tree.find_all(exp.Order):
        for term in order.expressions:
            column = term.this if isinstance(term, exp.Ordered) else term
            if isinstance(column, exp.Column) and JOIN_ONLY.fullmatch(column.name.lower()):
                raise PolicyViolation("rows would be ordered by a raw key")


def _arm_output(projection: exp.Expr) -> bool:
    """One output of a UNION arm: an output (``o0_1``), or the node's tag, parent or row number
    as a literal, a null or the column of the same name."""
    name = projection.alias_or_name.lower()
    if OUTPUT.fullmatch(name):
        return True
    value = projection.this if isinstance(projection, exp.Alias) else projection
    return name in _ARM and (
        isinstance(value, exp.Literal | exp.Null) or (isinstance(value, exp.Column) and value.name.lower() == name)
    )


def _verify_flows(tree: exp.Expr, ctx: Context) -> None:
    """A policy subquery passes on the raw values only of masked columns, each under its own
    name; every raw value goes from there through the statement's scopes only as a pass-through
    (``x.__raw_c AS __raw_...``, or ``*``) or into its own column's mask, exactly the policy's;
    and none of them is among the statement's outputs. Hidden keys and tie-breaks are followed
    the same way: a key passes on under a key's name or links records (an equality with another
    key, in a join or a filter, also from a correlated subquery); a tie-break passes on under a
    sort value's name or orders rows. Names compare without case, as the engines compare them."""
    carried: dict[int, dict[str, Value]] = {}  # scope's expression -> hidden values it passes on
    try:
        scopes = traverse_scope(tree)
    except OptimizeError as error:
        raise PolicyViolation(f"the statement's scopes cannot be followed: {error}") from None
    for scope in scopes:
        node = scope.expression
        policy = node.parent.meta.get("policy") if isinstance(node.parent, exp.Subquery) else None
        if policy:
            if not isinstance(node, exp.Select):
                raise PolicyViolation(f"{policy[0]}.{policy[1]} is read through something else than its policy")
            out = _policy_outputs(node, policy, ctx)
        elif isinstance(node, exp.Select):
            out = _hidden_reads(scope, node, carried, ctx)
            tables = (ScopeType.DERIVED_TABLE, ScopeType.CTE, ScopeType.SET_OPERATION, ScopeType.ROOT)
            if out and scope.scope_type not in tables:  # an arm's and the root's are refused below
                raise PolicyViolation("a raw value or hidden key would pass out of a subquery that is not a table")
        elif any(carried.get(id(s.expression)) for s in scope.set_operation_scopes):
            raise PolicyViolation("a raw value or hidden key would pass through a UNION")
        else:
            out = {}
        carried[id(node)] = out
    if scopes and carried[id(scopes[-1].expression)]:
        raise PolicyViolation("a raw value or hidden key would leave in the response")


Origin = tuple[tuple[str, str], str]  # the table and the column a raw value is of
Value = tuple[str, Origin]  # a hidden value passed on: RAW, KEY or TIE, and whose it is
RAWS = hidden(RAW, "")
PASSED_AS = {KEY: JOIN_ONLY, TIE: re.compile(r"__tie_.*|__s\d+")}  # the names a key or tie-break passes on under


def _raw(name: str) -> bool:
    return name.lower().startswith(RAWS)


def _policy_outputs(select: exp.Select, key: tuple[str, str], ctx: Context) -> dict[str, Value]:
    """Check a policy subquery against the policy itself, as :func:`_policy_subquery` would
    build it: each output a visible column's mask, a masked column's raw value passed on, a
    relationship key, a tie-break or the row marker; the raw table alone, under the role's row
    filter. Return the hidden values it passes on."""
    decision, types = ctx.decisions[key], ctx.types[key]
    extra = sorted(k for k, v in select.args.items() if v and k not in ("expressions", "from", "from_", "where"))
    where = select.args.get("where")
    want = bind(parse_filter(decision.row_filter), ctx.claims, types) if decision.row_filter is not None else None
    if extra or (where.this if where is not None else None) != want:
        raise PolicyViolation(f"{key[0]}.{key[1]} is not read under its policy's row filter alone")

    out: dict[str, Value] = {}
    for projection in select.expressions:
        name = projection.alias
        expected: exp.Expr | None = None
        if decision.access == "aggregate_only" and (_raw(name) or (name.startswith("__") and name != "__row")):
            raise PolicyViolation(f"{key[0]}.{key[1]} is aggregate-only but passes on {name}")
        if _raw(name):
            out[name.lower()] = (RAW, (key, _passed(projection, key, ctx)))
            continue
        if name.startswith((hidden(KEY, ""), hidden(TIE, ""))):
            mark, _, target = name[2:].partition("_")
            treatment = decision.columns.get(target)
            if mark == KEY and target not in ctx.keys.get(key, frozenset()):
                raise PolicyViolation(f"{key[0]}.{key[1]} passes on {target} raw, which no relationship joins on")
            if treatment is not None:
                expected = _hidden_value(mark, target, treatment, types[target])
                out[name.lower()] = (mark, (key, target))
        elif name == "__row":
            expected = exp.Literal.number(1)
        elif name in decision.visible_columns:
            expected = mask(decision.visible_columns[name], _raw_column(name), types[name])
        if expected is None or projection.this != expected:
            raise PolicyViolation(f"{key[0]}.{key[1]} gives {name} otherwise than its policy does")
    return out


def _passed(projection: exp.Expr, key: tuple[str, str], ctx: Context) -> str:
    """The column a policy subquery passes on raw as ``projection``: one the role sees masked."""
    name = projection.alias[len(RAWS) :]
    treatment = ctx.decisions[key].columns.get(name)
    if not (
        treatment is not None
        and treatment.masked
        and isinstance(projection.this, exp.Column)
        and projection.this.name == name
        and projection.this.table == "raw"
    ):
        raise PolicyViolation(f"{key[0]}.{key[1]} passes on {projection.alias}, which no mask of it reads")
    return name


def _inputs(scope: Scope, carried: Mapping[int, Mapping[str, Value]]) -> dict[str, Mapping[str, Value]]:
    """The hidden values each source of ``scope`` passes on, by the source's alias."""
    return {
        alias.lower(): carried.get(id(source.expression), {}) if isinstance(source, Scope) else {}
        for alias, (_, source) in scope.selected_sources.items()
    }


def _value_of(
    column: exp.Column, scope: Scope, inputs: Mapping[str, Mapping[str, Value]], carried: Mapping[int, Any]
) -> Value | None:
    """The hidden value ``column`` reads, if any: from a source of its own scope, or, where no
    source of its own has it, from an enclosing scope's (a correlated reference), as an engine
    resolves it. A raw value is known only from the scope's own sources."""
    name, table = column.name.lower(), column.table.lower()

    def holding(sources: Mapping[str, Mapping[str, Value]]) -> list[Value]:
        return [v[name] for a, v in sources.items() if name in v and (not table or a == table)]

    values, outer = holding(inputs), scope.parent
    while not values and not (table and table in inputs) and outer is not None:
        around = _inputs(outer, carried)
        values = holding(around)
        if table and table in around:
            break
        outer = outer.parent
    if len(values) > 1:
        raise PolicyViolation(f"{column.name} is read where its source is not known")
    if (values and values[0][0] == RAW and not holding(inputs)) or (not values and _raw(name)):
        raise PolicyViolation(f"raw {column.name[len(RAWS) :]} is read where its source is not known")
    return values[0] if values else None


def _hidden_reads(
    scope: Scope, node: exp.Select, carried: Mapping[int, Mapping[str, Value]], ctx: Context
) -> dict[str, Value]:
    """Check every read of a hidden value in ``node`` itself (the scopes under it have been
    checked); return the hidden values it passes on."""
    for alias, (_, source) in scope.selected_sources.items():
        if not isinstance(source, Scope):  # outside a policy subquery, only subqueries and CTEs
            raise PolicyViolation(f"{alias} is read but is neither a subquery nor a common table expression")
    inputs, own = _inputs(scope, carried), _own(node)
    if any(inputs.values()):
        _plain(node, own, inputs)
    known = {name for values in carried.values() for name in values}  # what any scope passes on
    out: dict[str, Value] = {}

    def carry(name: str, value: Value) -> None:
        if out.setdefault(name.lower(), value) != value:
            raise PolicyViolation(f"two hidden values would pass on as {name}")

    for column in [n for n in own if isinstance(n, exp.Column)]:
        if isinstance(column.this, exp.Star):  # `t.*` passes on what t carries
            for name, value in inputs.get(column.table.lower(), {}).items():
                carry(name, value)
            continue
        if column.name.lower() not in known and not _raw(column.name):
            continue
        read = _value_of(column, scope, inputs, carried)
        if read is not None:
            kind, origin = read
            passed_as = (
                _read(column, node, origin, ctx)
                if kind == RAW
                else _hidden_read(column, node, kind, scope, inputs, carried)
            )
            if passed_as is not None:
                carry(passed_as, read)
    if any(isinstance(p, exp.Star) for p in node.expressions):  # `*` passes on what every source carries
        for values in inputs.values():
            for name, value in values.items():
                carry(name, value)
    return out


def _own(node: exp.Select) -> list[exp.Expr]:
    """The nodes of ``node`` itself, not of the queries nested in it."""
    return list(node.walk(prune=lambda n: n is not node and isinstance(n, (exp.Query, exp.Subquery, exp.With))))


# What a SELECT over hidden values (raw values, keys, tie-breaks) may have: the compiler builds
# nothing else there.
_PLAIN_ARGS = frozenset({"expressions", "from", "from_", "joins", "where", "order", "limit", "offset"})
_PLAIN_JOIN = frozenset({"this", "on", "side", "kind"})


def _plain(node: exp.Select, own: list[exp.Expr], sources: Mapping[str, Mapping[str, Value]]) -> None:
    """A SELECT over hidden values reads a column only by naming it: not by position, ``ALL``,
    NATURAL or USING, a row as a value, ``COLUMNS()`` or a star with modifiers or inside a call
    other than ``COUNT(*)``; it does not deduplicate rows, and groups them only where the
    hidden values are tie-breaks. Each of those would read a hidden value that no check below
    sees by its name."""
    # Grouping by a tie-break tells no more than ordering by it does: an aggregate over a page
    # cut per parent groups rows that carry their tie-breaks along (a raw value or key does not).
    ties_only = all(kind == TIE for values in sources.values() for kind, _ in values.values())
    allowed = _PLAIN_ARGS | {"group", "having"} if ties_only else _PLAIN_ARGS
    extra = sorted(k for k, v in node.args.items() if v and k not in allowed)
    if extra:
        raise PolicyViolation(f"a SELECT over hidden values has {', '.join(extra)}")
    for join in node.args.get("joins") or []:
        if not join.args.get("on") or any(v for k, v in join.args.items() if k not in _PLAIN_JOIN):
            raise PolicyViolation("a SELECT over hidden values joins other than ON a condition")
    for n in own:
        if isinstance(n, exp.Order) and not all(_named(t) for t in n.expressions):
            raise PolicyViolation("a SELECT over hidden values orders by something that is not a column")
        if isinstance(n, exp.Window) and not all(isinstance(p, exp.Column) for p in n.args.get("partition_by") or []):
            raise PolicyViolation("a SELECT over hidden values partitions by something that is not a column")
        # COUNT(*) counts rows and reads no value
        if isinstance(n, exp.Star) and (
            any(n.args.values()) or not (isinstance(n.parent, exp.Count) or _projection_star(n, node))
        ):
            raise PolicyViolation("a SELECT over hidden values has a star other than `*` or `t.*` as an output")
        if isinstance(n, exp.Columns):
            raise PolicyViolation("a SELECT over hidden values picks columns by pattern")
        if isinstance(n, exp.Column) and not n.table and n.name.lower() in sources:
            raise PolicyViolation("a SELECT over hidden values reads a whole row as a value")


def _named(term: exp.Expr) -> bool:
    """An order term that is a column by its name: not a position, and not ``ALL``."""
    if isinstance(term, exp.Ordered):
        term = term.this
    return isinstance(term, exp.Column) and term.name.lower() != "all"


def _projection_star(star: exp.Star, node: exp.Select) -> bool:
    holder = star.parent if isinstance(star.parent, exp.Column) else star
    return holder.parent is node and holder.arg_key == "expressions"


def _read(column: exp.Column, node: exp.Select, origin: Origin, ctx: Context) -> str | None:
    """Check one read of a raw value: the input of its own mask (None), or passed on as it is
    under a raw value's name (that name); anything else is refused."""
    holder = column.parent
    while holder is not None and holder is not node and LATE not in holder.meta:
        holder = holder.parent
    if holder is not None and holder is not node:
        key, name = origin
        # a copy: a mask takes the column it is given into itself, and this one is in the tree
        policy = late_mask(key, name, ctx.decisions[key].columns[name], ctx.types[key][name], column.copy())
        if holder.meta[LATE] != origin or holder != policy:
            raise PolicyViolation(f"the mask of {key[0]}.{key[1]}.{name} is not the policy's")
        return None
    passed = _passed_on(column, node)
    if passed is not None and _raw(passed):
        return passed
    raise PolicyViolation(f"raw {column.name[len(RAWS) :]} is read outside its mask")


def _hidden_read(
    column: exp.Column,
    node: exp.Select,
    kind: str,
    scope: Scope,
    inputs: Mapping[str, Mapping[str, Value]],
    carried: Mapping[int, Any],
) -> str | None:
    """Check one read of a relationship key or a tie-break: passed on as it is under a name of
    its kind (that name), a key equal to another key in a join's or a filter's condition, or a
    tie-break ordering rows (None); anything else is refused."""
    passed = _passed_on(column, node)
    if passed is not None:
        if not PASSED_AS[kind].fullmatch(passed.lower()):
            raise PolicyViolation(f"a hidden {kind} would pass on as {passed}")
        return passed
    holder = column.parent
    if kind == KEY and isinstance(holder, exp.EQ) and _condition(holder, node):
        other = holder.expression if column is holder.this else holder.this
        if isinstance(other, exp.Column) and (_value_of(other, scope, inputs, carried) or ("", ""))[0] == KEY:
            return None
    if kind == TIE and isinstance(holder, exp.Ordered) and isinstance(holder.parent, exp.Order):
        owner = holder.parent.parent
        if owner is node or isinstance(owner, exp.Window):
            return None
    use = "link records" if kind == KEY else "order rows"
    raise PolicyViolation(f"a hidden {kind} is read other than to {use}")


def _passed_on(column: exp.Column, node: exp.Select) -> str | None:
    """The name ``column`` passes on under, if it is one of ``node``'s outputs as it is."""
    if column.parent is node and column.arg_key == "expressions":
        return column.name
    output = column.parent
    if isinstance(output, exp.Alias) and output.parent is node and output.arg_key == "expressions":
        return output.alias
    return None


def _condition(term: exp.Expr, node: exp.Select) -> bool:
    """Whether ``term`` is one of the conjuncts of ``node``'s WHERE or of a join's ON."""
    holder = term.parent
    while isinstance(holder, exp.And | exp.Paren):
        holder = holder.parent
    if isinstance(holder, exp.Where):
        return holder.parent is node
    return isinstance(holder, exp.Join) and holder.parent is node and term.arg_key != "this"


STEPS: tuple[Step, ...] = (qualify, protect, defer, thresholds, verify)


def enforce(tree: exp.Expr, ctx: Context) -> exp.Expr:
    """The tree as the role may run it. The compiled tree is left untouched."""
    result = tree.copy()
    for step in STEPS:
        result = step(result, ctx)
    return result
