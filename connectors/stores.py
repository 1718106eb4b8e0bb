"""Departments' own stores as the engines reach them: connection parameters, the schema that
holds a department's tables, the declared types of a SQLite file, and a store's refusal turned
into a message naming the department and what to check.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from catalogue.errors import StoreUnavailableError, without_values
from catalogue.stores import MariadbStore, PostgresStore, SqliteStore, Store

# -- connection parameters --------------------------------------------------------------------


def pg_params(store: PostgresStore, database: str) -> dict[str, Any]:
    return {
        "host": store.host,
        "port": store.port,
        "user": store.user,
        "password": store.password,
        "dbname": database,
        "connect_timeout": 5,
        **store.tls.libpq(),
    }


def mariadb_params(store: MariadbStore, database: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {
        "host": store.host,
        "port": store.port,
        "user": store.user,
        "password": store.password,
        "connect_timeout": 5,
        "charset": "utf8mb4",
        **store.tls.pymysql(),
    }
    if database:
        params["database"] = database
    return params


def schema_of(store: Store) -> str:
    """The schema that holds a department's tables: PostgreSQL's configured schema, MariaDB's
    database (each database is a schema to Trino and DuckDB), SQLite's ``main``."""
    if isinstance(store, PostgresStore):
        return store.schema_
    if isinstance(store, MariadbStore):
        return store.database
    return "main"


# How each route reports a failed TLS handshake: libpq, PyMySQL (Python's ssl), DuckDB's MySQL
# scanner, and the JDBC drivers in Trino. Matched before the rest: MariaDB's "access denied"
# and a connection string echoed in the message must not hide them.
_TLS_NAME = re.compile(
    r"does not match host name|hostname mismatch|ip address mismatch|hostname verification failed"
    r"|could not be verified by hostnameverifier|no subject alternative (dns )?name|no name matching",
    re.I,
)
_TLS_UNTRUSTED = re.compile(
    r"certificate verify failed|self[- ]signed certificate|unable to get local issuer|PKIX path"
    r"|valid certification path",
    re.I,
)
_TLS_OTHER = re.compile(r"SSL error|TLS/SSL error|SSL:|SSLHandshakeException|SSLException|SSL SYSCALL", re.I)


def describe_store_failure(
    department: str, store: PostgresStore | MariadbStore | SqliteStore, text: str
) -> StoreUnavailableError:
    """Turn a driver's or engine's failure text into one message naming the department.

    >>> from catalogue.stores import PostgresStore
    >>> s = PostgresStore.model_validate({"kind": "postgresql", "database": "health", "user": "citygate"})
    >>> print(describe_store_failure("health", s, 'password authentication failed for user "x"').message)
    department health: PostgreSQL at 127.0.0.1:5432 rejected user 'citygate' (check departments.health.store.user ...)
    """
    if isinstance(store, SqliteStore):
        return StoreUnavailableError(
            department, f"department {department}: cannot read SQLite file {store.path}", detail=without_values(text)
        )
    label = "PostgreSQL" if isinstance(store, PostgresStore) else "MariaDB"
    where = f"{label} at {store.host}:{store.port}"
    lowered = text.lower()
    tls = f"departments.{department}.store.tls"
    if _TLS_NAME.search(text):
        message = (
            f"presents a certificate that is not issued for host {store.host!r} "
            f"(check departments.{department}.store.host: {store.tls.mode} compares it with the certificate's names)"
        )
    elif _TLS_UNTRUSTED.search(text):
        message = f"presents a certificate not signed by the CA in {tls}.ca (check it, and the store's certificate)"
    elif "no encryption" in lowered:
        message = f"accepts user {store.user!r} only over TLS (set {tls}.mode)"
    elif "does not support ssl" in lowered or "ssl connection is required" in lowered:
        message = f"offers no TLS, which {tls}.mode {store.tls.mode} requires (check the store, or {tls}.mode)"
    elif _TLS_OTHER.search(text):
        message = f"could not set up TLS (check {tls})"
    elif "password authentication failed" in lowered or "access denied" in lowered:
        message = f"rejected user {store.user!r} (check departments.{department}.store.user and password"
        # MariaDB refuses a user who must use TLS with the same words as a wrong password
        message += f"; a user that must use TLS needs {tls}.mode)" if store.tls.mode == "disable" else ")"
    elif ("database" in lowered or "unknown database" in lowered) and (
        "does not exist" in lowered or "unknown database" in lowered
    ):
        message = f"has no database {store.database!r} (check departments.{department}.store.database)"
    else:
        message = f"did not answer (is it running? check departments.{department}.store.host and port)"
    # the detail without what a store's message may quote of its rows (the classification above
    # reads the message whole; the operator's log gets it cut)
    return StoreUnavailableError(department, f"department {department}: {where} {message}", detail=without_values(text))


def sqlite_declared_types(path: Path) -> dict[str, dict[str, str]]:
    """table -> column -> declared type, read from the file itself (read-only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: {r[1]: r[2] for r in conn.execute("SELECT * FROM pragma_table_info(?)", (t,))} for t in tables}
    finally:
        conn.close()
