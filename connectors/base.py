"""One engine interface: run a sqlglot tree, read the catalogue, report health.

The compiler addresses tables logically, as ``department.table`` (an ``exp.Table`` whose ``db``
is the department and which has no catalog). Each engine relocates those references to where
it reads the table (:meth:`Engine.locate`) and renders SQL text once, with sqlglot, in its own
dialect. Engines hold no policy logic.
"""

from __future__ import annotations

import contextlib
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Generic, TypeVar

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect

from catalogue.errors import CitygateError
from catalogue.model import Catalogue, Column, Department
from catalogue.sql import (
    Hash,
    Partial,
    Ratio,
    Slice,
    Tie,
    TimestampText,
    departments_in,
    is_logical,
    ratio_sql,
    slice_sql,
    tie_key,
)
from catalogue.types import LogicalType, logical_type
from connectors.settings import EngineSettings

T = TypeVar("T")
Render = Callable[[Any, Any], str]  # a generator's TRANSFORMS entry: (generator, node) -> SQL text

_RUNS = re.compile(r"[0-9A-Za-z_-]{16,}")  # what could be cut from a key as an engine writes it
_WINDOW = 16


@dataclass(frozen=True, slots=True)
class Answer:
    """What an engine returns for a statement: its columns, their types and every row."""

    columns: tuple[str, ...]
    types: tuple[str, ...]  # the engine's own type names
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Health:
    """Whether the engine answers (``reachable``), and each department's store through it."""

    engine: str
    reachable: bool
    departments: dict[str, str] = field(default_factory=dict)  # department -> "ok" or a message
    problem: str = ""  # why the engine itself does not answer (its address, certificate, credentials)
    # route -> "ok" or a message: the engine's, and each store's own (the delegated route)
    routes: dict[str, str] = field(default_factory=dict)

    @property
    def serving(self) -> bool:
        """Whether some route takes statements: the engine, or a store that runs its own. Where
        the routes are known, their states say it (the engine's is not ``ok`` while it answers
        but may not be sent statements), else whether the engine answers."""
        if self.routes:
            return any(state == "ok" for state in self.routes.values())
        return self.reachable

    @property
    def ok(self) -> bool:
        """The engine and every department's store answer."""
        return self.reachable and all(state == "ok" for state in self.departments.values())


def vocabulary(
    partial: Callable[[exp.Expr, int, int], exp.Expr],
    hmac_hex: Callable[[exp.Expr, bytes], exp.Expr],
    md5_digest: Callable[[exp.Expr], exp.Expr],
    timestamp_text: Callable[[exp.Expr], exp.Expr],
) -> dict[type[exp.Expr], Render]:
    """The ``TRANSFORMS`` entries that render citygate's SQL vocabulary (:mod:`catalogue.sql`)
    in one engine's functions, from four of its building blocks:

    - ``partial(value, first, last)``: the partial mask (the portable :func:`partial_sql`, or
      fewer calls where the engine has them: it plans a statement in time that grows with its
      calls);
    - ``hmac_hex(value, key)``: lower-case hex HMAC-SHA256 of a text under ``key``;
    - ``md5_digest(value)``: MD5 of a text's UTF-8, as a value that orders as its lower-case
      hex does (the hex itself, or the digest's bytes), so pages cut by it are the same on
      every engine;
    - ``timestamp_text(value)``: a timestamp as ``YYYY-MM-DD HH:MM:SS.ffffff``.

    The hash key is the dialect's (:class:`KeyedDialect`), never the query's.
    """

    def key(generator: Any) -> bytes:
        found: bytes | None = getattr(generator.dialect, "hash_key", None)
        if found is None:
            raise CitygateError("the hash mask, and ordering by a masked key, need policies.hash_key")
        return found

    def hashed(generator: Any, node: Hash) -> str:
        digest = hmac_hex(node.this, key(generator))
        prefix = exp.Substring(this=digest, start=exp.Literal.number(1), length=exp.Literal.number(16))
        return str(generator.sql(exp.DPipe(this=exp.Literal.string("h:"), expression=prefix)))

    def tie(generator: Any, node: Tie) -> str:
        # A key of its own (catalogue.sql.tie_key), so a statement ordering by a tie never
        # holds the hash mask's key; MD5, not an HMAC: it is computed for every row ordered.
        keyed = exp.DPipe(this=exp.Literal.string(tie_key(key(generator))), expression=node.this)
        return str(generator.sql(md5_digest(keyed)))

    return {
        Partial: lambda generator, node: str(generator.sql(partial(node.this, *node.kept))),
        Hash: hashed,
        Tie: tie,
        TimestampText: lambda generator, node: str(generator.sql(timestamp_text(node.this))),
        # one portable form each, the same on every engine (catalogue.sql explains why)
        Slice: lambda generator, node: str(generator.sql(slice_sql(node))),
        Ratio: lambda generator, node: str(generator.sql(ratio_sql(node))),
    }


class Prefetch(Generic[T]):
    """Departments' catalogues read all at once at the first read (a gateway starting), then
    handed out one department at a time. Reading them one by one costs a round trip each on
    Trino (about 0.2 s, 13 s for 73 departments) and, on DuckDB, time in the square of their
    number (each duckdb_columns() call walks every attached catalogue: 18 s for 73). A
    department the first read failed or left out, and any later read, is read on its own."""

    def __init__(self, read: Callable[[list[str]], dict[str, T]]) -> None:
        self._read = read
        self._done = False
        self._found: dict[str, T] = {}

    def take(self, department: str, everyone: Callable[[], list[str]]) -> T:
        """``department``'s catalogue; at the first call, read with those of ``everyone()``."""
        if not self._done:
            self._done = True
            with contextlib.suppress(CitygateError):  # a store that fails is then read on its own
                self._found = self._read(everyone())
        found = self._found.pop(department, None)
        return found if found is not None else self._read([department])[department]


class Cancel:
    """Stops a running statement from another thread: the engine says how once the statement
    runs (:meth:`on_cancel`), and :meth:`cancel` stops it then, or as soon as it starts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop: Callable[[], object] | None = None
        self.cancelled = False

    def on_cancel(self, stop: Callable[[], object] | None) -> None:
        """How to stop the statement now running (None: it has finished)."""
        with self._lock:
            self._stop = stop
            cancelled = self.cancelled
        if cancelled and stop is not None:
            stop()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            stop = self._stop
        if stop is not None:
            stop()


class KeyedDialect(Dialect):
    """A dialect that holds the hash mask's key for its generator's ``TRANSFORMS``."""

    def __init__(self, hash_key: bytes | None = None, **settings: Any) -> None:
        super().__init__(**settings)
        self.hash_key = hash_key


class Engine(ABC):
    """A query engine over every configured department."""

    name: str
    dialect: str  # sqlglot's name of the engine's SQL
    Dialect: ClassVar[type[KeyedDialect]]  # that SQL with citygate's vocabulary (catalogue.sql)
    # CPUs its statements compute on in this process (the embedded engine's threads); None: it
    # computes elsewhere (Trino, a store), and callers' shares of it are counted in statements
    parallelism: int | None = None

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.departments = settings.departments
        self._dialect = self.Dialect(hash_key=settings.hash_key)
        # Columns as the engine reads them, before configured types: what casts start from.
        self._raw_columns: dict[tuple[str, str], tuple[Column, ...]] = {}

    @abstractmethod
    def physical_table(self, department: str, table: str) -> exp.Table:
        """Where this engine reads ``department.table``."""

    def locate(self, tree: exp.Expr) -> exp.Expr:
        """Copy ``tree`` with every logical table reference replaced by its physical one, and
        every other node in this engine's own form (:meth:`_engine_form`): one walk of the
        tree, which a request with new values pays again."""

        def relocate(node: exp.Expr) -> exp.Expr:
            if isinstance(node, exp.Table) and is_logical(node):
                if node.db not in self.departments:
                    raise CitygateError(f"unknown department {node.db!r}")
                return self._source(node.db, node.name, node.alias or None)
            return self._engine_form(node)

        return tree.transform(relocate)

    def _engine_form(self, node: exp.Expr) -> exp.Expr:
        """One node as this engine runs it; a node that comes back replaced is not walked into."""
        return node

    def as_read(self, value: exp.Expr, kind: LogicalType) -> exp.Expr:
        """``value`` of logical ``kind`` as this engine reads a column of that kind: what a
        literal stands for when a mask is tried on sample values (``gateway.execution.proof``)."""
        return value

    def redact(self, text: str) -> str:
        """``text`` (an engine's message, for the log) with the key material this engine puts in
        statements replaced: the hash key as each engine writes it, and the tie-break key."""
        key = self.settings.hash_key
        if key is None or not text:
            return text
        secrets = self._secrets(key)
        for secret in secrets:
            text = text.replace(secret, "<key>")
        # An engine that quotes the statement may cut it inside a key block ("LINE 1: ...5c5c"):
        # a run that shares 16 characters with the key material is key material too. Any other
        # run of digits, a caller's long literal, stays as it was.
        lowered = [secret.lower() for secret in secrets]

        def cut(match: re.Match[str]) -> str:
            run = match.group().lower()
            windows = (run[i : i + _WINDOW] for i in range(len(run) - _WINDOW + 1))
            return "<key>" if any(w in secret for w in windows for secret in lowered) else match.group()

        return _RUNS.sub(cut, text)

    def _secrets(self, key: bytes) -> list[str]:
        text = key.decode()
        return [text, text.replace("'", "''"), key.hex(), tie_key(key)]  # as is, and quoted in SQL

    def _source(self, department: str, table: str, alias: str | None) -> exp.Expr:
        """The physical table, or a subquery over it that casts to the configured column types."""
        physical = self.physical_table(department, table)
        casts = self._casts(department, table)
        if not casts:
            if alias:
                physical.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
            return physical
        projections = [
            exp.alias_(
                exp.cast(exp.column(exp.to_identifier(c.name, quoted=True)), casts[c.name].to_sqlglot()),
                exp.to_identifier(c.name, quoted=True),
            )
            if c.name in casts
            else exp.column(exp.to_identifier(c.name, quoted=True))
            for c in self._raw_columns[(department, table)]
        ]
        return exp.select(*projections).from_(physical).subquery(exp.to_identifier(alias or table))

    def _casts(self, department: str, table: str) -> dict[str, LogicalType]:
        wanted = {
            key.split(".", 1)[1]: logical_type(type_name)
            for key, type_name in self.departments[department].column_types.items()
            if key.split(".", 1)[0] == table
        }
        if not wanted:
            return {}
        if (department, table) not in self._raw_columns:
            self.introspect_department(department)
        raw = {c.name: c.type for c in self._raw_columns.get((department, table), ())}
        return {name: kind for name, kind in wanted.items() if name in raw and raw[name] != kind}

    def sql(self, tree: exp.Expr) -> str:
        """The text this engine runs for ``tree``: the only place SQL text is produced."""
        return self.locate(tree).sql(dialect=self._dialect)

    def execute(self, tree: exp.Expr) -> Answer:
        """Run a logical tree and return all rows."""
        return self.run(self.sql(tree), departments_in(tree))

    @abstractmethod
    def run(
        self, sql: str, departments: Sequence[str], max_rows: int | None = None, cancel: Cancel | None = None
    ) -> Answer:
        """Run SQL text that :meth:`sql` produced; ``departments`` are the ones it reads.
        :class:`ResultTooLarge` if it returns more than ``max_rows`` rows (never more are read);
        ``cancel`` stops it from another thread (:class:`EngineQueryError` then)."""

    @abstractmethod
    def read_department(self, department: str) -> Department:
        """Tables, columns and logical types of one department, as this engine reads them."""

    def introspect_department(self, department: str) -> Department:
        """One department's tables, with configured column types applied."""
        raw = self.read_department(department)
        overrides = self.departments[department].column_types
        tables = []
        for table in raw.tables:
            self._raw_columns[(department, table.name)] = table.columns
            columns = tuple(
                replace(c, type=logical_type(overrides[f"{table.name}.{c.name}"]))
                if f"{table.name}.{c.name}" in overrides
                else c
                for c in table.columns
            )
            tables.append(replace(table, columns=columns))
        return replace(raw, tables=tuple(tables))

    def introspect(self, departments: Iterable[str] | None = None) -> Catalogue:
        names = list(departments) if departments is not None else list(self.departments)
        return Catalogue(tuple(self.introspect_department(name) for name in names))

    def health(self) -> Health:
        """Whether the engine answers, and each department's store with it."""
        states: dict[str, str] = {}
        try:
            self.ping()
        except CitygateError as error:
            unknown = dict.fromkeys(self.departments, "unknown: the engine does not answer")
            return Health(self.name, False, unknown, problem=error.message)
        for department in self.departments:
            try:
                self.ping_department(department)
                states[department] = "ok"
            except CitygateError as error:
                states[department] = error.message
        return Health(self.name, True, states)

    @abstractmethod
    def ping(self) -> None:
        """Raise :class:`EngineUnavailableError` unless the engine answers a trivial query."""

    def ping_department(self, department: str) -> None:
        """Raise :class:`StoreUnavailableError` unless ``department``'s store answers."""
        self.introspect_department(department)

    def close(self) -> None:  # noqa: B027 - engines without resources need not override
        """Release connections."""
