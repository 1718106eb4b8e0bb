"""A root field cut where its relationships reach another store: one statement per store and
level, joined by key in the gateway (:mod:`gateway.execution.runner`).

Each node of a root field reads one department's table; departments live in stores (one
PostgreSQL or MariaDB database, one SQLite file). Where a node's children read another store,
the field's one statement can only run on an engine that joins across stores (Trino, DuckDB).
Cut there instead, each part reads one store, and runs whole on it (the delegated route): the
root's part first, then, for each part, its children's parts, one per parent node, key column
and store, given the keys its parents' rows carry (raw: they are read for joining only and
never shaped) as one bound parameter. A child part pages, orders, filters and aggregates per
key, inside its own statement, as the one statement does per parent.

A field is not cut when its answer needs the join first: a part whose own filters or
orderings reach another store (a filter or an ordering through a relationship), a keyed column
of a kind the keys cannot carry exactly, or a noisy table, whose answer spends its role's
budget once per statement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from catalogue.sql import departments_in
from gateway.graphql.nodes import CompileContext, Compiled, Node, Part
from gateway.graphql.statement import statement_sql

# Kinds a key may have to be given as a JSON array and compared exactly on every store.
KEY_KINDS = frozenset({"string", "integer", "bigint"})


def split(ctx: CompileContext, compiled: Compiled, stores: Mapping[str, str]) -> tuple[Part, ...]:
    """``compiled``'s parts, the root's first and every part after its parent's; none when the
    field reads one store, or cannot be cut (see the module's text)."""
    nodes = compiled.nodes
    store = {node.index: stores.get(node.table.department) for node in nodes}
    if None in store.values() or len(set(store.values())) < 2:
        return ()
    if any(node.table.noisy is not None for node in nodes):
        return ()
    # each node's part: the root's nodes are part 0; a node reading its parent's store is in
    # its parent's part; any other opens (or joins) the part of its parent node, key and store
    part_of: dict[int, int] = {}
    opened: dict[tuple[int, str, str | None], int] = {}
    members: list[list[Node]] = [[]]
    heads: list[tuple[int, int, str]] = [(-1, -1, "")]  # (parent part, parent node, key column)
    for node in nodes:
        parent = node.parent
        if parent is None:
            part_of[node.index] = 0
        elif store[node.index] == store[parent.index]:
            part_of[node.index] = part_of[parent.index]
        else:
            assert node.relation is not None
            if parent.table.kinds.get(node.relation.column) not in KEY_KINDS:
                return ()
            head = (parent.index, node.relation.column, store[node.index])
            if head not in opened:
                opened[head] = len(members)
                members.append([])
                heads.append((part_of[parent.index], parent.index, node.relation.column))
            part_of[node.index] = opened[head]
        members[part_of[node.index]].append(node)
    return _made(ctx, compiled, members, heads, part_of, stores)


def _made(
    ctx: CompileContext,
    compiled: Compiled,
    members: list[list[Node]],
    heads: list[tuple[int, int, str]],
    part_of: Mapping[int, int],
    stores: Mapping[str, str],
) -> tuple[Part, ...]:
    """Each part's statement, with where its rows carry the keys of its children's parts."""
    # (child part -> position of its key in its parent part's rows), filled as parents are made
    link_at: dict[int, int] = {}
    made: list[Part] = []
    for index, nodes in enumerate(members):
        parent_part, link_node, column = heads[index]
        children = [c for c in range(len(members)) if heads[c][0] == index]
        links = tuple((heads[c][1], _key_alias(compiled, heads[c][1], heads[c][2])) for c in children)
        tops = frozenset(n.index for n in nodes if n.parent is not None and part_of[n.parent.index] != index)
        key_kind = compiled.nodes[link_node].table.kinds[column] if link_node >= 0 else "string"
        part_ctx = replace(ctx, tops=tops, key_kind=key_kind, links=links, stores=None)
        tree = statement_sql(part_ctx, nodes)
        ctx.aliases = part_ctx.aliases
        if len({stores.get(d) for d in departments_in(tree)}) != 1:
            return ()  # its own filters or orderings reach another store: the join comes first
        outputs = 3 + sum(len(n.outputs) for n in nodes)
        for position, child in enumerate(children):
            link_at[child] = outputs + position
        part = Part(
            Compiled(compiled.key, tree, tuple(nodes), compiled.initial, tuple(departments_in(tree))),
            parent=parent_part,
            link_node=link_node,
            link_at=link_at.get(index, -1),
            tops=tops,
        )
        made.append(part)
    return tuple(made)


def _key_alias(compiled: Compiled, node: int, column: str) -> str:
    """The hidden name node ``node``'s rows carry ``column`` under for its children to join on."""
    return compiled.nodes[node].keys[column]
