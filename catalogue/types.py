"""Logical column types: the few kinds that keep their meaning across every engine and store.

Engines name types differently (Trino's ``varchar(64)``, DuckDB's ``VARCHAR``, SQLite's
declared ``DECIMAL(10, 2)``); introspection normalises each to a :class:`LogicalType` so the
same table looks the same whichever engine reads it.

>>> logical_type("varchar(64)")
LogicalType(kind='string', precision=None, scale=None)
>>> str(logical_type("DECIMAL(10, 2)"))
'decimal(10,2)'
>>> str(logical_type("timestamp(3)"))
'timestamp'
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from sqlglot import exp
from sqlglot.errors import ParseError

Kind = Literal["string", "boolean", "integer", "bigint", "double", "decimal", "date", "timestamp"]
WHOLE: frozenset[Kind] = frozenset({"integer", "bigint"})
FRACTIONAL: frozenset[Kind] = frozenset({"double", "decimal"})
NUMERIC: frozenset[Kind] = WHOLE | FRACTIONAL
TEMPORAL: frozenset[Kind] = frozenset({"date", "timestamp"})
ORDERABLE: frozenset[Kind] = NUMERIC | TEMPORAL | {"string"}  # every kind but boolean

_KINDS: dict[Any, Kind] = {}  # sqlglot type enum member -> logical kind
for _kind, _members in {
    "string": ("VARCHAR", "NVARCHAR", "CHAR", "NCHAR", "TEXT", "BPCHAR", "NAME", "MEDIUMTEXT", "LONGTEXT", "TINYTEXT"),
    "boolean": ("BOOLEAN",),
    "integer": ("INT", "SMALLINT", "TINYINT", "MEDIUMINT", "UTINYINT", "USMALLINT"),
    "bigint": ("BIGINT", "UINT", "UBIGINT"),
    "double": ("DOUBLE", "FLOAT"),
    "decimal": ("DECIMAL",),
    "date": ("DATE",),
    "timestamp": ("TIMESTAMP", "TIMESTAMPNTZ", "DATETIME", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S", "DATETIME64"),
}.items():
    for _member in _members:
        if hasattr(exp.DataType.Type, _member):
            _KINDS[exp.DataType.Type[_member]] = _kind  # type: ignore[assignment]


def decimal_digits(number: Decimal) -> int:
    """The digits ``number`` takes written out in full (``12.50`` four, ``1E-5`` six): what a
    DECIMAL literal holds, and every engine takes at most 38.

    >>> decimal_digits(Decimal("12.50")), decimal_digits(Decimal("1E-5")), decimal_digits(Decimal("1E+40"))
    (4, 6, 41)
    """
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # a finite number's
    return max(number.adjusted() + 1, 1) + max(-exponent, 0)


def text_problem(text: str) -> str | None:
    """Why no engine can take ``text`` as a string literal, if it cannot: engines end a
    statement's text at a NUL, and cannot encode a lone surrogate.

    >>> text_problem("南城"), text_problem("a" + chr(0)), text_problem(chr(0xD800))
    (None, 'the NUL character', 'a lone surrogate')
    """
    if "\x00" in text:
        return "the NUL character"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "a lone surrogate"
    return None


KNOWN_TYPES = frozenset(_KINDS)  # the sqlglot types citygate serves, and that policies may cast to


class UnknownTypeError(ValueError):
    """A store or engine reported a type that citygate does not serve."""


@dataclass(frozen=True, slots=True)
class LogicalType:
    kind: Kind
    precision: int | None = None
    scale: int | None = None

    def __str__(self) -> str:
        if self.kind == "decimal":
            return f"decimal({self.precision},{self.scale})"
        return self.kind

    def to_sqlglot(self) -> exp.DataType:
        """The sqlglot type, for casts and DDL.

        >>> LogicalType("decimal", 10, 2).to_sqlglot().sql("trino")
        'DECIMAL(10, 2)'
        """
        if self.kind == "decimal":
            return exp.DataType.build(f"DECIMAL({self.precision}, {self.scale})")
        name = {"string": "VARCHAR", "integer": "INT"}.get(self.kind, self.kind.upper())
        return exp.DataType.build(name)


@functools.lru_cache(maxsize=4096)
def logical_type(name: str, dialect: str | None = None) -> LogicalType:
    """Normalise a type name as an engine or store spells it.

    Cached: parsing a type with sqlglot takes about a millisecond, and introspecting a
    catalogue of 755 tables asks for the same few dozen spellings thousands of times.

    ``tinyint(1)`` is MariaDB's spelling of BOOLEAN, so it is read as one.
    """
    cleaned = name.strip()
    if cleaned.lower().replace(" ", "") in {"tinyint(1)", "bit(1)"}:
        return LogicalType("boolean")
    try:
        built = exp.DataType.build(cleaned, dialect=dialect)
    except (ParseError, ValueError) as error:
        raise UnknownTypeError(f"unsupported column type {name!r}") from error
    kind = _KINDS.get(built.this)
    if kind is None:
        raise UnknownTypeError(f"unsupported column type {name!r}")
    if kind == "decimal":
        params = [int(p.name) for p in built.expressions]
        precision = params[0] if params else 38
        scale = params[1] if len(params) > 1 else 0
        return LogicalType("decimal", precision, scale)
    return LogicalType(kind)


def _date(value: Any) -> exp.Expr:
    day = value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
    return exp.cast(exp.Literal.string(day.isoformat()), exp.DataType(this=exp.DataType.Type.DATE), copy=False)


def _timestamp(value: Any) -> exp.Expr:
    moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    # Microseconds, said: Trino's TIMESTAMP is TIMESTAMP(3), which rounded .9996 s up, into
    # the year 10000 at the end of 9999.
    return exp.Cast(this=exp.Literal.string(moment.isoformat(sep=" ")), to=exp.DataType.build("TIMESTAMP(6)"))


# A value as a literal node of each kind: the only way values (a user's, a claim's) enter SQL.
LITERALS: dict[str, Callable[[Any], exp.Expr]] = {
    "string": lambda v: exp.Literal.string(str(v)),
    "boolean": lambda v: exp.Boolean(this=bool(v)),
    "integer": lambda v: exp.Literal.number(int(v)),
    "bigint": lambda v: exp.Literal.number(int(v)),
    "double": lambda v: exp.cast(
        exp.Literal.number(repr(float(v))), exp.DataType(this=exp.DataType.Type.DOUBLE), copy=False
    ),
    "decimal": lambda v: exp.Literal.number(format(Decimal(v), "f")),  # never 1E-5: a DOUBLE to Trino
    "date": _date,
    "timestamp": _timestamp,
}
