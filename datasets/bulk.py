"""Bulk loading of generated files into whole department databases, with a stamp of what they hold.

A department's database is dropped and created afresh, its tables are created with their
primary keys, each file goes in through the store's own bulk path (PostgreSQL ``COPY FROM
STDIN``, MariaDB ``LOAD DATA LOCAL INFILE``), the linking columns get their indexes after the
rows are in (one sorted build instead of millions of inserts into a B-tree), and last the
database's comment records the digest of what was loaded. The comment lives and dies with the
data, so a dropped or half-loaded database never looks loaded, and one query per server reads
every department's stamp.

Files are in both stores' default text format: tab-separated, ``\\N`` for null.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pymysql
from sqlglot import exp

from catalogue.stores import MariadbStore, PostgresStore
from connectors.stores import describe_store_failure, mariadb_params, pg_params
from datasets.demo_city import TableSpec
from datasets.load import create_index_sql, create_table_sql

Landed = Callable[[TableSpec, Path], None]
Starting = Callable[[TableSpec], None]
LINK_COLUMNS = ("id_card", "credit_code", "legal_rep_id_card")
_CHUNK = 1 << 20
STAMP_KEY = "citygate-seed"


def _dialect(kind: str) -> str:
    return "postgres" if kind == "postgresql" else "mysql"


def _ident(name: str, kind: str) -> str:
    return exp.to_identifier(name, quoted=True).sql(_dialect(kind))


def table_ddl(table: TableSpec, kind: str) -> str:
    """CREATE TABLE and CREATE INDEX statements for ``table`` in store ``kind``, one per line.

    >>> from datasets.seed_scale import plan
    >>> print(table_ddl(plan().residents, "mariadb").splitlines()[0][:60])
    CREATE TABLE `residents` (`id_card` VARCHAR(18) NOT NULL, `n
    """
    statements = [create_table_sql(table, _dialect(kind))]
    statements += [create_index_sql(table.name, column, _dialect(kind)) for column in index_columns(table)]
    return "\n".join(statements)


def index_columns(table: TableSpec) -> list[str]:
    """Linking columns that are not the key: joins and reverse relationships look them up."""
    return [c.name for c in table.columns if c.name in LINK_COLUMNS and (c.name,) != table.primary_key]


def load_department(
    department: str,
    store: PostgresStore | MariadbStore,
    files: Sequence[tuple[TableSpec, Path]],
    digest: str,
    starting: Starting,
    landed: Landed,
) -> None:
    """Replace ``department``'s database with ``files``' tables; stamp it with ``digest`` last.

    ``starting`` and ``landed`` are told about each table before and after it loads."""
    try:
        if isinstance(store, PostgresStore):
            _load_postgres(store, files, digest, starting, landed)
        else:
            _load_mariadb(store, files, digest, starting, landed)
    except (psycopg.OperationalError, pymysql.err.OperationalError) as error:
        raise describe_store_failure(department, store, str(error)) from None


def _stamp(digest: str) -> str:
    return json.dumps({STAMP_KEY: digest})


def _digest(comment: str | None) -> str | None:
    try:
        value = json.loads(comment or "")
    except ValueError:
        return None
    return value.get(STAMP_KEY) if isinstance(value, dict) else None


# -- PostgreSQL -------------------------------------------------------------------------------


def _load_postgres(
    store: PostgresStore, files: Sequence[tuple[TableSpec, Path]], digest: str, starting: Starting, landed: Landed
) -> None:
    name = _ident(store.database, "postgresql")
    with psycopg.connect(**pg_params(store, "postgres"), autocommit=True) as admin:
        # FORCE: Trino's and DuckDB's pooled connections to the old database must not block it.
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        # Collation C: byte order, the order Trino and DuckDB use when they sort strings.
        admin.execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'")
    with psycopg.connect(**pg_params(store, store.database), autocommit=True) as conn, conn.cursor() as cur:
        for table, path in files:
            starting(table)
            ddl = table_ddl(table, "postgresql").splitlines()
            cur.execute(ddl[0])
            columns = ", ".join(_ident(c.name, "postgresql") for c in table.columns)
            with (
                cur.copy(f"COPY {_ident(table.name, 'postgresql')} ({columns}) FROM STDIN") as copy,
                path.open("rb") as f,
            ):
                while chunk := f.read(_CHUNK):
                    copy.write(chunk)
            for statement in ddl[1:]:
                cur.execute(statement)
            cur.execute(f"ANALYZE {_ident(table.name, 'postgresql')}")
            landed(table, path)
        cur.execute(f"COMMENT ON DATABASE {name} IS {exp.Literal.string(_stamp(digest)).sql('postgres')}")


def _postgres_stamps(stores: list[PostgresStore]) -> dict[tuple[str, str, int, str], str]:
    found: dict[tuple[str, str, int, str], str] = {}
    for host, port in {(s.host, s.port) for s in stores}:
        store = next(s for s in stores if (s.host, s.port) == (host, port))
        with psycopg.connect(**pg_params(store, "postgres")) as conn:
            rows = conn.execute("SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database").fetchall()
        for database, comment in rows:
            stamp = _digest(comment)
            if stamp:
                found[("postgresql", host, port, database)] = stamp
    return found


# -- MariaDB ----------------------------------------------------------------------------------


def _load_mariadb(
    store: MariadbStore, files: Sequence[tuple[TableSpec, Path]], digest: str, starting: Starting, landed: Landed
) -> None:
    name = _ident(store.database, "mariadb")
    conn = pymysql.connect(**mariadb_params(store, None), local_infile=True, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
            # utf8mb4_nopad_bin: exact comparison, trailing spaces counted, as Trino and DuckDB
            # compare: the gateway reads the columns as they are, through their indexes.
            cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin")
            cur.execute(f"USE {name}")
            for table, path in files:
                starting(table)
                ddl = table_ddl(table, "mariadb").splitlines()
                cur.execute(ddl[0])
                columns = ", ".join(_ident(c.name, "mariadb") for c in table.columns)
                # The server's defaults match the files: tab-separated fields, \N for null.
                cur.execute(
                    f"LOAD DATA LOCAL INFILE %s INTO TABLE {_ident(table.name, 'mariadb')} "
                    f"CHARACTER SET utf8mb4 ({columns})",
                    (str(path),),
                )
                for statement in ddl[1:]:
                    cur.execute(statement)
                landed(table, path)
            cur.execute(f"ALTER DATABASE {name} COMMENT = %s", (_stamp(digest),))
    finally:
        conn.close()


def _mariadb_stamps(stores: list[MariadbStore]) -> dict[tuple[str, str, int, str], str]:
    found: dict[tuple[str, str, int, str], str] = {}
    for host, port in {(s.host, s.port) for s in stores}:
        store = next(s for s in stores if (s.host, s.port) == (host, port))
        conn = pymysql.connect(**mariadb_params(store, None))
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT schema_name, schema_comment FROM information_schema.schemata")
                rows = cur.fetchall()
        finally:
            conn.close()
        for database, comment in rows:
            stamp = _digest(comment)
            if stamp:
                found[("mariadb", host, port, database)] = stamp
    return found


def read_stamps(stores: Sequence[Any]) -> dict[tuple[str, str, int, str], str]:
    """(kind, host, port, database) -> the digest its last complete load recorded."""
    postgres = [s for s in stores if isinstance(s, PostgresStore)]
    mariadb = [s for s in stores if isinstance(s, MariadbStore)]
    return {**(_postgres_stamps(postgres) if postgres else {}), **(_mariadb_stamps(mariadb) if mariadb else {})}
