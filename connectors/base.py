"""One engine interface: run a sqlglot tree, read the catalogue, report health.

The compiler addresses tables logically, as ``department.table`` (an ``exp.Table`` whose ``db``
is the department and which has no catalog). Each engine relocates those references to where
it reads the table (:meth:`Engine.locate`) and renders SQL text once, with sqlglot, in its own
dialect. Engines hold no policy logic.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlglot import exp

from catalogue.model import Catalogue, Column, Department
from catalogue.types import LogicalType, logical_type
from gateway.config import Config
from gateway.errors import CitygateError
from policies.masks import HASH_FUNCTION, PARTIAL_FUNCTION, TIE_FUNCTION, TIMESTAMP_TEXT_FUNCTION, partial_sql


def _tie_key(hash_key: bytes) -> str:
    """The key tie-break digests are made with, derived from the hash mask's own."""
    return hmac.new(hash_key, b"citygate tie-break", hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Result:
    columns: tuple[str, ...]
    types: tuple[str, ...]  # the engine's own type names
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Health:
    engine: str
    ok: bool
    departments: dict[str, str] = field(default_factory=dict)  # department -> "ok" or a message
    latency_ms: float = 0.0


def logical_table(department: str, table: str) -> exp.Table:
    """The compiler's reference to a department's table.

    >>> logical_table("health", "clinic_visits").sql()
    'health.clinic_visits'
    """
    return exp.Table(this=exp.to_identifier(table), db=exp.to_identifier(department))


def departments_in(tree: exp.Expr) -> list[str]:
    """The departments a tree reads, in order of first appearance."""
    seen: dict[str, None] = {}
    for table in tree.find_all(exp.Table):
        if table.db and not table.catalog:
            seen.setdefault(table.db, None)
    return list(seen)


class Engine(ABC):
    """A query engine over every configured department."""

    name: str
    dialect: str

    def __init__(self, config: Config) -> None:
        self.config = config
        # Columns as the engine reads them, before configured types: what casts start from.
        self._raw_columns: dict[tuple[str, str], tuple[Column, ...]] = {}

    @abstractmethod
    def physical_table(self, department: str, table: str) -> exp.Table:
        """Where this engine reads ``department.table``."""

    def locate(self, tree: exp.Expr) -> exp.Expr:
        """Copy ``tree`` with every logical table reference replaced by its physical one, and
        everything else in this engine's own form (:meth:`_engine_form`): one walk of the tree,
        which a request with new values pays again."""

        def relocate(node: exp.Expr) -> exp.Expr:
            if isinstance(node, exp.Table) and node.db and not node.catalog:
                if node.db not in self.config.departments:
                    raise CitygateError(f"unknown department {node.db!r}")
                return self._source(node.db, node.name, node.alias or None)
            return self._engine_form(node)

        return tree.transform(relocate)

    def _engine_form(self, node: exp.Expr) -> exp.Expr:
        """One node as this engine runs it: citygate's functions expanded. A node that comes
        back replaced is not walked into, so what this returns must need nothing more."""
        if not isinstance(node, exp.Anonymous):
            return node
        name = node.name.lower()
        if name.startswith("citygate_"):  # its arguments first: a timestamp's text inside a mask
            node = node.copy()
            node.set("expressions", [e.transform(self._engine_form) for e in node.expressions])
        if name == PARTIAL_FUNCTION:
            value, first, last = node.expressions
            return self.partial(value, int(first.name), int(last.name))
        if name == TIE_FUNCTION:
            # A key of its own, so the tie's statement never holds the hash mask's key; 128 bits
            # of it, so a key and an identity number fit MD5's one 64-byte block (a third less
            # time than with 256 bits, which take two).
            tie_key = _tie_key(self._hash_key())
            return self.md5_digest(exp.DPipe(this=exp.Literal.string(tie_key), expression=node.expressions[0]))
        if name == TIMESTAMP_TEXT_FUNCTION:
            return self.timestamp_text(node.expressions[0])
        if name == HASH_FUNCTION:
            return exp.DPipe(
                this=exp.Literal.string("h:"),
                expression=exp.Substring(
                    this=self.hmac_hex(node.expressions[0], self._hash_key()),
                    start=exp.Literal.number(1),
                    length=exp.Literal.number(16),
                ),
            )
        return node

    def redact(self, text: str) -> str:
        """``text`` (an engine's message, for the log) with the key material this engine puts in
        statements replaced: the hash key as each engine writes it, and the tie-break key."""
        policies = self.config.policies
        if policies is None or not text:
            return text
        for secret in self._secrets(policies.hash_key.encode()):
            text = text.replace(secret, "<key>")
        return text

    def _secrets(self, key: bytes) -> list[str]:
        text = key.decode()
        return [text, text.replace("'", "''"), key.hex(), _tie_key(key)]  # as is, and quoted in SQL

    def _hash_key(self) -> bytes:
        policies = self.config.policies
        if policies is None:
            raise CitygateError("the hash mask, and ordering by a masked key, need policies.hash_key")
        return policies.hash_key.encode()

    def partial(self, value: exp.Expr, first: int, last: int) -> exp.Expr:
        """The partial mask (:func:`policies.masks.partial_sql`) in this engine's functions."""
        return partial_sql(value, first, last)

    @abstractmethod
    def hmac_hex(self, value: exp.Expr, key: bytes) -> exp.Expr:
        """Lower-case hex HMAC-SHA256 of a string under ``key``, in this engine's functions."""

    @abstractmethod
    def timestamp_text(self, value: exp.Expr) -> exp.Expr:
        """A timestamp as `YYYY-MM-DD HH:MM:SS.ffffff` (microseconds always), in this engine's
        functions: the text the masks read of it on every engine."""

    @abstractmethod
    def md5_digest(self, value: exp.Expr) -> exp.Expr:
        """MD5 of a string's UTF-8 in this engine's functions, as a value that orders as its
        lower-case hex does (the hex itself, or the digest's bytes), so pages cut by it are the
        same on every engine."""

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
            for key, type_name in self.config.departments[department].column_types().items()
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
        return self.locate(tree).sql(dialect=self.dialect)

    def execute(self, tree: exp.Expr) -> Result:
        """Run a logical tree and return all rows."""
        return self.run(self.sql(tree), departments_in(tree))

    @abstractmethod
    def run(self, sql: str, departments: Sequence[str], max_rows: int | None = None) -> Result:
        """Run SQL text that :meth:`sql` produced; ``departments`` are the ones it reads.
        :class:`ResultTooLarge` if it returns more than ``max_rows`` rows (never more are read)."""

    @abstractmethod
    def read_department(self, department: str) -> Department:
        """Tables, columns and logical types of one department, as this engine reads them."""

    def introspect_department(self, department: str) -> Department:
        """One department's tables, with configured column types applied."""
        raw = self.read_department(department)
        overrides = self.config.departments[department].column_types()
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
        names = list(departments) if departments is not None else list(self.config.departments)
        return Catalogue(tuple(self.introspect_department(name) for name in names))

    def health(self) -> Health:
        """Whether the engine answers, and each department's store with it."""
        started = time.perf_counter()
        states: dict[str, str] = {}
        try:
            self.ping()
        except CitygateError:
            return Health(self.name, False, {}, (time.perf_counter() - started) * 1000)
        for department in self.config.departments:
            try:
                self.ping_department(department)
                states[department] = "ok"
            except CitygateError as error:
                states[department] = error.message
        ok = all(state == "ok" for state in states.values())
        return Health(self.name, ok, states, (time.perf_counter() - started) * 1000)

    @abstractmethod
    def ping(self) -> None:
        """Raise :class:`EngineUnavailableError` unless the engine answers a trivial query."""

    def ping_department(self, department: str) -> None:
        """Raise :class:`StoreUnavailableError` unless ``department``'s store answers."""
        self.introspect_department(department)

    def close(self) -> None:  # noqa: B027 - engines without resources need not override
        """Release connections."""


def create_engine(config: Config) -> Engine:
    """The engine the configuration names."""
    if config.engine.kind == "trino":
        from connectors.trino import TrinoEngine

        return TrinoEngine(config)
    from connectors.embedded import EmbeddedEngine

    return EmbeddedEngine(config)
