"""Row filters: SQL predicates over a table's columns and the caller's claims.

``district = :claims.district`` parses with sqlglot once; at request time each claim reference
becomes a literal node holding the caller's value, never text spliced into SQL. A claim the
token does not carry makes the filter false: no rows, rather than all of them.

>>> from sqlglot import exp
>>> bind(parse_filter("district = :claims.district"), {"district": "南城' OR 1=1 --"}).sql("trino")
"district = '南城'' OR 1=1 --'"
>>> bind(parse_filter("district = :claims.district"), {}).sql()
'FALSE'
>>> bind(parse_filter("district = :claims.district"), {"district": float("nan")}).sql()  # not `nan`, a name
'FALSE'
>>> from catalogue.types import LogicalType
>>> bind(parse_filter("district = :claims.district"), {"district": 7}, {"district": LogicalType("string")}).sql()
"district = '7'"
>>> bind(parse_filter("age > :claims.min"), {"min": "ten"}, {"age": LogicalType("integer")}).sql()
'FALSE'
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from sqlglot import exp

from catalogue.types import FRACTIONAL, LITERALS, WHOLE, LogicalType, decimal_digits, text_problem
from policies.masks import ALLOWED_NODES, parse_expression, require_allowed

_CLAIM = re.compile(r":claims\.([A-Za-z_][A-Za-z0-9_]*)")
_PREFIX = "__claim__"


def parse_filter(text: str) -> exp.Expr:
    """Parse a filter; claim references become marker columns until :func:`bind`. It may use
    the table's columns, claims, literals, comparisons, ``IN`` lists, ``LIKE``, ``BETWEEN`` and
    the functions custom masks may: nothing that reads another table, a file or the engine's
    settings."""
    tree = parse_expression(_CLAIM.sub(lambda m: _PREFIX + m.group(1), text), "row filter")
    for like in tree.find_all(exp.Like, exp.ILike):
        pattern = like.expression
        if isinstance(pattern, exp.Literal) and (problem := pattern_problem(pattern.name)):
            raise ValueError(f"row filter {text!r}: {problem}")

    def escaped(node: exp.Expr) -> exp.Expr:  # said to every engine, as GraphQL's `_like` does
        if isinstance(node, exp.Like | exp.ILike) and not isinstance(node.parent, exp.Escape):
            return exp.Escape(this=node.copy(), expression=exp.Literal.string("\\"))
        return node

    tree = tree.transform(escaped)
    require_allowed(tree, "row filter", text, _FILTER_NODES, "may use only the table's own columns and claims")
    return tree


_FILTER_NODES = (*ALLOWED_NODES, exp.In, exp.Like, exp.ILike, exp.Escape, exp.Between, exp.Tuple)


def pattern_problem(pattern: str) -> str | None:
    """What is wrong with a LIKE pattern as citygate reads one, if anything: ``%`` and ``_`` are
    wildcards, and ``\\`` makes the next ``%``, ``_`` or ``\\`` an ordinary character. Trino
    refuses any other escape, and PostgreSQL would take one that DuckDB and Trino do not.

    >>> b = chr(92)  # a backslash
    >>> pattern_problem("50" + b + "%"), pattern_problem("a" + b + "b")[-7:], pattern_problem("a" + b)[:21]
    (None, "not 'b'", 'a pattern may not end')
    """
    escaped = False
    for c in pattern:
        if escaped and c not in "%_\\":
            return f"in a pattern, `\\` may only come before `%`, `_` or `\\`, not {c!r}"
        escaped = not escaped and c == "\\"
    return "a pattern may not end with a lone `\\`; write `\\\\` for a backslash" if escaped else None


def claims_used(tree: exp.Expr) -> set[str]:
    return {c.name[len(_PREFIX) :] for c in tree.find_all(exp.Column) if c.name.startswith(_PREFIX)}


def columns_used(tree: exp.Expr) -> set[str]:
    return {c.name for c in tree.find_all(exp.Column) if not c.name.startswith(_PREFIX)}


def bind(tree: exp.Expr, claims: Mapping[str, Any], types: Mapping[str, LogicalType] | None = None) -> exp.Expr:
    """The filter with each claim as a literal; false when a claim it needs is missing, or is
    no single value (a list, an object, a NaN or an infinity: none of them a literal every
    engine reads as the same value).

    A claim compared with one of the table's columns (``types``) becomes a literal of that
    column's type, and the filter is false if the claim is no such value: an engine would
    otherwise cast the column to the claim's type and fail on the first row, naming its value.
    """
    used = [claims.get(name) for name in claims_used(tree)]
    if not all(_scalar(value) for value in used):
        return exp.false()
    try:
        return tree.copy().transform(lambda node: _bound(node, claims, types or {}))
    except _NotOfType:
        return exp.false()


class _NotOfType(Exception):
    pass


def _bound(node: exp.Expr, claims: Mapping[str, Any], types: Mapping[str, LogicalType]) -> exp.Expr:
    if not (isinstance(node, exp.Column) and node.name.startswith(_PREFIX)):
        return node
    value = claims[node.name[len(_PREFIX) :]]
    if isinstance(node.parent, exp.Like | exp.ILike) and node.arg_key == "expression":
        if not isinstance(value, str) or pattern_problem(value):  # a claim as a pattern
            raise _NotOfType
        return exp.Literal.string(value)
    kind = _compared_with(node, types)
    if kind is not None:
        return LITERALS[kind.kind](_as(value, kind))
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, int | float):
        return exp.Literal.number(value)
    return exp.Literal.string(value)


_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ, exp.NullSafeNEQ)


def _compared_with(claim: exp.Column, types: Mapping[str, LogicalType]) -> LogicalType | None:
    """The type of the column ``claim`` is compared with (``c = claim``, ``c IN (claim, ...)``,
    ``c BETWEEN claim AND ...``), parentheses aside."""
    node: exp.Expr = claim
    parent = node.parent
    while isinstance(parent, exp.Paren):
        node, parent = parent, parent.parent
    listed = isinstance(parent, exp.In) and node.arg_key == "expressions"
    if isinstance(parent, _COMPARISONS):
        other = parent.expression if parent.this is node else parent.this
    elif parent is not None and (listed or (isinstance(parent, exp.Between) and node.arg_key in ("low", "high"))):
        other = parent.this
    else:
        return None
    while isinstance(other, exp.Paren):
        other = other.this
    if isinstance(other, exp.Column) and not other.name.startswith(_PREFIX):
        return types.get(other.name)
    return None


def _as(value: Any, kind: LogicalType) -> Any:
    """``value`` as a value of ``kind``, or :class:`_NotOfType`."""
    try:
        if kind.kind == "string" and isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
        if kind.kind == "boolean" and isinstance(value, bool):
            return value
        if kind.kind in WHOLE and not isinstance(value, bool | float):
            whole = int(value) if isinstance(value, int) or _INTEGER.fullmatch(value) else None
            if whole is not None and -(2**63) <= whole < 2**63:
                return whole
        if kind.kind in FRACTIONAL and not isinstance(value, bool):
            number = Decimal(str(value))
            # finite as a double too (1e999 is a finite Decimal and an infinite float), and within
            # what a DECIMAL(38) literal can say
            if number.is_finite() and math.isfinite(float(number)) and decimal_digits(number) <= 38:
                return number
        if kind.kind == "date" and isinstance(value, str):
            return dt.date.fromisoformat(value)
        if kind.kind == "timestamp" and isinstance(value, str):
            moment = dt.datetime.fromisoformat(value)
            if moment.tzinfo is None:  # as the Timestamp scalar: an offset is refused, not dropped
                return moment
    except (ValueError, ArithmeticError):
        pass
    raise _NotOfType


_INTEGER = re.compile(r"-?[0-9]{1,19}")


def _scalar(value: Any) -> bool:
    if isinstance(value, str):
        return text_problem(value) is None
    return isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value))
