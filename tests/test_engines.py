"""Every engine reads the same demo city: counts, full contents, types, and cross-department joins.

Each test runs on DuckDB over the SQLite files, DuckDB attached to PostgreSQL + MariaDB, and
Trino, and compares with the generator's own output.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

import pytest
from sqlglot import exp

from catalogue.model import Catalogue
from catalogue.sql import logical_table
from connectors.base import Engine
from datasets.datagen import City
from datasets.demo_city import RELATIONSHIPS, TABLES, RelationshipSpec, TableSpec, catalogue
from tests.test_datagen import CONTRACT_ROWS


@pytest.mark.parametrize("spec", TABLES, ids=lambda t: f"{t.department}.{t.name}")
def test_row_count_matches_the_contract(engine: Engine, spec: TableSpec) -> None:
    query = exp.select(exp.func("count", exp.Star())).from_(logical_table(spec.department, spec.name))
    assert engine.execute(query).rows == [(CONTRACT_ROWS[(spec.department, spec.name)],)]


@pytest.mark.parametrize("spec", TABLES, ids=lambda t: f"{t.department}.{t.name}")
def test_table_contents_equal_the_generator_output(engine: Engine, city: City, spec: TableSpec) -> None:
    columns = [c.name for c in spec.columns]
    query = (
        exp.select(*[exp.column(exp.to_identifier(c, quoted=True)) for c in columns])
        .from_(logical_table(spec.department, spec.name))
        .order_by(*[exp.column(exp.to_identifier(k, quoted=True)) for k in spec.primary_key])
    )
    result = engine.execute(query)
    assert list(result.columns) == columns
    expected = sorted(
        city.rows(spec.department, spec.name), key=lambda r: tuple(r[columns.index(k)] for k in spec.primary_key)
    )
    assert len(result.rows) == len(expected)
    for got, want in zip(result.rows, expected, strict=True):
        assert got == want
        # Equality alone would let 1 == True and Decimal("1.50") == 1.5 through.
        assert [type(v) for v in got] == [type(v) for v in want]


def test_introspection_lists_the_contract(engine: Engine) -> None:
    found = engine.introspect()
    assert found.describe() == Catalogue(catalogue()).describe()
    assert len(found.departments) == 6 and len(found.tables) == 9


def test_introspection_agrees_across_engines(
    embedded_sqlite: Engine, embedded_services: Engine, trino_engine: Engine
) -> None:
    seen = [e.introspect().describe() for e in (embedded_sqlite, embedded_services, trino_engine)]
    assert seen[0] == seen[1] == seen[2]


def visits_per_district_and_hospital() -> exp.Select:
    visits = logical_table("health", "clinic_visits").as_("v")
    residents = logical_table("public_security", "residents").as_("r")
    return (
        exp.select(
            "r.district",
            "v.hospital",
            exp.alias_(exp.func("count", exp.Star()), "visits"),
            exp.alias_(exp.func("sum", exp.column("cost", "v")), "total_cost"),
        )
        .from_(visits)
        .join(residents, on=exp.column("id_card", "v").eq(exp.column("id_card", "r")))
        .group_by("r.district", "v.hospital")
        .order_by("r.district", "v.hospital")
    )


def test_cross_department_join_and_aggregate_equals_python(engine: Engine, city: City) -> None:
    district_of = {r["id_card"]: r["district"] for r in city.dicts("public_security", "residents")}
    visits: dict[tuple[str, str], int] = defaultdict(int)
    costs: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for visit in city.dicts("health", "clinic_visits"):
        key = (district_of[visit["id_card"]], visit["hospital"])
        visits[key] += 1
        costs[key] += visit["cost"]
    expected = [(d, h, visits[(d, h)], costs[(d, h)]) for d, h in sorted(visits)]
    rows = engine.execute(visits_per_district_and_hospital()).rows
    assert rows == expected
    assert all(isinstance(row[3], Decimal) for row in rows)


def test_the_join_returns_identical_rows_on_every_engine(
    embedded_sqlite: Engine, embedded_services: Engine, trino_engine: Engine
) -> None:
    query = visits_per_district_and_hospital()
    results = [e.execute(query).rows for e in (embedded_sqlite, embedded_services, trino_engine)]
    assert results[0] == results[1] == results[2]
    assert len(results[0]) == 8 * 6


@pytest.mark.parametrize("link", RELATIONSHIPS, ids=lambda r: f"{r.source[1]}.{r.name}")
def test_every_relationship_resolves_through_the_engine(engine: Engine, link: RelationshipSpec) -> None:
    source_dept, source_table, source_column = link.source
    target_dept, target_table, target_column = link.target
    dangling = (
        exp.select(exp.func("count", exp.Star()))
        .from_(logical_table(source_dept, source_table).as_("s"))
        .join(
            logical_table(target_dept, target_table).as_("t"),
            on=exp.column(source_column, "s").eq(exp.column(target_column, "t")),
            join_type="left",
        )
        .where(exp.column(target_column, "t").is_(exp.null()))
    )
    assert engine.execute(dangling).rows == [(0,)]


def test_user_values_travel_as_literals(engine: Engine) -> None:
    hostile = "南城' OR '1'='1"
    query = (
        exp.select(exp.func("count", exp.Star()))
        .from_(logical_table("public_security", "residents"))
        .where(exp.column("district").eq(exp.Literal.string(hostile)))
    )
    assert engine.execute(query).rows == [(0,)]
