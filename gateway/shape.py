"""Turn one compiled root field's rows into its nested response value, honouring aliases.

Rows arrive ordered by node and row number; a node's rows are built from its template (a list
of slots made once at compile time) and attached to their parent object, so there is no
per-field resolver call: one dict per object, one list append per child.
"""

from __future__ import annotations

from typing import Any

from gateway.compile import CHILD_LIST, CHILD_ONE, COMPOSITE, CONST, NESTED, VALUE, Compiled, Slot


def build(template: list[Slot], row: tuple[Any, ...] | None, offset: int) -> dict[str, Any]:
    """One object: ``row`` holds the node's outputs starting at ``offset`` (None: defaults)."""
    obj: dict[str, Any] = {}
    for slot in template:
        kind = slot[0]
        if kind == VALUE:
            if row is None:
                obj[slot[1]] = slot[4]
            else:
                value = row[offset + slot[2]]
                obj[slot[1]] = value if value is None or slot[3] is None else slot[3](value)
        elif kind == CONST:
            obj[slot[1]] = slot[2]
        elif kind == NESTED:
            obj[slot[1]] = build(slot[2], row, offset)
        elif kind == CHILD_LIST:
            obj[slot[1]] = []
        elif kind == CHILD_ONE:
            obj[slot[1]] = None
        elif kind == COMPOSITE:
            obj[slot[1]] = build(slot[2], None, offset)
    return obj


def shape(compiled: Compiled, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> Any:
    """The response value of ``compiled``'s root field from the statement's rows."""
    initial = compiled.initial
    # A fresh value each time: a compiled field is shaped again for every request that uses it.
    if isinstance(initial, tuple):
        start: Any = build(initial[1], None, 0)
    else:
        start = [] if isinstance(initial, list) else None
    holder: dict[str, Any] = {compiled.key: start}
    offsets = {}
    position = 3  # __node, __parent, __id
    for node in compiled.nodes:
        offsets[node.index] = position
        position += len(node.outputs)
    nodes = compiled.nodes
    objects: dict[tuple[int, Any], dict[str, Any]] = {}
    for row in rows:
        node = nodes[row[0]]
        obj = build(node.template, row, offsets[node.index])
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
