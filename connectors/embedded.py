"""The embedded engine: DuckDB in the gateway's own process, attaching every store read-only.

SQLite files, PostgreSQL and MariaDB databases are attached under their department's name with
the scanner extensions that PyPI ships as wheels (``duckdb-extension-*``), laid out where DuckDB
looks for them, so nothing is downloaded at run time. A department whose store is down is left
detached and retried on the next query that needs it; the others keep answering.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import os
import re
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import duckdb
from sqlglot import exp
from sqlglot.dialects.duckdb import DuckDB

from catalogue.errors import (
    CitygateError,
    EngineQueryError,
    EngineUnavailableError,
    ResultTooLarge,
    StoreUnavailableError,
    error_class,
    without_values,
)
from catalogue.files import replacing
from catalogue.model import Column, Department, Table
from catalogue.stores import PostgresStore, SqliteStore, Store, Tls
from catalogue.types import LogicalType, UnknownTypeError, logical_type
from connectors.base import Answer, Cancel, Engine, KeyedDialect, Prefetch, vocabulary
from connectors.settings import EngineSettings
from connectors.stores import describe_store_failure, schema_of, sqlite_declared_types

# store kind -> (wheel package, file in the wheel, extension name DuckDB loads, ATTACH TYPE)
_EXTENSIONS = {
    "sqlite": ("duckdb_extension_sqlite", "sqlite", "sqlite_scanner", "sqlite"),
    "postgresql": ("duckdb_extension_postgres", "postgres", "postgres_scanner", "postgres"),
    "mariadb": ("duckdb_extension_mysql", "mysql", "mysql_scanner", "mysql"),
}
_SECRET = re.compile(r"(password=)(\S+)", re.IGNORECASE)


def default_extension_dir() -> Path:
    return Path.home() / ".cache" / "citygate" / "duckdb-extensions"


def ensure_extensions(directory: Path) -> Path:
    """Lay the wheels' extension files out as DuckDB expects: ``<dir>/v<ver>/<platform>/<name>.duckdb_extension``.

    Loading a wheel's file in place fails (its file name is not the extension's name), so it
    is copied once under the name DuckDB looks for.
    """
    version = f"v{duckdb.__version__}"
    platform = duckdb.execute("PRAGMA platform").fetchone()[0]  # type: ignore[index]
    target = directory / version / platform
    target.mkdir(parents=True, exist_ok=True)
    for package, wheel_name, extension, _ in _EXTENSIONS.values():
        destination = target / f"{extension}.duckdb_extension"
        try:
            source = importlib.resources.files(package) / "extensions" / version / f"{wheel_name}.duckdb_extension"
            with importlib.resources.as_file(source) as path:
                if not path.exists():
                    raise FileNotFoundError(path)
                if not destination.exists() or destination.stat().st_size != path.stat().st_size:
                    with replacing(destination) as partial:
                        shutil.copyfile(path, partial)
        except (ModuleNotFoundError, FileNotFoundError):
            wheel = package.replace("_", "-")
            raise EngineUnavailableError(
                f"the embedded engine needs the wheel {wheel}=={duckdb.__version__} "
                f"(pip install {wheel}=={duckdb.__version__})"
            ) from None
    return directory


def scrub(text: str) -> str:
    """Remove passwords from a driver's message before it reaches any log."""
    return _SECRET.sub(r"\1***", text)


def _conninfo(pairs: dict[str, Any]) -> str:
    """A libpq/MySQL-style ``key=value`` string, quoting values as libpq specifies."""

    def quote(value: Any) -> str:
        text = str(value)
        if text and not re.search(r"[\s'\\]", text):
            return text
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{k}={quote(v)}" for k, v in pairs.items())


def _source(store: Store) -> str:
    if isinstance(store, SqliteStore):
        return str(store.path)
    if isinstance(store, PostgresStore):
        return _conninfo(
            {
                "host": store.host,
                "port": store.port,
                "dbname": store.database,
                "user": store.user,
                "password": store.password,
                "connect_timeout": 5,
                # Pushed filters quote strings by doubling quotes only: the session must read
                # backslashes as data whatever the server's own default.
                "options": "-c standard_conforming_strings=on",
                **store.tls.libpq(),
            }
        )
    return _conninfo(
        {
            "host": store.host,
            "port": store.port,
            "database": store.database,
            "user": store.user,
            "password": store.password,
            **_mysql_tls(store.tls),
        }
    )


def _mysql_tls(tls: Tls) -> dict[str, str]:
    """The MySQL scanner's TLS settings, in MySQL's own words for the modes.

    >>> _mysql_tls(Tls(mode="verify-full", ca="/etc/city/ca.pem"))
    {'ssl_mode': 'verify_identity', 'ssl_ca': '/etc/city/ca.pem'}
    """
    mode = {"disable": "disabled", "require": "required", "verify-ca": "verify_ca", "verify-full": "verify_identity"}
    words = {"ssl_mode": mode[tls.mode]}
    if tls.ca is not None:
        words["ssl_ca"] = str(tls.ca)
    return words


def _ident(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def _nulls_first_apart(node: exp.Expr) -> exp.Expr:
    """In a top-N (ORDER BY ... LIMIT), order ``x NULLS FIRST`` as ``x IS NULL DESC, x NULLS LAST``.

    The same order, but DuckDB's top-N pushes a filter ``x IS NULL OR <bound on x>`` into the
    scan, and the PostgreSQL scanner sends only its first half, so such a page comes back with
    the rows whose ``x`` is null and nothing else (duckdb/duckdb-postgres#564). A first key that
    is an expression gets no such filter.
    """
    if not (isinstance(node, exp.Select) and node.args.get("limit") and node.args.get("order")):
        return node
    terms: list[exp.Expr] = []
    for term in node.args["order"].expressions:
        if isinstance(term, exp.Ordered) and term.args.get("nulls_first"):
            terms.append(exp.Ordered(this=exp.Is(this=term.this.copy(), expression=exp.Null()), desc=True))
            terms.append(exp.Ordered(this=term.this, desc=term.args.get("desc"), nulls_first=False))
        else:
            terms.append(term)
    node.args["order"].set("expressions", terms)
    return node


def partial_concat(value: exp.Expr, first: int, last: int) -> exp.Expr:
    """The partial mask as one CONCAT of the kept head, the stars and the kept tail: fewer calls
    than the portable mask (:func:`catalogue.sql.partial_sql`), whose SUBSTRING and RPAD need
    casts here, and DuckDB plans a statement in time that grows with its calls. LEFT, RIGHT and
    LENGTH all count code points here.

    DuckDB plans this in about the time of a two-RE2 form and runs it some 20 times faster on
    a large result (a global regular-expression replacement matches once a character).

    >>> print(partial_concat(exp.column("phone"), 3, 4).sql("duckdb", pretty=True))
    CASE
      WHEN LENGTH(phone) > 7
      THEN CONCAT(LEFT(phone, 3), REPEAT('*', LENGTH(phone) - 7), RIGHT(phone, 4))
      ELSE REPEAT('*', LENGTH(phone))
    END
    """

    def stars(count: exp.Expr) -> exp.Expr:
        return exp.Repeat(this=exp.Literal.string("*"), times=count)

    length = exp.Length(this=value.copy())
    if not first and not last:
        return stars(length)
    kept = exp.Sub(this=length.copy(), expression=exp.Literal.number(first + last))
    parts: list[exp.Expr] = [exp.Left(this=value.copy(), expression=exp.Literal.number(first))] if first else []
    parts.append(stars(kept))
    if last:
        parts.append(exp.Right(this=value.copy(), expression=exp.Literal.number(last)))
    longer = exp.GT(this=length.copy(), expression=exp.Literal.number(first + last))
    # One CONCAT (which reads NULL as ''; only a value longer than first + last reaches it)
    # binds in less time than two ||.
    joined = exp.Concat(expressions=parts, coalesce=True)
    return exp.Case(ifs=[exp.If(this=longer, true=joined)], default=stars(length))


def _pads(key: bytes) -> list[str]:
    """HMAC's inner and outer key blocks (RFC 2104), as hex."""
    block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
    return [bytes(b ^ pad for b in block).hex() for pad in (0x36, 0x5C)]


def _hmac_hex(value: exp.Expr, key: bytes) -> exp.Expr:
    """HMAC from SHA-256 by its definition (RFC 2104): DuckDB has SHA256 but no HMAC, and a
    Python function would need numpy. The key enters only as its padded, XORed blocks."""
    ipad, opad = (exp.Anonymous(this="UNHEX", expressions=[exp.Literal.string(pad)]) for pad in _pads(key))
    inner = exp.Anonymous(
        this="SHA256",
        expressions=[exp.DPipe(this=ipad, expression=exp.Anonymous(this="ENCODE", expressions=[value]))],
    )
    return exp.Anonymous(
        this="SHA256",
        expressions=[exp.DPipe(this=opad, expression=exp.Anonymous(this="UNHEX", expressions=[inner]))],
    )


_REGEX_SPECIAL = frozenset("\\.^$|?*+()[]{}")


def like_regex(pattern: str) -> str:
    """A LIKE pattern (``%``, ``_``, a backslash escaping) as the RE2 expression that matches
    the same whole strings.

    >>> print(like_regex("%a_b" + chr(92) + "%.%"))
    (?s).*a.b%\\..*
    """
    out, escaped = ["(?s)"], False
    for c in pattern:
        if escaped or c not in "%_\\":
            out.append("\\" + c if c in _REGEX_SPECIAL else c)
            escaped = False
        elif c == "\\":
            escaped = True
        else:
            out.append(".*" if c == "%" else ".")
    return "".join(out)


def _linear_like(generator: Any, node: exp.Escape) -> str:
    """LIKE with three or more ``%`` as an RE2 full match. DuckDB's LIKE backtracks: on 3.6
    million 18-character codes, ``%0%0%0X`` took 12 s where ``%0%0X`` took 0.05 s, while RE2
    matches in time linear in the text whatever the pattern (0.35 s). Fewer ``%`` stay LIKE,
    which is faster then. ILIKE compares lower case, as Trino's LOWER(x) LIKE LOWER(p) does."""
    like, pattern = node.this, node.this.expression
    if (
        isinstance(like, exp.Like | exp.ILike)
        and isinstance(pattern, exp.Literal)
        and pattern.is_string
        and node.expression.name == "\\"
        and pattern.name.replace("\\\\", "").replace("\\%", "").count("%") >= 3
    ):
        value, text = like.this, pattern.name
        if isinstance(like, exp.ILike):
            value, text = exp.Lower(this=value), text.lower()
        matched = exp.Anonymous(this="REGEXP_FULL_MATCH", expressions=[value, exp.Literal.string(like_regex(text))])
        return str(generator.sql(matched))
    return str(generator.escape_sql(node))


class _DuckDB(DuckDB, KeyedDialect):
    class Generator(DuckDB.Generator):  # type: ignore[misc,valid-type]
        TRANSFORMS: ClassVar = {
            **DuckDB.Generator.TRANSFORMS,
            exp.Escape: _linear_like,
            **vocabulary(
                partial=partial_concat,
                hmac_hex=_hmac_hex,
                md5_digest=lambda value: exp.Anonymous(this="MD5", expressions=[value]),
                timestamp_text=lambda value: exp.Anonymous(
                    this="STRFTIME", expressions=[value, exp.Literal.string("%Y-%m-%d %H:%M:%S.%f")]
                ),
            ),
        }


class EmbeddedEngine(Engine):
    name = "embedded"
    dialect = "duckdb"
    Dialect = _DuckDB

    def __init__(self, settings: EngineSettings) -> None:
        super().__init__(settings)
        embedded = settings.embedded
        directory = ensure_extensions(embedded.extension_dir or default_extension_dir())
        duck_config: dict[str, Any] = {
            "extension_directory": str(directory),
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": True,
        }
        if embedded.threads:
            duck_config["threads"] = embedded.threads
        self.parallelism = embedded.threads or os.cpu_count() or 1
        duck_config["memory_limit"] = embedded.memory_limit
        if embedded.spill_dir is None:
            duck_config["temp_directory"] = ""  # no spilling at all
        else:
            embedded.spill_dir.mkdir(parents=True, exist_ok=True)
            duck_config["temp_directory"] = str(embedded.spill_dir)
            duck_config["max_temp_directory_size"] = embedded.max_spill
        self._db = duckdb.connect(":memory:", config=duck_config)
        # DuckDB 1.5.5 rewrites `ROW_NUMBER() OVER (...) ... WHERE rn <= 1` into an aggregate
        # that returns one row of NULLs when its input is empty (a `_by_pk` that finds
        # nothing, an object relationship with no target); without that rewrite it is correct.
        self._db.execute("SET GLOBAL disabled_optimizers = 'top_n_window_elimination'")
        # The MySQL scanner's aggregate pushdown fails with an internal error (which would
        # invalidate the whole database) on COUNT(column) over a subquery; DuckDB aggregates
        # correctly itself.
        self._db.execute("LOAD mysql_scanner")
        self._db.execute("SET GLOBAL mysql_aggregate_pushdown_enabled = false")
        # Nor filters or orderings: the scanner writes a pushed string constant with its quotes
        # doubled but its backslashes as they are, which MariaDB reads as escapes, so a value
        # of `\' OR 1=1 -- ` would run as SQL in the department's store;
        # and MariaDB compares and sorts by its own collation (`'南城 '` equals `'南城'` there).
        # DuckDB filters and sorts what it reads, exactly, as Trino does.
        self._db.execute("SET GLOBAL mysql_experimental_filter_pushdown = false")
        self._db.execute("SET GLOBAL mysql_order_pushdown_enabled = false")
        self._lock = threading.Lock()
        self._local = threading.local()
        self._attached: set[str] = set()
        self._catalogues = Prefetch(self._read_catalogues)
        self.statements = 0
        for department in settings.departments:
            # A store that is down is left detached; the first query that needs it names it.
            with contextlib.suppress(StoreUnavailableError):
                self._attach(department)

    # -- attaching ----------------------------------------------------------------------------

    def _attach(self, department: str) -> None:
        with self._lock:
            if department in self._attached:
                return
            store = self.departments[department].store
            if isinstance(store, SqliteStore) and not store.path.is_file():
                raise StoreUnavailableError(
                    department,
                    f"department {department}: SQLite file {store.path} does not exist "
                    f"(check departments.{department}.store.path, or create it with `citygate datagen`)",
                )
            options = [
                exp.AttachOption(this=exp.var("TYPE"), expression=exp.var(_EXTENSIONS[store.kind][3])),
                exp.AttachOption(this=exp.var("READ_ONLY")),
            ]
            if not isinstance(store, SqliteStore):
                # Only the department's own schema: the MySQL scanner otherwise loads every
                # database on the server into each attachment's catalog, so reading 36 MariaDB
                # departments' columns ran 36 x 45 schema queries (minutes at seed scale).
                options.append(
                    exp.AttachOption(this=exp.var("SCHEMA"), expression=exp.Literal.string(schema_of(store)))
                )
            attach = exp.Attach(
                this=exp.Alias(this=exp.Literal.string(_source(store)), alias=_ident(department)), expressions=options
            )
            try:
                self._db.execute(attach.sql("duckdb"))
                if isinstance(store, SqliteStore):
                    self._type_sqlite_views(department, store)
            except duckdb.Error as error:
                self._forget(department)
                raise describe_store_failure(department, store, scrub(str(error))) from None
            self._attached.add(department)

    def _forget(self, department: str) -> None:
        detach = exp.Detach(this=_ident(department), exists=True)
        with contextlib.suppress(duckdb.Error):
            self._db.execute(detach.sql("duckdb"))
        self._attached.discard(department)

    def _type_sqlite_views(self, department: str, store: SqliteStore) -> None:
        """Expose each SQLite table through a view that restores its declared types.

        DuckDB's SQLite scanner reads by storage class (DECIMAL as DOUBLE, BOOLEAN and INT as
        BIGINT); the file still records the declared type, which the view casts back to.
        """
        declared = sqlite_declared_types(store.path)
        self._db.execute(
            exp.Create(kind="SCHEMA", exists=True, this=exp.Table(this=_ident(department), db=_ident("memory"))).sql(
                "duckdb"
            )
        )
        for table, columns in declared.items():
            projections = []
            for column, declared_type in columns.items():
                ref = exp.column(_ident(column))
                try:
                    target = logical_type(declared_type or "VARCHAR")
                except UnknownTypeError:
                    target = LogicalType("string")
                projections.append(exp.alias_(exp.cast(ref, target.to_sqlglot()), _ident(column)))
            source = exp.Table(this=_ident(table), db=_ident("main"), catalog=_ident(department))
            view = exp.Create(
                kind="VIEW",
                replace=True,
                this=exp.Table(this=_ident(table), db=_ident(department), catalog=_ident("memory")),
                expression=exp.select(*projections).from_(source),
            )
            self._db.execute(view.sql("duckdb"))

    # -- addressing and running ------------------------------------------------------------------

    def physical_table(self, department: str, table: str) -> exp.Table:
        store = self.departments[department].store
        if isinstance(store, SqliteStore):
            return exp.Table(this=_ident(table), db=_ident(department), catalog=_ident("memory"))
        return exp.Table(this=_ident(table), db=_ident(schema_of(store)), catalog=_ident(department))

    def _engine_form(self, node: exp.Expr) -> exp.Expr:
        return _nulls_first_apart(node)

    def _secrets(self, key: bytes) -> list[str]:
        return [*super()._secrets(key), *_pads(key)]

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._db.cursor()
            self._local.cursor = cursor
        return cursor

    def run(
        self, sql: str, departments: Sequence[str], max_rows: int | None = None, cancel: Cancel | None = None
    ) -> Answer:
        for department in departments:
            if department in self.departments and department not in self._attached:
                self._attach(department)
        return self._run(sql, list(departments), max_rows, cancel)

    def _run(self, sql: str, touched: list[str], max_rows: int | None = None, cancel: Cancel | None = None) -> Answer:
        cursor = self._cursor()
        self.statements += 1
        if cancel is not None:
            cancel.on_cancel(cursor.interrupt)
        try:
            cursor.execute(sql)
            rows = cursor.fetchall() if max_rows is None else cursor.fetchmany(max_rows + 1)
        except (duckdb.IOException, duckdb.ConnectionException) as error:
            raise self._store_failure(touched, scrub(str(error))) from None
        except duckdb.InterruptException:
            raise EngineQueryError("the query was cancelled: it ran past its time") from None
        except duckdb.OutOfMemoryException as error:
            raise EngineQueryError(
                "the query needs more memory than the embedded engine may use (engine.embedded.memory_limit); "
                "ask for less, or narrow it with `where` or `limit`",
                detail=error_class(error),
            ) from None
        except duckdb.Error as error:
            # its class only: DuckDB's message can quote the values the statement read
            raise EngineQueryError("the embedded engine could not run the query", detail=error_class(error)) from None
        finally:
            if cancel is not None:
                cancel.on_cancel(None)
        if max_rows is not None and len(rows) > max_rows:
            raise ResultTooLarge(max_rows)
        description = cursor.description or []
        return Answer(
            columns=tuple(d[0] for d in description),
            types=tuple(str(d[1]) for d in description),
            rows=rows,
        )

    def _store_failure(self, touched: list[str], text: str) -> CitygateError:
        candidates = [d for d in touched if d in self.departments]
        named = [d for d in candidates if self._mentions(d, text)]
        department = (named or candidates or ["unknown"])[0]
        if department == "unknown":
            return EngineQueryError("the embedded engine could not reach a store", detail=without_values(text))
        # Drop the attachment so the next query reconnects once the store is back.
        with self._lock:
            self._forget(department)
        return describe_store_failure(department, self.departments[department].store, text)

    def _mentions(self, department: str, text: str) -> bool:
        store = self.departments[department].store
        if isinstance(store, SqliteStore):
            return str(store.path) in text
        return f"port={store.port}" in text and store.database in text

    # -- catalogue ----------------------------------------------------------------------------

    def read_department(self, department: str) -> Department:
        self._attach(department)
        spec = self.departments[department]
        columns, keys = self._catalogues.take(department, lambda: sorted(self._attached))
        tables: dict[str, list[Column]] = {}
        for table_name, column_name, data_type, nullable in columns:
            tables.setdefault(table_name, []).append(
                Column(column_name, logical_type(data_type, "duckdb"), bool(nullable))
            )
        return Department(
            name=department,
            display_name=spec.display_name,
            tables=tuple(
                Table(department, name, tuple(cols), keys.get(name, ())) for name, cols in sorted(tables.items())
            ),
        )

    def _read_catalogues(
        self, departments: list[str]
    ) -> dict[str, tuple[list[tuple[Any, ...]], dict[str, tuple[str, ...]]]]:
        """department -> (its columns as (table, column, type, nullable) rows, its primary keys)."""
        where: dict[tuple[str, str], str] = {}  # (catalog, schema) of the columns -> department
        sources: dict[tuple[str, str], str] = {}  # (catalog, schema) of the keys -> department
        for department in departments:
            location = self.physical_table(department, "_")
            where[(location.catalog, location.db)] = department
            sources[(department, schema_of(self.departments[department].store))] = department
        if not departments:
            return {}
        catalogs = sorted({c for c, _ in where} | {c for c, _ in sources})
        columns_query = (
            exp.select("database_name", "schema_name", "table_name", "column_name", "data_type", "is_nullable")
            .from_("duckdb_columns()")
            .where(exp.column("database_name").isin(*(exp.Literal.string(c) for c in catalogs)))
            .order_by("database_name", "schema_name", "table_name", "column_index")
        )
        keys_query = (
            exp.select("database_name", "schema_name", "table_name", "constraint_column_names")
            .from_("duckdb_constraints()")
            .where(exp.column("database_name").isin(*(exp.Literal.string(c) for c in catalogs)))
            .where(exp.column("constraint_type").eq(exp.Literal.string("PRIMARY KEY")))
        )
        result: dict[str, tuple[list[tuple[Any, ...]], dict[str, tuple[str, ...]]]] = {d: ([], {}) for d in departments}
        for catalog, schema, *row in self._run(columns_query.sql("duckdb"), departments).rows:
            if (catalog, schema) in where:
                result[where[(catalog, schema)]][0].append(tuple(row))
        for catalog, schema, table, key in self._run(keys_query.sql("duckdb"), departments).rows:
            if (catalog, schema) in sources:
                result[sources[(catalog, schema)]][1][table] = tuple(key)
        return result

    def ping(self) -> None:
        self._run("SELECT 1", [])

    def ping_department(self, department: str) -> None:
        self._attach(department)
        # One of its own tables once they are known: `duckdb_tables()` lists every attached
        # store's tables, so a store that stopped answering held every department's probe.
        known = next((t for d, t in self._raw_columns if d == department), None)
        if known is not None:
            probe = exp.select("1").from_(self.physical_table(department, known)).limit(1)
        else:
            location = self.physical_table(department, "_")
            probe = (
                exp.select("1")
                .from_("duckdb_tables()")
                .where(exp.column("database_name").eq(exp.Literal.string(location.catalog)))
                .limit(1)
            )
        self._run(probe.sql("duckdb"), [department])

    def close(self) -> None:
        self._db.close()
