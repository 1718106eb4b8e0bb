"""The SQL vocabulary: what the compiler and the policies put into a tree, and every engine
renders in its own functions.

The compiler addresses a department's table logically (:func:`logical_table`), and the policies
write four functions that no engine has under one name. Each is a sqlglot expression class,
defined once here; an engine renders them by type in its generator's ``TRANSFORMS``, as
sqlglot's own dialects render theirs, so nothing matches a function by its name. Until an
engine renders them, they print as ``CITYGATE_…`` calls:

>>> print(Partial(this=exp.column("phone"), first=exp.Literal.number(3), last=exp.Literal.number(4)).sql())
CITYGATE_PARTIAL(phone, 3, 4)
"""

from __future__ import annotations

import hashlib
import hmac

from sqlglot import exp


class Hash(exp.Expression, exp.Func):
    """``h:`` and the first 16 hex digits of the HMAC-SHA256 of a text under the deployment's
    key (``policies.hash_key``), which the engine adds: the key never comes from a query."""

    arg_types = {"this": True}  # noqa: RUF012 - sqlglot declares arguments as a class dict
    _sql_names = ["CITYGATE_HASH"]  # noqa: RUF012


class Partial(exp.Expression, exp.Func):
    """A text with its first ``first`` and last ``last`` characters kept and one ``*`` for
    each between; a text no longer than ``first + last`` starred whole (:func:`partial_sql`)."""

    arg_types = {"this": True, "first": True, "last": True}  # noqa: RUF012
    _sql_names = ["CITYGATE_PARTIAL"]  # noqa: RUF012

    @property
    def kept(self) -> tuple[int, int]:
        return int(self.args["first"].name), int(self.args["last"].name)


class Tie(exp.Expression, exp.Func):
    """What rows break ties on when their key is masked: a keyed digest of a text, which orders
    rows deterministically and says nothing of the raw order. Never shown (see
    :func:`policies.masks.tie`)."""

    arg_types = {"this": True}  # noqa: RUF012
    _sql_names = ["CITYGATE_TIE"]  # noqa: RUF012


class TimestampText(exp.Expression, exp.Func):
    """A timestamp as ``YYYY-MM-DD HH:MM:SS.ffffff`` (microseconds always): the text masks read
    of it on every engine."""

    arg_types = {"this": True}  # noqa: RUF012
    _sql_names = ["CITYGATE_TIMESTAMP_TEXT"]  # noqa: RUF012


def tie_key(hash_key: bytes) -> str:
    """The key tie-break digests are made with, derived from the hash mask's own, so that a
    statement ordering by a tie never holds the hash key itself. 128 bits of it, so a key and
    an identity number fit MD5's one 64-byte block."""
    return hmac.new(hash_key, b"citygate tie-break", hashlib.sha256).hexdigest()[:32]


def partial_sql(value: exp.Expr, first: int, last: int) -> exp.Expr:
    """The partial mask in functions every engine has: RPAD pads the kept head with stars up
    to where the kept tail starts.

    >>> print(partial_sql(exp.column("phone"), 3, 4).sql("trino", pretty=True))
    CASE
      WHEN LENGTH(phone) > 7
      THEN RPAD(SUBSTR(phone, 1, 3), CAST(LENGTH(phone) - 4 AS INTEGER), '*') || SUBSTR(phone, LENGTH(phone) - 3)
      ELSE RPAD('', CAST(LENGTH(phone) AS INTEGER), '*')
    END
    """

    def length() -> exp.Expr:
        return exp.Length(this=value.copy())

    def count(amount: exp.Expr) -> exp.Expr:
        # DuckDB's RPAD takes an INTEGER count, and LENGTH is a BIGINT there.
        return exp.cast(amount, exp.DataType(this=exp.DataType.Type.INT))

    head: exp.Expr = (
        exp.Substring(this=value.copy(), start=exp.Literal.number(1), length=exp.Literal.number(first))
        if first
        else exp.Literal.string("")
    )
    upto = exp.Sub(this=length(), expression=exp.Literal.number(last)) if last else length()
    kept: exp.Expr = exp.func("RPAD", head, count(upto), exp.Literal.string("*"))
    if last:
        start = exp.Sub(this=length(), expression=exp.Literal.number(last - 1))
        kept = exp.DPipe(this=kept, expression=exp.Substring(this=value.copy(), start=start))
    longer = exp.GT(this=length(), expression=exp.Literal.number(first + last))
    # RPAD('', n, '*'): Trino's REPEAT returns an array, not a string.
    starred = exp.func("RPAD", exp.Literal.string(""), count(length()), exp.Literal.string("*"))
    return exp.Case(ifs=[exp.If(this=longer, true=kept)], default=starred)


def logical_table(department: str, table: str) -> exp.Table:
    """The compiler's reference to a department's table: its ``db`` is the department, and it
    has no catalog until an engine locates it.

    >>> logical_table("health", "clinic_visits").sql()
    'health.clinic_visits'
    """
    return exp.Table(this=exp.to_identifier(table), db=exp.to_identifier(department))


def is_logical(table: exp.Table) -> bool:
    """Whether ``table`` is a logical reference (:func:`logical_table`)."""
    return bool(table.db) and not table.catalog


def departments_in(tree: exp.Expr) -> list[str]:
    """The departments a tree reads, in order of first appearance.

    >>> departments_in(exp.select("*").from_(logical_table("health", "clinic_visits")))
    ['health']
    """
    seen: dict[str, None] = {}
    for table in tree.find_all(exp.Table):
        if is_logical(table):
            seen.setdefault(table.db, None)
    return list(seen)
