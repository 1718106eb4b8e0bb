"""An independent oracle: the same GraphQL queries answered in plain Python over the generator's rows.

It shares nothing with the compiler but the schema: graphql-core's own executor walks the query
field by field, and the resolvers below filter, order, page, join and aggregate Python lists
with SQL's semantics (three-valued logic, NULL ordering, Hasura's `_in: []`). The engines'
answers must equal its answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from graphql import GraphQLResolveInfo, execute_sync, parse

from datasets.datagen import City
from gateway.graphql.schema import Model, TableInfo

Row = dict[str, Any]
Term = tuple[Callable[[Any], Any], bool, bool]  # a value of a row, descending, NULLs first


class Oracle:
    def __init__(self, model: Model, city: City) -> None:
        self.model = model
        self.rows: dict[str, list[Row]] = {
            root: list(city.dicts(table.department, table.name)) for root, table in model.tables.items()
        }
        self.index: dict[tuple[str, str], dict[Any, list[Row]]] = {}

    def execute(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        result = execute_sync(
            self.model.schema,
            parse(query),
            root_value=None,
            variable_values=dict(variables or {}),
            field_resolver=self._resolve,
        )
        if result.errors:
            raise AssertionError(f"the oracle failed: {result.errors}")
        assert result.data is not None
        return result.data

    # -- resolvers -------------------------------------------------------------------------

    def _resolve(self, source: Any, info: GraphQLResolveInfo, **args: Any) -> Any:
        name = info.field_name
        if source is None:  # the query root
            kind, table = self.model.roots[name]
            rows = self.rows[table.root]
            if kind == "list":
                return self.select(table, rows, args)
            if kind == "by_pk":
                found = [r for r in rows if all(r[k] == args[k] for k in table.primary_key)]
                return found[0] if found else None
            if kind == "aggregate":
                return {"__agg": (table, self.select(table, rows, args))}
            return self.group(table, rows, args)
        if isinstance(source, dict) and "__agg" in source:
            table, rows = source["__agg"]
            return rows if name == "nodes" else {"__fields": (table, rows)}
        if isinstance(source, dict) and "__fields" in source:
            table, rows = source["__fields"]
            if name == "count":
                return count(rows, args.get("columns") or [], bool(args.get("distinct")))
            return {"__op": (name, table, rows)}
        if isinstance(source, dict) and "__op" in source:
            op, table, rows = source["__op"]
            return aggregate(op, [r[name] for r in rows], table.columns[name].type.kind)
        if isinstance(source, dict) and "__group" in source:
            group_table, key, rows = source["__group"]
            return dict(key) if name == "keys" else {"__fields": (group_table, rows)}
        owner = self._table_of(info)
        if owner is None:
            return source.get(name) if isinstance(source, dict) else None
        table = owner
        if name in table.relations:
            relation = table.relations[name]
            target = self.model.tables[relation.target]
            linked = self.linked(target, relation.target_column, source[relation.column])
            if relation.kind == "object":
                ordered = self.select(target, linked, {})
                return ordered[0] if ordered else None
            return self.select(target, linked, args)
        if name.endswith("_aggregate") and name[:-10] in table.relations:
            relation = table.relations[name[:-10]]
            target = self.model.tables[relation.target]
            linked = self.linked(target, relation.target_column, source[relation.column])
            return {"__agg": (target, self.select(target, linked, args))}
        return source.get(name) if isinstance(source, dict) else None

    def _table_of(self, info: GraphQLResolveInfo) -> TableInfo | None:
        return self.model.tables.get(info.parent_type.name)

    def linked(self, target: TableInfo, column: str, value: Any) -> list[Row]:
        key = (target.root, column)
        if key not in self.index:
            index: dict[Any, list[Row]] = {}
            for row in self.rows[target.root]:
                index.setdefault(row[column], []).append(row)
            self.index[key] = index
        return [] if value is None else self.index[key].get(value, [])

    # -- relational operations ---------------------------------------------------------------

    def select(self, table: TableInfo, rows: Iterable[Row], args: Mapping[str, Any]) -> list[Row]:
        where = args.get("where")
        kept = [r for r in rows if not where or self.test(table, r, where) is True]
        sort_by_terms(kept, self.terms(table, args.get("order_by") or []))
        distinct = args.get("distinct_on")
        if distinct:
            seen: set[tuple[Any, ...]] = set()
            unique = []
            for row in kept:
                key = tuple(row[c] for c in distinct)
                if key not in seen:
                    seen.add(key)
                    unique.append(row)
            kept = unique
        offset = args.get("offset") or 0
        limit = args.get("limit")
        return kept[offset : None if limit is None else offset + limit]

    def test(self, table: TableInfo, row: Row, condition: Mapping[str, Any]) -> bool | None:
        """SQL's three-valued truth of a bool_exp for one row."""
        values: list[bool | None] = []
        for name, value in condition.items():
            if name == "_and":
                values.append(and_(self.test(table, row, v) for v in value))
            elif name == "_or":
                values.append(or_(self.test(table, row, v) for v in value))
            elif name == "_not":
                values.append(not_(self.test(table, row, value)))
            elif name in table.columns:
                values.append(and_(compare(op, row[name], operand) for op, operand in value.items()))
            else:
                relation = table.relations[name]
                target = self.model.tables[relation.target]
                linked = self.linked(target, relation.target_column, row[relation.column])
                values.append(any(self.test(target, r, value) is True for r in linked))
        return and_(values)

    def terms(self, table: TableInfo, order_by: list[Mapping[str, Any]]) -> list[Term]:
        terms: list[Term] = []

        def visit(current: TableInfo, path: Callable[[Row], Row | None], spec: Mapping[str, Any]) -> None:
            for name, value in spec.items():
                if name in current.columns:
                    direction, nulls_first = value
                    terms.append((lambda r, p=path, n=name: (p(r) or {}).get(n), direction == "desc", nulls_first))
                else:
                    relation = current.relations[name]
                    target = self.model.tables[relation.target]

                    def follow(
                        r: Row, p: Callable[[Row], Row | None] = path, rel: Any = relation, t: TableInfo = target
                    ) -> Row | None:
                        parent = p(r)
                        if parent is None:
                            return None
                        linked = self.linked(t, rel.target_column, parent[rel.column])
                        return linked[0] if linked else None

                    visit(target, follow, value)

        for spec in order_by:
            visit(table, lambda r: r, spec)
        for key in table.primary_key:
            terms.append((lambda r, k=key: r[k], False, False))
        return terms

    def group(self, table: TableInfo, rows: list[Row], args: Mapping[str, Any]) -> list[dict[str, Any]]:
        kept = [r for r in self.select(table, rows, {"where": args.get("where")})]
        groups: dict[tuple[Any, ...], list[Row]] = {}
        for row in kept:
            groups.setdefault(tuple(row[c] for c in args["by"]), []).append(row)
        entries = [
            {"__group": (table, dict(zip(args["by"], key, strict=True)), members)} for key, members in groups.items()
        ]
        terms: list[Term] = []
        for spec in args.get("order_by") or []:
            for name, value in spec.items():
                if name == "aggregate":
                    for op, inner in value.items():
                        if op == "count":
                            terms.append((lambda e: len(e["__group"][2]), inner[0] == "desc", inner[1]))
                        else:
                            for column, (direction, nulls_first) in inner.items():
                                terms.append(
                                    (
                                        lambda e, o=op, c=column: aggregate_raw(o, [r[c] for r in e["__group"][2]]),
                                        direction == "desc",
                                        nulls_first,
                                    )
                                )
                else:
                    terms.append((lambda e, n=name: e["__group"][1][n], value[0] == "desc", value[1]))
        for column in args["by"]:
            terms.append((lambda e, c=column: e["__group"][1][c], False, False))

        sort_by_terms(entries, terms)
        offset = args.get("offset") or 0
        limit = args.get("limit")
        return entries[offset : None if limit is None else offset + limit]


def sort_by_terms(items: list[Any], terms: list[Term]) -> None:
    """Sort ``items`` as SQL's ORDER BY does by (value, descending, nulls first) terms: one
    stable sort per term, the last term first, so that each term orders what all the terms
    before it leave tied. A NULL goes first or last as its term says, in either direction.

    >>> rows = [{"a": 1, "b": "x"}, {"a": None, "b": "y"}, {"a": 1, "b": "w"}, {"a": 2, "b": "z"}]
    >>> sort_by_terms(rows, [(lambda r: r["a"], True, False), (lambda r: r["b"], False, False)])
    >>> [r["b"] for r in rows]
    ['z', 'w', 'x', 'y']
    """
    for get, desc, nulls_first in reversed(terms):
        # Sorted in reverse for a descending term, which reverses where NULLs go too.
        null = (0,) if nulls_first != desc else (2,)

        def key(item: Any, get: Callable[[Any], Any] = get, null: tuple[int] = null) -> tuple[Any, ...]:
            value = get(item)
            return null if value is None else (1, value)

        items.sort(key=key, reverse=desc)


# -- SQL semantics in Python -------------------------------------------------------------------


def and_(values: Iterable[bool | None]) -> bool | None:
    result: bool | None = True
    for value in values:
        if value is False:
            return False
        if value is None:
            result = None
    return result


def or_(values: Iterable[bool | None]) -> bool | None:
    result: bool | None = False
    for value in values:
        if value is True:
            return True
        if value is None:
            result = None
    return result


def not_(value: bool | None) -> bool | None:
    return None if value is None else not value


def _like(value: str, pattern: str) -> bool:
    """PostgreSQL's LIKE: ``%`` and ``_`` wildcards, ``\\`` taking the next character as it is.

    Matched the way glob matchers do, going back only to the last ``%``: time in the product of
    the lengths at worst, where a backtracking regular expression takes time exponential in the
    number of ``%_`` pairs (the hostile patterns the tests send)."""
    tokens: list[str | None] = []  # None: `%`; "": `_`; else the character itself
    escaped = False
    for c in pattern:
        if escaped:
            tokens.append(c)
            escaped = False
        elif c == "\\":
            escaped = True
        else:
            tokens.append(None if c == "%" else "" if c == "_" else c)
    v = t = 0
    star, mark = -1, 0
    while v < len(value):
        if t < len(tokens) and tokens[t] is not None and (tokens[t] == "" or tokens[t] == value[v]):
            v, t = v + 1, t + 1
        elif t < len(tokens) and tokens[t] is None:
            star, mark, t = t, v, t + 1
        elif star >= 0:
            mark += 1
            v, t = mark, star + 1
        else:
            return False
    while t < len(tokens) and tokens[t] is None:
        t += 1
    return t == len(tokens)


def compare(op: str, value: Any, operand: Any) -> bool | None:
    if op == "_is_null":
        return bool((value is None) == operand)
    if op == "_in" and not operand:
        return False
    if op == "_nin" and not operand:
        return True
    if value is None:
        return None
    if op == "_in":
        return value in operand
    if op == "_nin":
        return value not in operand
    return OPERATORS[op](value, operand)


# Made once: a filter tests every row of a table, millions of calls in a session.
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "_eq": lambda a, b: a == b,
    "_neq": lambda a, b: a != b,
    "_gt": lambda a, b: a > b,
    "_gte": lambda a, b: a >= b,
    "_lt": lambda a, b: a < b,
    "_lte": lambda a, b: a <= b,
    "_like": _like,
    "_nlike": lambda a, b: not _like(a, b),
    "_ilike": lambda a, b: _like(a.lower(), b.lower()),
    "_nilike": lambda a, b: not _like(a.lower(), b.lower()),
}


def count(rows: list[Row], columns: list[str], distinct: bool) -> int:
    if not columns:
        return len(rows)
    present = [tuple(r[c] for c in columns) for r in rows if all(r[c] is not None for c in columns)]
    return len(set(present)) if distinct else len(present)


def aggregate_raw(op: str, values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    if op == "sum":
        return sum(present, Decimal(0) if isinstance(present[0], Decimal) else 0)
    if op == "avg":
        return float(sum(Decimal(str(v)) if not isinstance(v, float) else Decimal(v) for v in present)) / len(present)
    return min(present) if op == "min" else max(present)


def aggregate(op: str, values: list[Any], kind: str) -> Any:
    return aggregate_raw(op, values)
