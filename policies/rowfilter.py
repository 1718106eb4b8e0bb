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
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

_CLAIM = re.compile(r":claims\.([A-Za-z_][A-Za-z0-9_]*)")
_PREFIX = "__claim__"


def parse_filter(text: str) -> exp.Expr:
    """Parse a filter; claim references become marker columns until :func:`bind`."""
    try:
        tree = sqlglot.parse_one(_CLAIM.sub(lambda m: _PREFIX + m.group(1), text))
    except ParseError as error:
        raise ValueError(f"row filter {text!r} is not an SQL predicate: {error.errors[0]['description']}") from None
    if tree.find(exp.Select, exp.Subquery, exp.Table) is not None:
        raise ValueError(f"row filter {text!r} may use only the table's own columns and claims")
    return tree


def claims_used(tree: exp.Expr) -> set[str]:
    return {c.name[len(_PREFIX) :] for c in tree.find_all(exp.Column) if c.name.startswith(_PREFIX)}


def columns_used(tree: exp.Expr) -> set[str]:
    return {c.name for c in tree.find_all(exp.Column) if not c.name.startswith(_PREFIX)}


def bind(tree: exp.Expr, claims: Mapping[str, Any]) -> exp.Expr:
    """The filter with each claim as a literal; false when a claim it needs is missing, or is
    no single value (a list, an object, a NaN or an infinity: none of them a literal every
    engine reads as the same value)."""
    used = [claims.get(name) for name in claims_used(tree)]
    if not all(_scalar(value) for value in used):
        return exp.false()

    def substitute(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and node.name.startswith(_PREFIX):
            value = claims[node.name[len(_PREFIX) :]]
            if isinstance(value, bool):
                return exp.Boolean(this=value)
            if isinstance(value, int | float):
                return exp.Literal.number(value)
            return exp.Literal.string(value)
        return node

    return tree.copy().transform(substitute)


def _scalar(value: Any) -> bool:
    return isinstance(value, str | bool | int) or (isinstance(value, float) and math.isfinite(value))
