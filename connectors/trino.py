"""The Trino engine: one Trino catalog per department, reached with the trino client.

Trino fans a statement out to each department's own store and joins across them. This module
only says how to address a table, how to run a tree and how to read a catalog's columns.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import requests
import trino
from sqlglot import exp
from sqlglot.dialects.trino import Trino
from trino.exceptions import TrinoExternalError, TrinoQueryError, TrinoUserError

from catalogue.errors import (
    CitygateError,
    ConfigError,
    EngineQueryError,
    EngineUnavailableError,
    ResultTooLarge,
    StoreUnavailableError,
    error_class,
    without_values,
)
from catalogue.files import write_atomic
from catalogue.model import Column, Department, Table
from catalogue.sql import partial_sql
from catalogue.stores import MariadbStore, PostgresStore, SqliteStore, Store, Tls
from catalogue.types import logical_type
from connectors.base import Answer, Cancel, Engine, KeyedDialect, Prefetch, vocabulary
from connectors.settings import EngineSettings, TrinoSettings
from connectors.stores import describe_store_failure, schema_of

# What says the store cannot be used at all (describe_store_failure names each), not a statement.
_CONNECTION = re.compile(
    r"connect|refused|timed? ?out|communications link|no route|unknown host|broken pipe"
    r"|access denied|authentication failed|unknown database|database \S+ does not exist"
    # a TLS handshake the store's driver gave up on (certificate, host name, key store)
    r"|ssl|tls|certificat|pkix|keystore|truststore|hostnameverifier",
    re.I,
)
_STATEMENT = re.compile(r"\bERROR: |SQL syntax|SQLSTATE|\(conn=\d+\) (?!.*connect)", re.I)


def refused_by_store(text: str) -> bool:
    """Whether a store's failure, as Trino reports it, is the store refusing a statement (its
    own error) rather than not being reachable.

    >>> refused_by_store("JDBC_ERROR: ERROR: LIKE pattern must not end with escape character")
    True
    >>> refused_by_store("JDBC_ERROR: ERROR: canceling statement due to statement timeout")
    True
    >>> refused_by_store("JDBC_ERROR: Connection to 127.0.0.1:5432 refused. Check that the hostname and port ...")
    False
    """
    if re.search(r"\bERROR: ", text):  # PostgreSQL's own error on a statement; a failed connection is FATAL
        return True
    return bool(_STATEMENT.search(text)) and not _CONNECTION.search(text)


def _quietly(stop: Callable[[], object]) -> None:
    """Cancel a Trino query, whatever state it is in (not yet sent, or already over)."""
    with contextlib.suppress(Exception):
        stop()


def catalog_properties(department: str, store: Store) -> tuple[str, dict[str, str]]:
    """The Trino connector and properties that serve ``department``'s store.

    >>> from catalogue.stores import PostgresStore
    >>> store = PostgresStore.model_validate({"kind": "postgresql", "database": "health", "user": "u"})
    >>> catalog_properties("health", store)[1]["connection-url"]
    'jdbc:postgresql://127.0.0.1:5432/health?sslmode=disable'
    >>> tls = {"mode": "verify-full", "ca": "/etc/city/ca.pem"}
    >>> store = store.model_validate({"kind": "postgresql", "database": "health", "user": "u", "tls": tls})
    >>> catalog_properties("health", store)[1]["connection-url"]
    'jdbc:postgresql://127.0.0.1:5432/health?ssl=true&sslmode=verify-full&sslrootcert=%2Fetc%2Fcity%2Fca.pem'
    """
    if isinstance(store, PostgresStore):
        url = f"jdbc:postgresql://{store.host}:{store.port}/{store.database}?{_pgjdbc_tls(store.tls)}"
        return "postgresql", {
            "connection-url": url,
            "connection-user": store.user,
            "connection-password": store.password,
        }
    if isinstance(store, MariadbStore):
        # The MariaDB connector takes no database in the URL: each database is a schema.
        url = f"jdbc:mariadb://{store.host}:{store.port}/?{_mariadb_jdbc_tls(store.tls, department)}"
        return "mariadb", {"connection-url": url, "connection-user": store.user, "connection-password": store.password}
    raise ConfigError(
        f"department {department}: Trino has no connector for store kind {store.kind!r} "
        f"(serve SQLite departments with engine kind 'embedded')"
    )


def _pgjdbc_tls(tls: Tls) -> str:
    """PostgreSQL JDBC's TLS parameters; its modes are libpq's, and its own default (prefer)
    is not one of ours, so `disable` is said too."""
    if tls.mode == "disable":
        return "sslmode=disable"
    params = {"ssl": "true", "sslmode": tls.mode}
    if tls.ca is not None:
        params["sslrootcert"] = str(tls.ca)
    return urllib.parse.urlencode(params, quote_via=urllib.parse.quote, safe="")


def _mariadb_jdbc_tls(tls: Tls, department: str = "") -> str:
    """MariaDB Connector/J's TLS parameters: `trust` is its word for TLS without checking.
    It reads parameters as written, without percent-decoding, so the CA's path goes in bare.

    >>> _mariadb_jdbc_tls(Tls(mode="verify-ca", ca="/etc/city/ca.pem"), "environment")
    'sslMode=verify-ca&serverSslCert=/etc/city/ca.pem'
    """
    params = [f"sslMode={ {'require': 'trust'}.get(tls.mode, tls.mode) }"]
    if tls.ca is not None:
        if re.search(r"[&?#;=\s]", str(tls.ca)):
            raise ConfigError(
                f"departments.{department}.store.tls.ca: {str(tls.ca)!r} cannot go to MariaDB's JDBC driver, "
                "which takes no path with &, ?, #, ;, = or spaces"
            )
        params.append(f"serverSslCert={tls.ca}")
    return "&".join(params)


def write_catalog_files(settings: EngineSettings, out: Path) -> list[Path]:
    """Write one ``<catalog>.properties`` per department; return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, department in settings.departments.items():
        connector, properties = catalog_properties(name, department.store)
        path = out / f"{department.catalog}.properties"
        lines = [f"connector.name={connector}", *(f"{k}={_escape_property(v)}" for k, v in properties.items())]
        write_atomic(path, "\n".join(lines) + "\n", mode=0o600)  # it holds the store's password
        written.append(path)
    return written


def _escape_property(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _hmac_hex(value: exp.Expr, key: bytes) -> exp.Expr:
    # The key is in the statement's text. Trino must compute the pseudonym (a statement also
    # filters, joins and orders by it), and anything Trino could compute it from would let a
    # reader recompute every pseudonym as well as the key does. So the text is guarded where
    # Trino keeps it: only the gateway's Trino user (and an admin) may read its statements
    # (docs/operations.md, "Trino's query history and the hash key"; tests/test_trino_history.py).
    digest = exp.Anonymous(
        this="HMAC_SHA256",
        expressions=[
            exp.Anonymous(this="TO_UTF8", expressions=[value]),
            exp.Anonymous(this="TO_UTF8", expressions=[exp.Literal.string(key.decode())]),
        ],
    )
    return exp.Lower(this=exp.Anonymous(this="TO_HEX", expressions=[digest]))


def _timestamp_text(value: exp.Expr) -> exp.Expr:
    # exp.Cast itself: exp.cast() leaves a value already cast to TIMESTAMP(3) as it is
    micro = exp.Cast(this=value, to=exp.DataType.build("TIMESTAMP(6)", dialect="trino"))
    return exp.Cast(this=micro, to=exp.DataType.build("VARCHAR"))


def _md5_digest(value: exp.Expr) -> exp.Expr:
    """The digest's bytes: VARBINARY orders byte by byte, as lower-case hex does, and spares
    every row of a list ordered by a masked key a hex string (a fifth of the list's CPU time
    on Trino)."""
    return exp.Anonymous(this="MD5", expressions=[exp.Anonymous(this="TO_UTF8", expressions=[value])])


_DROPPED = re.compile(r"Connection aborted|RemoteDisconnected|Connection reset by peer")


class _Session(requests.Session):
    """A session whose own ``verify`` holds: requests otherwise lets REQUESTS_CA_BUNDLE or
    CURL_CA_BUNDLE replace it on every request (psf/requests#3829), so a configured CA, or
    ``verify: false``, would be silently ignored wherever those are set."""

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        settings["verify"] = self.verify if verify is None else verify
        return settings


class _TokenFile(trino.auth.Authentication, requests.auth.AuthBase):
    """A JWT kept in a file, read again when the file changes: a platform that rotates a
    mounted token needs no restart of the gateway."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, str] | None = None
        self._lock = threading.Lock()

    def set_http_session(self, http_session: requests.Session) -> requests.Session:
        http_session.auth = self
        return http_session

    def token(self) -> str:
        try:
            changed = self.path.stat().st_mtime_ns
            with self._lock:
                if self._seen is None or self._seen[0] != changed:
                    self._seen = (changed, self.path.read_text(encoding="utf-8").strip())
                return self._seen[1]
        except OSError as error:
            raise EngineUnavailableError(
                f"cannot read the JWT for Trino from {self.path} (check engine.trino.jwt_file)", detail=str(error)
            ) from None

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        return request


def authentication(settings: TrinoSettings) -> trino.auth.Authentication | None:
    """How the gateway proves itself to Trino, with the secret taken from where the
    configuration points; :class:`ConfigError` when it is not there."""

    def from_env(key: str, name: str) -> str:
        value = os.environ.get(name, "")
        if not value:
            raise ConfigError(f"engine.trino.{key}: environment variable {name} is not set (or is empty)")
        return value

    if settings.password_env is not None:
        return trino.auth.BasicAuthentication(settings.user, from_env("password_env", settings.password_env))
    if settings.jwt_env is not None:
        return trino.auth.JWTAuthentication(from_env("jwt_env", settings.jwt_env))
    if settings.jwt_file is not None:
        return _TokenFile(settings.jwt_file)
    return None


class _Trino(Trino, KeyedDialect):
    class Generator(Trino.Generator):  # type: ignore[misc,valid-type]
        TRANSFORMS: ClassVar = {
            **Trino.Generator.TRANSFORMS,
            **vocabulary(
                partial=partial_sql, hmac_hex=_hmac_hex, md5_digest=_md5_digest, timestamp_text=_timestamp_text
            ),
        }


class TrinoEngine(Engine):
    name = "trino"
    dialect = "trino"
    Dialect = _Trino

    def __init__(self, settings: EngineSettings) -> None:
        super().__init__(settings)
        self.trino = settings.trino
        self._local = threading.local()
        self.statements = 0  # statements sent; tests count round trips with it
        self._catalogs_checked = False
        self._catalog_lock = threading.Lock()
        self._columns = Prefetch(self._read_columns)
        self._auth = authentication(self.trino)

    # -- addressing ---------------------------------------------------------------------------

    def physical_table(self, department: str, table: str) -> exp.Table:
        store = self.departments[department].store
        return exp.Table(
            this=exp.to_identifier(table, quoted=True),
            db=exp.to_identifier(schema_of(store), quoted=True),
            catalog=exp.to_identifier(self.departments[department].catalog, quoted=True),
        )

    @property
    def address(self) -> str:
        return f"{self.trino.http_scheme}://{self.trino.host}:{self.trino.port}"

    # -- running ------------------------------------------------------------------------------

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            session = _Session()
            session.verify = str(self.trino.verify) if isinstance(self.trino.verify, Path) else self.trino.verify
            conn = trino.dbapi.connect(  # type: ignore[no-untyped-call]
                host=self.trino.host,
                port=self.trino.port,
                user=self.trino.user,
                http_scheme=self.trino.http_scheme,
                http_session=session,
                auth=self._auth or trino.constants.DEFAULT_AUTH,
                request_timeout=self.trino.request_timeout,
                max_attempts=1,
                source="citygate",
            )
            self._local.conn = conn
        return conn

    def run(
        self, sql: str, departments: Sequence[str], max_rows: int | None = None, cancel: Cancel | None = None
    ) -> Answer:
        if self.trino.create_missing_catalogs and not self._catalogs_checked:
            self.ensure_catalogs()
        return self._run(sql, list(departments), max_rows, cancel)

    def _run(self, sql: str, touched: list[str], max_rows: int | None = None, cancel: Cancel | None = None) -> Answer:
        try:
            return self._run_once(sql, touched, max_rows, cancel)
        except EngineUnavailableError as error:
            if not _DROPPED.search(error.detail or "") or (cancel is not None and cancel.cancelled):
                raise
        # Trino closed the connection before it answered: it does so after refusing a request
        # whose body it did not read (a 401), and the client may see the close before the
        # refusal. Once more on a new connection, which tells the two apart (a read-only
        # statement that ran twice changes nothing).
        self._local.conn = None
        return self._run_once(sql, touched, max_rows, cancel)

    def _run_once(
        self, sql: str, touched: list[str], max_rows: int | None = None, cancel: Cancel | None = None
    ) -> Answer:
        cursor = self._connection().cursor()
        if cancel is not None:
            cancel.on_cancel(lambda: _quietly(cursor.cancel))
        try:
            with self._errors(touched):
                self.statements += 1
                cursor.execute(sql)
                rows = cursor.fetchall() if max_rows is None else cursor.fetchmany(max_rows + 1)
                if max_rows is not None and len(rows) > max_rows:
                    cursor.cancel()  # Trino would go on producing the rest
                    raise ResultTooLarge(max_rows)
                description = cursor.description or []
        except CitygateError:
            if cancel is not None and cancel.cancelled:
                raise EngineQueryError("the query was cancelled: it ran past its time") from None
            raise
        finally:
            if cancel is not None:
                cancel.on_cancel(None)
        return Answer(
            columns=tuple(d[0] for d in description),
            types=tuple(str(d[1]) for d in description),
            rows=[tuple(r) for r in rows],
        )

    @contextmanager
    def _errors(self, touched: list[str]) -> Iterator[None]:
        try:
            yield
        except requests.exceptions.RequestException as error:
            raise self._unreachable(str(error)) from None
        except trino.exceptions.HttpError as error:
            raise self._unreachable(str(error)) from None
        except TrinoExternalError as error:
            raise self._store_failure(touched, error) from None
        except TrinoUserError as error:
            raise self._user_failure(touched, error) from None
        except TrinoQueryError as error:
            raise EngineQueryError("Trino could not run the query", detail=error_class(error)) from None
        except trino.exceptions.TrinoConnectionError as error:
            raise self._unreachable(str(error)) from None
        except trino.exceptions.TrinoDataError:
            # The client cannot hold a value Trino sent: a timestamp of year 10000, which Trino's
            # millisecond timestamps make of 9999-12-31 23:59:59.9995 and later. Its message
            # quotes the value, so it stays out of the error.
            raise EngineQueryError("Trino returned a value the gateway cannot read") from None

    def _unreachable(self, text: str) -> EngineUnavailableError:
        """Why Trino could not be used, and which key to check: its certificate, the
        credentials it refused, or its address."""
        where = f"Trino at {self.address}"
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            if "mismatch" in text or "not valid for" in text:
                reason = f"presents a certificate that is not for host {self.trino.host!r} (check engine.trino.host)"
            else:
                reason = "presents a certificate its CA does not sign (check engine.trino.verify)"
            return EngineUnavailableError(f"{where} {reason}", detail=text)
        if "SSLError" in text or "SSL:" in text:
            return EngineUnavailableError(
                f"{where}: the TLS handshake failed (check engine.trino.http_scheme and port)", detail=text
            )
        if re.search(r"\berror 401\b", text):
            secret = {
                "password_env": f"the password in ${self.trino.password_env}",
                "jwt_env": f"the token in ${self.trino.jwt_env}",
                "jwt_file": f"the token in {self.trino.jwt_file}",
            }
            given = next((v for k, v in secret.items() if getattr(self.trino, k) is not None), None)
            check = f"engine.trino.user and {given}" if given else "engine.trino: password_env, jwt_env or jwt_file"
            return EngineUnavailableError(f"{where} refused the gateway's credentials (check {check})", detail=text)
        return EngineUnavailableError(
            f"{where} is unreachable (check engine.trino.host and engine.trino.port, or start it with `make services`)",
            detail=text,
        )

    def _department_in(self, touched: list[str], text: str) -> str | None:
        """The department a Trino message is about: named catalog, else the only one touched."""
        for department in touched or list(self.departments):
            catalog = self.departments[department].catalog
            if f"'{catalog}'" in text or f"catalog {catalog}" in text or f"{catalog}." in text:
                return department
        return touched[0] if len(touched) == 1 else None

    def _store_failure(self, touched: list[str], error: TrinoQueryError) -> CitygateError:
        text = f"{error.error_name}: {error.message}"
        department = self._department_in(touched, text)
        if refused_by_store(text):
            # The store answered, and refused the statement: it is not down, and must not be
            # reported so (a caller could otherwise make a department look down at will). A
            # store's own message rarely names the catalog: the department may be unknown.
            # Its class only: the store's message can quote the values the statement read.
            whose = f"department {department}'s store" if department is not None else "a department's store"
            return EngineQueryError(f"{whose} refused the query", detail=error_class(error))
        if department is None:
            names = ", ".join(touched) or "unknown"
            return StoreUnavailableError(
                names, f"a department's store did not answer ({names})", detail=without_values(text)
            )
        return describe_store_failure(department, self.departments[department].store, text)

    def _user_failure(self, touched: list[str], error: TrinoQueryError) -> CitygateError:
        text = f"{error.error_name}: {error.message}"
        if error.error_name == "CATALOG_NOT_FOUND":
            department = self._department_in(touched, text) or "unknown"
            return StoreUnavailableError(
                department,
                f"department {department}: Trino at {self.address} has no catalog "
                f"{self.departments[department].catalog if department in self.departments else ''!r} "
                f"(write it with `citygate trino-catalogs`, or set engine.trino.create_missing_catalogs)",
                detail=error_class(error),
            )
        if error.error_name == "CATALOG_UNAVAILABLE":
            department = self._department_in(touched, text) or "unknown"
            return StoreUnavailableError(
                department,
                f"department {department}: Trino could not start catalog "
                f"{self.departments[department].catalog if department in self.departments else ''!r} "
                f"(check its catalog properties and Trino's server log)",
                detail=error_class(error),
            )
        if error.error_name in ("SCHEMA_NOT_FOUND", "TABLE_NOT_FOUND"):
            department = self._department_in(touched, text) or "unknown"
            return StoreUnavailableError(
                department,
                f"department {department}: a table or schema the query needs is missing from its store",
                detail=error_class(error),
            )
        return EngineQueryError("Trino refused the query", detail=error_class(error))

    # -- catalogs -----------------------------------------------------------------------------

    def catalogs(self) -> set[str]:
        result = self._run("SHOW CATALOGS", [])
        return {row[0] for row in result.rows}

    def ensure_catalogs(self) -> list[str]:
        """Register each department's catalog that Trino lacks (needs catalog.management=dynamic)."""
        with self._catalog_lock:
            present = self.catalogs()
            created = []
            for name, department in self.departments.items():
                catalog = self.departments[name].catalog
                if catalog in present:
                    continue
                connector, properties = catalog_properties(name, department.store)
                with_clause = ", ".join(
                    f"{exp.to_identifier(k, quoted=True).sql('trino')} = {exp.Literal.string(v).sql('trino')}"
                    for k, v in properties.items()
                )
                statement = exp.Command(
                    this="CREATE",
                    expression=exp.Literal.string(
                        f"CATALOG {exp.to_identifier(catalog, quoted=True).sql('trino')} "
                        f"USING {exp.to_identifier(connector).sql('trino')} WITH ({with_clause})"
                    ),
                )
                self._run(f"{statement.this} {statement.expression.name}", [name])
                created.append(catalog)
            self._catalogs_checked = True
            return created

    # -- catalogue ----------------------------------------------------------------------------

    def read_department(self, department: str) -> Department:
        spec = self.departments[department]
        store = spec.store
        if isinstance(store, SqliteStore):
            catalog_properties(department, store)  # raises the clear error
        if self.trino.create_missing_catalogs and not self._catalogs_checked:
            # Introspection is a gateway's first statement: register the catalogs before it.
            self.ensure_catalogs()
        # one statement for all, which Trino runs in parallel
        rows = self._columns.take(
            department, lambda: [d for d, s in self.departments.items() if not isinstance(s.store, SqliteStore)]
        )
        tables: dict[str, list[Column]] = {}
        for table_name, column_name, data_type, nullable in rows:
            tables.setdefault(table_name, []).append(
                Column(column_name, logical_type(data_type, "trino"), nullable == "YES")
            )
        return Department(
            name=department,
            display_name=spec.display_name,
            tables=tuple(Table(department, name, tuple(cols)) for name, cols in sorted(tables.items())),
        )

    def _read_columns(self, departments: list[str]) -> dict[str, list[tuple[Any, ...]]]:
        """department -> its (table, column, type, nullable) rows, in one statement for all."""
        selects = []
        for department in departments:
            columns = exp.Table(
                this=exp.to_identifier("columns"),
                db=exp.to_identifier("information_schema"),
                catalog=exp.to_identifier(self.departments[department].catalog, quoted=True),
            )
            selects.append(
                exp.select(
                    exp.alias_(exp.Literal.string(department), "department"),
                    "table_name",
                    "column_name",
                    "data_type",
                    "is_nullable",
                    "ordinal_position",
                )
                .from_(columns)
                .where(exp.column("table_schema").eq(exp.Literal.string(schema_of(self.departments[department].store))))
            )
        found: dict[str, list[tuple[Any, ...]]] = {d: [] for d in departments}
        if not selects:
            return found
        union = selects[0]
        for select in selects[1:]:
            union = exp.union(union, select, distinct=False)  # type: ignore[assignment]
        query = exp.select("*").from_(union.subquery("c")).order_by("department", "table_name", "ordinal_position")
        for department, *row, _ in self._run(query.sql(dialect=self.dialect), departments).rows:
            found[department].append(tuple(row))
        return found

    def ping(self) -> None:
        self._run("SELECT 1", [])

    def close(self) -> None:
        self._local = threading.local()
