"""Turn one compiled root field's rows into its nested response value, honouring aliases.

Rows arrive ordered by node and row number; a node's rows are built from its template (a list
of slots made once at compile time) and attached to their parent object, so there is no
per-field resolver call: one dict per object, one list append per child.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gateway.graphql.compile import CHILD_LIST, CHILD_ONE, COMPOSITE, CONST, NESTED, VALUE, Compiled, Slot

Builder = Callable[[tuple[Any, ...] | None], dict[str, Any]]


def builder(template: list[Slot], offset: int) -> Builder:
    """A function that builds one object as a single dict display.

    The hot path: generated once per compiled node, it reads each value by position and
    converts it in place, with no loop over fields and no call per field but the converter.
    Keys enter the code only as ``repr`` of GraphQL names and aliases.

    >>> from gateway.graphql.compile import VALUE, CONST, CHILD_LIST
    >>> builder([(VALUE, "n", 0, str, None), (CONST, "__typename", "t"), (CHILD_LIST, "items")], 0)((7,))
    {'n': '7', '__typename': 't', 'items': []}
    """
    env: dict[str, Any] = {}
    with_row = _display(template, offset, True, env)
    without = _display(template, offset, False, env)
    source = f"def build(row):\n    if row is None:\n        return {without}\n    return {with_row}\n"
    exec(compile(source, "<citygate shape>", "exec"), env)  # noqa: S102 - code generated from the template above
    function: Builder = env["build"]
    return function


def _display(template: list[Slot], offset: int, with_row: bool, env: dict[str, Any]) -> str:
    def bind(value: Any) -> str:
        name = f"_c{len(env)}"
        env[name] = value
        return name

    parts = []
    for slot in template:
        kind = slot[0]
        if kind == VALUE:
            if not with_row:
                expression = bind(slot[4])
            elif slot[3] is None:
                expression = f"row[{offset + slot[2]}]"
            else:
                expression = f"(None if (v := row[{offset + slot[2]}]) is None else {bind(slot[3])}(v))"
        elif kind == CONST:
            expression = bind(slot[2])
        elif kind == NESTED:
            expression = _display(slot[2], offset, with_row, env)
        elif kind == CHILD_LIST:
            expression = "[]"
        elif kind == CHILD_ONE:
            expression = "None"
        elif kind == COMPOSITE:  # an aggregate field's object, filled by its own nodes
            expression = _display(slot[2], offset, False, env)
        else:
            raise ValueError(f"unknown template slot {slot!r}")
        parts.append(f"{slot[1]!r}: {expression}")
    return "{" + ", ".join(parts) + "}"


def builders(compiled: Compiled) -> tuple[Builder, ...]:
    """One builder per node of ``compiled``, reading its outputs at their positions in the rows
    (after ``__node``, ``__parent`` and ``__id``, every node's outputs in turn); made once per
    plan (:mod:`gateway.execution.prepared`)."""
    made, position = [], 3
    for node in compiled.nodes:
        made.append(builder(node.template, position))
        position += len(node.outputs)
    return tuple(made)


def shape(compiled: Compiled, rows: Sequence[Sequence[Any]], made: Sequence[Builder] | None = None) -> Any:
    """The response value of ``compiled``'s root field from the statement's rows; ``made``:
    its :func:`builders`, if they are at hand."""
    initial = compiled.initial
    # A fresh value each time: a compiled field is shaped again for every request that uses it.
    if isinstance(initial, tuple):
        start: Any = builder(initial[1], 0)(None)
    else:
        start = [] if isinstance(initial, list) else None
    holder: dict[str, Any] = {compiled.key: start}
    nodes = compiled.nodes
    build = made if made is not None else builders(compiled)
    objects: dict[tuple[int, Any], dict[str, Any]] = {}
    late = {n.index: n.args for n in nodes if n.kind == "group" and n.table.noisy is not None}
    if late:
        rows = paged_late(rows, late)
    for row in rows:
        node = nodes[row[0]]
        obj = build[row[0]](row)
        container: Any = holder if node.parent is None else objects.get((node.parent.index, row[1]))
        if container is None:
            continue
        for step in node.attach[:-1]:
            container = container[step]
        last = node.attach[-1]
        if node.mode == "append":
            container[last].append(obj)
        elif node.mode == "set" or container[last] is None:  # "set", or "first" not yet set
            container[last] = obj
        if node.kind == "rows":
            objects[(node.index, row[2])] = obj
    return holder[compiled.key]


def paged_late(rows: Sequence[Sequence[Any]], pages: dict[int, dict[str, Any]]) -> list[Sequence[Any]]:
    """``rows`` with the page (``offset``, ``limit``) of each node in ``pages`` cut: a noisy
    group_by's, whose groups were selected after the statement ran, in the statement's order.

    >>> paged_late([(0, None, 1), (0, None, 2), (0, None, 3), (1, 0, 1)], {0: {"offset": 1, "limit": 1}})
    [(0, None, 2), (1, 0, 1)]
    """
    seen: dict[int, int] = {}
    kept: list[Sequence[Any]] = []
    for row in rows:
        args = pages.get(row[0])
        if args is not None:
            offset, limit = args.get("offset") or 0, args.get("limit")
            seen[row[0]] = position = seen.get(row[0], 0) + 1
            if position <= offset or (limit is not None and position > offset + limit):
                continue
        kept.append(row)
    return kept
