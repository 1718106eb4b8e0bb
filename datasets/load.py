"""Writing the demo city into departments' stores: creating its tables and loading its rows.

The engines only ever read these stores; this module is what writes them. Statements are built
with sqlglot; values travel as driver parameters (COPY rows, executemany).
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import psycopg
import pymysql
from sqlglot import exp
from sqlglot.dialects.mysql import MySQL

from catalogue.files import replacing
from catalogue.stores import MariadbStore, PostgresStore, SqliteStore, Store
from connectors.stores import describe_store_failure, mariadb_params, pg_params
from datasets.datagen import City
from datasets.demo_city import RELATIONSHIPS, TABLES, TableSpec

# What marks a store as citygate's own: a SQLite file's application id ("CGTY"), a database's
# comment on PostgreSQL and MariaDB. The loader replaces tables only where it finds the mark, or
# nothing at all, unless told to (`citygate datagen --force`): a configuration naming a real
# department's database must not have its tables dropped without a word.
APPLICATION_ID = 0x43475459
MARK = '{"citygate": "demo-city"}'

Row = tuple[Any, ...]
Progress = Callable[[int], None]
BATCH = 5_000


class _PyformatMySQL(MySQL):
    """MySQL as pymysql wants its parameters: ``%s`` placeholders."""

    class Generator(MySQL.Generator):  # type: ignore[misc,valid-type]
        TRANSFORMS: ClassVar = {**MySQL.Generator.TRANSFORMS, exp.Placeholder: lambda self, e: "%s"}


def create_table_sql(spec: TableSpec, dialect: str) -> str:
    """CREATE TABLE for ``spec`` in ``dialect``.

    SQLite keeps a declared type name verbatim and the embedded engine reads it back to restore
    the logical type, so its DDL is written with the neutral names (DECIMAL(10, 2), BOOLEAN,
    TIMESTAMP); sqlglot's sqlite dialect would reduce them to affinities and lose them.

    >>> from datasets.demo_city import table_spec
    >>> create_table_sql(table_spec("transport", "stations"), "mysql").startswith(
    ...     "CREATE TABLE `stations` (`station_id` INT NOT NULL, `name` VARCHAR(32) NOT NULL")
    True
    """
    columns: list[exp.Expression] = [
        exp.ColumnDef(
            this=exp.to_identifier(c.name, quoted=True),
            kind=exp.DataType.build(c.declared),
            constraints=[] if c.nullable else [exp.ColumnConstraint(kind=exp.NotNullColumnConstraint())],
        )
        for c in spec.columns
    ]
    columns.append(exp.PrimaryKey(expressions=[exp.to_identifier(k, quoted=True) for k in spec.primary_key]))
    create = exp.Create(
        kind="TABLE",
        this=exp.Schema(this=exp.Table(this=exp.to_identifier(spec.name, quoted=True)), expressions=columns),
    )
    return create.sql("postgres" if dialect == "sqlite" else dialect)


def index_sql(spec: TableSpec, dialect: str) -> list[str]:
    """CREATE INDEX on each of ``spec``'s columns a relationship joins on that is not its key:
    a department's own database indexes the identifiers other departments look its rows up by,
    and a relationship followed by key (one statement per store, given the parents' keys) reads
    the rows of those keys alone.

    >>> from datasets.demo_city import table_spec
    >>> index_sql(table_spec("transport", "vehicles"), "postgres")
    ['CREATE INDEX "vehicles_owner_credit_code_idx" ON "vehicles"("owner_credit_code")']
    """
    linked = {
        column
        for r in RELATIONSHIPS
        for department, table, column in (r.source, r.target)
        if (department, table) == (spec.department, spec.name) and (column,) != spec.primary_key
    }
    written = "postgres" if dialect == "sqlite" else dialect
    return [create_index_sql(spec.name, column, written) for column in sorted(linked)]


def create_index_sql(table: str, column: str, dialect: str) -> str:
    """CREATE INDEX ``<table>_<column>_idx`` on one column."""
    return exp.Create(
        kind="INDEX",
        this=exp.Index(
            this=exp.to_identifier(f"{table}_{column}_idx", quoted=True),
            table=exp.Table(this=exp.to_identifier(table, quoted=True)),
            params=exp.IndexParameters(columns=[exp.column(column, quoted=True)]),
        ),
    ).sql(dialect)


def _insert_sql(spec: TableSpec, dialect: str | type[MySQL]) -> str:
    table = exp.Table(this=exp.to_identifier(spec.name, quoted=True))
    values = exp.values([tuple(exp.Placeholder() for _ in spec.columns)])
    return exp.insert(values, table, columns=[exp.to_identifier(c.name, quoted=True) for c in spec.columns]).sql(
        dialect
    )


def _drop_sql(spec: TableSpec, dialect: str) -> str:
    table = exp.Table(this=exp.to_identifier(spec.name, quoted=True))
    return exp.Drop(kind="TABLE", exists=True, tables=[table]).sql(dialect)


# -- loading --------------------------------------------------------------------------------


def foreign(department: str, store: Store) -> str | None:
    """Why the loader must not write ``department``'s store without ``--force``: it holds tables
    and not citygate's mark. None when it is empty, missing, or citygate's own."""
    if isinstance(store, SqliteStore):
        if not store.path.exists():
            return None
        conn = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            owned = conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        finally:
            conn.close()
        where = f"SQLite file {store.path}"
    elif isinstance(store, PostgresStore):
        tables, owned = [], False
        with psycopg.connect(**pg_params(store, "postgres")) as server:
            comment = server.execute(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (store.database,)
            ).fetchone()
        if comment is not None:
            owned = comment[0] == MARK
            with psycopg.connect(**pg_params(store, store.database)) as database:
                tables = [
                    r[0]
                    for r in database.execute(
                        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (store.schema_,)
                    )
                ]
        where = f"PostgreSQL database {store.database!r} at {store.host}:{store.port}"
    else:
        conn = pymysql.connect(**mariadb_params(store, None))
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT schema_comment FROM information_schema.schemata WHERE schema_name = %s", (store.database,)
                )
                comment = cur.fetchone()
                cur.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (store.database,)
                )
                tables = [r[0] for r in cur.fetchall()]
        finally:
            conn.close()
        owned = comment is not None and comment[0] == MARK
        where = f"MariaDB database {store.database!r} at {store.host}:{store.port}"
    if owned or not tables:
        return None
    return (
        f"department {department}: {where} holds tables citygate did not write ({', '.join(sorted(tables)[:3])}); "
        "datagen replaces tables there, so it leaves a store it did not create alone: pass --force to write it anyway"
    )


def load(department: str, store: Store, tables: Sequence[tuple[TableSpec, list[Row]]], progress: Progress) -> None:
    """Replace ``tables`` in ``department``'s store with ``rows``, reporting rows as they land,
    and mark the store as citygate's own."""
    if isinstance(store, SqliteStore):
        _load_sqlite(store, tables, progress)
    elif isinstance(store, PostgresStore):
        _guard(department, store, lambda: _load_postgres(store, tables, progress))
    else:
        _guard(department, store, lambda: _load_mariadb(store, tables, progress))


def _guarded(department: str, store: Store, check: Callable[[str, Store], str | None]) -> str | None:
    """``check(department, store)``, a store that does not answer named as such."""
    try:
        return check(department, store)
    except (psycopg.OperationalError, pymysql.err.OperationalError) as error:
        assert not isinstance(store, SqliteStore)
        raise describe_store_failure(department, store, str(error)) from None


def _guard(department: str, store: PostgresStore | MariadbStore, action: Callable[[], None]) -> None:
    try:
        action()
    except (psycopg.OperationalError, pymysql.err.OperationalError) as error:
        raise describe_store_failure(department, store, str(error)) from None


def _load_sqlite(store: SqliteStore, tables: Sequence[tuple[TableSpec, list[Row]]], progress: Progress) -> None:
    # Write a fresh file beside the old one and swap it in, so a reader never sees half a load
    # (SQLite's own journal is off: the file is written once, then fsynced whole).
    with replacing(store.path) as partial:
        conn = sqlite3.connect(partial)
        try:
            conn.execute("PRAGMA journal_mode = OFF")
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            for spec, rows in tables:
                conn.execute(create_table_sql(spec, "sqlite"))
                insert = _insert_sql(spec, "sqlite")
                for start in range(0, len(rows), BATCH):
                    batch = rows[start : start + BATCH]
                    conn.executemany(insert, [_sqlite_row(r) for r in batch])
                    progress(len(batch))
                for index in index_sql(spec, "sqlite"):
                    conn.execute(index)
            conn.commit()
        finally:
            conn.close()


def _sqlite_row(row: Row) -> Row:
    # Decimals as text keep every digit; SQLite's NUMERIC affinity stores them as exact
    # integers or REALs that round-trip two decimal places.
    return tuple(str(v) if type(v).__name__ == "Decimal" else v for v in row)


def _load_postgres(store: PostgresStore, tables: Sequence[tuple[TableSpec, list[Row]]], progress: Progress) -> None:
    _ensure_postgres_database(store)
    with psycopg.connect(**pg_params(store, store.database)) as conn, conn.cursor() as cur:
        for spec, rows in tables:
            cur.execute(_drop_sql(spec, "postgres"))
            cur.execute(create_table_sql(spec, "postgres"))
            copy = exp.Copy(
                this=exp.Schema(
                    this=exp.Table(this=exp.to_identifier(spec.name, quoted=True)),
                    expressions=[exp.to_identifier(c.name, quoted=True) for c in spec.columns],
                ),
                kind=True,
                files=[exp.Var(this="STDIN")],
            ).sql("postgres")
            with cur.copy(copy) as writer:
                for start in range(0, len(rows), BATCH):
                    batch = rows[start : start + BATCH]
                    for row in batch:
                        writer.write_row(row)
                    progress(len(batch))
            for index in index_sql(spec, "postgres"):
                cur.execute(index)
            cur.execute(f"ANALYZE {exp.to_identifier(spec.name, quoted=True).sql('postgres')}")
        database = exp.to_identifier(store.database, quoted=True).sql("postgres")
        cur.execute(f"COMMENT ON DATABASE {database} IS {exp.Literal.string(MARK).sql('postgres')}")


def _ensure_postgres_database(store: PostgresStore) -> None:
    with psycopg.connect(**pg_params(store, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (store.database,)).fetchone()
        if not exists:
            # Collation C: byte order, the order Trino and DuckDB use when they sort strings.
            name = exp.to_identifier(store.database, quoted=True).sql("postgres")
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'")


def _load_mariadb(store: MariadbStore, tables: Sequence[tuple[TableSpec, list[Row]]], progress: Progress) -> None:
    conn = pymysql.connect(**mariadb_params(store, None))
    try:
        with conn.cursor() as cur:
            name = exp.to_identifier(store.database, quoted=True).sql("mysql")
            # utf8mb4_nopad_bin: exact comparison by code point, trailing spaces counted, as Trino
            # and DuckDB compare: the gateway reads the columns as they are, through their indexes
            # (connectors.native.MariadbEngine._collation).
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin")
            cur.execute(f"ALTER DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin")
            cur.execute(f"USE {name}")
            for spec, rows in tables:
                cur.execute(_drop_sql(spec, "mysql"))
                cur.execute(create_table_sql(spec, "mysql"))
                insert = _insert_sql(spec, _PyformatMySQL)
                for start in range(0, len(rows), BATCH):
                    batch = rows[start : start + BATCH]
                    cur.executemany(insert, batch)
                    progress(len(batch))
                for index in index_sql(spec, "mysql"):
                    cur.execute(index)
                conn.commit()
            cur.execute(f"ALTER DATABASE {name} COMMENT = %s", (MARK,))
    finally:
        conn.close()


def load_city(city: City, targets: Mapping[str, Store], force: bool = False) -> None:
    """Write every table of the generated ``city`` into its department's store in ``targets``,
    showing rows as they land; departments the city does not have are left alone, and so is
    every store (all of them) while one holds tables citygate did not write, unless ``force``."""
    from tqdm import tqdm

    from catalogue.errors import CitygateError

    if not force:
        departments = {spec.department for spec in TABLES}
        for department, store in targets.items():
            why = _guarded(department, store, foreign) if department in departments else None
            if why is not None:
                raise CitygateError(why)

    with tqdm(
        total=city.total_rows, unit="row", unit_scale=True, desc="loading", file=sys.stderr, mininterval=0.5
    ) as bar:
        for department, store in targets.items():
            tables = [(spec, city.rows(spec.department, spec.name)) for spec in TABLES if spec.department == department]
            if not tables:
                continue
            bar.set_description(f"loading {department} ({store.kind})")
            load(department, store, tables, bar.update)
