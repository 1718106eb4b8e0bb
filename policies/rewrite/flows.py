"""The last step's check of hidden values: every raw value, relationship key and tie-break is
followed through the statement's scopes, and admitted only where it is masked, links records
or orders rows (:func:`verify_flows`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.scope import Scope, ScopeType, traverse_scope

from catalogue.names import (
    ENTITY,
    KEY,
    KEY_VALUE,
    KEYS,
    RAW_VALUE,
    ROW,
    TIE,
    hidden,
    is_join_key,
    is_link,
    is_raw,
    is_tie,
)
from catalogue.sql import KeyRows, keys_sql
from catalogue.types import LogicalType
from policies.decide import TableDecision
from policies.masks import mask, tie
from policies.noise import clamp
from policies.rewrite.context import (
    LATE,
    POLICY,
    Context,
    PolicyViolation,
    hidden_value,
    late_mask,
    raw_column,
)
from policies.rowfilter import bind, parse_filter


def verify_flows(tree: exp.Expr, ctx: Context) -> None:
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
        policy = node.parent.meta.get(POLICY) if isinstance(node.parent, exp.Subquery) else None
        if _key_list(scope):
            # the keys a statement is given: each compares only with a relationship's key
            out = {KEY_VALUE: (LIST, (("", ""), KEY_VALUE))}
        elif any(isinstance(n, KeyRows) for n in _own(node)):
            raise PolicyViolation("a statement's keys are read through something else than their list")
        elif policy:
            if not isinstance(node, exp.Select):
                raise PolicyViolation(f"{policy[0]}.{policy[1]} is read through something else than its policy")
            out = _policy_outputs(node, policy, ctx)
        elif isinstance(node, exp.Select):
            out = _hidden_reads(scope, node, carried, ctx)
            tables = (ScopeType.DERIVED_TABLE, ScopeType.CTE, ScopeType.SET_OPERATION, ScopeType.ROOT)
            if out and scope.scope_type not in tables:  # an arm's and the root's are refused below
                raise PolicyViolation("a raw value or hidden key would pass out of a subquery that is not a table")
        elif isinstance(node, exp.SetOperation):
            out = _links(carried.get(id(s.expression), {}) for s in scope.set_operation_scopes)
        else:
            out = {}
        carried[id(node)] = out
    leaving = carried[id(scopes[-1].expression)] if scopes else {}
    if any(kind != KEY or not is_link(name) for name, (kind, _) in leaving.items()):
        raise PolicyViolation("a raw value or hidden key would leave in the response")


def _links(arms: Iterable[Mapping[str, Value]]) -> dict[str, Value]:
    """What a UNION passes on of its arms': relationship keys under a link's name, returned
    for the gateway to join another store's rows on (gateway.graphql.parts); nothing else."""
    out: dict[str, Value] = {}
    for values in arms:
        for name, value in values.items():
            if value[0] != KEY or not is_link(name):
                raise PolicyViolation("a raw value or hidden key would pass through a UNION")
            if out.setdefault(name, value) != value:
                raise PolicyViolation(f"two hidden values would pass on as {name}")
    return out


def _key_list(scope: Scope) -> bool:
    """Whether ``scope`` is the list of keys a statement is given, exactly as the compiler
    makes it (:func:`catalogue.sql.keys_sql`), as a common table expression of its name."""
    node = scope.expression
    if scope.scope_type != ScopeType.CTE or not isinstance(node.parent, exp.CTE) or node.parent.alias != KEYS:
        return False
    return any(node == keys_sql(LogicalType(kind)) for kind in ("string", "integer", "bigint"))


Origin = tuple[tuple[str, str], str]  # the table and the column a raw value is of


Value = tuple[str, Origin]  # a hidden value passed on: RAW, KEY or TIE, and whose it is


RAWS = hidden(RAW_VALUE, "")


LIST = "list"  # a key of the list a statement is given (catalogue.sql.keys_sql)

PASSED_AS: dict[str, Callable[[str], bool]] = {
    KEY: lambda name: is_join_key(name) or is_link(name),
    TIE: is_tie,
    LIST: lambda name: False,
}  # the names a key, a tie-break or a given key passes on under


def _visible(decision: TableDecision, name: str, kind: LogicalType) -> exp.Expr:
    """A visible column as its policy subquery gives it: its mask, clamped to its bounds where
    its table is noisy (what noisy sums read)."""
    masked = mask(decision.visible_columns[name], raw_column(name), kind)
    bounds = decision.noise.bounds if decision.noise is not None else {}
    return clamp(masked, bounds[name]) if name in bounds else masked


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
        entity = decision.k_distinct is not None and name == hidden(ENTITY, decision.k_distinct)
        if entity and decision.access == "aggregate_only" and decision.k_distinct is not None:
            # The digest k counts distinct entities by (see policies.rewrite.thresholds).
            if projection.this != tie(raw_column(decision.k_distinct), types[decision.k_distinct]):
                raise PolicyViolation(f"{key[0]}.{key[1]} gives {name} otherwise than its policy does")
            continue
        if decision.access == "aggregate_only" and (is_raw(name) or (name.startswith("__") and name != ROW)):
            raise PolicyViolation(f"{key[0]}.{key[1]} is aggregate-only but passes on {name}")
        if is_raw(name):
            out[name.lower()] = (RAW_VALUE, (key, _passed(projection, key, ctx)))
            continue
        if name.startswith((hidden(KEY, ""), hidden(TIE, ""))):
            mark, _, target = name[2:].partition("_")
            treatment = decision.columns.get(target)
            if mark == KEY and target not in ctx.keys.get(key, frozenset()):
                raise PolicyViolation(f"{key[0]}.{key[1]} passes on {target} raw, which no relationship joins on")
            if treatment is not None:
                expected = hidden_value(mark, target, treatment, types[target])
                out[name.lower()] = (mark, (key, target))
        elif name == ROW:
            expected = exp.Literal.number(1)
        elif name in decision.visible_columns:
            expected = _visible(decision, name, types[name])
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
    if (values and values[0][0] == RAW_VALUE and not holding(inputs)) or (not values and is_raw(name)):
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
        if column.name.lower() not in known and not is_raw(column.name):
            continue
        read = _value_of(column, scope, inputs, carried)
        if read is not None:
            kind, origin = read
            passed_as = (
                _read(column, node, origin, ctx)
                if kind == RAW_VALUE
                else _hidden_read(column, node, kind, scope, inputs, carried)
            )
            if passed_as is not None:
                carry(passed_as, read)
    if any(isinstance(p, exp.Star) for p in node.expressions):  # `*` passes on what every source carries
        for values in inputs.values():
            for name, value in values.items():
                carry(name, value)
    return out


def _own(node: exp.Expr) -> list[exp.Expr]:
    """The nodes of ``node`` itself, not of the queries nested in it."""
    return list(node.walk(prune=lambda n: n is not node and isinstance(n, (exp.Query, exp.Subquery, exp.With))))


# What a SELECT over hidden values (raw values, keys, tie-breaks) may have: the compiler builds
# nothing else there.
# (A statement's WITH holds its common table expressions, each a scope checked on its own: a
# statement that returns links reads hidden values where its WITH is.)
_PLAIN_ARGS = frozenset({"expressions", "from", "from_", "joins", "where", "order", "limit", "offset", "with", "with_"})


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
    if passed is not None and is_raw(passed):
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
        if not PASSED_AS[kind](passed.lower()):
            raise PolicyViolation(f"a hidden {kind} would pass on as {passed}")
        return passed
    holder = column.parent
    if kind in (KEY, LIST) and isinstance(holder, exp.EQ) and _condition(holder, node):
        # a key equal to another key, or to one of the keys the statement is given
        other = holder.expression if column is holder.this else holder.this
        other_kind = (_value_of(other, scope, inputs, carried) or ("", ""))[0] if isinstance(other, exp.Column) else ""
        if KEY in (kind, other_kind) and other_kind in (KEY, LIST):
            return None
    if kind == TIE and isinstance(holder, exp.Ordered) and isinstance(holder.parent, exp.Order):
        owner = holder.parent.parent
        if owner is node or isinstance(owner, exp.Window):
            return None
    use = "order rows" if kind == TIE else "link records"
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
