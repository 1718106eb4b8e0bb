"""What a request compiles to and what it answers: its plan, reused while the schema and the
policies stand, and its response, with what the audit trail records of both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from graphql import DocumentNode, FieldNode, OperationDefinitionNode
from sqlglot import exp

from catalogue import names
from catalogue.names import KEY, TIE
from gateway.execution.prepared import Batched, Refused, Statement
from gateway.execution.views import View
from gateway.graphql.compile import Compiled


@dataclass
class Response:
    """A GraphQL response, whether the request itself was refused (parse, validation), and
    what the audit trail records of it."""

    body: dict[str, Any]
    request_error: bool = False
    statements: int = 0  # statements the engine ran (cache hits excluded)
    plan: Plan | None = None
    rows: dict[str, int] = field(default_factory=dict)  # response key -> rows returned
    cache: dict[str, str] = field(default_factory=dict)  # response key -> hit, miss or off
    routes: dict[str, str] = field(default_factory=dict)  # response key -> where it ran (delegated, trino...)
    claims: dict[str, Any] = field(default_factory=dict)  # the claims the role's policies use
    epsilon: dict[str, float] = field(default_factory=dict)  # response key -> privacy budget it spent
    encoded: bytes | None = None  # the body as JSON, when it was encoded already


@dataclass(frozen=True)
class Memo:
    """A cached plan's last answer: the cached rows it came from (the very objects), and the
    response made of them, shaped and encoded. Nothing changes either once made."""

    rows: tuple[Any, ...]
    response: Response


def encode(body: Any) -> bytes:
    """A response body as compact UTF-8 JSON."""
    return orjson.dumps(body)


@dataclass(frozen=True, eq=False)
class Plan:
    """What a request compiles to, made once per plan key and never changed after: each root
    field's statement as its role runs it (:mod:`gateway.execution.prepared`), or why it has
    none. Reused as long as the schema and the policies stand; execution only runs it.
    Compared by identity (its last answer is kept beside it: :class:`Memo`)."""

    refused: Response | None = None
    keys: tuple[str, ...] = ()  # response keys, in order
    static: Mapping[str, str] = field(default_factory=dict)  # root __typename
    compiled: Mapping[str, Compiled] = field(default_factory=dict)
    statements: Mapping[str, Statement | Batched | Refused] = field(default_factory=dict)  # by response key
    errors: tuple[dict[str, Any], ...] = ()
    locations: Mapping[str, dict[str, int]] = field(default_factory=dict)
    introspection: tuple[DocumentNode, OperationDefinitionNode, dict[str, list[FieldNode]]] | None = None
    access: list[dict[str, Any]] = field(default_factory=list)  # the audit's account of what it reads
    audited: tuple[str, orjson.Fragment] | None = None  # the query's hash and `access` as JSON
    weight: int = 0  # its estimated size in memory, for the plan cache's budget
    cost: int = 0  # the rows its statements may materialise at worst (gateway.graphql.cost)
    version: str = "-"  # the policies' version it was made under
    transient: bool = False  # refused for the time it took, which another moment may not: never kept


# What a plan or a parsed document holds in memory, as measured with tracemalloc: about 100
# bytes per character of the query (the document's nodes) and 450 per node of a compiled tree.
PER_CHARACTER, PER_NODE, BASE = 100, 450, 4096
MEMO_BYTES = 16 << 10  # a larger answer is shaped again from the cached rows, not kept encoded


def plan_weight(plan: Plan) -> int:
    return BASE + MEMO_BYTES + plan.weight  # the memo comes later: counted at its largest


def document_weight(entry: tuple[int, DocumentNode | Response]) -> int:
    return entry[0]


def access(compiled: Any, view: View) -> list[dict[str, Any]]:
    """What the root fields read, table by table, with the treatment each column gets; join
    and tie-break keys, read raw inside the engine and never returned, listed apart."""
    read: dict[tuple[str, str], tuple[set[str], set[str]]] = {}
    for field_plan in compiled:
        aliases: dict[str, tuple[str, str]] = {}
        for table in field_plan.tree.find_all(exp.Table):
            if table.db:
                aliases[table.alias_or_name] = (table.db, table.name)
                read.setdefault((table.db, table.name), (set(), set()))
        for column in field_plan.tree.find_all(exp.Column):
            owner = aliases.get(column.table)
            if owner is not None:
                columns, keys = read[owner]
                (keys if column.meta.get(names.MARK) in (KEY, TIE) else columns).add(column.name)
    access = []
    for (department, table), (columns, keys) in sorted(read.items()):
        decision = view.decisions.get((department, table)) if view.decisions is not None else None
        entry: dict[str, Any] = {
            "department": department,
            "table": table,
            "access": decision.access if decision is not None else "allow",
            "columns": {c: str(decision.columns[c]) if decision is not None else "raw" for c in sorted(columns)},
        }
        if keys:
            entry["keys"] = sorted(keys)
        if decision is not None and decision.row_filter is not None:
            entry["row_filter"] = decision.row_filter
        access.append(entry)
    return access


def count_rows(value: Any) -> int:
    """Rows a root field returned: list items, or one object (``_by_pk``, ``_aggregate``)."""
    if isinstance(value, list):
        return len(value)
    return 0 if value is None else 1


def refused(errors: list[dict[str, Any]]) -> Response:
    return Response({"errors": errors}, request_error=True)
