"""Row filters run nothing but the table's columns and the caller's claims, bind each claim as
a literal of its column's type (or are false), and hold through relationships."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from catalogue.errors import ConfigError
from catalogue.types import LogicalType
from datasets.datagen import City
from gateway.config import Config, LimitsConfig
from gateway.execution.gateway import Gateway
from gateway.identity.caller import Identity
from policies.model import load_policies
from tests.conftest import shared_engine
from tests.policy_support import (
    run,
    with_policies,
    write_policy,
)


@pytest.mark.parametrize(
    ("row_filter", "message"),
    [
        ('district = CAST(1 AS """VARCHAR"") OR 1=1 OR CAST(1 AS VARCHAR")', "which is not a type it may use"),
        ("district = getenv('HOME')", "calls GETENV, which is not allowed"),
        ("district IN (SELECT district FROM residents)", "only the table's own columns and claims"),
        ("district = 'x", "is not an SQL expression"),
        ("district LIKE 'a\\b'", "may only come before"),  # found by a code review: Trino let PostgreSQL
    ],  # read a backslash in a row filter's LIKE as an escape, DuckDB did not
)
def test_a_row_filter_runs_nothing_but_the_tables_columns_and_claims(
    tmp_path: Path, row_filter: str, message: str
) -> None:
    central = write_policy(tmp_path / "c.yaml", {"officer": {"public_security.residents": {"row_filter": row_filter}}})
    with pytest.raises(ConfigError, match=message):
        load_policies([central])


def test_allowed_custom_masks_and_row_filters_still_load(tmp_path: Path) -> None:
    rule = {
        "row_filter": "district IN ('南城', :claims.district) AND NOT (UPPER(gender) LIKE 'X%')",
        "columns": {"name": {"sql": "LPAD(SUBSTRING(value, 1, 1), 3, '*')"}},
    }
    policies = load_policies([write_policy(tmp_path / "c.yaml", {"officer": {"public_security.residents": rule}})])
    assert policies.roles["officer"].tables["public_security.residents"].row_filter == rule["row_filter"]
    from policies.rowfilter import parse_filter

    assert parse_filter("district LIKE '南%'").sql() == "district LIKE '南%' ESCAPE '\\'"  # said to every engine


def test_claims_are_literals_and_a_missing_claim_reveals_nothing(secured: Gateway) -> None:
    hostile = run(secured, "district_officer", "{ public_security_residents { district } }", district="南城' OR '1'='1")
    assert hostile["public_security_residents"] == []
    missing = run(secured, "district_officer", "{ public_security_residents { district } }")
    assert missing["public_security_residents"] == []
    # A claim that is no single value (a NaN or an infinity would be written as a bare name)
    # makes the filter false; a number compared with a text column binds as text ('7', which
    # names no district) where the engine cast the column and failed naming a row's value.
    for odd in (float("nan"), float("inf"), ["南城", "东城"], {"name": "南城"}, 7, 10**40, True, "南城\x00"):
        rows = run(secured, "district_officer", "{ public_security_residents { district } }", district=odd)
        assert rows["public_security_residents"] == []


# Found by a red-team review: DuckDB's MySQL scanner pushed `status = '\'' AND ...'` down with its
# backslash as it was, and MariaDB read it as an escape: the rest of the value ran as SQL.
BACKSLASH = (
    "\\' AND 1=0 UNION ALL SELECT s.id_card, CAST(s.monthly_salary AS CHAR), 0x78, s.id_card "
    "FROM human_resources.social_insurance s -- "
)


def test_a_backslash_in_a_value_or_claim_is_data_in_every_store(secured: Gateway, city: City) -> None:
    enterprises = "query ($v: String!) { market_regulation_enterprises(where: {status: {%s: $v}}) { name industry } }"
    for operator, value in (("_eq", BACKSLASH), ("_like", BACKSLASH.replace("\\", "\\\\") + "%"), ("_neq", "\\")):
        body = secured.execute(enterprises % operator, {"v": value}, identity=Identity("anonymous")).body
        assert "errors" not in body, body
        want = [e for e in city.dicts("market_regulation", "enterprises") if operator == "_neq"]
        assert len(body["data"]["market_regulation_enterprises"]) == len(want)
    count = "{ %s_aggregate { aggregate { count } } }"
    in_district = sum(1 for e in city.dicts("market_regulation", "enterprises") if e["district"] == "南城")
    assert run(secured, "district_officer", count % "market_regulation_enterprises", district="南城") == {
        "market_regulation_enterprises_aggregate": {"aggregate": {"count": in_district}}
    }
    for claim in ("\\' OR 1=1 -- ", "南城 ", "\\"):  # MariaDB's collation takes 南城 with a space for 南城
        for table in ("market_regulation_enterprises", "public_security_residents"):
            data = run(secured, "district_officer", count % table, district=claim)
            assert data[f"{table}_aggregate"]["aggregate"]["count"] == 0, (claim, table)


@pytest.mark.parametrize(
    ("row_filter", "claims", "sql"),
    [  # found by a code review: each of these once became a bare name or an engine's error
        ("score > :claims.x", {"x": "1e999"}, "FALSE"),  # a finite Decimal, an infinite double
        ("score > :claims.x", {"x": 10**400}, "FALSE"),
        ("amount = :claims.x", {"x": "1e999999"}, "FALSE"),  # no DECIMAL(38) says it
        ("at > :claims.t", {"t": "2015-01-01T00:00:00+08:00"}, "FALSE"),  # an offset, refused
        ("n BETWEEN :claims.a AND :claims.b", {"a": "5", "b": 7}, "n BETWEEN 5 AND 7"),
        ("(d) = (:claims.x)", {"x": 7}, "(d) = ('7')"),
        ("score > :claims.x", {"x": "2.5"}, "score > CAST(2.5 AS DOUBLE)"),
    ],
)
def test_a_claim_binds_as_its_columns_type_or_the_filter_is_false(
    row_filter: str, claims: dict[str, Any], sql: str
) -> None:
    from policies.rowfilter import bind, parse_filter

    types = {
        "score": LogicalType("double"),
        "amount": LogicalType("decimal", 10, 2),
        "at": LogicalType("timestamp"),
        "n": LogicalType("integer"),
        "d": LogicalType("string"),
    }
    assert bind(parse_filter(row_filter), claims, types).sql() == sql


def test_a_row_filter_holds_through_relationships(secured: Gateway, city: City) -> None:
    data = run(
        secured,
        "district_officer",
        """{ market_regulation_enterprises {
        credit_code legal_representative { district phone } } }""",
        district="南城",
    )
    district = {r["id_card"]: r["district"] for r in city.dicts("public_security", "residents")}
    representative = {e["credit_code"]: e["legal_rep_id_card"] for e in city.dicts("market_regulation", "enterprises")}
    rows = data["market_regulation_enterprises"]
    assert rows
    for row in rows:
        in_district = district[representative[row["credit_code"]]] == "南城"
        assert (row["legal_representative"] is not None) == in_district
        if in_district:
            assert row["legal_representative"]["phone"][3:7] == "****"
    reached = run(
        secured, "district_officer", "{ transport_vehicles(limit: 300) { owner { district } } }", district="南城"
    )
    assert {r["owner"]["district"] for r in reached["transport_vehicles"] if r["owner"]} == {"南城"}


def test_a_policy_the_tables_cannot_take_stops_the_gateway_naming_its_key(
    sqlite_config: Config, tmp_path: Path
) -> None:
    """Found by a red-team review: a row filter over a column the table lacks passed loading and
    failed every request of the role with a stack trace; a file not in UTF-8 crashed loading."""
    central = write_policy(tmp_path / "c.yaml", {"officer": {"public_security.residents": {"row_filter": "nope = 1"}}})
    with pytest.raises(ConfigError, match=r"roles\.officer\.tables\.public_security\.residents\.row_filter: no column"):
        Gateway.start(with_policies(sqlite_config, [central]), shared_engine(sqlite_config)).close()
    year_of_text = write_policy(
        tmp_path / "y.yaml", {"officer": {"public_security.residents": {"columns": {"name": "year"}}}}
    )
    with pytest.raises(
        ConfigError, match=r"officer: public_security\.residents\.name is string, which year cannot mask"
    ):
        Gateway.start(with_policies(sqlite_config, [year_of_text]), shared_engine(sqlite_config)).close()
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("roles: {}\n# café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_policies([latin])


def test_a_cost_refusal_tells_no_size_of_a_table_whose_rows_are_filtered(sqlite_config: Config) -> None:
    """The cost estimate counts a table's every row. An officer who may read one district's
    residents is refused without it (it would say there are 10,000); a role that reads every row
    is told the estimate, which it could count itself."""
    limits = LimitsConfig(roles={"district_officer": {"max_cost": 5}, "police": {"max_cost": 5}})
    config = with_policies(sqlite_config.model_copy(update={"limits": limits}))
    gateway = Gateway.start(config, shared_engine(config))
    try:
        query = "{ public_security_residents { district } }"
        [officer] = gateway.execute(query, identity=Identity("district_officer", {"district": "南城街道"})).body[
            "errors"
        ]
        [police] = gateway.execute(query, identity=Identity("police", {})).body["errors"]
    finally:
        gateway.close()
    assert officer["extensions"] == {"code": "COST_LIMIT", "limit": 5}
    assert not any(ch.isdigit() for ch in officer["message"].replace("5 its role", "")), officer["message"]
    assert police["extensions"] == {"code": "COST_LIMIT", "estimate": 10_000, "limit": 5}
    assert "about 10,000 rows" in police["message"]
