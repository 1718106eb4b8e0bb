"""The catalogue: what departments exist, what tables they own, and each column's type and class.

Engines produce a :class:`Catalogue` by introspection; configuration adds what a store cannot
say about itself (display names, sharing classes, relationships).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from catalogue.types import LogicalType


class SharingClass(StrEnum):
    """The five sharing classes of the city's resource catalogue."""

    PUBLISHED = "published"  # 发布
    SHARED = "shared"  # 共享
    EXCHANGE = "exchange"  # 交换
    REPORTED = "reported"  # 上报
    CONFIDENTIAL = "confidential"  # 保密

    @property
    def label(self) -> str:
        """The class as the city's catalogue writes it.

        >>> SharingClass.CONFIDENTIAL.label
        'confidential (保密)'
        """
        names = {"published": "发布", "shared": "共享", "exchange": "交换", "reported": "上报", "confidential": "保密"}
        return f"{self.value} ({names[self.value]})"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: LogicalType
    nullable: bool = True


@dataclass(frozen=True, slots=True)
class Table:
    department: str
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Department:
    name: str
    tables: tuple[Table, ...] = ()
    display_name: str = ""


@dataclass(frozen=True, slots=True)
class Catalogue:
    departments: tuple[Department, ...] = field(default_factory=tuple)

    @property
    def tables(self) -> tuple[Table, ...]:
        return tuple(t for d in self.departments for t in d.tables)

    def describe(self) -> dict[str, dict[str, dict[str, str]]]:
        """A plain, comparable summary: department -> table -> column -> logical type."""
        return {d.name: {t.name: {c.name: str(c.type) for c in t.columns} for t in d.tables} for d in self.departments}
