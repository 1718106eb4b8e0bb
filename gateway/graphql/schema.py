"""One GraphQL schema over every department, generated from the catalogue and the configuration.

Per table ``<department>_<table>`` (Hasura's conventions, so applications port with renames):
``<root>``, ``<root>_by_pk``, ``<root>_aggregate`` and ``<root>_group_by``, with ``where``
(``<root>_bool_exp``), ``order_by``, ``limit``, ``offset``, ``distinct_on``, and the
relationships of the configuration as object and array fields across departments.

The types are built directly with graphql-core: a generated schema of thousands of types
builds in a fraction of a second that way, where decorating classes one by one would take
seconds. The :class:`Model` beside the schema is what the compiler reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    GraphQLArgument,
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLEnumValue,
    GraphQLField,
    GraphQLInputField,
    GraphQLInputObjectType,
    GraphQLInt,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLString,
)

from catalogue.errors import ConfigError
from catalogue.model import Catalogue, Column, Department, SharingClass, Table
from catalogue.types import NUMERIC, ORDERABLE, Kind, LogicalType
from gateway.config import CatalogueSettings, ColumnRef, DepartmentConfig, RelationshipConfig, TableConfig
from gateway.graphql.scalars import SCALARS
from policies.decide import TableDecision
from policies.masks import output_kind
from policies.treatments import RAW, Treatment

QUERY_ROOT = "query_root"


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    type: LogicalType
    scalar: GraphQLScalarType
    description: str = ""
    sharing: SharingClass | None = None


@dataclass(frozen=True, slots=True)
class Relation:
    """A field on ``table`` that follows ``column`` to ``target``'s ``target_column``."""

    name: str
    kind: str  # "object" or "array"
    column: str
    target: str  # the target table's root name
    target_column: str


@dataclass(slots=True)
class TableInfo:
    root: str
    department: str
    name: str
    columns: dict[str, ColumnInfo]  # what the schema shows (for a role: its visible columns)
    primary_key: tuple[str, ...]
    description: str = ""
    relations: dict[str, Relation] = field(default_factory=dict)
    all_columns: frozenset[str] = frozenset()  # every column of the store's table (keys join on them)
    kinds: dict[str, Kind] = field(default_factory=dict)  # every column's logical kind (a key's, hidden or not)
    aggregate_only: bool = False
    group_by: frozenset[str] | None = None  # aggregate_only: the columns groups may use
    by_pk: bool = True  # `_by_pk` exists only where the role sees the whole key raw
    noisy: frozenset[str] | None = None  # a noisy aggregate-only table: the columns it may sum
    entities: bool = False  # aggregate_only with k_distinct: its groups' sizes count entities, not rows

    @property
    def summable(self) -> dict[str, ColumnInfo]:
        """The columns sum may read: the numeric measures, and of a noisy table only its bounded ones."""
        return {
            n: c for n, c in self.measures.items() if c.type.kind in NUMERIC and (self.noisy is None or n in self.noisy)
        }

    def groupable(self, name: str) -> bool:
        """Whether groups, and the filters of an aggregate-only table, may use column ``name``."""
        return self.group_by is None or name in self.group_by

    @property
    def measures(self) -> dict[str, ColumnInfo]:
        """The columns sum, avg, min and max may read: of an aggregate-only table with a
        grouping list, only those not in it ("the others only inside aggregates"), so that no
        aggregate reads out one row's value of a column the groups are cut by."""
        if not self.aggregate_only:
            return self.columns
        return {n: c for n, c in self.columns.items() if self.group_by is None or n not in self.group_by}


@dataclass(slots=True)
class Model:
    """The compiler's view of the schema: tables by root name and by GraphQL type name."""

    tables: dict[str, TableInfo]
    schema: GraphQLSchema
    roots: dict[str, tuple[str, TableInfo]]  # root field name -> (kind, table)


ORDER_BY = GraphQLEnumType(
    "order_by",
    {
        "asc": GraphQLEnumValue(("asc", False), description="ascending, nulls last"),
        "asc_nulls_first": GraphQLEnumValue(("asc", True)),
        "asc_nulls_last": GraphQLEnumValue(("asc", False)),
        "desc": GraphQLEnumValue(("desc", True), description="descending, nulls first"),
        "desc_nulls_first": GraphQLEnumValue(("desc", True)),
        "desc_nulls_last": GraphQLEnumValue(("desc", False)),
    },
    description="Column ordering; the default for nulls follows PostgreSQL and Hasura.",
)


# What an aggregate-only table's filters may not use: each selects, in one query, the
# complement of a group (`_neq`, `_nin`, `_nlike`, `_nilike`, `_is_null: false`, `_not`) or a
# union of groups (`_in`, `_or`), so that a total minus it is one group that k left out.
# Without them the complement of a middle value takes two ranges (`_lt` and `_gt`); that of the
# lowest or highest value is still one range, as the README says: k alone does not stop it.
AGGREGATE_ONLY_EXCLUDES = frozenset({"_neq", "_nin", "_in", "_nlike", "_nilike", "_is_null", "_not", "_or"})


def _comparison_type(scalar: GraphQLScalarType, aggregate_only: bool = False) -> GraphQLInputObjectType:
    fields: dict[str, GraphQLInputField] = {
        op: GraphQLInputField(scalar) for op in ("_eq", "_neq", "_gt", "_gte", "_lt", "_lte")
    }
    fields["_in"] = GraphQLInputField(GraphQLList(GraphQLNonNull(scalar)))
    fields["_nin"] = GraphQLInputField(GraphQLList(GraphQLNonNull(scalar)))
    fields["_is_null"] = GraphQLInputField(GraphQLBoolean)
    if scalar is GraphQLString:
        for op in ("_like", "_nlike", "_ilike", "_nilike"):
            fields[op] = GraphQLInputField(GraphQLString)
    if aggregate_only:
        fields = {op: f for op, f in fields.items() if op not in AGGREGATE_ONLY_EXCLUDES}
        return GraphQLInputObjectType(
            f"{scalar.name}_group_comparison_exp",
            fields,
            description=f"Conditions on a {scalar.name} column of an aggregate-only table: no negations.",
        )
    return GraphQLInputObjectType(
        f"{scalar.name}_comparison_exp", fields, description=f"Conditions on a {scalar.name} column."
    )


COMPARISONS = {kind: _comparison_type(scalar) for kind, scalar in SCALARS.items()}
GROUP_COMPARISONS = {kind: _comparison_type(scalar, aggregate_only=True) for kind, scalar in SCALARS.items()}


def sum_type(column: LogicalType) -> GraphQLScalarType:
    """What a sum of ``column`` returns: integers widen to BigInt, decimals stay exact."""
    kind: Kind = {"integer": "bigint", "bigint": "bigint", "double": "double", "decimal": "decimal"}[column.kind]  # type: ignore[assignment]
    return SCALARS[kind]


def build_model(
    catalogue: Catalogue,
    settings: CatalogueSettings,
    decisions: Mapping[tuple[str, str], TableDecision] | None = None,
) -> Model:
    """Build the schema for every table the catalogue lists, or, given a role's decisions,
    for what that role may see: denied tables and columns are absent, masked columns carry
    their masked type, aggregate-only tables have only their aggregate fields."""
    tables = _tables(catalogue, settings, decisions)
    builder = _Builder(tables)
    return Model(tables=tables, schema=builder.schema(), roots=builder.roots)


Decisions = Mapping[tuple[str, str], TableDecision]


def _tables(catalogue: Catalogue, settings: CatalogueSettings, decisions: Decisions | None) -> dict[str, TableInfo]:
    """Every table the role sees, by root name, with the relationships it may follow."""
    tables: dict[str, TableInfo] = {}
    for department in catalogue.departments:
        dept_config = settings.departments.get(department.name)
        for table in department.tables:
            decision = decisions.get((department.name, table.name)) if decisions is not None else None
            if decisions is not None and (decision is None or not decision.visible):
                continue
            info = _table(department, dept_config, table, decision)
            tables[info.root] = info
    for index, link in enumerate(settings.relationships):
        _relate(tables, index, link, decisions)
    return tables


def _table(
    department: Department, dept_config: DepartmentConfig | None, table: Table, decision: TableDecision | None
) -> TableInfo:
    """One table as the role sees it (or as it is, with no decision): its columns, key and description."""
    visible = decision.visible_columns if decision is not None else None
    table_config = dept_config.tables.get(table.name) if dept_config else None
    root = f"{department.name}_{table.name}"
    columns = _columns(table, table_config, visible)
    primary_key = _primary_key(department.name, table, table_config)
    description = _description(department, dept_config, table_config)
    info = TableInfo(
        root,
        department.name,
        table.name,
        columns,
        primary_key,
        description,
        all_columns=frozenset(c.name for c in table.columns),
        kinds={c.name: c.type.kind for c in table.columns},
        by_pk=visible is None or all(visible.get(k) == RAW for k in primary_key),
    )
    if decision is not None:
        _restrict(info, decision)
    return info


def _description(department: Department, dept_config: DepartmentConfig | None, table_config: TableConfig | None) -> str:
    """The department's display name (configured, else the catalogue's) and the table's configured description."""
    display = dept_config.display_name if dept_config else department.display_name
    return " — ".join(p for p in (display, table_config.description if table_config else "") if p)


def _columns(
    table: Table, table_config: TableConfig | None, visible: dict[str, Treatment] | None
) -> dict[str, ColumnInfo]:
    """The columns the role sees (every one with no decision), each with the type its treatment gives it."""
    if visible is None:
        return {c.name: _column(c, table_config, RAW) for c in table.columns}
    return {c.name: _column(c, table_config, visible[c.name]) for c in table.columns if c.name in visible}


def _primary_key(department: str, table: Table, table_config: TableConfig | None) -> tuple[str, ...]:
    """The configured primary key, else the store's; every column of it must exist."""
    primary_key = tuple(table_config.primary_key) if table_config and table_config.primary_key else table.primary_key
    missing = [k for k in primary_key if k not in {c.name for c in table.columns}]
    if missing:
        raise ConfigError(
            f"departments.{department}.tables.{table.name}.primary_key: "
            f"no column {missing[0]!r} in {department}.{table.name}"
        )
    return primary_key


def _restrict(info: TableInfo, decision: TableDecision) -> None:
    """What an aggregate-only decision keeps: groups, noise and entity counts."""
    info.aggregate_only = decision.access == "aggregate_only"
    info.group_by = decision.group_by
    info.noisy = frozenset(decision.noise.bounds) if decision.noise is not None else None
    info.entities = decision.k_distinct is not None


def _relate(tables: dict[str, TableInfo], index: int, link: RelationshipConfig, decisions: Decisions | None) -> None:
    """Add relationship ``link`` (the ``index``-th configured) and its reverse where the role may follow them."""
    source, target = link.source_ref, link.target_ref
    source_root, target_root = f"{source.department}_{source.table}", f"{target.department}_{target.table}"
    if source_root not in tables or target_root not in tables:
        # A department that is down has no tables yet; its links appear when it does.
        return
    for root, column in ((source_root, source.column), (target_root, target.column)):
        if column not in tables[root].all_columns:
            raise ConfigError(
                f"relationships.{index}: {tables[root].department}.{tables[root].name} has no column {column!r}"
            )
    if _follows(decisions, source, link.name, target):
        tables[source_root].relations[link.name] = Relation(
            link.name, "object", source.column, target_root, target.column
        )
    if link.reverse and _follows(decisions, target, link.reverse.name, source):
        tables[target_root].relations[link.reverse.name] = Relation(
            link.reverse.name, link.reverse.kind, target.column, source_root, source.column
        )


def _follows(
    decisions: Mapping[tuple[str, str], TableDecision] | None, start: ColumnRef, name: str, end: ColumnRef
) -> bool:
    """Whether the role may follow relationship ``name`` from ``start`` to ``end``: only if it
    sees the join column on both tables in some form (a masked key still links), or its policy
    grants the relationship by name. Absent from the schema, the relationship is also absent
    from filters and orderings, which are built from the same relations."""
    if decisions is None:
        return True
    decision = decisions.get((start.department, start.table))
    reached = decisions.get((end.department, end.table))
    far = reached.columns.get(end.column) if reached is not None and reached.access != "deny" else None
    return decision is not None and decision.follows(name, start.column, far)


def _column(column: Column, table_config: TableConfig | None, treatment: Treatment) -> ColumnInfo:
    """A column with its description (configured text, sharing class, mask) and the type the
    role sees (a partial or hashed value is a string)."""
    parts = []
    sharing = table_config.sharing.of(column.name) if table_config else None
    if sharing is not None:
        parts.append(f"sharing class: {sharing.label}")
    if table_config and column.name in table_config.columns and table_config.columns[column.name].description:
        parts.append(table_config.columns[column.name].description)
    if treatment.masked:
        parts.append(f"masked for this role: {treatment}")
    kind = output_kind(treatment, column.type)
    return ColumnInfo(column.name, kind, SCALARS[kind.kind], "; ".join(parts), sharing)


class _Builder:
    """Builds every table's types once, with thunks for the references between them."""

    def __init__(self, tables: dict[str, TableInfo]) -> None:
        self.tables = tables
        self.roots: dict[str, tuple[str, TableInfo]] = {}
        self.objects: dict[str, GraphQLObjectType] = {}
        self.bool_exps: dict[str, GraphQLInputObjectType] = {}
        self.order_bys: dict[str, GraphQLInputObjectType] = {}
        self.select_columns: dict[str, GraphQLEnumType] = {}
        self.aggregates: dict[str, GraphQLObjectType] = {}
        self.aggregate_fields: dict[str, GraphQLObjectType] = {}
        self.group_bys: dict[str, GraphQLObjectType] = {}
        self.group_columns: dict[str, GraphQLEnumType] = {}
        self.group_order_bys: dict[str, GraphQLInputObjectType] = {}
        for root, table in tables.items():
            self._declare(root, table)

    def _declare(self, root: str, table: TableInfo) -> None:
        self.select_columns[root] = GraphQLEnumType(
            f"{root}_select_column",
            {c: GraphQLEnumValue(c) for c in table.columns},
            description=f"Columns of {root}.",
        )
        self.objects[root] = GraphQLObjectType(root, lambda: self._object_fields(table), description=table.description)
        self.bool_exps[root] = GraphQLInputObjectType(
            f"{root}_bool_exp",
            lambda: self._bool_exp_fields(table),
            description=f"Boolean expression to filter rows of {root}.",
        )
        self.order_bys[root] = GraphQLInputObjectType(
            f"{root}_order_by",
            lambda: self._order_by_fields(table),
            description=f"Ordering of {root}.",
        )
        self.aggregate_fields[root] = GraphQLObjectType(f"{root}_aggregate_fields", self._aggregate_fields(table))
        aggregate: dict[str, GraphQLField] = {"aggregate": GraphQLField(self.aggregate_fields[root])}
        if not table.aggregate_only:
            aggregate["nodes"] = GraphQLField(GraphQLNonNull(GraphQLList(GraphQLNonNull(self.objects[root]))))
        self.aggregates[root] = GraphQLObjectType(f"{root}_aggregate", aggregate)
        groupable = [c for c in table.columns if table.group_by is None or c in table.group_by]
        self.group_columns[root] = GraphQLEnumType(
            f"{root}_group_column",
            {c: GraphQLEnumValue(c) for c in groupable} or {"_none": GraphQLEnumValue("_none")},
            description=f"Columns of {root} that groups may use.",
        )
        keys = GraphQLObjectType(
            f"{root}_group_keys",
            {
                name: GraphQLField(c.scalar, description=c.description or None)
                for name, c in table.columns.items()
                if table.group_by is None or name in table.group_by
            }
            or {"_none": GraphQLField(GraphQLBoolean)},
        )
        self.group_bys[root] = GraphQLObjectType(
            f"{root}_group_by",
            {
                "keys": GraphQLField(GraphQLNonNull(keys)),
                "aggregate": GraphQLField(GraphQLNonNull(self.aggregate_fields[root])),
            },
        )
        self.group_order_bys[root] = GraphQLInputObjectType(
            f"{root}_group_by_order_by", self._group_order_fields(table)
        )

    # -- object types ----------------------------------------------------------------------

    def _list_args(self, root: str) -> dict[str, GraphQLArgument]:
        return {
            "distinct_on": GraphQLArgument(
                GraphQLList(GraphQLNonNull(self.select_columns[root])),
                description="keep the first row of each distinct combination",
            ),
            "limit": GraphQLArgument(GraphQLInt),
            "offset": GraphQLArgument(GraphQLInt),
            "order_by": GraphQLArgument(GraphQLList(GraphQLNonNull(self.order_bys[root]))),
            "where": GraphQLArgument(self.bool_exps[root]),
        }

    def _aggregate_args(self, root: str) -> dict[str, GraphQLArgument]:
        """An aggregate's arguments. Of an aggregate-only table only `where`: a page, an order or
        a distinct_on would choose single rows to aggregate, and two overlapping pages differ by
        one row."""
        if self.tables[root].aggregate_only:
            return {"where": GraphQLArgument(self.bool_exps[root])}
        return self._list_args(root)

    def _object_fields(self, table: TableInfo) -> dict[str, GraphQLField]:
        fields: dict[str, GraphQLField] = {}
        for name, column in table.columns.items():
            required = name in table.primary_key and table.by_pk
            kind: GraphQLOutputType = GraphQLNonNull(column.scalar) if required else column.scalar
            fields[name] = GraphQLField(kind, description=column.description or None)
        for relation in table.relations.values():
            target = self.objects[relation.target]
            if self.tables[relation.target].aggregate_only:
                # Neither rows of an aggregate-only table nor aggregates under each parent: those
                # group by the record the relationship links (per resident, by `id_card`), and
                # an aggregate-only table links no records. Its own `_group_by` is the way in.
                continue
            if relation.kind == "object":
                fields[relation.name] = GraphQLField(target, description=f"via {relation.column}")
            else:
                fields[relation.name] = GraphQLField(
                    GraphQLNonNull(GraphQLList(GraphQLNonNull(target))),
                    self._list_args(relation.target),
                    description=f"rows of {relation.target} whose {relation.target_column} is this {relation.column}",
                )
                fields[f"{relation.name}_aggregate"] = GraphQLField(
                    GraphQLNonNull(self.aggregates[relation.target]), self._list_args(relation.target)
                )
        return fields

    def _aggregate_fields(self, table: TableInfo) -> Callable[[], dict[str, GraphQLField]]:
        root = table.root

        def build() -> dict[str, GraphQLField]:
            fields: dict[str, GraphQLField] = {
                "count": GraphQLField(
                    GraphQLNonNull(GraphQLInt),
                    {
                        "columns": GraphQLArgument(GraphQLList(GraphQLNonNull(self.select_columns[root]))),
                        "distinct": GraphQLArgument(GraphQLBoolean),
                    },
                ),
            }
            numeric = table.summable
            # A noisy table releases counts and sums only: min and max are one row's value, and
            # an average would be a sum over a count its noise is not calibrated to.
            orderable = {n: c for n, c in table.measures.items() if c.type.kind in ORDERABLE and table.noisy is None}
            if numeric:
                fields["sum"] = GraphQLField(
                    GraphQLObjectType(
                        f"{root}_sum_fields", {n: GraphQLField(sum_type(c.type)) for n, c in numeric.items()}
                    )
                )
            if numeric and table.noisy is None:
                fields["avg"] = GraphQLField(
                    GraphQLObjectType(f"{root}_avg_fields", {n: GraphQLField(SCALARS["double"]) for n in numeric})
                )
            if orderable:
                for op in ("min", "max"):
                    fields[op] = GraphQLField(
                        GraphQLObjectType(
                            f"{root}_{op}_fields", {n: GraphQLField(c.scalar) for n, c in orderable.items()}
                        )
                    )
            return fields

        return build

    # -- input types -----------------------------------------------------------------------

    def _bool_exp_fields(self, table: TableInfo) -> dict[str, GraphQLInputField]:
        own = self.bool_exps[table.root]
        fields: dict[str, GraphQLInputField] = {
            "_and": GraphQLInputField(GraphQLList(GraphQLNonNull(own))),
            "_not": GraphQLInputField(own),
            "_or": GraphQLInputField(GraphQLList(GraphQLNonNull(own))),
        }
        if table.aggregate_only:
            # No negation and no union (see AGGREGATE_ONLY_EXCLUDES): a total minus one of
            # them would be a group the threshold left out.
            fields = {op: f for op, f in fields.items() if op not in AGGREGATE_ONLY_EXCLUDES}
        comparisons = GROUP_COMPARISONS if table.aggregate_only else COMPARISONS
        for name, column in table.columns.items():
            # An aggregate-only table filters only by what its groups may use: a filter by
            # another column (a cost range, a patient's name through `resident`) would pick
            # out single rows that two large aggregates then differ by.
            if not table.aggregate_only or table.groupable(name):
                fields[name] = GraphQLInputField(comparisons[column.type.kind])
        if table.aggregate_only:
            return fields
        for relation in table.relations.values():
            # No filter reaches into an aggregate-only table: EXISTS would test single rows.
            if not self.tables[relation.target].aggregate_only:
                fields[relation.name] = GraphQLInputField(self.bool_exps[relation.target])
        return fields

    def _order_by_fields(self, table: TableInfo) -> dict[str, GraphQLInputField]:
        fields = {
            name: GraphQLInputField(ORDER_BY)
            for name, c in table.columns.items()
            if c.type.kind in ORDERABLE or c.type.kind == "boolean"
        }
        for relation in table.relations.values():
            if relation.kind == "object" and not self.tables[relation.target].aggregate_only:
                fields[relation.name] = GraphQLInputField(self.order_bys[relation.target])
        return fields

    def _group_order_fields(self, table: TableInfo) -> Callable[[], dict[str, GraphQLInputField]]:
        root = table.root

        def build() -> dict[str, GraphQLInputField]:
            fields = {name: GraphQLInputField(ORDER_BY) for name in table.columns if table.groupable(name)}
            if table.noisy is not None:  # ordered by an exact aggregate, groups would rank by it
                return fields
            aggregate: dict[str, GraphQLInputField] = {"count": GraphQLInputField(ORDER_BY)}
            for op, allowed in (("sum", NUMERIC), ("avg", NUMERIC), ("min", ORDERABLE), ("max", ORDERABLE)):
                columns = [n for n, c in table.measures.items() if c.type.kind in allowed]
                if columns:
                    aggregate[op] = GraphQLInputField(
                        GraphQLInputObjectType(
                            f"{root}_{op}_order_by", {n: GraphQLInputField(ORDER_BY) for n in columns}
                        )
                    )
            fields["aggregate"] = GraphQLInputField(GraphQLInputObjectType(f"{root}_aggregate_order_by", aggregate))
            return fields

        return build

    # -- the query root --------------------------------------------------------------------

    def schema(self) -> GraphQLSchema:
        fields: dict[str, GraphQLField] = {}
        for root, table in self.tables.items():
            list_args = self._list_args(root)
            # Root fields are nullable: a department that is down answers null with an error
            # while the request's other root fields still answer.
            if not table.aggregate_only:
                fields[root] = GraphQLField(
                    GraphQLList(GraphQLNonNull(self.objects[root])), list_args, description=table.description or None
                )
                self.roots[root] = ("list", table)
            if table.primary_key and table.by_pk and not table.aggregate_only:
                fields[f"{root}_by_pk"] = GraphQLField(
                    self.objects[root],
                    {k: GraphQLArgument(GraphQLNonNull(table.columns[k].scalar)) for k in table.primary_key},
                    description=f"one row of {root} by its primary key",
                )
                self.roots[f"{root}_by_pk"] = ("by_pk", table)
            fields[f"{root}_aggregate"] = GraphQLField(self.aggregates[root], self._aggregate_args(root))
            self.roots[f"{root}_aggregate"] = ("aggregate", table)
            group_args: dict[str, Any] = {
                "by": GraphQLArgument(GraphQLNonNull(GraphQLList(GraphQLNonNull(self.group_columns[root])))),
                "limit": GraphQLArgument(GraphQLInt),
                "offset": GraphQLArgument(GraphQLInt),
                "order_by": GraphQLArgument(GraphQLList(GraphQLNonNull(self.group_order_bys[root]))),
                "where": GraphQLArgument(self.bool_exps[root]),
            }
            fields[f"{root}_group_by"] = GraphQLField(
                GraphQLList(GraphQLNonNull(self.group_bys[root])),
                group_args,
                description=f"rows of {root} grouped by the columns in `by`, with aggregates per group",
            )
            self.roots[f"{root}_group_by"] = ("group_by", table)
        if not fields:
            fields["_no_tables"] = GraphQLField(GraphQLBoolean, description="no department's tables are reachable")
        return GraphQLSchema(GraphQLObjectType(QUERY_ROOT, fields))
