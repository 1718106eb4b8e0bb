"""The seed-scale profile: its plan, its generated identifiers, its configuration and schema,
and a small load of it into the real stores answered through the gateway on both engines.

The full 26.88 million rows are never loaded here (`python -m bench.seed` does that); the
counts are checked on the plan, the values on a tiny scale.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from catalogue.model import Catalogue, Department
from catalogue.types import logical_type
from datasets.demo_city import DEPARTMENTS as DEMO_DEPARTMENTS
from datasets.demo_city import TableSpec
from datasets.ids import is_valid_credit_code, is_valid_resident_id, resident_birth_date, resident_gender
from datasets.seed_scale import SeedPlan, plan
from datasets.seedgen import Generator, config_text, ensure_loaded, seed_config
from gateway.config import Config, load_config
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.graphql.schema import build_model
from tests.conftest import REPO

SCALE = 0.002  # 2,000 residents, 200 enterprises, 53,760 rows in all


@pytest.fixture(scope="module")
def seed() -> SeedPlan:
    return plan()


@pytest.fixture(scope="module")
def generated(seed: SeedPlan) -> Iterator[Generator]:
    generator = Generator(seed, SCALE)
    yield generator
    generator.close()


def columns_of(table: TableSpec, rows: list[tuple[Any, ...]], column: str) -> list[Any]:
    index = [c.name for c in table.columns].index(column)
    return [row[index] for row in rows]


# -- the plan -------------------------------------------------------------------------------


def test_the_plan_has_the_citys_reported_size(seed: SeedPlan) -> None:
    assert len(seed.departments) == 73
    assert len(seed.tables) == 755
    assert seed.total_rows() == 26_880_000
    assert all(10 <= len(d.tables) <= 11 for d in seed.departments)
    assert all(5 <= len(t.columns) <= 20 for t in seed.tables)
    assert all(t.primary_key and t.base_rows > 0 for t in seed.tables)
    # Skewed: a few big fact tables, many small ones.
    sizes = sorted((t.base_rows for t in seed.tables), reverse=True)
    assert sizes[0] > 1_000_000 > sizes[20] and sizes[-1] < 10_000


def test_departments_alternate_stores_and_never_meet_the_demo_city(seed: SeedPlan) -> None:
    names = [d.name for d in seed.departments]
    assert len(set(names)) == 73
    assert all(name.startswith("seed_") for name in names)
    assert not set(names) & {d.name for d in DEMO_DEPARTMENTS}
    assert Counter(d.store for d in seed.departments) == {"postgresql": 37, "mariadb": 36}
    assert [d.store for d in seed.departments[:4]] == ["postgresql", "mariadb", "postgresql", "mariadb"]
    for department in seed.departments:
        assert len({t.name for t in department.tables}) == len(department.tables)
        assert all(t.department == department.name for t in department.tables)


def test_columns_mix_every_logical_type(seed: SeedPlan) -> None:
    kinds = Counter(logical_type(c.declared).kind for t in seed.tables for c in t.columns)
    assert set(kinds) == {"string", "boolean", "integer", "bigint", "double", "decimal", "date", "timestamp"}
    assert any(c.nullable for t in seed.tables for c in t.columns)


def test_linking_columns_point_at_the_two_registers(seed: SeedPlan) -> None:
    links = seed.links()
    with_id = [t for t in seed.tables if "id_card" in {c.name for c in t.columns} and t.name != "residents"]
    with_code = [t for t in seed.tables if "credit_code" in {c.name for c in t.columns} and t.name != "enterprises"]
    assert len(links) == len(with_id) + len(with_code) + 1  # + enterprises.legal_rep_id_card
    assert {link.target for link in links} == {
        ("seed_public_security", "residents", "id_card"),
        ("seed_market_regulation", "enterprises", "credit_code"),
    }
    stores = {d.name: d.store for d in seed.departments}
    crossing = [link for link in links if stores[link.source[0]] != stores[link.target[0]]]
    assert len(crossing) > 100  # PostgreSQL rows pointing into MariaDB and back


def test_a_prefix_renames_departments_only(seed: SeedPlan) -> None:
    other = plan("seedtest_")
    assert [d.name.removeprefix("seedtest_") for d in other.departments] == [
        d.name.removeprefix("seed_") for d in seed.departments
    ]
    assert [(t.name, t.columns, t.base_rows) for t in other.tables] == [
        (t.name, t.columns, t.base_rows) for t in seed.tables
    ]


# -- generated values -----------------------------------------------------------------------


def test_generated_identifiers_are_valid_and_agree_with_the_residents(seed: SeedPlan, generated: Generator) -> None:
    residents = generated.rows(seed.residents)
    assert len(residents) == seed.residents.rows(SCALE) == 2000
    ids = columns_of(seed.residents, residents, "id_card")
    assert len(set(ids)) == len(ids)
    for id_card, gender, birth in zip(
        ids,
        columns_of(seed.residents, residents, "gender"),
        columns_of(seed.residents, residents, "birth_date"),
        strict=True,
    ):
        assert is_valid_resident_id(id_card), id_card
        assert id_card.startswith("441900")
        assert resident_gender(id_card) == gender
        assert resident_birth_date(id_card) == birth
    assert Counter(columns_of(seed.residents, residents, "gender")).keys() == {"M", "F"}

    enterprises = generated.rows(seed.enterprises)
    codes = columns_of(seed.enterprises, enterprises, "credit_code")
    assert len(codes) == len(set(codes)) == 200
    assert all(is_valid_credit_code(code) and code.startswith("91441900") for code in codes)
    assert set(columns_of(seed.enterprises, enterprises, "legal_rep_id_card")) <= set(ids)


def test_linking_columns_reference_existing_residents_and_enterprises(seed: SeedPlan, generated: Generator) -> None:
    ids = set(columns_of(seed.residents, generated.rows(seed.residents), "id_card"))
    codes = set(columns_of(seed.enterprises, generated.rows(seed.enterprises), "credit_code"))
    department = seed.department("seed_civil_affairs")
    checked = Counter[str]()
    for table in department.tables:
        rows = generated.rows(table)
        assert len(rows) == table.rows(SCALE)
        assert columns_of(table, rows, "record_id") == list(range(1, len(rows) + 1))
        names = {c.name for c in table.columns}
        if "id_card" in names:
            assert set(columns_of(table, rows, "id_card")) <= ids
            checked["id_card"] += 1
        if "credit_code" in names:
            assert set(columns_of(table, rows, "credit_code")) <= codes
            checked["credit_code"] += 1
        for column in table.columns:
            values = columns_of(table, rows, column.name)
            assert column.nullable or None not in values, (table.name, column.name)
    assert checked["id_card"] and checked["credit_code"]


def test_generation_is_deterministic(seed: SeedPlan, generated: Generator) -> None:
    table = seed.department("seed_justice").tables[0]
    again = Generator(seed.only(("seed_justice",)), SCALE)
    try:
        assert again.rows(table) == generated.rows(table)
    finally:
        again.close()


# -- configuration and schema -------------------------------------------------------------


def test_the_committed_config_is_the_generated_one(seed: SeedPlan) -> None:
    path = REPO / "configs" / "seed-scale.yaml"
    assert path.read_text(encoding="utf-8") == config_text(seed), (
        "configs/seed-scale.yaml is stale: python -m datasets.seedgen config > configs/seed-scale.yaml"
    )
    config = load_config(path)
    assert len(config.departments) == 73
    assert sum(len(d.tables) for d in config.departments.values()) == 755
    assert len(config.relationships) == len(seed.links())
    assert config.engine.trino.create_missing_catalogs
    assert {d.store.kind for d in config.departments.values()} == {"postgresql", "mariadb"}
    assert all(d.store.database == name for name, d in config.departments.items())  # type: ignore[union-attr]


def test_the_schema_builds_with_all_755_tables(seed: SeedPlan) -> None:
    config = load_config(REPO / "configs" / "seed-scale.yaml")
    catalogue = Catalogue(
        tuple(Department(d.name, tuple(t.to_table() for t in d.tables), d.display_name) for d in seed.departments)
    )
    model = build_model(catalogue, config.catalogue_settings())
    assert len(model.tables) == 755
    kinds = Counter(kind for kind, _ in model.roots.values())
    assert kinds == {"list": 755, "by_pk": 755, "aggregate": 755, "group_by": 755}
    fields = model.schema.query_type.fields  # type: ignore[union-attr]
    licences = model.schema.get_type("seed_public_security_licences")
    assert "enterprise" in licences.fields  # type: ignore[union-attr]
    residents = model.schema.get_type("seed_public_security_residents")
    assert "seed_public_security_appointments" in residents.fields  # type: ignore[union-attr]
    assert "seed_overseas_chinese_penalties_by_pk" in fields


# -- a tiny load into the real stores, through the gateway ------------------------------------

TEST_DEPARTMENTS = ("seedtest_public_security", "seedtest_market_regulation")


@pytest.fixture(scope="module")
def tiny(services_config: Config) -> tuple[SeedPlan, Config]:
    """Two departments (residents in PostgreSQL, enterprises in MariaDB) under their own names,
    loaded once; later runs find them stamped and skip the load. Trino is reached as the
    services' configuration reaches it (its HTTPS port, with the gateway's password)."""
    seed = plan("seedtest_").only(TEST_DEPARTMENTS)
    postgres = {"kind": "postgresql", "host": "127.0.0.1", "port": 5432, "user": "citygate", "password": "citygate-dev"}
    trino = {**services_config.engine.trino.model_dump(mode="json"), "create_missing_catalogs": True}
    config = seed_config(seed, postgres, {**postgres, "kind": "mariadb", "port": 3306}, trino)
    ensure_loaded(config, SCALE, seed, progress=lambda message: None, show_bar=False)
    return seed, config


@pytest.fixture(scope="module", params=("trino", "embedded"))
def tiny_gateway(request: pytest.FixtureRequest, tiny: tuple[SeedPlan, Config]) -> Iterator[Gateway]:
    config = tiny[1].with_engine(request.param)
    gateway = Gateway.start(config, create_engine(config))
    yield gateway
    gateway.close()


def test_a_repeat_load_is_skipped(tiny: tuple[SeedPlan, Config]) -> None:
    seed, config = tiny
    report = ensure_loaded(config, SCALE, seed, progress=lambda message: None, show_bar=False)
    assert report.loaded == [] and sorted(report.skipped) == sorted(TEST_DEPARTMENTS)


def _plain(value: Any) -> Any:
    """A generated value as the GraphQL response spells it."""
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def test_tables_on_both_stores_answer_as_generated(tiny: tuple[SeedPlan, Config], tiny_gateway: Gateway) -> None:
    seed, _ = tiny
    generator = Generator(seed, SCALE)
    try:
        for department in seed.departments:
            table = next(t for t in department.tables if t.name not in ("residents", "enterprises"))
            expected = generator.rows(table)[:20]
            root = f"{department.name}_{table.name}"
            names = [c.name for c in table.columns]
            body = tiny_gateway.execute(
                f"{{ {root}(order_by: [{{record_id: asc}}], limit: 20) {{ {' '.join(names)} }} "
                f"{root}_aggregate {{ aggregate {{ count }} }} }}"
            ).body
            assert "errors" not in body, body
            assert body["data"][f"{root}_aggregate"]["aggregate"]["count"] == table.rows(SCALE)
            declared = {c.name: c.declared for c in table.columns}
            for row, want in zip(body["data"][root], expected, strict=True):
                for name, value in zip(names, want, strict=True):
                    shown = row[name]
                    if declared[name] == "BOOLEAN":  # generated as 1/0, which both stores read as true/false
                        assert shown is (None if value is None else bool(value)), (root, name)
                    elif isinstance(value, float):
                        assert shown == pytest.approx(value), (root, name)
                    elif isinstance(value, int):  # BigInt answers as a string
                        assert int(shown) == value, (root, name)
                    else:
                        assert shown == _plain(value), (root, name)
    finally:
        generator.close()


def test_cross_department_links_resolve_across_stores(tiny: tuple[SeedPlan, Config], tiny_gateway: Gateway) -> None:
    seed, _ = tiny
    generator = Generator(seed, SCALE)
    try:
        residents = {r[0]: r for r in generator.rows(seed.residents)}
        enterprises = {e[0]: e for e in generator.rows(seed.enterprises)}
        # PostgreSQL rows -> MariaDB enterprises, and MariaDB rows -> PostgreSQL residents.
        pairs = [
            ("seedtest_public_security", "credit_code", "enterprise", enterprises),
            ("seedtest_market_regulation", "id_card", "resident", residents),
        ]
        for department_name, column, relation, register in pairs:
            department = seed.department(department_name)
            table = next(t for t in department.tables if column in {c.name for c in t.columns})
            root = f"{department_name}_{table.name}"
            selection = f"record_id {column} {relation} {{ name }}"
            body = tiny_gateway.execute(
                f"{{ {root}(order_by: [{{record_id: asc}}], limit: 10) {{ {selection} }} }}"
            ).body
            assert "errors" not in body, body
            rows = body["data"][root]
            assert len(rows) == 10
            for row in rows:
                assert row[relation] == {"name": register[row[column]][1]}
        # A resident and their records in another department (the reverse relationship).
        table = next(t for t in seed.department("seedtest_market_regulation").tables if t.name == "certificates")
        rows = generator.rows(table)
        id_card = columns_of(table, rows, "id_card")[0]
        owners = columns_of(table, rows, "id_card")
        expected = [
            n for n, owner in zip(columns_of(table, rows, "record_id"), owners, strict=True) if owner == id_card
        ]
        body = tiny_gateway.execute(
            f'{{ seedtest_public_security_residents_by_pk(id_card: "{id_card}") {{ name '
            f"seedtest_market_regulation_certificates(order_by: [{{record_id: asc}}]) {{ record_id }} }} }}"
        ).body
        assert "errors" not in body, body
        person = body["data"]["seedtest_public_security_residents_by_pk"]
        assert person["name"] == residents[id_card][1]
        assert [int(r["record_id"]) for r in person["seedtest_market_regulation_certificates"]] == expected
    finally:
        generator.close()
