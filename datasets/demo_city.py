"""The demo city's contract (``shared/demo-city.md``): departments, tables, keys, classes, links.

This is data, not behaviour: the generator fills these tables, the stores are created from
them, and tests compare every engine's introspection with them.
"""

from __future__ import annotations

from dataclasses import dataclass

from catalogue.model import Column, Department, SharingClass, Table
from catalogue.types import logical_type

DISTRICTS = ("莞城", "南城", "东城", "万江", "石龙", "虎门", "长安", "松山湖")


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    name: str
    declared: str  # the store's type, as a neutral SQL type name with lengths
    sharing: SharingClass
    nullable: bool = False


@dataclass(frozen=True, slots=True)
class TableSpec:
    department: str
    name: str
    columns: tuple[ColumnSpec, ...]
    primary_key: tuple[str, ...]
    base_rows: int
    scales: bool = True  # False: the city's own fixed 2015 figure

    def rows(self, scale: float) -> int:
        """Row count at ``scale``; fixed tables keep the city's own figure."""
        return self.base_rows if not self.scales else max(1, round(self.base_rows * scale))

    def to_table(self) -> Table:
        return Table(
            department=self.department,
            name=self.name,
            columns=tuple(Column(c.name, logical_type(c.declared), c.nullable) for c in self.columns),
            primary_key=self.primary_key,
        )


@dataclass(frozen=True, slots=True)
class DepartmentSpec:
    name: str
    display_name: str
    services_store: str  # "postgresql" or "mariadb" when the services run


@dataclass(frozen=True, slots=True)
class RelationshipSpec:
    """An object relationship and its reverse, linked by a unified identifier."""

    source: tuple[str, str, str]  # department, table, column
    name: str
    target: tuple[str, str, str]
    reverse_name: str
    reverse_kind: str  # "array" or "object"


P, S, E, R, C = (
    SharingClass.PUBLISHED,
    SharingClass.SHARED,
    SharingClass.EXCHANGE,
    SharingClass.REPORTED,
    SharingClass.CONFIDENTIAL,
)

DEPARTMENTS = (
    DepartmentSpec("public_security", "公安局", "postgresql"),
    DepartmentSpec("health", "卫生健康局", "postgresql"),
    DepartmentSpec("transport", "交通运输局", "postgresql"),
    DepartmentSpec("market_regulation", "市场监督管理局", "mariadb"),
    DepartmentSpec("environment", "生态环境局", "mariadb"),
    DepartmentSpec("human_resources", "人力资源和社会保障局", "mariadb"),
)


def _cols(*specs: tuple[str, str, SharingClass] | tuple[str, str, SharingClass, bool]) -> tuple[ColumnSpec, ...]:
    return tuple(ColumnSpec(*s) for s in specs)


TABLES = (
    TableSpec(
        "public_security",
        "residents",
        _cols(
            ("id_card", "VARCHAR(18)", C),
            ("name", "VARCHAR(16)", S),
            ("gender", "CHAR(1)", S),
            ("birth_date", "DATE", E),
            ("phone", "VARCHAR(11)", C),
            ("address", "VARCHAR(64)", E),
            ("district", "VARCHAR(8)", P),
            ("registered_at", "TIMESTAMP", S),
        ),
        ("id_card",),
        10_000,
    ),
    TableSpec(
        "health",
        "clinic_visits",
        _cols(
            ("visit_id", "BIGINT", S),
            ("id_card", "VARCHAR(18)", C),
            ("hospital", "VARCHAR(32)", P),
            ("department_name", "VARCHAR(16)", S),
            ("diagnosis_code", "VARCHAR(8)", E),
            ("diagnosis", "VARCHAR(32)", C),
            ("visit_date", "DATE", S),
            ("cost", "DECIMAL(10,2)", R),
        ),
        ("visit_id",),
        30_000,
    ),
    TableSpec(
        "health",
        "health_records",
        _cols(
            ("record_id", "BIGINT", S),
            ("id_card", "VARCHAR(18)", C),
            ("blood_type", "VARCHAR(4)", E),
            ("chronic_conditions", "VARCHAR(32)", C, True),
            ("updated_at", "TIMESTAMP", S),
        ),
        ("record_id",),
        10_000,
    ),
    TableSpec(
        "market_regulation",
        "enterprises",
        _cols(
            ("credit_code", "VARCHAR(18)", P),
            ("name", "VARCHAR(48)", P),
            ("legal_rep_id_card", "VARCHAR(18)", C),
            ("industry", "VARCHAR(16)", P),
            ("registered_capital", "DECIMAL(14,2)", S),
            ("established_date", "DATE", P),
            ("district", "VARCHAR(8)", P),
            ("status", "VARCHAR(16)", P),
        ),
        ("credit_code",),
        2_000,
    ),
    TableSpec(
        "environment",
        "monitored_sites",
        _cols(
            ("site_id", "INT", P),
            ("credit_code", "VARCHAR(18)", P),
            ("site_name", "VARCHAR(64)", P),
            ("district", "VARCHAR(8)", P),
        ),
        ("site_id",),
        359,
        scales=False,
    ),
    TableSpec(
        "environment",
        "emission_readings",
        _cols(
            ("reading_id", "BIGINT", P),
            ("site_id", "INT", P),
            ("pollutant", "VARCHAR(8)", P),
            ("value", "DOUBLE", P),
            ("unit", "VARCHAR(8)", P),
            ("measured_at", "TIMESTAMP", P),
            ("exceeded", "BOOLEAN", P),
        ),
        ("reading_id",),
        50_000,
    ),
    TableSpec(
        "transport",
        "vehicles",
        _cols(
            ("plate", "VARCHAR(8)", S),
            ("owner_credit_code", "VARCHAR(18)", P),
            ("vehicle_type", "VARCHAR(16)", P),
            ("seats", "INT", P),
            ("registered_date", "DATE", S),
        ),
        ("plate",),
        35_714,
        scales=False,
    ),
    TableSpec(
        "transport",
        "stations",
        _cols(
            ("station_id", "INT", P),
            ("name", "VARCHAR(32)", P),
            ("level", "INT", P),
            ("district", "VARCHAR(8)", P),
        ),
        ("station_id",),
        24,
        scales=False,
    ),
    TableSpec(
        "human_resources",
        "social_insurance",
        _cols(
            ("id_card", "VARCHAR(18)", C),
            ("employer_credit_code", "VARCHAR(18)", S),
            ("monthly_salary", "DECIMAL(10,2)", C),
            ("months_paid", "INT", R),
            ("last_paid", "DATE", S),
        ),
        ("id_card",),
        8_000,
    ),
)

RELATIONSHIPS = (
    RelationshipSpec(
        ("health", "clinic_visits", "id_card"),
        "resident",
        ("public_security", "residents", "id_card"),
        "clinic_visits",
        "array",
    ),
    RelationshipSpec(
        ("health", "health_records", "id_card"),
        "resident",
        ("public_security", "residents", "id_card"),
        "health_record",
        "object",
    ),
    RelationshipSpec(
        ("market_regulation", "enterprises", "legal_rep_id_card"),
        "legal_representative",
        ("public_security", "residents", "id_card"),
        "enterprises_represented",
        "array",
    ),
    RelationshipSpec(
        ("environment", "monitored_sites", "credit_code"),
        "enterprise",
        ("market_regulation", "enterprises", "credit_code"),
        "monitored_sites",
        "array",
    ),
    RelationshipSpec(
        ("environment", "emission_readings", "site_id"),
        "site",
        ("environment", "monitored_sites", "site_id"),
        "readings",
        "array",
    ),
    RelationshipSpec(
        ("transport", "vehicles", "owner_credit_code"),
        "owner",
        ("market_regulation", "enterprises", "credit_code"),
        "vehicles",
        "array",
    ),
    RelationshipSpec(
        ("human_resources", "social_insurance", "id_card"),
        "resident",
        ("public_security", "residents", "id_card"),
        "social_insurance",
        "array",
    ),
    RelationshipSpec(
        ("human_resources", "social_insurance", "employer_credit_code"),
        "employer",
        ("market_regulation", "enterprises", "credit_code"),
        "insured_employees",
        "array",
    ),
)


def table_spec(department: str, name: str) -> TableSpec:
    for spec in TABLES:
        if spec.department == department and spec.name == name:
            return spec
    raise KeyError(f"the demo city has no table {department}.{name}")


def catalogue() -> tuple[Department, ...]:
    """The contract's departments as catalogue objects (what introspection must find)."""
    return tuple(
        Department(
            name=d.name,
            display_name=d.display_name,
            tables=tuple(t.to_table() for t in TABLES if t.department == d.name),
        )
        for d in DEPARTMENTS
    )
