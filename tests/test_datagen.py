"""The generator keeps the demo-city contract: counts, identifiers, and links that resolve."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from datasets.datagen import City, generate
from datasets.demo_city import DEPARTMENTS, DISTRICTS, RELATIONSHIPS, TABLES, RelationshipSpec
from datasets.ids import is_valid_credit_code, is_valid_resident_id, resident_birth_date, resident_gender
from gateway.config import Config

CONTRACT_ROWS = {
    ("public_security", "residents"): 10_000,
    ("health", "clinic_visits"): 30_000,
    ("health", "health_records"): 10_000,
    ("market_regulation", "enterprises"): 2_000,
    ("environment", "monitored_sites"): 359,
    ("environment", "emission_readings"): 50_000,
    ("transport", "vehicles"): 35_714,
    ("transport", "stations"): 24,
    ("human_resources", "social_insurance"): 8_000,
}


def test_row_counts_match_the_contract(city: City) -> None:
    assert {key: len(rows) for key, rows in city.tables.items()} == CONTRACT_ROWS


def test_scale_multiplies_all_but_the_citys_own_figures() -> None:
    small = generate(scale=0.1)
    for spec in TABLES:
        expected = CONTRACT_ROWS[(spec.department, spec.name)]
        if spec.name in ("monitored_sites", "vehicles", "stations"):
            assert len(small.rows(spec.department, spec.name)) == expected
        else:
            assert len(small.rows(spec.department, spec.name)) == expected // 10


def test_generation_is_deterministic_and_seeded() -> None:
    assert generate(scale=0.05).tables == generate(scale=0.05).tables
    assert generate(scale=0.05, seed=1).tables != generate(scale=0.05).tables


def test_resident_ids_are_valid_and_agree_with_gender_and_birth(city: City) -> None:
    residents = list(city.dicts("public_security", "residents"))
    assert len({r["id_card"] for r in residents}) == len(residents)
    for r in residents:
        assert is_valid_resident_id(r["id_card"]), r["id_card"]
        assert r["id_card"].startswith("441900")
        assert resident_gender(r["id_card"]) == r["gender"]
        assert resident_birth_date(r["id_card"]) == r["birth_date"]
        assert r["district"] in DISTRICTS
        assert len(r["phone"]) == 11 and r["phone"].isdigit()
    assert any(
        len(r["name"]) >= 3 and r["name"][:2] in ("欧阳", "司马", "诸葛", "上官", "司徒", "东方") for r in residents
    )


def test_credit_codes_are_valid(city: City) -> None:
    codes = [e["credit_code"] for e in city.dicts("market_regulation", "enterprises")]
    assert len(set(codes)) == len(codes)
    assert all(c.startswith("91441900") and is_valid_credit_code(c) for c in codes)


@pytest.mark.parametrize("link", RELATIONSHIPS, ids=lambda r: f"{r.source[1]}.{r.name}")
def test_every_relationship_key_resolves(city: City, link: RelationshipSpec) -> None:
    source_dept, source_table, source_column = link.source
    target_dept, target_table, target_column = link.target
    targets = {row[target_column] for row in city.dicts(target_dept, target_table)}
    keys = [row[source_column] for row in city.dicts(source_dept, source_table)]
    assert keys and all(key in targets for key in keys)


def test_one_health_record_per_resident_and_unique_insured(city: City) -> None:
    residents = {r["id_card"] for r in city.dicts("public_security", "residents")}
    records = Counter(r["id_card"] for r in city.dicts("health", "health_records"))
    assert set(records) == residents and set(records.values()) == {1}
    insured = [r["id_card"] for r in city.dicts("human_resources", "social_insurance")]
    assert len(set(insured)) == len(insured)


def test_value_domains(city: City) -> None:
    statuses = Counter(e["status"] for e in city.dicts("market_regulation", "enterprises"))
    assert set(statuses) == {"active", "revoked", "cancelled"}
    pollutants = {r["pollutant"] for r in city.dicts("environment", "emission_readings")}
    assert pollutants == {"COD", "NH3-N", "SO2", "NOx", "PM10"}
    plates = [v["plate"] for v in city.dicts("transport", "vehicles")]
    assert len(set(plates)) == len(plates) and all(p.startswith("粤S") and len(p) == 8 for p in plates)
    assert all(1 <= s["level"] <= 3 for s in city.dicts("transport", "stations"))
    chronic = [h["chronic_conditions"] for h in city.dicts("health", "health_records")]
    assert None in chronic and any(chronic)
    costs = [v["cost"] for v in city.dicts("health", "clinic_visits")]
    assert all(c.as_tuple().exponent == -2 for c in costs)


def test_the_packaged_catalogue_matches_the_contract() -> None:
    """gateway/demo-city.yaml (what the configs and `citygate demo` serve) agrees with catalogue/demo_city.py."""
    from pathlib import Path

    from datasets.demo import demo_config

    config = demo_config(Path("/nonexistent"))
    assert sorted(config.departments) == sorted(d.name for d in DEPARTMENTS)
    for spec in TABLES:
        assert config.departments[spec.department].tables[spec.name].primary_key == list(spec.primary_key)
    links = {
        (r.name, r.source, r.target, r.reverse.name if r.reverse else None, r.reverse.kind if r.reverse else None)
        for r in config.relationships
    }
    expected = {(r.name, ".".join(r.source), ".".join(r.target), r.reverse_name, r.reverse_kind) for r in RELATIONSHIPS}
    assert links == expected


def test_the_packaged_catalogue_carries_the_contracts_sharing_classes() -> None:
    from pathlib import Path

    from datasets.demo import demo_config

    config = demo_config(Path("/nonexistent"))
    for spec in TABLES:
        sharing = config.departments[spec.department].tables[spec.name].sharing
        assert {c.name: sharing.of(c.name) for c in spec.columns} == {c.name: c.sharing for c in spec.columns}


def test_datagen_leaves_a_store_it_did_not_write_alone(tmp_path: Path, services_config: Config) -> None:
    """It replaces tables: a configuration naming a real department's store must not have its
    tables dropped without a word. A store holding tables without citygate's mark is refused
    unless --force; one it wrote (or an empty one) is written again."""
    import sqlite3

    import psycopg

    from catalogue.errors import CitygateError
    from catalogue.stores import PostgresStore, SqliteStore
    from connectors.stores import pg_params
    from datasets.load import foreign

    theirs = tmp_path / "health.db"
    with sqlite3.connect(theirs) as conn:
        conn.execute("CREATE TABLE patients (id INTEGER)")
    store = SqliteStore(kind="sqlite", path=theirs)
    assert "holds tables citygate did not write (patients)" in (foreign("health", store) or "")
    assert foreign("health", SqliteStore(kind="sqlite", path=tmp_path / "new.db")) is None
    from datasets.commands import datagen

    with pytest.raises(CitygateError, match="pass --force to write it anyway"):
        datagen(None, tmp_path, 0.01, 1)
    assert datagen(None, tmp_path, 0.01, 1, force=True) == 0  # written, and marked
    assert foreign("health", store) is None and datagen(None, tmp_path, 0.01, 1) == 0

    health = services_config.departments["health"].store
    assert isinstance(health, PostgresStore)
    scratch = health.model_copy(update={"database": "citygate_not_ours"})
    with psycopg.connect(**pg_params(health, "postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS citygate_not_ours")
        admin.execute("CREATE DATABASE citygate_not_ours")
    try:
        assert foreign("health", scratch) is None  # empty: nothing to lose
        with psycopg.connect(**pg_params(scratch, "citygate_not_ours"), autocommit=True) as conn:
            conn.execute("CREATE TABLE ledger (id int)")
        assert "PostgreSQL database 'citygate_not_ours'" in (foreign("health", scratch) or "")
        assert foreign("health", health) is None  # the services' own, marked by their load
    finally:
        with psycopg.connect(**pg_params(health, "postgres"), autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS citygate_not_ours WITH (FORCE)")
