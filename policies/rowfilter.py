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
from policies.masks import ALLOWED_NODES, one_meaning, parse_expression, require_allowed

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
        if isinstance(pattern, exp.Literal):
            if problem := pattern_problem(pattern.name):
                raise ValueError(f"row filter {text!r}: {problem}")
            pattern.replace(exp.Literal.string(canonical_pattern(pattern.name)))

    def escaped(node: exp.Expr) -> exp.Expr:  # said to every engine, as GraphQL's `_like` does
        if isinstance(node, exp.Like | exp.ILike) and not isinstance(node.parent, exp.Escape):
            return exp.Escape(this=node.copy(), expression=exp.Literal.string("\\"))
        return node

    tree = tree.transform(escaped)
    require_allowed(tree, "row filter", text, _FILTER_NODES, "may use only the table's own columns and claims")
    # A row filter that reads differently on a store lets different rows through there: the
    # same one meaning as a custom mask's (SUBSTRING(id_card, -4) was the whole number on
    # PostgreSQL), or refused with the reason.
    return one_meaning(tree, text, "row filter")


_FILTER_NODES = (*ALLOWED_NODES, exp.In, exp.Like, exp.ILike, exp.Escape, exp.Between, exp.Tuple)


# How complex a pattern may be. An engine that matches LIKE by backtracking (DuckDB's, MariaDB's)
# tries every place each `%` could end, so a pattern's cost per row grows as the string's length
# to the power of its `%` wildcards; runs of wildcards are first collapsed (`canonical_pattern`),
# which leaves each `%` followed by an ordinary character that prunes the search. Measured on
# DuckDB over a million 16-character codes full of zeros (the seed-scale city's `reference_no`;
# its largest table, penalties, has 3.6 million), on a busy two-core machine: `%0%0%0X` 0.75 s,
# `%0%0%0%0X` 1.2-1.5 s, and `%_%_%_X` uncollapsed 3.4 s (`___%X`, collapsed, 0.06 s). On the
# demo city's 10,000 identity numbers three take 15 ms. Trino matches LIKE in linear time.
PATTERN_CHARACTERS = 256
PATTERN_PERCENTS = 3


def _pieces(pattern: str) -> list[str]:
    """The pattern as its characters, an escaped one kept with its ``\\``."""
    pieces: list[str] = []
    escaped = False
    for c in pattern:
        if escaped:
            pieces[-1] += c
        else:
            pieces.append(c)
        escaped = not escaped and c == "\\"
    return pieces


def canonical_pattern(pattern: str) -> str:
    """The same pattern with each run of wildcards that holds a ``%`` written as its ``_`` then
    one ``%`` ("at least n characters"): it matches exactly the same strings, and an engine
    that backtracks no longer tries every way to split a string between the run's ``%``.

    >>> b = chr(92)  # a backslash: an escaped `%` is no wildcard
    >>> canonical_pattern("%_%_%_X"), canonical_pattern("a%%b"), canonical_pattern("50" + b + "%_%") == "50" + b + "%_%"
    ('___%X', 'a%b', True)
    """
    out: list[str] = []
    run: list[str] = []
    for piece in [*_pieces(pattern), ""]:
        if piece in ("%", "_"):
            run.append(piece)
            continue
        if run:
            out.append("_" * run.count("_") + ("%" if "%" in run else ""))
            run = []
        out.append(piece)
    return "".join(out)


def pattern_problem(pattern: str) -> str | None:
    """What is wrong with a LIKE pattern as citygate reads one, if anything: ``%`` and ``_`` are
    wildcards, and ``\\`` makes the next ``%``, ``_`` or ``\\`` an ordinary character. Trino
    refuses any other escape, and PostgreSQL would take one that DuckDB and Trino do not. A
    pattern holds at most :data:`PATTERN_CHARACTERS` characters and :data:`PATTERN_PERCENTS`
    ``%`` once its runs of wildcards are collapsed, so that no pattern costs more than a
    bounded, small amount per row.

    >>> b = chr(92)  # a backslash
    >>> pattern_problem("50" + b + "%"), pattern_problem("a" + b + "b")[-7:], pattern_problem("a" + b)[:21]
    (None, "not 'b'", 'a pattern may not end')
    >>> pattern_problem("%_%_%_%_%_%_X"), pattern_problem("%a%b%c%d")[:48]
    (None, 'a pattern may hold at most 3 `%` wildcards (a ru')
    """
    escaped = False
    for c in pattern:
        if escaped and c not in "%_\\":
            return f"in a pattern, `\\` may only come before `%`, `_` or `\\`, not {c!r}"
        escaped = not escaped and c == "\\"
    if escaped:
        return "a pattern may not end with a lone `\\`; write `\\\\` for a backslash"
    if len(pattern) > PATTERN_CHARACTERS:
        return f"a pattern may hold at most {PATTERN_CHARACTERS} characters, not {len(pattern)}; match a shorter part"
    percents = _pieces(canonical_pattern(pattern)).count("%")
    if percents > PATTERN_PERCENTS:
        return (
            f"a pattern may hold at most {PATTERN_PERCENTS} `%` wildcards (a run such as `%_%` counts once), "
            f"not {percents}; match fewer parts of the text"
        )
    return None


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
        return exp.Literal.string(canonical_pattern(value))
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
