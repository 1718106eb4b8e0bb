"""Turn one compiled root field's rows into its nested response value, honouring aliases.

Rows arrive ordered by node and row number; a node's rows are built from its template (a list
of slots made once at compile time) and attached to their parent object, so there is no
per-field resolver call: one dict per object, one list append per child.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gateway.graphql.compile import CHILD_LIST, CHILD_ONE, COMPOSITE, CONST, NESTED, VALUE, Compiled, Node, Slot

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


def _start(compiled: Compiled) -> dict[str, Any]:
    """What rows are attached to: the root field's value before any arrives, fresh each time
    (a compiled field is shaped again for every request that uses it)."""
    initial = compiled.initial
    if isinstance(initial, tuple):
        start: Any = builder(initial[1], 0)(None)
    else:
        start = [] if isinstance(initial, list) else None
    return {compiled.key: start}


def _attach(node: Node, container: Any, obj: dict[str, Any]) -> None:
    for step in node.attach[:-1]:
        container = container[step]
    last = node.attach[-1]
    if node.mode == "append":
        container[last].append(obj)
    elif node.mode == "set" or container[last] is None:  # "set", or "first" not yet set
        container[last] = obj


def shape(compiled: Compiled, rows: Sequence[Sequence[Any]], made: Sequence[Builder] | None = None) -> Any:
    """The response value of ``compiled``'s root field from the statement's rows; ``made``:
    its :func:`builders`, if they are at hand."""
    holder = _start(compiled)
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
        _attach(node, container, obj)
        if node.kind == "rows":
            objects[(node.index, row[2])] = obj
    return holder[compiled.key]


class Joined:
    """A root field cut between stores (:mod:`gateway.graphql.parts`), shaped part by part as
    each part's rows arrive: the root's part first, then each child part's batches, each given
    the keys its parents' rows carried (:meth:`keys`) and attached to every parent of each key.
    The rows of one key are shared by all its parents, as the engine's join repeats them."""

    def __init__(self, compiled: Compiled, made: Sequence[Sequence[Builder]] | None = None) -> None:
        self.compiled = compiled
        self.parts = compiled.parts
        self.build = made if made is not None else [builders(p.compiled) for p in self.parts]
        self.holder = _start(compiled)
        # child part -> its key -> the parent objects of that key, in the order they came
        self.parents: list[dict[Any, list[dict[str, Any]]]] = [{} for _ in self.parts]
        self.children = [[c for c, p in enumerate(self.parts) if p.parent == i] for i in range(len(self.parts))]

    @property
    def value(self) -> Any:
        return self.holder[self.compiled.key]

    def nullable(self, part: int) -> bool:
        """Whether part ``part`` can fail alone: every one of its nodes its parents reach is an
        object relationship (nullable: null in each parent, and the rest stands)."""
        nodes = self.compiled.nodes
        return all(nodes[top].mode == "first" and len(nodes[top].attach) == 1 for top in self.parts[part].tops)

    def paths(self, part: int) -> list[list[str | int]]:
        """The response paths of part ``part``'s fields in every parent that asked for them (one
        error each, should the part fail), in the order of the response."""
        fields = sorted({self.compiled.nodes[top].attach[0] for top in self.parts[part].tops})
        wanted = {id(obj) for objects in self.parents[part].values() for obj in objects}
        found: list[list[str | int]] = []

        def walk(value: Any, path: list[str | int]) -> None:
            if isinstance(value, list):
                for index, item in enumerate(value):
                    walk(item, [*path, index])
            elif isinstance(value, dict):
                if id(value) in wanted:
                    found.extend([*path, name] for name in fields)
                for name, item in value.items():
                    walk(item, [*path, name])

        walk(self.value, [self.compiled.key])
        return found

    def keys(self, part: int) -> list[Any]:
        """The keys part ``part`` is to be given: its parents', each once, in the order they came."""
        return list(self.parents[part])

    def add(self, part: int, rows: Sequence[tuple[Any, ...]], keys: Sequence[Any] = ()) -> int:
        """Shape one statement's ``rows`` of ``part`` (given ``keys``); how many objects were
        attached to parents of other parts beyond the first of each key (what the engine's
        join would have repeated)."""
        nodes, spec = self.compiled.nodes, self.parts[part]
        positions = {n.index: i for i, n in enumerate(spec.compiled.nodes)}
        build = self.build[part]
        links = [(c, self.parts[c].link_node, self.parts[c].link_at) for c in self.children[part]]
        parents = self.parents[part]
        objects: dict[tuple[int, Any], dict[str, Any]] = {}
        repeated = 0
        for row in rows:
            node = nodes[row[0]]
            obj = build[positions[node.index]](row)
            if node.parent is None:
                _attach(node, self.holder, obj)
            elif node.index in spec.tops:
                containers = parents.get(keys[row[1] - 1], ())
                for container in containers:
                    _attach(node, container, obj)
                repeated += max(0, len(containers) - 1)
            else:
                parent = objects.get((node.parent.index, row[1]))
                if parent is None:
                    continue
                _attach(node, parent, obj)
            if node.kind == "rows":
                objects[(node.index, row[2])] = obj
                for child, link_node, link_at in links:
                    if link_node == node.index and row[link_at] is not None:
                        self.parents[child].setdefault(row[link_at], []).append(obj)
        return repeated


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
