"""The SQL vocabulary: what the compiler and the policies put into a tree, and every engine
renders in its own functions.

The compiler addresses a department's table logically (:func:`logical_table`), and the policies
write functions that no engine has under one name, or that engines name alike and read
differently (:class:`Slice` and :class:`Ratio`: a custom mask's SUBSTRING and division). Each is
a sqlglot expression class, defined once here; an engine renders them by type in its
generator's ``TRANSFORMS``, as sqlglot's own dialects render theirs, so nothing matches a
function by its name. Until an engine renders them, they print as ``CITYGATE_…`` calls:

>>> print(Partial(this=exp.column("phone"), first=exp.Literal.number(3), last=exp.Literal.number(4)).sql())
CITYGATE_PARTIAL(phone, 3, 4)
"""

from __future__ import annotations

import hashlib
import hmac

from sqlglot import exp

from catalogue import names
from catalogue.types import LogicalType


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


class KeyRows(exp.Expression, exp.Func):
    """The keys a statement is given, one bound parameter holding them as a JSON array, read as
    a table of one column (:data:`catalogue.names.KEY_VALUE`): a store renders it in its own
    JSON functions, with its own placeholder, so the keys never enter the statement's text.
    Only a store renders it (the engines never run a statement that holds it)."""

    arg_types = {"this": True}  # noqa: RUF012 - the alias it is read under
    _sql_names = ["CITYGATE_KEY_ROWS"]  # noqa: RUF012


class Slice(exp.Expression, exp.Func):
    """A custom mask's ``SUBSTRING(value, start[, length])`` with one meaning on every engine
    and store: ``start`` counts characters from 1, or from the end when negative (``-4``: the
    last four, the whole text when it is shorter), and at most ``length`` characters are kept.
    Both are integer literals, ``start`` never 0 (:func:`policies.masks.parse_custom`).

    The stores' own SUBSTRING disagree exactly there: PostgreSQL reads a negative start as a
    position before the first character (``SUBSTRING(x, -4)`` is all of ``x``), Trino and
    MariaDB return ``''`` for a start before a short text, SQLite and DuckDB the whole text, and
    a start of 0 is ``''`` on Trino and MariaDB, one character shorter elsewhere. Every engine
    renders it as :func:`slice_sql`, which uses only positive starts."""

    arg_types = {"this": True, "start": True, "length": False}  # noqa: RUF012
    _sql_names = ["CITYGATE_SLICE"]  # noqa: RUF012


class Ratio(exp.Expression, exp.Func):
    """A custom mask's ``value / divisor``, in double precision on every engine and store:
    MariaDB divides to a DECIMAL of four more digits (``1 / 3`` is ``0.3333``), Trino and
    PostgreSQL truncate an integer quotient unless told. The divisor is a non-zero literal
    (:func:`policies.masks.parse_custom`): a zero divisor fails on some stores and is NULL or
    infinite on others. Rendered as :func:`ratio_sql`."""

    arg_types = {"this": True, "expression": True}  # noqa: RUF012
    _sql_names = ["CITYGATE_RATIO"]  # noqa: RUF012


def slice_sql(node: Slice) -> exp.Expr:
    """:class:`Slice` with a positive start, which every engine and store reads alike.

    >>> print(slice_sql(Slice(this=exp.column("v"), start=exp.Literal.number(-4))).sql("postgres"))
    SUBSTRING(v FROM CASE WHEN LENGTH(v) > 4 THEN LENGTH(v) - 3 ELSE 1 END)
    """
    value, start, length = node.this, int(node.args["start"].to_py()), node.args.get("length")
    position: exp.Expr = exp.Literal.number(start)
    if start < 0:
        # sqlglot writes LENGTH as CHAR_LENGTH for MariaDB, whose LENGTH counts bytes
        chars = exp.Length(this=value.copy())
        longer = exp.GT(this=chars, expression=exp.Literal.number(-start))
        from_end = exp.Sub(this=chars.copy(), expression=exp.Literal.number(-start - 1))
        position = exp.Case(ifs=[exp.If(this=longer, true=from_end)], default=exp.Literal.number(1))
    return exp.Substring(this=value.copy(), start=position, length=length.copy() if length is not None else None)


def ratio_sql(node: Ratio) -> exp.Expr:
    """:class:`Ratio` as a division of doubles.

    >>> print(ratio_sql(Ratio(this=exp.column("v"), expression=exp.Literal.number(3))).sql("mysql"))
    CAST(v AS DOUBLE) / CAST(3 AS DOUBLE)
    """
    double = exp.DataType(this=exp.DataType.Type.DOUBLE)
    return exp.Div(
        this=exp.Cast(this=node.this.copy(), to=double.copy()),
        expression=exp.Cast(this=node.expression.copy(), to=double.copy()),
        typed=False,
        safe=False,
    )


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


def keys_sql(kind: LogicalType) -> exp.Select:
    """The keys a statement is given (:class:`KeyRows`), as rows of the key (of its parent
    column's ``kind``) and its place in the list (:data:`catalogue.names.KEY_PLACE`).

    >>> keys_sql(LogicalType("integer")).sql()
    'SELECT CAST(j.__value AS INT) AS __value, j.__place AS __place FROM CITYGATE_KEY_ROWS(j)'
    """
    rows = KeyRows(this=exp.to_identifier("j"))
    return exp.select(
        exp.alias_(exp.cast(exp.column(names.KEY_VALUE, "j"), kind.to_sqlglot()), names.KEY_VALUE, copy=False),
        exp.alias_(exp.column(names.KEY_PLACE, "j"), names.KEY_PLACE, copy=False),
        copy=False,
    ).from_(rows, copy=False)


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
