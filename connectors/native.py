"""Native runners: a department's own store runs a statement whole, in its own SQL.

One engine per store (one PostgreSQL database, one MariaDB database, one SQLite file), over the
departments kept there. It renders the same rewritten tree as the federated engines, in the
store's dialect, and runs it on a pooled connection that can only read, with the statement
limit enforced by the store itself. It is never given the hash key (:func:`native_engine`):
a statement that needs it cannot be rendered here, and goes to the federated engine.

What each store does differently by default is undone where the statement reads a table
(:meth:`NativeEngine._source`) or when it connects: MariaDB compares text under its column's
collation (case- and accent-insensitive by default, trailing spaces ignored), so text columns
are read under ``utf8mb4_nopad_bin`` unless they all have it already; a PostgreSQL database
whose collation is not ``C`` orders text by its locale, so text columns are read under ``"C"``;
SQLite's LIKE ignores ASCII case unless told otherwise. What a driver returns differently
(SQLite has no decimal, date or boolean) is declared in :attr:`NativeEngine.differs`, and a
statement reading such a column goes to the federated engine. How each store's text is
written is :mod:`connectors.dialects`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import psycopg
import pymysql
from psycopg_pool import ConnectionPool, PoolTimeout
from sqlglot import exp

from catalogue.errors import CitygateError, EngineQueryError, ResultTooLarge, error_class
from catalogue.model import Column, Department, Table
from catalogue.sql import Partial, TimestampText
from catalogue.stores import MariadbStore, PostgresStore, SqliteStore, Store
from catalogue.types import LogicalType, UnknownTypeError, logical_type
from connectors.base import Answer, Cancel, Engine
from connectors.dialects import CANNOT, NOPAD, PARAMETER, MariadbDialect, PostgresDialect, SqliteDialect, typed_nulls
from connectors.pools import Kept, pymysql_alive, sqlite_alive
from connectors.settings import EngineSettings, Source
from connectors.stores import describe_store_failure, mariadb_params, pg_params, schema_of

log = logging.getLogger("citygate")

CANCEL_SECONDS = 5.0  # a cancel request gets this long to reach a store that may have gone silent
_TEXT = frozenset({"string"})


def store_key(store: Store) -> str:
    """What one store is: departments with the same key are read by one statement together.

    >>> from catalogue.stores import PostgresStore
    >>> store_key(PostgresStore.model_validate({"kind": "postgresql", "database": "health", "user": "u"}))
    'postgresql://127.0.0.1:5432/health'
    """
    if isinstance(store, SqliteStore):
        return f"sqlite:{store.path}"
    return f"{store.kind}://{store.host}:{store.port}/{store.database}"


class _Lost(Exception):
    """A kept connection turned out closed: try once more on a fresh one."""


def _cancel_aside(conn: psycopg.Connection[Any]) -> None:
    """Ask the store to cancel ``conn``'s statement, on a thread of its own. The request goes
    over a new connection, which a store that stopped answering may hold for the whole of
    psycopg's timeout: the caller, whose time is up, must not wait for it, nor fail by it."""

    def cancel() -> None:
        try:
            conn.cancel_safe(timeout=CANCEL_SECONDS)
        except Exception as error:  # the store is silent or gone: the probe that follows says which
            log.debug("a statement's cancel did not reach its store: %s", error)

    threading.Thread(target=cancel, name="citygate-cancel", daemon=True).start()


# -- the engines ---------------------------------------------------------------------------------


class NativeEngine(Engine):
    """One store's departments, run on the store itself (the delegated route)."""

    name = "delegated"
    # logical kinds whose values the driver returns as no engine does: statements reading
    # columns of these kinds are not delegated
    differs: ClassVar[frozenset[str]] = frozenset()
    # the nodes this store cannot run as the engines do, and what each is (the route's reason)
    cannot: ClassVar[Mapping[type[exp.Expr], str]] = CANNOT

    def __init__(self, settings: EngineSettings, store: Store, statement_seconds: float) -> None:
        super().__init__(settings)
        self.store = store
        self.key = store_key(store)
        self.statement_seconds = statement_seconds
        self.statements = 0

    @classmethod
    def unsupported(cls, tree: exp.Expr) -> str | None:
        """What in ``tree`` this store cannot run as the engines do, if anything: a tree that
        holds it runs on the engine.

        >>> from catalogue.sql import Hash
        >>> PostgresEngine.unsupported(exp.select(Hash(this=exp.column("id_card"))).from_("residents"))
        'the hash mask'
        >>> SqliteEngine.unsupported(exp.select(Partial(this=exp.column("name"), first="1", last="0")))
        'the partial mask'
        """
        found = tree.find(*cls.cannot)
        return cls.cannot[type(found)] if found is not None else None

    def physical_table(self, department: str, table: str) -> exp.Table:
        return exp.Table(
            this=exp.to_identifier(table, quoted=True),
            db=exp.to_identifier(schema_of(self.departments[department].store), quoted=True),
        )

    def _collation(self) -> str | None:
        """The collation text columns are read under, or None where the store's own compares
        and orders as the engines do."""
        return None

    def _source(self, department: str, table: str, alias: str | None) -> exp.Expr:
        collation = self._collation()
        if collation is None:
            return super()._source(department, table, alias)
        casts = self._casts(department, table)
        if (department, table) not in self._raw_columns:
            self.introspect_department(department)
        projections = []
        for c in self._raw_columns.get((department, table), ()):
            value: exp.Expr = exp.column(exp.to_identifier(c.name, quoted=True))
            if c.name in casts:
                value = exp.cast(value, casts[c.name].to_sqlglot())
            elif c.type.kind in _TEXT:
                name = exp.to_identifier(collation, quoted=self.dialect == "postgres")
                value = exp.Collate(this=value, expression=name)
            projections.append(exp.alias_(value, exp.to_identifier(c.name, quoted=True)))
        physical = self.physical_table(department, table)
        return exp.select(*projections).from_(physical).subquery(exp.to_identifier(alias or table))

    def as_read(self, value: exp.Expr, kind: LogicalType) -> exp.Expr:
        # text under the collation columns are read with (_source)
        collation = self._collation() if kind.kind in _TEXT else None
        if collation is None:
            return value
        return exp.Collate(this=value, expression=exp.to_identifier(collation, quoted=self.dialect == "postgres"))

    def run(
        self, sql: str, departments: Sequence[str], max_rows: int | None = None, cancel: Cancel | None = None
    ) -> Answer:
        return self.run_keyed(sql, departments, (), max_rows, cancel)

    def run_keyed(
        self,
        sql: str,
        departments: Sequence[str],
        params: Sequence[Any],
        max_rows: int | None = None,
        cancel: Cancel | None = None,
    ) -> Answer:
        """:meth:`run`, with ``params`` bound to the statement's placeholders by the driver (a
        statement that holds :class:`~catalogue.sql.KeyRows` is given its keys so)."""
        self.statements += 1
        department = next(iter(departments), None) or next(iter(self.departments))
        # A kept connection may have been closed by the store since (a restart, an idle
        # timeout): the pool drops it, and the statement, which only reads, runs once more on
        # a new one, rather than every statement paying a check's round trip first.
        try:
            return self._once(sql, department, max_rows, cancel, params=params)
        except _Lost:
            return self._once(sql, department, max_rows, cancel, last=True, params=params)

    def _once(
        self,
        sql: str,
        department: str,
        max_rows: int | None,
        cancel: Cancel | None,
        last: bool = False,
        params: Sequence[Any] = (),
    ) -> Answer:
        """Run ``sql`` once on a kept connection; :class:`_Lost` when that connection turned out
        closed, unless this is the ``last`` try or the statement was cancelled."""
        raise NotImplementedError

    def _lost(self, last: bool, cancel: Cancel | None) -> bool:
        """Whether a connection found closed is tried once more on a fresh one."""
        return not last and not (cancel is not None and cancel.cancelled)

    def _fetch(self, cursor: Any, max_rows: int | None) -> list[tuple[Any, ...]]:
        rows = cursor.fetchall() if max_rows is None else cursor.fetchmany(max_rows + 1)
        if max_rows is not None and len(rows) > max_rows:
            raise ResultTooLarge(max_rows)
        return [tuple(r) for r in rows]

    def _refused(self, department: str, error: Exception) -> EngineQueryError:
        # its class only: the store's message can quote the values the statement read
        return EngineQueryError(f"department {department}'s store refused the query", detail=error_class(error))

    def read_department(self, department: str) -> Department:
        spec = self.departments[department]
        tables: dict[str, list[Column]] = {}
        for table_name, column_name, data_type, nullable in self._columns(department):
            try:
                kind = logical_type(data_type, self.dialect)
            except UnknownTypeError:
                continue
            tables.setdefault(table_name, []).append(Column(column_name, kind, bool(nullable)))
        return Department(
            name=department,
            display_name=spec.display_name,
            tables=tuple(Table(department, name, tuple(cols)) for name, cols in sorted(tables.items())),
        )

    def _columns(self, department: str) -> list[tuple[str, str, str, bool]]:
        """(table, column, type as the store spells it, nullable), in column order."""
        raise NotImplementedError

    def ping(self) -> None:
        self.run("SELECT 1", list(self.departments)[:1], 1)


class PostgresEngine(NativeEngine):
    dialect = "postgres"
    Dialect = PostgresDialect

    def __init__(self, settings: EngineSettings, store: Store, statement_seconds: float) -> None:
        super().__init__(settings, store, statement_seconds)
        assert isinstance(store, PostgresStore)
        params = pg_params(store, store.database)
        # Each statement runs in its own transaction, read-only by default, under the store's
        # own time limit: one round trip, no BEGIN/SET/COMMIT of our own. Backslashes in
        # literals are data (sqlglot writes them so).
        limit = max(1, int(statement_seconds * 1000))
        params["options"] = (
            f"-c default_transaction_read_only=on -c statement_timeout={limit} -c standard_conforming_strings=on"
        )
        self._params = {**params, "autocommit": True}
        self._pool = ConnectionPool(
            kwargs=self._params,
            min_size=0,
            max_size=settings.pool_size,
            timeout=5.0,  # a store that does not answer: as long as its connect_timeout
            open=True,
            name=f"citygate-{store.database}",
        )
        self._c_collation: bool | None = None

    def _engine_form(self, node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Union) and not isinstance(node.parent, exp.Union):
            typed_nulls(node)
        return node

    def _collation(self) -> str | None:
        if self._c_collation is None:
            rows = self.run(
                "SELECT datcollate FROM pg_database WHERE datname = current_database()", list(self.departments)[:1]
            ).rows
            self._c_collation = bool(rows) and rows[0][0] in ("C", "POSIX")
        return None if self._c_collation else "C"

    def _once(
        self,
        sql: str,
        department: str,
        max_rows: int | None,
        cancel: Cancel | None,
        last: bool = False,
        params: Sequence[Any] = (),
    ) -> Answer:
        try:
            with self._pool.connection() as conn:
                # with parameters, one that takes the text as it is, $1 and all (a cursor of
                # psycopg's own form would read each % of it as a placeholder); the keys, given
                # as a JSON array, bound as an array of text (connectors.dialects renders KeyRows so)
                cursor = psycopg.RawCursor(conn) if params else conn.cursor()
                bound = [[str(key) for key in json.loads(p)] for p in params]
                if cancel is not None:
                    cancel.on_cancel(lambda: _cancel_aside(conn))
                try:
                    cursor.execute(sql.encode(), bound or None, prepare=False)
                    rows = self._fetch(cursor, max_rows)
                    description = cursor.description or []
                finally:
                    if cancel is not None:
                        cancel.on_cancel(None)
                    cursor.close()
        except PoolTimeout as error:
            raise self._no_connection(department, str(error)) from None
        except psycopg.errors.QueryCanceled:
            raise EngineQueryError("the query was cancelled: it ran past its time") from None
        except psycopg.OperationalError as error:
            # no answer at all, a connection exception (08) or the server ending the session
            # (57P: shut down, restarting): the connection failed, not the statement
            if (error.sqlstate or "08").startswith(("08", "57P")):
                if self._lost(last, cancel):
                    raise _Lost from None
                raise describe_store_failure(department, self.store, str(error)) from None
            raise self._refused(department, error) from None
        except psycopg.Error as error:
            raise self._refused(department, error) from None
        return Answer(tuple(d.name for d in description), tuple(str(d.type_code) for d in description), rows)

    def _no_connection(self, department: str, timeout: str) -> CitygateError:
        """Why the pool gave no connection. With all of its connections at work, the store is
        busy; else the pool could not open one, and psycopg_pool keeps the reason to its log
        (a wrong CA, a TLS-only user, a refused password): one connection of this thread's own
        asks the store again, so the error names what to fix."""
        if self._pool.get_stats().get("pool_size", 0) >= self.settings.pool_size:
            return EngineQueryError("the store's connections are all busy; try again")
        try:
            psycopg.connect(**self._params).close()
        except psycopg.Error as error:
            return describe_store_failure(department, self.store, str(error))
        return describe_store_failure(department, self.store, timeout)

    def _columns(self, department: str) -> list[tuple[str, str, str, bool]]:
        schema = exp.Literal.string(schema_of(self.departments[department].store)).sql("postgres")
        rows = self.run(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE n.nspname = {schema} AND c.relkind IN ('r', 'v', 'm', 'p', 'f') "
            "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY c.relname, a.attnum",
            [department],
        ).rows
        return [(t, c, _pg_type(d), bool(n)) for t, c, d, n in rows]

    def close(self) -> None:
        self._pool.close()


def _pg_type(name: str) -> str:
    """PostgreSQL's ``format_type`` spelling in the words sqlglot reads."""
    return (
        name.replace(" without time zone", "")
        .replace("character varying", "varchar")
        .replace("double precision", "double")
        .replace("character", "char")
    )


class MariadbEngine(NativeEngine):
    dialect = "mysql"
    Dialect = MariadbDialect

    def __init__(self, settings: EngineSettings, store: Store, statement_seconds: float) -> None:
        super().__init__(settings, store, statement_seconds)
        assert isinstance(store, MariadbStore)
        self._params = mariadb_params(store, store.database)
        self._limit = exp.Literal.number(round(max(statement_seconds, 0.001), 3)).sql("mysql")
        self._pool = Kept(self._connect, pymysql_alive, settings.pool_size, settings.pool_wait)
        self._nopad: bool | None = None

    def _connect(self) -> Any:
        conn = pymysql.connect(**self._params, autocommit=True, read_timeout=self.statement_seconds + 5)
        with conn.cursor() as cursor:
            # Backslashes in literals are escapes (sqlglot writes them so, and doubles them);
            # every transaction only reads; every statement stops by itself past its time (set
            # here, not around each statement: the store receives the very text explain shows).
            cursor.execute(
                "SET SESSION sql_mode = 'STRICT_ALL_TABLES', SESSION tx_read_only = 1, "
                f"SESSION max_statement_time = {self._limit}"
            )
        return conn

    def _collation(self) -> str | None:
        # Every text column of the store already compares and orders under it (the demo city's
        # loader makes them so): read as they are, where their indexes find a key; else read
        # under it, which no index of another collation serves.
        if self._nopad is None:
            rows = self.run(
                "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                f"AND COLLATION_NAME IS NOT NULL AND COLLATION_NAME <> '{NOPAD}'",
                list(self.departments)[:1],
            ).rows
            self._nopad = bool(rows) and rows[0][0] == 0
        return None if self._nopad else NOPAD

    def sql(self, tree: exp.Expr) -> str:
        text = super().sql(tree)
        if PARAMETER not in text:
            return text
        # PyMySQL binds a parameter by formatting the text with ``%``: every other % is doubled
        return text.replace("%", "%%").replace(PARAMETER, "%s")

    def _engine_form(self, node: exp.Expr) -> exp.Expr:
        # MariaDB's DATETIME keeps no fraction of a second unless told: a literal timestamp
        # would lose its microseconds.
        if isinstance(node, exp.DataType) and node.this == exp.DataType.Type.TIMESTAMP and not node.expressions:
            return exp.DataType.build("TIMESTAMP(6)")
        return node

    def _once(
        self,
        sql: str,
        department: str,
        max_rows: int | None,
        cancel: Cancel | None,
        last: bool = False,
        params: Sequence[Any] = (),
    ) -> Answer:
        try:
            with self._pool.connection(fresh=last) as conn:
                if cancel is not None:
                    cancel.on_cancel(lambda: self._kill(conn.thread_id()))
                try:
                    with conn.cursor() as cursor:
                        cursor.execute(sql, tuple(params) or None)
                        rows = self._fetch(cursor, max_rows)
                        description = cursor.description or []
                finally:
                    if cancel is not None:
                        cancel.on_cancel(None)
        except pymysql.err.OperationalError as error:
            code = error.args[0] if error.args else 0
            if code in (1969, 1317):  # max_statement_time exceeded; interrupted by KILL QUERY
                raise EngineQueryError("the query was cancelled: it ran past its time") from None
            if code in (2006, 2013) and self._lost(last, cancel):
                raise _Lost from None  # gone away, lost: perhaps only this connection
            if code >= 2000 or code in (1044, 1045, 1049, 1040, 1203):  # client side; access; no database
                raise describe_store_failure(department, self.store, str(error)) from None
            raise self._refused(department, error) from None
        except pymysql.err.InterfaceError as error:
            raise describe_store_failure(department, self.store, str(error)) from None
        except pymysql.err.Error as error:
            raise self._refused(department, error) from None
        return Answer(tuple(d[0] for d in description), tuple(str(d[1]) for d in description), rows)

    def _kill(self, thread_id: int) -> None:
        """Stop a running statement from another connection (MariaDB's way to cancel), on a
        thread of its own: a store that does not answer would hold the canceller for its
        connect timeout."""
        threading.Thread(target=self._kill_now, args=(thread_id,), daemon=True).start()

    def _kill_now(self, thread_id: int) -> None:
        with contextlib.suppress(pymysql.err.Error, OSError):
            conn = pymysql.connect(**self._params, autocommit=True)
            try:
                with conn.cursor() as cursor:
                    cursor.execute("KILL QUERY %s", (thread_id,))
            finally:
                conn.close()

    def _columns(self, department: str) -> list[tuple[str, str, str, bool]]:
        schema = exp.Literal.string(schema_of(self.departments[department].store)).sql("mysql")
        rows = self.run(
            "SELECT table_name, column_name, column_type, is_nullable = 'YES' FROM information_schema.columns "
            f"WHERE table_schema = {schema} ORDER BY table_name, ordinal_position",
            [department],
        ).rows
        return [(t, c, _mariadb_type(d), bool(n)) for t, c, d, n in rows]

    def close(self) -> None:
        self._pool.close()


def _mariadb_type(name: str) -> str:
    """MariaDB's ``column_type`` without what sqlglot does not read (a display width,
    ``unsigned``); ``tinyint(1)`` stays, as it means BOOLEAN."""
    lowered = name.lower()
    if lowered == "tinyint(1)":
        return lowered
    base = lowered.replace(" unsigned", "")
    for integer in ("tinyint", "smallint", "mediumint", "bigint", "int"):
        if base.startswith(integer + "("):
            return integer
    return base


class SqliteEngine(NativeEngine):
    dialect = "sqlite"
    Dialect = SqliteDialect
    # stored as REAL or text, read back as such: the engines read them as their declared type
    differs = frozenset({"decimal", "date", "timestamp", "boolean"})
    # SQLite has no RPAD (the partial mask) and no timestamp format of the engines'
    cannot: ClassVar[Mapping[type[exp.Expr], str]] = {
        **CANNOT,
        Partial: "the partial mask",
        TimestampText: "a timestamp as text",
    }

    def __init__(self, settings: EngineSettings, store: Store, statement_seconds: float) -> None:
        super().__init__(settings, store, statement_seconds)
        assert isinstance(store, SqliteStore)
        self._path = store.path
        self._pool = Kept(self._connect, sqlite_alive, settings.pool_size, settings.pool_wait)

    def _connect(self) -> sqlite3.Connection:
        if not self._path.is_file():
            raise sqlite3.OperationalError(f"unable to open database file {self._path}")
        conn = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, check_same_thread=False)
        # LIKE compares case as every engine does, not ASCII case-insensitively.
        conn.execute("PRAGMA case_sensitive_like = ON")
        return conn

    def _once(
        self,
        sql: str,
        department: str,
        max_rows: int | None,
        cancel: Cancel | None,
        last: bool = False,
        params: Sequence[Any] = (),
    ) -> Answer:
        # a file is not a server: a kept connection does not go away under it, nothing is retried
        try:
            with self._pool.connection() as conn:
                deadline = time.monotonic() + self.statement_seconds
                # Called every 10,000 virtual machine steps: a non-zero answer stops the statement.
                conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
                if cancel is not None:
                    cancel.on_cancel(conn.interrupt)
                try:
                    cursor = conn.execute(sql, tuple(params))
                    rows = self._fetch(cursor, max_rows)
                    description = cursor.description or []
                    cursor.close()
                finally:
                    if cancel is not None:
                        cancel.on_cancel(None)
                    conn.set_progress_handler(None, 0)
        except sqlite3.OperationalError as error:
            text = str(error)
            if "interrupted" in text:
                raise EngineQueryError("the query was cancelled: it ran past its time") from None
            if "unable to open" in text or "disk I/O" in text or "no such table" in text:
                raise describe_store_failure(department, self.store, text) from None
            raise self._refused(department, error) from None
        except sqlite3.Error as error:
            raise self._refused(department, error) from None
        return Answer(tuple(d[0] for d in description), tuple("" for _ in description), rows)

    def _columns(self, department: str) -> list[tuple[str, str, str, bool]]:
        tables = self.run("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name", [department]).rows
        found: list[tuple[str, str, str, bool]] = []
        for (table,) in tables:
            literal = exp.Literal.string(table).sql("sqlite")
            for _, column, declared, notnull, *_ in self.run(
                f"SELECT * FROM pragma_table_info({literal})", [department]
            ).rows:
                found.append((table, column, declared or "VARCHAR", not notnull))
        return found

    def close(self) -> None:
        self._pool.close()


NATIVE: dict[str, type[NativeEngine]] = {"postgresql": PostgresEngine, "mariadb": MariadbEngine, "sqlite": SqliteEngine}


def native_engines(
    settings: EngineSettings, statement_seconds: float, departments: Sequence[str]
) -> list[NativeEngine]:
    """One engine per store that keeps any of ``departments``. None holds the hash key: a
    statement that needs it cannot be rendered for a store."""
    groups: dict[str, dict[str, Source]] = {}
    for name in departments:
        source = settings.departments[name]
        groups.setdefault(store_key(source.store), {})[name] = source
    engines = []
    for members in groups.values():
        store = next(iter(members.values())).store
        own = dataclasses.replace(settings, departments=members, hash_key=None)
        engines.append(NATIVE[store.kind](own, store, statement_seconds))
    return engines
