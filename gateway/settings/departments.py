"""The departments a deployment serves: each one's store, tables and columns, and the links
between tables across departments."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from catalogue.model import SharingClass
from catalogue.stores import Store
from gateway.settings.base import NAME_PATTERN, Model


class ColumnConfig(Model):
    # The column's meaning where an engine cannot tell it from the store (Trino reads
    # MariaDB's BOOLEAN, a TINYINT(1), as a number); engines cast to it.
    type: str | None = None
    description: str = ""

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str | None) -> str | None:
        from catalogue.types import UnknownTypeError, logical_type

        if value is not None:
            try:
                logical_type(value)
            except UnknownTypeError:
                raise ValueError(
                    f"unknown type {value!r}; use string, boolean, integer, bigint, double, "
                    "decimal(p,s), date or timestamp"
                ) from None
        return value


class SharingConfig(Model):
    """A table's columns by sharing class, as the city's catalogue lists them: the named
    columns take their class, every other column the default."""

    # a column the lists do not name: the most restrictive class unless the table says otherwise
    default: SharingClass = SharingClass.CONFIDENTIAL
    published: list[str] = Field(default_factory=list)
    shared: list[str] = Field(default_factory=list)
    exchange: list[str] = Field(default_factory=list)
    reported: list[str] = Field(default_factory=list)
    confidential: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _each_column_once(self) -> SharingConfig:
        seen: dict[str, str] = {}
        for sharing in SharingClass:
            for column in getattr(self, sharing.value):
                if column in seen:
                    raise ValueError(f"column {column!r} is listed as both {seen[column]} and {sharing.value}")
                seen[column] = sharing.value
        return self

    def of(self, column: str) -> SharingClass:
        for sharing in SharingClass:
            if column in getattr(self, sharing.value):
                return sharing
        return self.default


class TableConfig(Model):
    # Trino does not report primary keys; they identify rows for `_by_pk` and make every
    # ordering total, so the same query pages the same way on every engine.
    primary_key: list[str] = Field(default_factory=list)
    description: str = ""
    sharing: SharingConfig = SharingConfig()
    columns: dict[str, ColumnConfig] = Field(default_factory=dict)


class DepartmentConfig(Model):
    display_name: str = ""
    owner: str = ""
    store: Store
    trino_catalog: str | None = Field(None, pattern=NAME_PATTERN)
    # How long the gateway may keep this department's rows in its result cache: unset takes
    # `cache.ttl_seconds`; 0 forbids caching anything that reads this department.
    cache_ttl_seconds: float | None = Field(None, ge=0)
    tables: dict[str, TableConfig] = Field(default_factory=dict)
    # the store's tables the gateway serves, as names or patterns (`*`, `report_?`); unset: only
    # the tables named under `tables`, so a table added to the store later is not served unasked
    expose: list[str] | None = None
    # false: this department's statements never run on its store directly (engine.delegate)
    delegate: bool = True

    def exposes(self, table: str) -> bool:
        """Whether this department's table ``table`` is served."""
        if self.expose is None:
            return table in self.tables
        return any(fnmatch.fnmatchcase(table, pattern) for pattern in self.expose)

    def column_types(self) -> dict[str, str]:
        """ "table.column" -> configured logical type."""
        return {
            f"{table}.{column}": spec.type
            for table, table_spec in self.tables.items()
            for column, spec in table_spec.columns.items()
            if spec.type
        }


class ColumnRef(Model):
    department: str
    table: str
    column: str


class ReverseConfig(Model):
    name: str = Field(pattern=NAME_PATTERN)
    kind: Literal["array", "object"] = "array"


class RelationshipConfig(Model):
    """A link from one table's column to another's, usually across departments.

    ``from`` holds the key that points (``health.clinic_visits.id_card``), ``to`` the key it
    points at; ``name`` is the object field on the ``from`` side, ``reverse`` the field on the
    ``to`` side.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=NAME_PATTERN)
    source: str = Field(alias="from", pattern=r"^[a-z][a-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
    target: str = Field(alias="to", pattern=r"^[a-z][a-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
    reverse: ReverseConfig | None = None

    @property
    def source_ref(self) -> ColumnRef:
        department, table, column = self.source.split(".")
        return ColumnRef(department=department, table=table, column=column)

    @property
    def target_ref(self) -> ColumnRef:
        department, table, column = self.target.split(".")
        return ColumnRef(department=department, table=table, column=column)


@dataclass(frozen=True)
class CatalogueSettings:
    """What the schema, the views and the proofs read of a configuration: each department's
    tables and columns as configured, and the relationships between them; nothing of engines,
    tokens or limits (:meth:`gateway.config.Config.catalogue_settings`).

    >>> from catalogue.stores import SqliteStore
    >>> health = DepartmentConfig(store=SqliteStore(kind="sqlite", path="h.db"),
    ...     tables={"visits": TableConfig(sharing=SharingConfig(published=["year"]))})
    >>> CatalogueSettings({"health": health}).sharing_classes("health", "visits", ["year", "id_card"])
    {'year': <SharingClass.PUBLISHED: 'published'>, 'id_card': <SharingClass.CONFIDENTIAL: 'confidential'>}
    """

    departments: Mapping[str, DepartmentConfig]
    relationships: Sequence[RelationshipConfig] = ()

    def sharing_classes(self, department: str, table: str, columns: list[str]) -> dict[str, SharingClass | None]:
        """Each column's sharing class from the catalogue configuration; unclassified: None."""
        table_config = self.departments[department].tables.get(table)
        if table_config is None or "sharing" not in table_config.model_fields_set:
            return dict.fromkeys(columns)
        return {c: table_config.sharing.of(c) for c in columns}
