"""What a request may cost, decided before any of it runs.

Two measures. The document's *shape*: how deep its fields nest, how many root fields it has
and how many fields in all, fragments expanded and every alias counted (a field asked for
twice is worked for twice). And the *rows* its statements may materialise at worst: each level
of a root field holds at most its parent's rows times what one parent row can have there, the
largest fan-out the relationship has in the store (or ``limit``, if smaller); a root list holds
at most its table's rows (or ``limit``); an aggregate reads all it aggregates. Row counts and
fan-outs are the catalogue's statistics, read from the stores once (:class:`Statistics`).

>>> shape = Shape(depth=3, root_fields=1, fields=12)
>>> shape.over(Limits(2, 20, 2000, 1000, 60.0, 2.0, 0))
'the query nests 3 levels deep, more than the 2 its role may; ask for fewer levels'
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from graphql import DocumentNode, FieldNode, OperationDefinitionNode, SelectionSetNode
from sqlglot import exp

from catalogue.sql import logical_table
from gateway.config import Limits
from gateway.graphql.compile import collect_fields
from gateway.graphql.nodes import MAX_TERMS, CompileContext, Compiled, Node
from gateway.graphql.schema import TableInfo


@dataclass(frozen=True)
class Shape:
    """How a document's fields nest and how many there are."""

    depth: int
    root_fields: int
    fields: int

    def over(self, limits: Limits) -> str | None:
        """What the document asks beyond ``limits``, and what to change; None if nothing."""
        if self.root_fields > limits.max_root_fields:
            return (
                f"the query has {self.root_fields} root fields, more than the {limits.max_root_fields} its role "
                "may; send fewer in one request"
            )
        if self.depth > limits.max_depth:
            return (
                f"the query nests {self.depth} levels deep, more than the {limits.max_depth} its role may; "
                "ask for fewer levels"
            )
        if self.fields > limits.max_fields:
            return (
                f"the query asks for more than {limits.max_fields} fields (aliases and fragments counted), "
                "more than its role may; ask for fewer"
            )
        return None


def written(document: DocumentNode) -> Shape:
    """The document's shape as written, before validation (which compares fields pairwise:
    1,500 identical root fields took 1.5 s to validate): the fields in all its operations and
    fragments, and the most distinct root response keys of one operation. Both are at most what
    :func:`measure` counts once fragments are spread, so a document over a role's limits by
    these is over them by that too. Its depth is not counted here (0)."""
    fields, roots = 0, 0
    stack: list[SelectionSetNode] = []
    for definition in document.definitions:
        selection_set = getattr(definition, "selection_set", None)
        if selection_set is None:
            continue
        stack.append(selection_set)
        if isinstance(definition, OperationDefinitionNode):
            keys = {
                (s.alias or s.name).value
                for s in selection_set.selections
                if isinstance(s, FieldNode) and not s.name.value.startswith("__")
            }
            roots = max(roots, len(keys))
    while stack:
        for selection in stack.pop().selections:
            fields += isinstance(selection, FieldNode)
            inner = getattr(selection, "selection_set", None)
            if inner is not None:
                stack.append(inner)
    return Shape(depth=0, root_fields=roots, fields=fields)


# Values the variables may hold in all (every object, list and scalar counted), checked before
# graphql-core coerces them: coercion costs a few microseconds per value, so 30,000 filter
# conditions in a 930 KB body took seconds before the compiler could count them.
MAX_VARIABLE_VALUES = 10 * MAX_TERMS


def too_many_values(variables: Any, most: int = MAX_VARIABLE_VALUES) -> bool:
    """Whether the JSON ``variables`` hold more than ``most`` values, walked without recursion
    and stopped as soon as there are.

    >>> too_many_values({"w": {"_in": list(range(5))}}, 7), too_many_values({"w": {"_in": list(range(5))}}, 8)
    (True, False)
    """
    pending = [variables]
    seen = 0
    while pending:
        value = pending.pop()
        seen += 1
        if seen > most:
            return True
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def measure(ctx: CompileContext, selection_set: SelectionSetNode, most: int) -> Shape:
    """The shape of an operation's selection. Counting stops past ``most`` fields: fragments
    that spread one another several times each would otherwise take time in the power of
    their nesting to count."""
    # Introspection is answered by graphql-core over the schema, and cached: GraphiQL's own
    # query nests deeper than a role may, and costs no statement.
    root = {k: v for k, v in collect_fields(ctx, [selection_set]).items() if not v[0].name.value.startswith("__")}
    fields, depth = 0, 0
    stack: list[tuple[list[FieldNode], int]] = [(nodes, 1) for nodes in root.values()]
    while stack and fields <= most:
        nodes, level = stack.pop()
        fields += 1
        depth = max(depth, level)
        subselections = [n.selection_set for n in nodes if n.selection_set is not None]
        if subselections:
            stack.extend((children, level + 1) for children in collect_fields(ctx, subselections).values())
    return Shape(depth=depth, root_fields=len(root), fields=fields)


class Statistics:
    """Each table's row count and each relationship's largest fan-out (rows of the target per
    value of its column), read from the stores when first needed and kept for ``keep`` seconds:
    they bound what a query can materialise, so they need to be right in size, not to the row."""

    def __init__(self, run: Callable[[exp.Expr], Sequence[Any]], keep: float = 3600.0) -> None:
        self._run = run  # runs a logical statement as the gateway itself, within the time limit
        self._keep = keep
        self._known: dict[tuple[str, ...], tuple[int, float]] = {}
        self._lock = threading.Lock()

    def _read(self, key: tuple[str, ...], statement: exp.Expr) -> int:
        now = time.monotonic()
        with self._lock:
            found = self._known.get(key)
        if found is not None and now - found[1] < self._keep:
            return found[0]
        rows = self._run(statement)
        value = int(rows[0][0] or 0) if rows else 0
        with self._lock:
            self._known[key] = (value, now)
        return value

    def rows(self, table: TableInfo) -> int:
        statement = exp.select(exp.Count(this=exp.Star())).from_(logical_table(table.department, table.name))
        return self._read((table.department, table.name), statement)

    def fan_out(self, table: TableInfo, column: str) -> int:
        """The most rows of ``table`` that share one value of ``column``."""
        if table.primary_key == (column,):
            return 1
        per_value = (
            exp.select(exp.alias_(exp.Count(this=exp.Star()), "n"))
            .from_(logical_table(table.department, table.name))
            .group_by(exp.column(column, quoted=True))
        )
        statement = exp.select(exp.Max(this=exp.column("n"))).from_(per_value.subquery("f"))
        return self._read((table.department, table.name, column), statement)


def rows(compiled: Compiled, statistics: Statistics) -> tuple[int, Node | None]:
    """The rows a root field's statement may materialise at worst, summed over its levels, and
    the level that may hold the most (where a `limit` helps most)."""
    held: dict[int, int] = {}
    total, largest, worst = 0, -1, None
    for node in compiled.nodes:  # parents come before their children
        limit = node.args.get("limit")
        if node.parent is None or node.relation is None:
            here = limit if node.kind == "rows" and limit is not None else statistics.rows(node.table)
            if node.mode == "first":  # `_by_pk`
                here = min(here, 1)
        else:
            per_parent = statistics.fan_out(node.table, node.relation.target_column)
            if limit is not None and node.kind == "rows":
                per_parent = min(per_parent, limit)
            here = held[node.parent.index] * per_parent
        held[node.index] = here
        total += here
        if here > largest:
            largest, worst = here, node
    return total, worst
