"""The stores' dialects: citygate's SQL vocabulary (:mod:`catalogue.sql`) in each store's own
functions, what no store runs as the engines do, and the one rewrite PostgreSQL's UNION needs.

:mod:`connectors.native` runs statements on the stores; this module only says how their text
is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from sqlglot import exp
from sqlglot.dialects.mysql import MySQL
from sqlglot.dialects.postgres import Postgres
from sqlglot.dialects.sqlite import SQLite

from catalogue.errors import CitygateError
from catalogue.names import KEY_PLACE, KEY_VALUE
from catalogue.sql import Hash, KeyRows, Tie, partial_sql
from connectors.base import KeyedDialect, vocabulary

# What no store runs as the engines do: the hash mask and a masked key's order need the hash
# key, which a store's engine is never given; each store folds case its own way. The route is
# chosen by these before anything is rendered (:meth:`connectors.native.NativeEngine.unsupported`); the dialects
# below still refuse the first two, should a tree holding them ever reach one.
CANNOT: dict[type[exp.Expr], str] = {
    Hash: "the hash mask",
    Tie: "a masked key's ordering",
    exp.ILike: "a case-insensitive comparison",
}


def unrenderable(what: str) -> Callable[..., exp.Expr]:
    def refuse(*_: Any) -> exp.Expr:
        raise CitygateError(f"{what} has no rendering on this store")

    return refuse


# Where a statement's one parameter goes in MariaDB's text until the driver's form is made of it
# (MariadbEngine.sql): a NUL, which no literal of a statement holds (catalogue.types.text_problem).
PARAMETER = "\x00"
# MariaDB's exact collation: by code point, trailing spaces counted, as the engines compare text
NOPAD = "utf8mb4_nopad_bin"


def _key_rows(source: Callable[[str], str]) -> Callable[[Any, KeyRows], str]:
    """Render :class:`~catalogue.sql.KeyRows` as ``source(alias)``, quoting the alias."""

    def render(generator: Any, node: KeyRows) -> str:
        return source(str(generator.sql(exp.to_identifier(node.name, quoted=True))))

    return render


def _quoted(name: str) -> str:
    return exp.to_identifier(name, quoted=True).sql()


class PostgresDialect(Postgres, KeyedDialect):
    class Generator(Postgres.Generator):  # type: ignore[misc,valid-type]
        TRANSFORMS: ClassVar = {
            **Postgres.Generator.TRANSFORMS,
            **vocabulary(
                partial=partial_sql,
                hmac_hex=unrenderable("the hash mask"),
                md5_digest=unrenderable("a masked key's ordering"),
                timestamp_text=lambda value: exp.Anonymous(
                    this="TO_CHAR", expressions=[value, exp.Literal.string("YYYY-MM-DD HH24:MI:SS.US")]
                ),
            ),
            # an array, not JSON: the planner counts a bound array's elements (a JSON function
            # it takes for 100 rows, and scans tables where it would look keys up)
            KeyRows: _key_rows(
                lambda alias: (
                    f"UNNEST(CAST($1 AS TEXT[])) WITH ORDINALITY AS {alias}({_quoted(KEY_VALUE)}, {_quoted(KEY_PLACE)})"
                )
            ),
        }


class MariadbDialect(MySQL, KeyedDialect):
    class Generator(MySQL.Generator):  # type: ignore[misc,valid-type]
        TRANSFORMS: ClassVar = {
            **MySQL.Generator.TRANSFORMS,
            **vocabulary(
                partial=partial_sql,
                hmac_hex=unrenderable("the hash mask"),
                md5_digest=unrenderable("a masked key's ordering"),
                timestamp_text=lambda value: exp.Anonymous(
                    this="DATE_FORMAT", expressions=[value, exp.Literal.string("%Y-%m-%d %H:%i:%s.%f")]
                ),
            ),
            KeyRows: _key_rows(
                lambda alias: (
                    f"JSON_TABLE({PARAMETER}, '$[*]' COLUMNS (`{KEY_PLACE}` FOR ORDINALITY, "
                    f"`{KEY_VALUE}` LONGTEXT PATH '$')) AS {alias}"
                )
            ),
        }


class SqliteDialect(SQLite, KeyedDialect):
    class Generator(SQLite.Generator):  # type: ignore[misc,valid-type]
        TRANSFORMS: ClassVar = {
            **SQLite.Generator.TRANSFORMS,
            **vocabulary(
                partial=unrenderable("the partial mask"),  # SQLite has no RPAD
                hmac_hex=unrenderable("the hash mask"),
                md5_digest=unrenderable("a masked key's ordering"),
                timestamp_text=unrenderable("a timestamp as text"),
            ),
            KeyRows: _key_rows(
                lambda alias: (
                    f"(SELECT value AS {_quoted(KEY_VALUE)}, key + 1 AS {_quoted(KEY_PLACE)} "
                    f"FROM JSON_EACH(?)) AS {alias}"
                )
            ),
        }


def typed_nulls(union: exp.Union) -> None:
    """Give each NULL an arm of ``union`` fills a column with the type of the column it fills.

    PostgreSQL types a UNION's columns pair by pair, left to right, and a column that is NULL in
    the first two arms is text before it meets the arm that has it: a statement of several
    nodes (each arm fills the others' outputs with NULL) would fail on a number or a date. A
    NULL becomes an empty read of the column it stands for, which has its type.

    >>> union = exp.union(exp.select("1 AS a", "NULL AS b").from_("x"), exp.select("NULL AS a", "c AS b").from_("y"))
    >>> typed_nulls(union); union.sql("postgres")
    'SELECT 1 AS a, (SELECT c FROM y WHERE FALSE) AS b FROM x UNION SELECT NULL AS a, c AS b FROM y'
    """
    arms: list[exp.Expr] = []
    pending: list[exp.Expr] = [union]
    while pending:
        part = pending.pop()
        if isinstance(part, exp.Union):
            pending += [part.right, part.left]
        else:
            arms.append(part)
    selects = [a for a in arms if isinstance(a, exp.Select)]
    owners: dict[str, tuple[str, str]] = {}  # an output -> the table of the arm that fills it, and its column
    for arm in selects:
        source = arm.args.get("from_") or arm.args.get("from")
        if source is None or not isinstance(source.this, exp.Table):
            continue
        for projection in arm.expressions:
            if isinstance(projection.unalias(), exp.Column):
                owners.setdefault(projection.alias_or_name, (source.this.name, projection.unalias().name))
    for arm in selects:
        for projection in arm.expressions:
            owner = owners.get(projection.alias_or_name)
            if isinstance(projection, exp.Alias) and isinstance(projection.this, exp.Null) and owner is not None:
                empty = exp.select(exp.column(owner[1])).from_(owner[0]).where(exp.false())
                projection.set("this", empty.subquery())
