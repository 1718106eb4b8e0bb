"""The compiler's shared vocabulary: its errors and limits, the plan's types (:class:`Node`,
:class:`Compiled`, :class:`CompileContext`), the template slot kinds :mod:`gateway.graphql.shape`
reads, and the only ways names and user values enter SQL (:func:`ident`, :func:`col`,
:func:`marked`, :func:`literal`).

Every other module of the compiler stands on this one, and it on none of them, so that the
clauses (:mod:`~gateway.graphql.where`, :mod:`~gateway.graphql.order`) and the SQL of each node
kind (:mod:`~gateway.graphql.rows`, :mod:`~gateway.graphql.aggregate`,
:mod:`~gateway.graphql.group`) import each other without a cycle.

>>> col("t1", "name").sql("duckdb")
't1."name"'
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from graphql import FragmentDefinitionNode
from graphql.execution.values import VariableValues
from sqlglot import exp

from catalogue import names
from catalogue.errors import CitygateError
from catalogue.types import LITERALS, Kind, LogicalType, text_problem
from gateway.graphql.schema import Model, Relation, TableInfo
from policies.noise import Release

# Template slot kinds (see gateway.graphql.shape).
VALUE, CONST, NESTED, CHILD_LIST, CHILD_ONE, COMPOSITE = range(6)
Slot = tuple[Any, ...]


class CompileError(CitygateError):
    """The query asks for something the compiler cannot express; the message says what."""

    code = "BAD_USER_INPUT"

    def __init__(self, message: str, path: Sequence[str | int] = ()) -> None:
        super().__init__(message)
        self.path = list(path)


class TooManyTerms(CompileError):
    """A request's filters hold more conditions than any request may (:data:`MAX_TERMS`)."""

    code = "COST_LIMIT"


class TooSlow(CompileError):
    """The work before the engine took longer than the caller's role may (``limits.plan_seconds``)."""

    code = "COST_LIMIT"


def too_slow(seconds: float) -> str:
    return (
        f"the query took more than {seconds:g} s to prepare (parse, check, compile and apply the policies), "
        "more than its role may; ask for fewer fields or simpler filters"
    )


# Conditions (each comparison, and each value of `_in` and `_nin`) in all of one request's
# filters. Variables are not bounded by `limits.max_tokens`: an `_and` of 30,000 `_neq` in them
# took 72 s to compile and rewrite, growing worse than linearly.
MAX_TERMS = 2_000


AGGREGATES: dict[str, Callable[[exp.Expr], exp.Expr]] = {
    "sum": lambda e: exp.Sum(this=e),
    # Averages are taken in double precision on every engine: Trino's AVG over a decimal
    # rounds to the column's scale, DuckDB's does not.
    "avg": lambda e: exp.Avg(this=exp.cast(e, exp.DataType(this=exp.DataType.Type.DOUBLE), copy=False)),
    "min": lambda e: exp.Min(this=e),
    "max": lambda e: exp.Max(this=e),
}


def literal(value: Any, kind: LogicalType) -> exp.Expr:
    """A user's value as a typed literal node: the only way values enter SQL.

    >>> literal("南城' OR '1'='1", LogicalType("string")).sql("trino")
    "'南城'' OR ''1''=''1'"
    """
    if value is None:
        raise CompileError("null is not a value to compare with; use _is_null")
    problem = text_problem(value) if isinstance(value, str) else None
    if problem is not None:
        raise CompileError(f"a string value may not contain {problem}")
    if kind.kind == "decimal" and kind.precision is not None:
        # An engine casts the literal to the column's type to compare them, and fails on one
        # that does not fit (a cast overflow), naming neither the field nor the fix.
        whole = kind.precision - (kind.scale or 0)
        number = Decimal(value)
        if number and number.adjusted() + 1 > whole:
            raise CompileError(f"{value} does not fit a {kind} column: at most {whole} digits before the point")
    return LITERALS[kind.kind](value)


def ident(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def col(table: str, name: str) -> exp.Column:
    return exp.Column(this=ident(name), table=exp.to_identifier(table))


def marked(table: str, name: str, mark: str) -> exp.Column:
    """A column read for the compiler's own use: a relationship key (joined on its raw value
    inside the engine) or a tie-break; the policy step knows it by this mark."""
    column = col(table, name)
    column.meta[names.MARK] = mark
    return column


# -- the plan ------------------------------------------------------------------------------


@dataclass
class Node:
    """One level of the selection: a CTE whose rows become objects (or aggregates)."""

    index: int
    kind: str  # "rows", "agg" or "group"
    table: TableInfo
    parent: Node | None
    relation: Relation | None
    args: dict[str, Any]
    path: list[str | int]
    attach: tuple[str, ...]  # where the node's objects go in the parent object
    mode: str  # "append", "set" or "first"
    template: list[Slot] = field(default_factory=list)
    outputs: list[exp.Expr] = field(default_factory=list)  # over the node's alias / base columns
    keys: dict[str, str] = field(default_factory=dict)  # column -> hidden alias, for children's joins
    group_by: list[str] = field(default_factory=list)

    @property
    def cte(self) -> str:
        return f"n{self.index}"

    def output(self, expression: exp.Expr) -> int:
        self.outputs.append(expression)
        return len(self.outputs) - 1

    def key(self, column: str) -> str:
        return self.keys.setdefault(column, names.node_key(len(self.keys)))


@dataclass(frozen=True)
class Compiled:
    """One root field: its response key, the tree to run (before the role's policies: see
    :mod:`gateway.execution.prepared`), and how to shape the rows. Never changed once made."""

    key: str
    tree: exp.Expr
    nodes: tuple[Node, ...]
    # the response value before any row arrives: None (one object), [] (a list), or an
    # aggregate's ("composite", template)
    initial: list[Any] | tuple[str, list[Slot]] | None
    departments: tuple[str, ...]
    # the same field cut at the relationships that reach another store, one statement per
    # store and level (gateway.graphql.parts); none where it cannot be, or need not be
    parts: tuple[Part, ...] = ()

    def positions(self, outputs: Mapping[str, Release]) -> dict[int, dict[int, Release]]:
        """``outputs`` (by output name) by node and position in the statement's rows: after
        ``__node``, ``__parent`` and ``__id``, every node's outputs in turn (as shape reads them)."""
        offsets, position = {}, 3
        for node in self.nodes:
            offsets[node.index] = position
            position += len(node.outputs)
        found: dict[int, dict[int, Release]] = {}
        for name, release in outputs.items():
            node_index, index = (int(part) for part in name[1:].split("_"))
            found.setdefault(node_index, {})[offsets[node_index] + index] = release
        return found


@dataclass(frozen=True)
class Part:
    """One statement of a root field cut where its relationships reach another store: its
    nodes (``compiled``, whose tree reads one store), the part whose rows give it the keys it
    joins on (``parent``, -1 for the root's), which of that part's nodes carries them and
    where in its rows (``link_node``, ``link_at``), and its nodes that join on them (``tops``:
    their rows' parent is the place of their key in the list they were given, from 1)."""

    compiled: Compiled
    parent: int = -1
    link_node: int = -1
    link_at: int = -1
    tops: frozenset[int] = frozenset()


@dataclass
class CompileContext:
    model: Model
    fragments: Mapping[str, FragmentDefinitionNode]
    variables: VariableValues | None
    nodes: list[Node] = field(default_factory=list)
    aliases: int = 0
    terms: int = 0  # conditions in the request's filters so far
    # rows a root list may read without a `limit` of its own, and a nested list's rows of all
    # its parents together: one more than a request may return (limits.max_rows), so that the
    # engine stops reading there, and the fetch that finds one row too many says so
    cap: int | None = None
    deadline: float = math.inf  # time.monotonic() past which preparing the request stops (TooSlow)
    seconds: float = math.inf  # the role's limits.plan_seconds, for the message
    # department -> its store's key, where relationships between stores may be followed by key
    # (gateway.graphql.parts); None: every root field is one statement
    stores: Mapping[str, str] | None = None
    # while a part is made: its nodes that join on the keys they are given, the kind of those
    # keys, and the parent keys its rows return for other parts ((node, key alias) each)
    tops: frozenset[int] = frozenset()
    key_kind: Kind = "string"
    links: tuple[tuple[int, str], ...] = ()

    def in_time(self, path: list[str | int]) -> None:
        if time.monotonic() > self.deadline:
            raise TooSlow(too_slow(self.seconds), path)

    def count(self, terms: int, path: list[str | int]) -> None:
        self.terms += terms
        self.in_time(path)
        if self.terms > MAX_TERMS:
            raise TooManyTerms(
                f"the query's filters hold more than {MAX_TERMS} conditions (`_in` values counted each); "
                "ask for less in one request",
                path,
            )

    def alias(self) -> str:
        self.aliases += 1
        return f"t{self.aliases}"
