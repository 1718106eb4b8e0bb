"""Masks as sqlglot expressions over a raw column, with the exact formats of the demo contract.

Every mask is built from the raw column alone, side by side with the others, so no mask ever
reads another mask's output (the hole of trinodb/trino#14420). They use only functions that
DuckDB and Trino both have, with the same meaning, so one tree gives the same values on both,
and the vocabulary of :mod:`catalogue.sql` that each engine renders in its own functions:
:class:`~catalogue.sql.Hash`, with the configured key (never from the query),
:class:`~catalogue.sql.Partial`, in the fewest calls the engine needs, and
:class:`~catalogue.sql.Tie`, the digest rows break ties on when their key is masked (:func:`tie`).

>>> from catalogue.types import KNOWN_TYPES, LogicalType
>>> from sqlglot import exp
>>> from policies.treatments import Treatment
>>> print(mask(Treatment("partial", (3, 4)), exp.column("phone"), LogicalType("string")).sql())
CITYGATE_PARTIAL(phone, 3, 4)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError

from catalogue.sql import Hash, Partial, Ratio, Slice, Tie, TimestampText
from catalogue.types import KNOWN_TYPES, LogicalType
from policies.treatments import Treatment

REDACTED = "[REDACTED]"

# Functions a custom mask (and a row filter) may call: pure, deterministic, present on every
# engine and store, each with one meaning on all of them (:func:`one_meaning`). docs/policies.md
# ("Custom masks") lists the same; ROUND is not here: it is refused with its reason (_REFUSED).
ALLOWED_FUNCTIONS = frozenset(
    {
        "UPPER",
        "LOWER",
        "SUBSTRING",
        "LENGTH",
        "CONCAT",
        "COALESCE",
        "FLOOR",
        "CEIL",
        "ABS",
        "LPAD",
        "RPAD",
        "TRIM",
        "REPLACE",
        "NULLIF",
    }
)
# Not GREATEST and LEAST: DuckDB skips a NULL argument where Trino returns NULL, so a mask
# `GREATEST(value, NULL)` showed the raw value on one engine only.
ALLOWED_NODES = (
    exp.Column,
    exp.Literal,
    exp.Identifier,
    exp.Paren,
    exp.Case,
    exp.If,
    exp.Cast,
    exp.DataType,
    exp.DataTypeParam,
    exp.Null,
    exp.Boolean,
    exp.DPipe,
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Div,
    exp.Mod,
    exp.Neg,
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.And,
    exp.Or,
    exp.Not,
    exp.Is,
)


def _string(column: exp.Expr, kind: LogicalType | None = None) -> exp.Expr:
    """A value as the text a mask reads, the same on every engine: engines write a double
    (Trino `1.42026E2`, DuckDB `142.026`) and a timestamp (Trino with microseconds, DuckDB
    without when they are zero) each their own way, so a hashed key would not join across
    them. A double is read as DECIMAL(38, 9), a timestamp as `YYYY-MM-DD HH:MM:SS.ffffff`.

    >>> _string(exp.column("v"), LogicalType("double")).sql()
    'CASE WHEN ABS(v) < 1e28 THEN CAST(CAST(v AS DECIMAL(38, 9)) AS VARCHAR) END'
    """
    if kind is not None and kind.kind == "timestamp":
        return TimestampText(this=column)
    text = exp.DataType(this=exp.DataType.Type.VARCHAR)
    if kind is not None and kind.kind == "double":
        # NaN, the infinities and magnitudes of 1e28 and more have no DECIMAL(38, 9): they read
        # as NULL (every comparison with NaN is false on both engines), rather than failing.
        finite = exp.LT(this=exp.Abs(this=column), expression=exp.Literal.number("1e28"))
        decimal = exp.Cast(this=column, to=exp.DataType.build("DECIMAL(38, 9)"))
        return exp.Case(ifs=[exp.If(this=finite, true=exp.Cast(this=decimal, to=text))])
    return exp.cast(column, text)


def _partial(column: exp.Expr, first: int, last: int, kind: LogicalType) -> exp.Expr:
    """Keep ``first`` and ``last`` characters, one ``*`` for each between; a value no longer
    than ``first + last`` is starred whole rather than shown.

    Each engine renders :class:`~catalogue.sql.Partial` in its own cheapest formulation: an
    engine pays for every function call when it plans the statement, and DuckDB binds each one
    in tens of microseconds, which is most of what a mask costs on a selective query. A string
    column is not cast: on DuckDB CHAR is VARCHAR, and on Trino LENGTH and SUBSTRING read a
    CHAR(n) as its cast to VARCHAR would (padding included).
    """
    value = column if kind.kind == "string" else _string(column, kind)
    return Partial(this=value, first=exp.Literal.number(first), last=exp.Literal.number(last))


def _hash(column: exp.Expr, kind: LogicalType) -> exp.Expr:
    return Hash(this=_string(column, kind))


def tie(column: exp.Expr, kind: LogicalType) -> exp.Expr:
    """What rows break ties on when their key is masked: a keyed digest of the raw key, which
    orders them deterministically and says nothing about the raw order. Never shown.

    It is computed for every row a query orders (a list of ten residents orders all of them),
    where a mask that is only shown is computed for the rows shown, so each engine expands it as the
    MD5 of a key of its own followed by the value, not as an HMAC: on DuckDB an HMAC made the
    ten-row list three times as slow as without policies, one SHA-256 twice, MD5 1.3 times.
    The order needs only to be unpredictable without the key; MD5's weakness, collisions,
    would at worst leave two rows' order to the engine."""
    return Tie(this=_string(column, kind))


def _year(column: exp.Expr, kind: LogicalType) -> exp.Expr:
    truncated = exp.DateTrunc(this=column, unit=exp.var("YEAR"))  # type: ignore[no-untyped-call]
    return exp.cast(truncated, kind.to_sqlglot())


def _bucket(column: exp.Expr, width: float, kind: LogicalType) -> exp.Expr:
    # Divide in double precision: Trino divides integers by truncation, DuckDB does not.
    quotient = exp.Div(
        this=exp.cast(column, exp.DataType(this=exp.DataType.Type.DOUBLE)), expression=exp.Literal.number(width)
    )
    floored = exp.Mul(this=exp.Floor(this=quotient), expression=exp.Literal.number(width))
    return exp.cast(floored, kind.to_sqlglot())


def _null(kind: LogicalType) -> exp.Expr:
    return exp.cast(exp.Null(), kind.to_sqlglot())


def _redact(kind: LogicalType) -> exp.Expr:
    return exp.Literal.string(REDACTED) if kind.kind == "string" else _null(kind)


def _custom(column: exp.Expr, text: str) -> exp.Expr:
    tree = parse_custom(text)

    def substitute(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and node.name.lower() == "value":
            return column.copy()
        return node

    return tree.transform(substitute)


MASKS: dict[str, Callable[[Treatment, exp.Expr, LogicalType], exp.Expr]] = {
    "raw": lambda t, c, k: c,
    "partial": lambda t, c, k: _partial(c, t.params[0], t.params[1], k),
    "hash": lambda t, c, k: _hash(c, k),
    "nullify": lambda t, c, k: _null(k),
    "year": lambda t, c, k: _year(c, k),
    "bucket": lambda t, c, k: _bucket(c, t.params[0], k),
    "redact": lambda t, c, k: _redact(k),
    "sql": lambda t, c, k: _custom(c, t.params[0]),
}


def function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return node.name.upper()
    if isinstance(node, exp.Pad):  # sqlglot's one node for both
        return "LPAD" if node.args.get("is_left") else "RPAD"
    return node.sql_name().upper()


def mask(treatment: Treatment, column: exp.Expr, kind: LogicalType) -> exp.Expr:
    """The expression a role sees in place of ``column``."""
    if treatment.kind == "deny":
        raise ValueError("a denied column has no expression")
    return MASKS[treatment.kind](treatment, column, kind)


def output_kind(treatment: Treatment, kind: LogicalType) -> LogicalType:
    """The logical type a column has once masked (partial and hash yield strings)."""
    if treatment.kind in ("partial", "hash", "sql") or (treatment.kind == "redact" and kind.kind == "string"):
        return LogicalType("string")
    return kind


def parse_expression(text: str, what: str) -> exp.Expr:
    """Parse a policy's SQL expression, or say why it is none, naming ``what`` it is."""
    try:
        return sqlglot.parse_one(text)
    except ParseError as error:
        raise ValueError(f"{what} {text!r} is not an SQL expression: {error.errors[0]['description']}") from None
    except SqlglotError as error:  # the tokenizer's, e.g. a quote never closed
        raise ValueError(f"{what} {text!r} is not an SQL expression: {str(error).splitlines()[0]}") from None


def require_known_type(node: exp.Expr, what: str, text: str) -> None:
    """A type in a policy's expression must be one citygate knows: sqlglot keeps a quoted type
    name (``CAST(x AS "...")``) as text and writes it back verbatim, which would let any SQL
    through past every other check."""
    if isinstance(node, exp.DataType) and node.this not in KNOWN_TYPES:
        raise ValueError(f"{what} {text!r} casts to {node.sql()!r}, which is not a type it may use")


def require_allowed(tree: exp.Expr, what: str, text: str, nodes: tuple[type[exp.Expr], ...], other: str) -> None:
    """Every node of a policy's expression is one of ``nodes`` or an allow-listed function, and
    every type one citygate knows; ``other`` says what is wrong with anything else (``{node}``
    stands for its kind)."""
    for node in tree.walk():
        require_known_type(node, what, text)
        if isinstance(node, nodes):
            continue
        if not isinstance(node, exp.Func):
            raise ValueError(f"{what} {text!r} " + other.format(node=type(node).__name__))
        refused = _REFUSED.get(type(node))
        if refused is not None:  # a function we know reads differently somewhere: say how
            raise ValueError(f"{what} {text!r} may not use {refused}")
        name = function_name(node)
        if name not in ALLOWED_FUNCTIONS:
            allowed = ", ".join(sorted(ALLOWED_FUNCTIONS))
            raise ValueError(f"{what} {text!r} calls {name}, which is not allowed; allowed: {allowed}")


def parse_custom(text: str) -> exp.Expr:
    """Parse a custom mask and refuse anything but allow-listed functions over ``value``, each
    with one meaning on every engine and store (:func:`one_meaning`).

    >>> print(parse_custom("SUBSTRING(value, -4)").sql("postgres"))
    CITYGATE_SLICE(value, -4)
    """
    tree = parse_expression(text, "custom mask")
    for column in tree.find_all(exp.Column):
        if column.name.lower() != "value":
            raise ValueError(f"custom mask {text!r} may refer only to `value`, not {column.sql()!r}")
    require_allowed(tree, "custom mask", text, ALLOWED_NODES, "uses {node}, which is not allowed")
    return one_meaning(tree, text)


# Types a custom mask may cast to: text reads the same everywhere, where a cast of text to a
# number or a date does not (MariaDB reads '12abc' as 12 with a warning, the others fail, and
# their message quotes the value).
_TEXT_TYPES = (exp.DataType.Type.VARCHAR, exp.DataType.Type.TEXT)


def _integer(node: exp.Expr | None) -> int | None:
    """The value of an integer literal (``-4`` included), or None for anything else."""
    if isinstance(node, exp.Neg):
        inner = _integer(node.this)
        return -inner if inner is not None else None
    if isinstance(node, exp.Literal) and not node.is_string and node.name.isdigit():
        return int(node.name)
    return None


def _number(node: exp.Expr | None) -> float | None:
    if isinstance(node, exp.Neg):
        inner = _number(node.this)
        return -inner if inner is not None else None
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            return float(node.name)
        except ValueError:
            return None
    return None


def _slice(node: exp.Substring, text: str) -> exp.Expr:
    start, length = _integer(node.args.get("start")), node.args.get("length")
    if start is None or start == 0:
        raise ValueError(
            f"{text}: SUBSTRING's start must be a whole number other than 0 (from 1, or "
            "from the end when negative): stores read a start of 0, or one computed from the value, "
            "each their own way"
        )
    if length is not None and (_integer(length) is None or (_integer(length) or 0) < 0):
        raise ValueError(f"{text}: SUBSTRING's length must be a whole number of 0 or more")
    return Slice(this=node.this, start=exp.Literal.number(start), length=length)


def _ratio(node: exp.Div, text: str) -> exp.Expr:
    if not _number(node.expression):
        raise ValueError(
            f"{text}: `/` must divide by a number other than 0: a zero divisor fails on "
            "some stores and is NULL or infinite on others"
        )
    return Ratio(this=node.this, expression=node.expression)


def _nonempty_text(node: exp.Expr | None) -> bool:
    """Whether ``node`` is a text literal with at least one character."""
    return isinstance(node, exp.Literal) and node.is_string and bool(node.name)


def _pad(node: exp.Pad, text: str) -> exp.Expr:
    target = _integer(node.expression)
    if target is None or target < 0:
        raise ValueError(f"{text}: LPAD and RPAD take a length of 0 or more, written as a number")
    if not _nonempty_text(node.args.get("fill_pattern")):
        raise ValueError(
            f"{text}: LPAD and RPAD take a fill text that is not empty (an empty fill, or "
            "none, reads differently on each store)"
        )
    return node


def _replace(node: exp.Replace, text: str) -> exp.Expr:
    if not _nonempty_text(node.expression):
        raise ValueError(
            f"{text}: REPLACE must look for a text that is not empty (Trino inserts the "
            "replacement between every two characters, the others change nothing)"
        )
    return node


def _cast(node: exp.Cast, text: str) -> exp.Expr:
    if not node.to.is_type(*_TEXT_TYPES):
        raise ValueError(
            f"{text} casts to {node.to.sql()!r}: it may cast only to VARCHAR or "
            "TEXT (a cast of text to a number or a date reads differently on each store)"
        )
    return node


_REFUSED: dict[type[exp.Expr], str] = {
    exp.Mod: "`%` and MOD: SQLite drops a fraction of its operands, and stores differ on a zero divisor",
    exp.Round: "ROUND: PostgreSQL rounds a double's halves to even, the others away from zero; use FLOOR or CEIL",
}

_ONE_MEANING: dict[type[exp.Expr], Callable[[Any, str], exp.Expr]] = {
    exp.Substring: _slice,
    exp.Div: _ratio,
    exp.Pad: _pad,
    exp.Replace: _replace,
    exp.Cast: _cast,
}


def one_meaning(tree: exp.Expr, text: str, what: str = "custom mask") -> exp.Expr:
    """``tree`` with each function whose meaning differs between engines and stores either in
    the vocabulary that renders it alike everywhere (SUBSTRING as :class:`~catalogue.sql.Slice`,
    ``/`` as :class:`~catalogue.sql.Ratio`), held to the arguments where they agree (LPAD,
    RPAD, REPLACE, CAST), or refused with the reason (``%``, ROUND). ``what`` the expression
    is (a custom mask, a row filter) and ``text`` name it in the reason.

    >>> one_meaning(sqlglot.parse_one("ROUND(value)"), "ROUND(value)")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: custom mask 'ROUND(value)' may not use ROUND: PostgreSQL rounds a double's halves to even...
    """

    said = f"{what} {text!r}"

    def rewrite(node: exp.Expr) -> exp.Expr:
        for kind, reason in _REFUSED.items():
            if isinstance(node, kind):
                raise ValueError(f"{said} may not use {reason}")
        for kind, rule in _ONE_MEANING.items():
            if isinstance(node, kind):
                return rule(node, said)
        return node

    return tree.transform(rewrite)
