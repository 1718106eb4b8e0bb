"""Each demo role sees exactly what the contract's role table says, on every engine, checked
against the raw data; and the usual ways around masks find nothing."""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlglot
import yaml
from graphql import GraphQLObjectType
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlglot import exp

from catalogue.errors import CitygateError, ConfigError
from catalogue.model import SharingClass
from catalogue.sql import partial_sql
from catalogue.types import LogicalType
from connectors.base import Engine
from connectors.embedded import partial_concat
from datasets.datagen import City
from gateway.config import Config, PoliciesConfig
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.identity.caller import Identity
from policies.decide import decide
from policies.masks import mask, tie
from policies.model import Treatment, load_policies
from tests.conftest import REPO

KEY = "citygate-test-hash-key-0001"
POLICY_FILES = [REPO / "policies" / "demo" / "central.yaml", REPO / "policies" / "demo" / "health-floor.yaml"]


def with_policies(config: Config, files: list[Path] = POLICY_FILES) -> Config:
    return config.model_copy(update={"policies": PoliciesConfig(files=files, hash_key=KEY)})


ENGINES = ("embedded_sqlite", "embedded_services", "trino", "delegated", "sqlite_delegated")


def engine_config(engine: str, sqlite_config: Config, services_config: Config) -> Config:
    """The configuration of one of :data:`ENGINES`: DuckDB over SQLite, DuckDB over PostgreSQL
    and MariaDB, or Trino, each running every statement; or each store running the statements
    that read it alone (delegated), Trino or DuckDB the others."""
    return {
        "embedded_sqlite": sqlite_config.with_delegate("never"),
        "embedded_services": services_config.with_engine("embedded").with_delegate("never"),
        "trino": services_config.with_delegate("never"),
        "delegated": services_config.with_delegate("auto"),
        "sqlite_delegated": sqlite_config.with_delegate("auto"),
    }[engine]


def secured_gateway(engine: str, sqlite_config: Config, services_config: Config) -> Gateway:
    """A policy-enforcing gateway on one of :data:`ENGINES` (:func:`engine_config`)."""
    config = with_policies(engine_config(engine, sqlite_config, services_config))
    return Gateway.start(config, create_engine(config))


@pytest.fixture(scope="module", params=ENGINES)
def secured(request: pytest.FixtureRequest, sqlite_config: Config, services_config: Config) -> Iterator[Gateway]:
    """A policy-enforcing gateway on each engine."""
    gateway = secured_gateway(request.param, sqlite_config, services_config)
    yield gateway
    gateway.close()


def run(gateway: Gateway, role: str, query: str, **claims: Any) -> dict[str, Any]:
    body = gateway.execute(query, identity=Identity(role, claims)).body
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


def errors(gateway: Gateway, role: str, query: str, **claims: Any) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = gateway.execute(query, identity=Identity(role, claims)).body.get("errors", [])
    return result


def hashed(value: str) -> str:
    return "h:" + hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()[:16]


def partial(value: str, first: int, last: int) -> str:
    if len(value) <= first + last:
        return "*" * len(value)
    return value[:first] + "*" * (len(value) - first - last) + value[len(value) - last :]


def fields_of(gateway: Gateway, role: str, type_name: str) -> set[str] | None:
    """The column fields of a table's type for ``role`` (None: the table is absent)."""
    table = gateway.view(Identity(role)).model.tables.get(type_name)
    return set(table.columns) if table is not None else None


def type_fields(gateway: Gateway, role: str, type_name: str) -> set[str] | None:
    graphql_type = gateway.view(Identity(role)).model.schema.get_type(type_name)
    return set(graphql_type.fields) if isinstance(graphql_type, GraphQLObjectType) else None


# -- masks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "treatment", "expected"),
    [
        ("441900199001011234", Treatment("partial", (6, 4)), "441900********1234"),
        ("13812345678", Treatment("partial", (3, 4)), "138****5678"),
        ("张伟", Treatment("partial", (1, 0)), "张*"),
        ("欧阳娜娜", Treatment("partial", (1, 0)), "欧***"),
        ("441900199001011234", Treatment("hash"), hashed("441900199001011234")),
        ("张伟", Treatment("hash"), hashed("张伟")),
        ("secret", Treatment("redact"), "[REDACTED]"),
        ("abcdef", Treatment("sql", ("UPPER(SUBSTRING(value, 1, 3)) || '…'",)), "ABC…"),
        # The edges of partial, which each engine writes in its own functions.
        ("0123456789", Treatment("partial", (6, 4)), "**********"),
        ("01234567890", Treatment("partial", (6, 4)), "012345*7890"),
        ("abc", Treatment("partial", (6, 4)), "***"),
        ("", Treatment("partial", (3, 4)), ""),
        ("行1\n行2\n行3", Treatment("partial", (2, 2)), "行1****行3"),
        ("abcdef", Treatment("partial", (0, 2)), "****ef"),
        ("abcdef", Treatment("partial", (2, 0)), "ab****"),
        ("ab😀cd", Treatment("partial", (0, 0)), "*****"),
    ],
)
def test_string_masks_have_the_contracts_formats_on_every_engine(
    secured: Gateway, value: str, treatment: Treatment, expected: str
) -> None:
    tree = exp.select(mask(treatment, exp.Literal.string(value), LogicalType("string")))
    assert secured.engine.execute(tree).rows == [(expected,)]


@pytest.mark.parametrize(
    ("literal", "kind", "text"),
    [  # found by a red-team review: Trino wrote 1.42026E2 and 12:29:06.000000, DuckDB 142.026 and 12:29:06
        ("CAST(142.026 AS DOUBLE)", LogicalType("double"), "142.026000000"),
        ("CAST(-0.5 AS DOUBLE)", LogicalType("double"), "-0.500000000"),
        ("CAST('NaN' AS DOUBLE)", LogicalType("double"), None),  # no DECIMAL: NULL, not an error
        ("CAST('Infinity' AS DOUBLE)", LogicalType("double"), None),
        ("CAST(1e30 AS DOUBLE)", LogicalType("double"), None),
        ("CAST('2012-08-01 12:29:06' AS TIMESTAMP)", LogicalType("timestamp"), "2012-08-01 12:29:06.000000"),
        ("CAST('2012-08-01 12:29:06.25' AS TIMESTAMP)", LogicalType("timestamp"), "2012-08-01 12:29:06.250000"),
        ("CAST(12.50 AS DECIMAL(10, 2))", LogicalType("decimal", 10, 2), "12.50"),
        ("CAST('2015-06-30' AS DATE)", LogicalType("date"), "2015-06-30"),
        ("CAST(42 AS INT)", LogicalType("integer"), "42"),
    ],
)
def test_masks_read_numbers_and_times_as_the_same_text_on_every_engine(
    secured: Gateway, literal: str, kind: LogicalType, text: str | None
) -> None:
    value = sqlglot.parse_one(literal)
    tree = exp.select(mask(Treatment("hash"), value, kind), mask(Treatment("partial", (2, 2)), value, kind))
    want = (hashed(text), partial(text, 2, 2)) if text is not None else (None, None)
    assert secured.engine.execute(tree).rows == [want]


@settings(max_examples=300)
@given(value=st.text(max_size=24), first=st.integers(0, 8), last=st.integers(0, 8))
def test_both_formulations_of_partial_give_the_contracts_format(value: str, first: int, last: int) -> None:
    """Over any text (line breaks, combining marks, astral characters, NUL), the portable mask
    and the one DuckDB runs both equal the contract's format."""
    masks = [f(exp.column("v"), first, last).sql("duckdb") for f in (partial_sql, partial_concat)]
    row = _duckdb().execute(f"SELECT {', '.join(masks)} FROM (SELECT ?::VARCHAR AS v)", [value]).fetchone()
    assert row == (partial(value, first, last),) * 2


@functools.cache
def _duckdb() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB for the property's 300 examples (a connection each took most of its time)."""
    return duckdb.connect()


def tie_digest(value: str) -> str:
    tie_key = hmac.new(KEY.encode(), b"citygate tie-break", hashlib.sha256).hexdigest()[:32]
    return hashlib.md5((tie_key + value).encode(), usedforsecurity=False).hexdigest()


def test_rows_tied_on_a_masked_key_come_in_its_keyed_digests_order(secured: Gateway, city: City) -> None:
    """With no ordering of its own, a list orders by the table's key; a role that sees the key
    masked gets the rows in the order of a keyed digest of it: the same on every engine, and
    not the raw order, which would tell what the stars hide."""
    for value in ("441900199001011234", "张伟", ""):
        [(digest,)] = secured.engine.execute(exp.select(tie(exp.Literal.string(value), LogicalType("string")))).rows
        # the hex (DuckDB) or the bytes (Trino, which orders VARBINARY byte by byte, as the hex)
        assert (digest.hex() if isinstance(digest, bytes) else digest) == tie_digest(value)
    data = run(secured, "health_analyst", "{ public_security_residents(limit: 30) { id_card name } }")
    residents = city.dicts("public_security", "residents")
    want = sorted(residents, key=lambda r: tie_digest(r["id_card"]))[:30]
    assert data["public_security_residents"] == [
        {"id_card": partial(r["id_card"], 6, 4), "name": partial(r["name"], 1, 0)} for r in want
    ]
    assert want != sorted(residents, key=lambda r: r["id_card"])[:30]


def test_an_aggregate_over_each_parents_page_counts_under_a_masked_key(secured: Gateway, city: City) -> None:
    """The page of visits cut per resident carries its tie-breaks into the aggregate that
    counts it: the last step lets tie-breaks be grouped over (found by the random queries as a
    masked role), and the counts are the oracle's."""
    query = """{ public_security_residents(limit: 5) { id_card
        clinic_visits_aggregate(limit: 2) { aggregate { count } } } }"""
    data = run(secured, "health_analyst", query)
    visits = Counter(v["id_card"] for v in city.dicts("health", "clinic_visits"))
    residents = sorted(city.dicts("public_security", "residents"), key=lambda r: tie_digest(r["id_card"]))[:5]
    counts = [min(2, visits[r["id_card"]]) for r in residents]
    assert data["public_security_residents"] == [
        {"id_card": partial(r["id_card"], 6, 4), "clinic_visits_aggregate": {"aggregate": {"count": n}}}
        for r, n in zip(residents, counts, strict=True)
    ]
    assert any(visits[r["id_card"]] > 2 for r in residents)  # the page cuts some resident's visits


def test_date_and_number_masks(secured: Gateway) -> None:
    engine: Engine = secured.engine
    date = exp.cast(exp.Literal.string("1990-07-15"), exp.DataType.build("DATE"))
    [(year,)] = engine.execute(exp.select(mask(Treatment("year"), date, LogicalType("date")))).rows
    assert str(year) == "1990-01-01"
    for value, width, expected in ((37264, 1000, 37000), (-7, 5, -10)):
        tree = exp.select(mask(Treatment("bucket", (width,)), exp.Literal.number(value), LogicalType("integer")))
        assert engine.execute(tree).rows == [(expected,)]
    nullified = exp.select(mask(Treatment("nullify"), exp.Literal.number(5), LogicalType("integer")))
    assert engine.execute(nullified).rows == [(None,)]


# -- the contract's role table ------------------------------------------------------------------


def test_each_role_sees_the_tables_and_columns_the_contract_gives(secured: Gateway) -> None:
    assert fields_of(secured, "anonymous", "public_security_residents") == {"district"}
    assert fields_of(secured, "anonymous", "health_health_records") is None
    assert fields_of(secured, "anonymous", "human_resources_social_insurance") is None
    assert fields_of(secured, "anonymous", "transport_vehicles") == {"owner_credit_code", "vehicle_type", "seats"}

    analyst = fields_of(secured, "health_analyst", "public_security_residents")
    assert analyst is not None and not {"address", "birth_date"} & analyst and {"id_card", "phone"} <= analyst
    assert {"diagnosis", "diagnosis_code", "cost", "id_card"} <= (
        fields_of(secured, "health_analyst", "health_clinic_visits") or set()
    )
    assert fields_of(secured, "health_analyst", "human_resources_social_insurance") is None
    assert "registered_capital" not in (fields_of(secured, "health_analyst", "market_regulation_enterprises") or {""})
    assert "legal_rep_id_card" not in (fields_of(secured, "health_analyst", "market_regulation_enterprises") or {""})

    roots = set(secured.view(Identity("district_officer")).model.roots)
    assert "health_clinic_visits" not in roots and "health_clinic_visits_by_pk" not in roots
    assert {"health_clinic_visits_aggregate", "health_clinic_visits_group_by"} <= roots
    assert type_fields(secured, "district_officer", "health_clinic_visits_aggregate") == {"aggregate"}
    assert "clinic_visits" not in (type_fields(secured, "district_officer", "public_security_residents") or {""})

    assert fields_of(secured, "env_inspector", "public_security_residents") is None
    police_visits = fields_of(secured, "police", "health_clinic_visits") or set()
    assert not {"diagnosis", "diagnosis_code", "cost"} & police_visits and "id_card" in police_visits
    assert fields_of(secured, "nobody", "transport_stations") is None  # a role with no policy sees nothing


def test_health_analyst_sees_masked_residents(secured: Gateway, city: City) -> None:
    data = run(
        secured,
        "health_analyst",
        "{ public_security_residents { id_card name phone district registered_at } }",
    )
    got = Counter(json.dumps(r, ensure_ascii=False, sort_keys=True) for r in data["public_security_residents"])
    want = Counter(
        json.dumps(
            {
                "id_card": partial(r["id_card"], 6, 4),
                "name": partial(r["name"], 1, 0),
                "phone": None,
                "district": r["district"],
                # the year: a registration time is unique per resident, a key across roles' views
                "registered_at": datetime(r["registered_at"].year, 1, 1).isoformat(),
            },
            ensure_ascii=False,
            sort_keys=True,
        )
        for r in city.dicts("public_security", "residents")
    )
    assert got == want
    text = json.dumps(data, ensure_ascii=False)
    phones = {r["phone"] for r in city.dicts("public_security", "residents")}
    assert not any(len(phone) != 11 or not phone.isdigit() for phone in phones)  # what the windows below look for
    # Every 11-digit window of every run of digits in the answer: one pass, not a search per phone.
    runs = re.findall(r"\d{11,}", text)
    assert not phones & {run[i : i + 11] for run in runs for i in range(len(run) - 10)}


def test_district_officer_rows_and_aggregates(secured: Gateway, city: City) -> None:
    data = run(
        secured,
        "district_officer",
        "{ public_security_residents { district phone } market_regulation_enterprises { district } }",
        district="南城",
    )
    residents = [r for r in city.dicts("public_security", "residents") if r["district"] == "南城"]
    assert len(data["public_security_residents"]) == len(residents)
    assert {r["district"] for r in data["public_security_residents"]} == {"南城"}
    assert {r["phone"] for r in data["public_security_residents"]} == {partial(r["phone"], 3, 4) for r in residents}
    assert len(data["market_regulation_enterprises"]) == sum(
        1 for e in city.dicts("market_regulation", "enterprises") if e["district"] == "南城"
    )

    query = """{ health_clinic_visits_group_by(by: [hospital, diagnosis_code, visit_date]) {
        keys { hospital diagnosis_code visit_date } aggregate { count } } }"""
    groups = run(secured, "district_officer", query, district="南城")["health_clinic_visits_group_by"]
    counts = Counter(
        (v["hospital"], v["diagnosis_code"], v["visit_date"].isoformat()) for v in city.dicts("health", "clinic_visits")
    )
    expected = {key: n for key, n in counts.items() if n >= 5}
    assert {
        (g["keys"]["hospital"], g["keys"]["diagnosis_code"], g["keys"]["visit_date"]): g["aggregate"]["count"]
        for g in groups
    } == expected
    assert min(counts.values()) < 5 <= min(g["aggregate"]["count"] for g in groups)  # both sides of k occur


def test_env_inspector_sees_pseudonyms_that_still_join(secured: Gateway, city: City) -> None:
    data = run(
        secured,
        "env_inspector",
        """{ market_regulation_enterprises(order_by: [{credit_code: asc}], limit: 5)
        { credit_code legal_rep_id_card } }""",
    )
    raw = {e["credit_code"]: e["legal_rep_id_card"] for e in city.dicts("market_regulation", "enterprises")}
    for row in data["market_regulation_enterprises"]:
        assert row["legal_rep_id_card"] == hashed(raw[row["credit_code"]])


def test_police_and_supervisor(secured: Gateway, city: City) -> None:
    salaries = run(secured, "police", "{ human_resources_social_insurance(limit: 3) { id_card monthly_salary } }")
    assert all(
        r["monthly_salary"] is None and len(r["id_card"]) == 18 for r in salaries["human_resources_social_insurance"]
    )
    data = run(
        secured,
        "supervisor",
        """{ health_clinic_visits(order_by: [{visit_id: asc}], limit: 3)
        { visit_id id_card cost } }""",
    )
    raw = list(city.dicts("health", "clinic_visits"))[:3]
    assert [r["id_card"] for r in data["health_clinic_visits"]] == [hashed(v["id_card"]) for v in raw]
    assert [r["cost"] for r in data["health_clinic_visits"]] == [str(v["cost"]) for v in raw]
    # diagnosis is confidential and under the health floor, which allows it in no form but to
    # health analysts: not even its pseudonym, a code book of a few hundred diagnoses
    assert errors(secured, "supervisor", "{ health_clinic_visits(limit: 1) { diagnosis } }")


def test_the_floor_wins_and_the_check_reports_it(tmp_path: Path) -> None:
    central = tmp_path / "central.yaml"
    central.write_text(
        "roles:\n  police:\n    tables:\n      health.clinic_visits:\n        columns: {diagnosis: allow}\n"
    )
    policies = load_policies([central, POLICY_FILES[1]])
    decision = decide(policies, "police", "health", "clinic_visits", {"diagnosis": None, "hospital": None})
    assert not decision.columns["diagnosis"].visible
    assert decision.floor_conflicts and "unmasked only for" in decision.reasons["diagnosis"]
    # A custom expression may show the value whole (found by a red-team review): the floor wins.
    write_policy(
        central, {"police": {"health.clinic_visits": {"columns": {"diagnosis": {"sql": "COALESCE(value, NULL)"}}}}}
    )
    policies = load_policies([central, POLICY_FILES[1]])
    decision = decide(policies, "police", "health", "clinic_visits", {"diagnosis": None})
    assert not decision.columns["diagnosis"].visible
    assert "through a custom expression" in decision.floor_conflicts[0]


# Issue 29, finding 2: the twelve diagnosis codes map one to one onto the twelve diagnoses, and
# the supervisor read the code (an `exchange` column) raw beside a resident's name: O80 named the
# women who gave birth, with their birth dates and addresses.
CODE_TO_LABEL = (
    '{ health_clinic_visits(where: {diagnosis_code: {_eq: "O80"}}, limit: 5) '
    "{ visit_date diagnosis_code resident { name birth_date address } } }",
    '{ public_security_residents(where: {clinic_visits: {diagnosis_code: {_eq: "O80"}}}, limit: 5) { name } }',
    "{ public_security_residents(limit: 5) { name clinic_visits { diagnosis_code } } }",
    "{ health_clinic_visits_group_by(by: [diagnosis_code]) { keys { diagnosis_code } aggregate { count } } }",
    "{ health_clinic_visits(order_by: [{diagnosis_code: asc}], limit: 5) { visit_id } }",
    '{ health_clinic_visits_aggregate(where: {diagnosis_code: {_eq: "O80"}}) { aggregate { count } } }',
)


@pytest.mark.parametrize("query", CODE_TO_LABEL)
def test_the_supervisor_reads_no_diagnosis_code_on_any_route(secured: Gateway, query: str) -> None:
    found = errors(secured, "supervisor", query)
    assert found and {e["extensions"]["code"] for e in found} == {"GRAPHQL_VALIDATION_FAILED"}, found
    assert secured.execute(query, identity=Identity("supervisor")).body.get("data") is None  # no rows, no code


def test_a_district_officer_still_groups_and_filters_by_diagnosis_code(secured: Gateway, city: City) -> None:
    query = """{ health_clinic_visits_group_by(by: [diagnosis_code, hospital], where: {diagnosis_code: {_eq: "O80"}})
        { keys { diagnosis_code hospital } aggregate { count } } }"""
    groups = run(secured, "district_officer", query, district="南城")["health_clinic_visits_group_by"]
    births = Counter(v["hospital"] for v in city.dicts("health", "clinic_visits") if v["diagnosis_code"] == "O80")
    assert {(g["keys"]["diagnosis_code"], g["keys"]["hospital"]): g["aggregate"]["count"] for g in groups} == {
        ("O80", hospital): n for hospital, n in births.items()
    }
    # the health analyst, whom the floor names, still reads it row by row
    rows = run(
        secured, "health_analyst", '{ health_clinic_visits(where: {diagnosis_code: {_eq: "O80"}}) { diagnosis } }'
    )
    assert {r["diagnosis"] for r in rows["health_clinic_visits"]} == {"单胎顺产"}


def test_the_floor_keeps_a_code_inside_aggregates_whatever_the_central_policy_grants(
    gateway_sqlite: Gateway, tmp_path: Path
) -> None:
    """Without the demo's own `diagnosis_code: deny`, the supervisor's exchange default grants the
    code; the floor takes it back and the checker names the conflict. An aggregate-only grant
    with k above 1 keeps it; one with k of 1 (groups of one are rows) does not."""
    from gateway.execution.views import build_view, sharing_classes
    from policies.review import review

    central = yaml.safe_load(POLICY_FILES[0].read_text(encoding="utf-8"))
    del central["roles"]["supervisor"]["tables"]["health.clinic_visits"]["columns"]["diagnosis_code"]
    central["roles"]["counter"] = {
        "tables": {"health.clinic_visits": {"access": "aggregate_only", "k": 1, "columns": {"diagnosis_code": "allow"}}}
    }
    path = tmp_path / "central.yaml"
    path.write_text(yaml.safe_dump(central, allow_unicode=True), encoding="utf-8")
    policies = load_policies([path, POLICY_FILES[1]])
    classes = {"diagnosis_code": SharingClass.EXCHANGE, "hospital": SharingClass.PUBLISHED, "id_card": None}
    supervisor = decide(policies, "supervisor", "health", "clinic_visits", classes)
    assert not supervisor.columns["diagnosis_code"].visible
    assert supervisor.floor_conflicts == [
        "roles.supervisor reveals health.clinic_visits.diagnosis_code raw; health's floor allows that only for "
        "health_analyst, citizen and inside aggregate_only grants (k above 1), so it gets deny"
    ]
    assert not decide(policies, "counter", "health", "clinic_visits", classes).columns["diagnosis_code"].visible
    officer = decide(policies, "district_officer", "health", "clinic_visits", classes)
    assert officer.columns["diagnosis_code"].kind == "raw" and not officer.floor_conflicts
    view = build_view("supervisor", policies, gateway_sqlite.catalogue, gateway_sqlite.config)
    assert "diagnosis_code" not in view.model.tables["health_clinic_visits"].columns
    config = gateway_sqlite.config
    tables = {
        (t.department, t.name): sharing_classes(config, t.department, t.name, [c.name for c in t.columns])
        for t in gateway_sqlite.catalogue.tables
    }
    found = [f.message for f in review(policies, tables) if f.kind == "floor"]
    assert any(m.startswith("roles.supervisor reveals health.clinic_visits.diagnosis_code") for m in found), found
    assert any(m.startswith("roles.counter reveals health.clinic_visits.diagnosis_code") for m in found), found


def test_a_floor_names_its_otherwise_or_the_file_and_key_say_what_is_wrong(tmp_path: Path) -> None:
    floor = write_policy(
        tmp_path / "f.yaml",
        {},
        [{"department": "health", "columns": {"clinic_visits.diagnosis_code": {"otherwise": "aggregates"}}}],
    )
    with pytest.raises(
        ConfigError,
        match=r"f\.yaml: floors\.0\.columns\.clinic_visits\.diagnosis_code\.otherwise: .*"
        r"or aggregate_only: only inside aggregate-only grants",
    ):
        load_policies([floor])


def write_policy(path: Path, tables_by_role: dict[str, Any], floors: list[Any] | None = None) -> Path:
    body: dict[str, Any] = {"roles": {role: {"tables": tables} for role, tables in tables_by_role.items()}}
    if floors is not None:
        body["floors"] = floors
    path.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    return path


# Found by a red-team review: sqlglot keeps a quoted type name as text and writes it back as it
# is, so a policy or a department's floor ran this as SQL: another table's identity numbers in
# place of a name, on both engines.
SMUGGLED = (
    'CAST(value AS """VARCHAR"") || (SELECT max(id_card) FROM public_security.public.residents) '
    "|| CAST('' AS VARCHAR\")"
)


@pytest.mark.parametrize(
    ("treatment", "message"),
    [
        ({"sql": SMUGGLED}, "which is not a type it may use"),
        ({"sql": "GREATEST(value, NULL)"}, "calls GREATEST, which is not allowed"),
        ({"sql": "'unterminated"}, "is not an SQL expression"),
    ],
)
def test_a_custom_mask_runs_nothing_but_allowed_functions_of_its_value(
    tmp_path: Path, treatment: dict[str, str], message: str
) -> None:
    central = write_policy(
        tmp_path / "c.yaml", {"analyst": {"public_security.residents": {"columns": {"name": treatment}}}}
    )
    with pytest.raises(ConfigError, match=message):
        load_policies([central])
    floor = {"department": "public_security", "columns": {"residents.name": {"otherwise": treatment}}}
    with pytest.raises(ConfigError, match=message):  # a department's floor is held to the same
        load_policies([write_policy(tmp_path / "f.yaml", {}, [floor])])


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


def test_the_checker_names_a_floor_for_a_department_that_does_not_exist(tmp_path: Path) -> None:
    from policies.review import review as check

    floor = {"department": "nope", "columns": {"x.y": {"otherwise": "deny"}}}
    policies = load_policies([write_policy(tmp_path / "f.yaml", {}, [floor])])
    findings = check(policies, {("health", "clinic_visits"): {"diagnosis": None}})
    assert [f.message for f in findings] == ["floors.nope: no such department"]


def test_allowed_custom_masks_and_row_filters_still_load(tmp_path: Path) -> None:
    rule = {
        "row_filter": "district IN ('南城', :claims.district) AND NOT (UPPER(gender) LIKE 'X%')",
        "columns": {"name": {"sql": "LPAD(SUBSTRING(value, 1, 1), 3, '*')"}},
    }
    policies = load_policies([write_policy(tmp_path / "c.yaml", {"officer": {"public_security.residents": rule}})])
    assert policies.roles["officer"].tables["public_security.residents"].row_filter == rule["row_filter"]
    from policies.rowfilter import parse_filter

    assert parse_filter("district LIKE '南%'").sql() == "district LIKE '南%' ESCAPE '\\'"  # said to every engine


# -- attempts around the masks -----------------------------------------------------------------


def test_filters_orderings_and_groups_see_masked_values(secured: Gateway, city: City) -> None:
    probe = run(
        secured,
        "health_analyst",
        '{ public_security_residents_aggregate(where: {id_card: {_like: "4419001990%"}}) { aggregate { count } } }',
    )
    assert probe["public_security_residents_aggregate"]["aggregate"]["count"] == 0
    starred = run(
        secured,
        "health_analyst",
        '{ public_security_residents_aggregate(where: {id_card: {_like: "441900*%"}}) { aggregate { count } } }',
    )
    assert starred["public_security_residents_aggregate"]["aggregate"]["count"] == 10_000
    groups = run(
        secured, "health_analyst", "{ public_security_residents_group_by(by: [id_card]) { keys { id_card } } }"
    )
    assert all("********" in g["keys"]["id_card"] for g in groups["public_security_residents_group_by"])
    assert len(groups["public_security_residents_group_by"]) < 10_000  # grouping merged what the mask hides


def test_paths_into_denied_and_aggregate_only_data_do_not_validate(secured: Gateway) -> None:
    for query in (
        "{ public_security_residents { clinic_visits { visit_id } } }",
        '{ public_security_residents(where: {clinic_visits: {hospital: {_eq: "康华医院"}}}) { district } }',
        "{ health_clinic_visits_by_pk(visit_id: 1) { hospital } }",
        "{ public_security_residents { address } }",
    ):
        [error] = errors(secured, "district_officer" if "clinic" in query else "health_analyst", query)
        assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "public_security_residents_by_pk" not in secured.view(Identity("health_analyst")).model.roots
    fragment = "{ public_security_residents { ...P } } fragment P on public_security_residents { address }"
    assert errors(secured, "health_analyst", fragment)[0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    introspected = run(secured, "health_analyst", '{ __type(name: "public_security_residents") { fields { name } } }')
    assert "address" not in {f["name"] for f in introspected["__type"]["fields"]}


# Each of these once answered district_officer (found by a red-team review): two large
# aggregates that differ by one patient's visits, picked by her name through `resident` or by
# overlapping pages; an aggregate per resident; the earliest visit date of a group.
SINGLING_OUT = {
    "filter through a relationship": """{ health_clinic_visits_aggregate(
        where: {_not: {resident: {name: {_eq: "叶轩怡"}}}}) { aggregate { count sum { cost } } } }""",
    "filter by a measure": '{ health_clinic_visits_aggregate(where: {cost: {_gte: "19999"}}) { aggregate { count } } }',
    "page": "{ health_clinic_visits_aggregate(limit: 5, offset: 1) { aggregate { sum { cost } } } }",
    "order": "{ health_clinic_visits_aggregate(order_by: [{cost: desc}]) { aggregate { count } } }",
    "distinct_on": "{ health_clinic_visits_aggregate(distinct_on: [hospital]) { aggregate { count } } }",
    "per resident": "{ public_security_residents { clinic_visits_aggregate { aggregate { count } } } }",
    "min of a group column": "{ health_clinic_visits_aggregate { aggregate { min { visit_date } } } }",
    "order groups by a group column's max": """{ health_clinic_visits_group_by(by: [hospital],
        order_by: [{aggregate: {max: {diagnosis_code: desc}}}]) { keys { hospital } } }""",
}


@pytest.mark.parametrize("name", SINGLING_OUT)
def test_an_aggregate_only_table_singles_out_no_rows(secured: Gateway, name: str) -> None:
    found = errors(secured, "district_officer", SINGLING_OUT[name], district="南城")
    assert found and {e["extensions"]["code"] for e in found} == {"GRAPHQL_VALIDATION_FAILED"}


def test_an_aggregate_only_table_filters_by_its_groups_columns_and_aggregates_the_others(
    secured: Gateway, city: City
) -> None:
    query = """{ health_clinic_visits_aggregate(
        where: {hospital: {_eq: "东华医院"}, visit_date: {_gte: "2015-01-01"}}) {
        aggregate { count both: count(columns: [hospital, cost]) sum { cost } min { cost } max { cost } } } }"""
    got = run(secured, "district_officer", query, district="南城")["health_clinic_visits_aggregate"]["aggregate"]
    visits = [
        v
        for v in city.dicts("health", "clinic_visits")
        if v["hospital"] == "东华医院" and v["visit_date"] >= date(2015, 1, 1)
    ]
    assert len(visits) >= 5
    costs = [Decimal(str(v["cost"])) for v in visits]
    assert (got["count"], got["both"], Decimal(str(got["sum"]["cost"]))) == (len(visits), len(visits), sum(costs))
    assert (Decimal(str(got["min"]["cost"])), Decimal(str(got["max"]["cost"]))) == (min(costs), max(costs))


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


def test_anonymous_sees_only_published_columns(secured: Gateway) -> None:
    data = run(secured, "anonymous", "{ public_security_residents_group_by(by: [district]) { keys { district } } }")
    assert len(data["public_security_residents_group_by"]) == 8
    assert errors(secured, "anonymous", "{ public_security_residents { name } }")[0]["extensions"]["code"] == (
        "GRAPHQL_VALIDATION_FAILED"
    )


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


def test_the_last_step_fails_closed() -> None:
    from policies.decide import TableDecision
    from policies.model import RAW
    from policies.rewrite import Context, PolicyViolation, enforce, verify

    decision = TableDecision("health", "clinic_visits", "allow", {"cost": RAW}, {})
    ctx = Context(
        {("health", "clinic_visits"): decision},
        {("health", "clinic_visits"): {"cost": LogicalType("decimal", 10, 2)}},
        {},
    )
    unknown = exp.select("x").from_(
        exp.Table(this=exp.to_identifier("residents"), db=exp.to_identifier("public_security"))
    )
    with pytest.raises(PolicyViolation, match="no policy decision"):
        enforce(unknown, ctx)
    bare = exp.select("cost").from_(exp.Table(this=exp.to_identifier("clinic_visits"), db=exp.to_identifier("health")))
    with pytest.raises(PolicyViolation, match="read without its policy"):
        verify(bare, ctx)
    leaking = exp.select(exp.alias_(exp.column("__key_id_card", "t"), "o0_0")).from_("n0")
    with pytest.raises(PolicyViolation, match="hidden key"):
        verify(leaking, ctx)
    assert "raw" in enforce(bare, ctx).sql()  # and the rewrite itself passes its own check


def test_a_statement_the_last_step_refuses_is_a_policy_refusal_not_a_crash(secured: Gateway) -> None:
    """A request the policies' final check refuses answered INTERNAL, a crash's code: now a code
    of its own, which a client can tell apart, and still nothing of why."""
    from gateway.execution.budget import RowBudget
    from gateway.execution.prepared import prepare
    from gateway.identity.caller import Identity

    police = Identity("police")
    [compiled] = secured.compile("{ public_security_residents(limit: 1) { name } }", identity=police)
    tree = compiled.tree.copy()
    for table in tree.find_all(exp.Table):  # a table no policy decided on: the rewrite refuses it
        if table.name == "residents":
            table.set("this", exp.to_identifier("residents_archive"))
    view = secured.view(police)
    statement = prepare(replace(compiled, tree=tree), view, {}, secured.routes)
    error, _, _ = secured.runner._run(statement, view, RowBudget(10))
    assert error.code == "POLICY_REFUSED" and error.message == "the query was refused by the confidentiality policy"


def test_ordering_and_counting_on_masked_columns(secured: Gateway, city: City) -> None:
    data = run(
        secured,
        "health_analyst",
        """{ public_security_residents(order_by: [{id_card: desc}, {name: asc}],
        limit: 50) { id_card name } }""",
    )
    rows = data["public_security_residents"]
    assert [(r["id_card"], r["name"]) for r in rows] == sorted(
        ((r["id_card"], r["name"]) for r in rows), key=lambda p: p[0], reverse=True
    )[:50]
    assert all(r["id_card"][6:14] == "********" for r in rows)
    counted = run(
        secured,
        "supervisor",
        """{ health_clinic_visits_aggregate {
        aggregate { people: count(columns: [id_card], distinct: true) } } }""",
    )
    assert counted["health_clinic_visits_aggregate"]["aggregate"]["people"] == len(
        {v["id_card"] for v in city.dicts("health", "clinic_visits")}
    )


# -- masks computed where a column is projected ------------------------------------------------


def unordered(value: Any) -> Any:
    """``value`` with every list replaced by its items' sorted JSON texts."""
    if isinstance(value, dict):
        return {k: unordered(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted(json.dumps(unordered(v), default=str, sort_keys=True) for v in value)
    return value


class MaskedCity:
    """The generator's rows as ``role`` sees them, masked in Python: an oracle for masked data."""

    def __init__(self, city: City, gateway: Gateway, role: str) -> None:
        self.city = city
        self.decisions = gateway.view(Identity(role)).decisions or {}

    def dicts(self, department: str, table: str) -> Iterator[dict[str, Any]]:
        treatments = self.decisions[(department, table)].columns
        for row in self.city.dicts(department, table):
            yield {name: self.masked(treatments[name], value) for name, value in row.items()}

    @staticmethod
    def masked(treatment: Treatment, value: Any) -> Any:
        if value is None or treatment.kind in ("raw", "deny"):
            return value
        if treatment.kind == "partial":
            return partial(str(value), *treatment.params)
        if treatment.kind == "year":  # the first day of its year; a time's first moment
            return type(value)(value.year, 1, 1)
        if treatment.kind == "hash":
            return hashed(str(value))
        assert treatment.kind == "nullify", treatment
        return None


LATE_QUERIES = {
    # masked columns only projected: masked where projected, after the filters and the join
    "projected": """{ health_clinic_visits(where: {hospital: {_eq: "东华医院"}}, order_by: [{visit_id: asc}],
        limit: 40) { visit_id id_card resident { id_card name phone } } }""",
    # the same rows, with the masked columns also filtered and ordered by: masked in the subquery
    "filtered": """{ health_clinic_visits(where: {hospital: {_eq: "东华医院"}, id_card: {_like: "441900%"},
        resident: {name: {_like: "%*%"}}}, order_by: [{visit_id: asc}], limit: 40)
        { visit_id id_card resident { id_card name phone } } }""",
    "ordered": """{ public_security_residents(where: {name: {_like: "张%"}}, order_by: [{name: desc},
        {id_card: asc}]) { id_card name same: name } }""",
    "aggregated": """{ public_security_residents_aggregate(where: {district: {_eq: "南城"}}) {
        aggregate { count max { name } } nodes { name id_card } } }""",
}


@pytest.mark.parametrize("name", sorted(LATE_QUERIES))
def test_masked_columns_filtered_or_not_answer_as_the_masked_oracle(secured: Gateway, city: City, name: str) -> None:
    from tests.oracle import Oracle

    masked = MaskedCity(city, secured, "health_analyst")
    query = LATE_QUERIES[name]
    got = run(secured, "health_analyst", query)
    if name in ("projected", "filtered"):
        # Records link through raw keys, which the oracle over masked rows cannot: by hand.
        treatments = masked.decisions[("public_security", "residents")].columns
        residents = {r["id_card"]: r for r in city.dicts("public_security", "residents")}
        visits = sorted(
            (v for v in city.dicts("health", "clinic_visits") if v["hospital"] == "东华医院"),
            key=lambda v: v["visit_id"],
        )[:40]
        want = [
            {
                "visit_id": str(v["visit_id"]),
                "id_card": partial(v["id_card"], 6, 4),
                "resident": {
                    c: masked.masked(treatments[c], residents[v["id_card"]][c]) for c in ("id_card", "name", "phone")
                },
            }
            for v in visits
        ]
        # every masked identity number still starts with 441900, and every masked name has a star
        assert json.dumps(got, default=str) == json.dumps({"health_clinic_visits": want}, default=str)
        return
    oracle = Oracle(secured.view(Identity("health_analyst")).model, masked)  # type: ignore[arg-type]
    # Ties on a masked key break by its keyed hash, not the raw order the oracle knows: compare
    # lists as multisets here, and the ordering separately.
    assert unordered(got) == unordered(oracle.execute(query))
    if name == "ordered":
        rows = got["public_security_residents"]
        keys = [(r["name"], r["id_card"]) for r in rows]  # many ties on the masked name
        by_card = sorted(keys, key=lambda k: k[1])
        assert keys == sorted(by_card, key=lambda k: k[0], reverse=True) and len(rows) > 100


@pytest.fixture(scope="module")
def analyst(sqlite_config: Config) -> Iterator[tuple[Gateway, Any]]:
    """A policy-enforcing gateway on SQLite and health_analyst's rewrite context."""
    from policies.rewrite import Context

    config = with_policies(sqlite_config)
    gateway = Gateway.start(config, create_engine(config))
    view = gateway.view(Identity("health_analyst"))
    assert view.decisions is not None
    yield gateway, Context(view.decisions, view.types, {}, view.keys)
    gateway.close()


def raw_of(masked: exp.Expr) -> exp.Column:
    """The raw value a deferred mask reads."""
    column = masked.find(exp.Column)
    assert column is not None
    return column


def rewritten(analyst: tuple[Gateway, Any], query: str) -> exp.Expr:
    from policies.rewrite import enforce

    gateway, ctx = analyst
    [compiled] = gateway.compile(query, identity=Identity("health_analyst"))
    return enforce(compiled.tree, ctx)


def test_a_mask_moves_out_of_the_subquery_only_for_a_column_read_once_as_a_projection(
    analyst: tuple[Gateway, Any],
) -> None:
    tree = rewritten(analyst, LATE_QUERIES["projected"])
    policy = {s.alias: s for s in tree.find_all(exp.Subquery) if s.meta.get("policy")}
    resident = next(a for a, s in policy.items() if s.meta["policy"] == ("public_security", "residents"))
    passed = {p.alias for p in policy[resident].this.expressions}
    assert {"__raw_name", "__raw_id_card"} <= passed
    assert "__raw_phone" not in passed  # nullify reads nothing
    assert not {"name", "birth_date", "phone"} & passed
    tree = rewritten(analyst, LATE_QUERIES["ordered"])
    [subquery] = [s for s in tree.find_all(exp.Subquery) if s.meta.get("policy")]
    passed = {p.alias for p in subquery.this.expressions}
    assert {"name", "id_card"} <= passed  # filtered, ordered or read twice: masked inside
    assert not any(a.startswith("__raw_") for a in passed)


def test_a_nodes_masked_outputs_are_computed_in_the_last_select_after_the_page_is_cut(
    analyst: tuple[Gateway, Any],
) -> None:
    from policies.rewrite import LATE

    tree = rewritten(analyst, "{ public_security_residents(limit: 10) { id_card name phone } }")
    masks = [node for node in tree.walk() if LATE in node.meta and node.find(exp.Column)]
    assert {m.meta[LATE][1] for m in masks} == {"id_card", "name"}  # phone: a constant null
    for masked in masks:  # in the UNION's arm, over what the node's CTE passes on
        assert isinstance(masked.parent, exp.Alias) and masked.parent.alias.startswith("o0_")
        assert masked.find_ancestor(exp.CTE) is None  # the statement's own SELECT, not a node's CTE
        assert raw_of(masked).name == f"__raw_{masked.parent.alias}"
    [page] = [s for s in tree.find_all(exp.Select) if s.args.get("limit")]
    assert not any(LATE in n.meta and n.find(exp.Column) for n in page.walk())  # none where the page is cut


def test_the_last_step_fails_closed_on_raw_values_outside_their_masks(analyst: tuple[Gateway, Any]) -> None:
    from policies.model import Treatment as T
    from policies.rewrite import LATE, PolicyViolation, late_mask, verify

    _, ctx = analyst
    tree = rewritten(analyst, LATE_QUERIES["projected"])
    masks = [node for node in tree.walk() if LATE in node.meta]
    assert masks and verify(tree.copy(), ctx)

    def tampered(change: Callable[[exp.Expr], None]) -> exp.Expr:
        copy = tree.copy()
        change(copy)
        return copy

    def residents(copy: exp.Expr) -> exp.Subquery:
        return next(s for s in copy.find_all(exp.Subquery) if s.meta.get("policy") == ("public_security", "residents"))

    def late(copy: exp.Expr, name: str) -> exp.Expr:
        return next(n for n in copy.walk() if LATE in n.meta and n.meta[LATE][1] == name)

    def unmask(copy: exp.Expr) -> None:  # the raw value itself as the output
        node = late(copy, "name")
        node.replace(raw_of(node))

    def weaken(copy: exp.Expr) -> None:  # a mask that shows more than the policy's
        node = late(copy, "name")
        key, name = node.meta[LATE]
        node.replace(late_mask(key, name, T("partial", (2, 0)), LogicalType("string"), raw_of(node)))

    def other(copy: exp.Expr) -> None:  # another column's mask (the year) over the raw name
        node = late(copy, "name")
        key, _ = node.meta[LATE]
        node.replace(late_mask(key, "birth_date", T("year"), LogicalType("date"), raw_of(node)))

    def swap(copy: exp.Expr) -> None:  # the subquery passes another column under the name
        subquery = residents(copy)
        passed = next(p for p in subquery.this.expressions if p.alias == "__raw_name")
        passed.this.set("this", exp.to_identifier("address", quoted=True))

    def carriers(copy: exp.Expr) -> list[exp.Select]:  # the layers a deferred raw value passes
        name = raw_of(late(copy, "name")).name
        return [s for s in copy.find_all(exp.Select) if any(p.alias_or_name == name for p in s.expressions)]

    def reader(copy: exp.Expr) -> exp.Select:  # the layer above, which passes it on with `*`
        select = carriers(copy)[0].parent_select
        assert select is not None and select.is_star
        return select

    def order(copy: exp.Expr) -> None:  # a page ordered by the raw value, before its mask
        reader(copy).order_by(raw_of(late(copy, "name")).copy(), copy=False)

    def where(copy: exp.Expr) -> None:  # a prefix probe on the raw value
        column = raw_of(late(copy, "name")).copy()
        reader(copy).where(exp.Like(this=column, expression=exp.Literal.string("张%")), copy=False)

    def rename(copy: exp.Expr) -> None:  # passed on under a name that is not a raw value's
        passed = next(p for p in carriers(copy)[0].expressions if p.alias.startswith("__raw_"))
        passed.set("alias", exp.to_identifier("o9_0"))

    def star(copy: exp.Expr) -> None:  # the statement's last SELECT passing every raw value on
        arm = late(copy, "name").find_ancestor(exp.Select)
        assert arm is not None
        arm.select(exp.Star(), copy=False)

    def correlated(copy: exp.Expr) -> None:  # a subquery that reads the raw value of its outer row
        carrier = carriers(copy)[0]
        column = next(p for p in carrier.expressions if p.alias.startswith("__raw_"))
        probe = exp.select("1").from_(exp.select("1 AS x").subquery("d")).where(exp.column(column.alias).eq("x"))
        carrier.where(exp.Exists(this=probe), copy=False)

    # Reads of a raw value that do not name it: each engine would resolve them to the value.
    def arm(copy: exp.Expr) -> exp.Select:  # the statement's SELECT that masks the name
        select = late(copy, "name").find_ancestor(exp.Select)
        assert select is not None
        return select

    def cte(copy: exp.Expr) -> str:
        return str(arm(copy).args["from_"].this.name)

    def scalar(copy: exp.Expr) -> None:  # the raw name again, through a scalar subquery
        name = raw_of(late(copy, "name")).name
        late(copy, "name").replace(sqlglot.parse_one(f"(SELECT s.{name} FROM {cte(copy)} AS s LIMIT 1)"))

    def probe(copy: exp.Expr) -> None:  # rows kept by whether a raw identity number is in a list
        reader(copy).where(sqlglot.parse_one("'441900' IN (SELECT q.__raw_o0_1 FROM n0 AS q)"), copy=False)

    def shout(copy: exp.Expr) -> None:  # the same name in capitals: the engines do not tell them apart
        name = raw_of(late(copy, "name")).name
        late(copy, "name").replace(exp.column(exp.to_identifier(name.upper(), quoted=True)))

    def capital_cte(copy: exp.Expr) -> None:  # `FROM N1` is the CTE n1 to an engine, not to sqlglot
        arm(copy).args["from_"].this.set("this", exp.to_identifier(cte(copy).upper()))

    def position(copy: exp.Expr) -> None:
        reader(copy).order_by(exp.Literal.number(2), copy=False)

    def using(copy: exp.Expr) -> None:
        name = raw_of(late(copy, "name")).name
        reader(copy).join(sqlglot.parse_one(f"(SELECT 'x' AS {name}) AS probe"), using=[name], copy=False)

    def row(copy: exp.Expr) -> None:  # DuckDB reads a source's alias as its whole row
        layer = reader(copy)
        layer.select(exp.alias_(exp.column(layer.args["from_"].this.alias), "whole"), copy=False)

    def pattern(copy: exp.Expr) -> None:
        reader(copy).select(exp.Columns(this=exp.Literal.string("__raw_.*")), copy=False)

    def distinct(copy: exp.Expr) -> None:
        reader(copy).distinct(copy=False)

    # Hidden keys: a relationship's raw key (`__k0` on the node) links records and does nothing else.
    def key_out(copy: exp.Expr) -> None:
        late(copy, "name").replace(exp.column("__k0"))

    def key_as_id(copy: exp.Expr) -> None:
        node = next(p for p in arm(copy).expressions if p.alias_or_name == "__id")
        node.replace(exp.alias_(exp.column("__k0"), "__id"))

    def key_order(copy: exp.Expr) -> None:
        reader(copy).order_by(exp.column("__k0"), copy=False)

    # ... followed, not only by name: under another name, in a filter, from a correlated subquery.
    def keyed(copy: exp.Expr) -> exp.Select:  # the visits' layer that passes their key on as __k0
        return next(s for s in copy.find_all(exp.Select) if any(p.alias == "__k0" for p in s.expressions))

    def above(copy: exp.Expr) -> exp.Select:  # the layer above it, which cuts the page
        select = keyed(copy).parent_select
        assert select is not None and select.is_star
        return select

    def key_renamed(copy: exp.Expr) -> None:  # passed on as `ref`, then shown as the visit's id_card
        passed = next(p for p in keyed(copy).expressions if p.alias == "__k0")
        passed.set("alias", exp.to_identifier("ref"))
        shown = next(n for n in copy.walk() if n.meta.get(LATE) == (("health", "clinic_visits"), "id_card"))
        shown.replace(exp.column("ref"))

    def key_probe(copy: exp.Expr) -> None:  # rows kept by a prefix of the raw identity number
        above(copy).where(exp.Like(this=exp.column("__k0"), expression=exp.Literal.string("441900%")), copy=False)

    def key_literal(copy: exp.Expr) -> None:  # rows kept by whether the raw key is one value
        above(copy).where(exp.column("__k0").eq(exp.Literal.string("441900198001010011")), copy=False)

    def key_compared(copy: exp.Expr) -> None:  # two keys compared, but as a value passed on
        above(copy).select(exp.alias_(exp.column("__k0").eq(exp.column("__k0")), "__k9"), copy=False)

    def key_outer(copy: exp.Expr) -> None:  # a correlated subquery probing the outer row's raw key
        probe = sqlglot.parse_one("SELECT 1 FROM (SELECT '4419' AS x) AS d WHERE STARTS_WITH(__k0, d.x)")
        above(copy).where(exp.Exists(this=probe), copy=False)

    def tie_filter(copy: exp.Expr) -> None:  # a tie-break read as a value
        above(copy).where(exp.column("__s1").eq(exp.Literal.number(7)), copy=False)

    def tie_renamed(copy: exp.Expr) -> None:
        passed = next(p for p in keyed(copy).expressions if p.alias == "__s1")
        passed.set("alias", exp.to_identifier("ref"))

    # The policy subquery itself, against the policy.
    def shown(copy: exp.Expr) -> None:  # the raw name given out as the name itself, unmasked
        projection = next(p for p in residents(copy).this.expressions if p.alias == "__raw_name")
        projection.set("alias", exp.to_identifier("name", quoted=True))

    def name_key(copy: exp.Expr) -> None:  # the raw name passed on as a key, which links nothing
        subquery = residents(copy)
        raw = exp.Column(this=exp.to_identifier("name", quoted=True), table=exp.to_identifier("raw"))
        subquery.this.select(exp.alias_(raw, "__key_name", quoted=True), copy=False)

    def unfiltered(copy: exp.Expr) -> None:  # a row filter the policy does not have
        residents(copy).this.where(exp.column("district", "raw").eq("南城"), copy=False)

    for change, message in (
        (shown, "otherwise than its policy does"),
        (unfiltered, "row filter alone"),
        (name_key, "passes on name raw, which no relationship joins on"),
        (unmask, "outside its mask"),
        (weaken, "not the policy's"),
        (other, "not the policy's"),
        (swap, "which no mask of it reads"),
        (order, "outside its mask"),
        (where, "outside its mask"),
        (rename, "outside its mask"),
        (star, "other than its nodes' outputs"),
        (correlated, "source is not known"),
        (scalar, "subquery that is not a table"),
        (probe, "subquery that is not a table"),
        (shout, "outside its mask"),
        (capital_cte, "neither a subquery nor a common table expression"),
        (position, "orders by something that is not a column"),
        (using, "joins other than ON"),
        (row, "whole row"),
        (pattern, "by pattern"),
        (distinct, "has distinct"),
        (key_out, "hidden key would leave"),
        (key_as_id, "other than its nodes' outputs"),
        (key_order, "ordered by a raw key"),
        (key_renamed, "hidden key would pass on as ref"),
        (key_probe, "hidden key is read other than to link records"),
        (key_literal, "hidden key is read other than to link records"),
        (key_compared, "hidden key is read other than to link records"),
        (key_outer, "hidden key is read other than to link records"),
        (tie_filter, "hidden tie is read other than to order rows"),
        (tie_renamed, "hidden tie would pass on as ref"),
    ):
        with pytest.raises(PolicyViolation, match=message):
            verify(tampered(change), ctx)


def test_the_last_step_keeps_an_aggregate_only_table_aggregated(sqlite_config: Config) -> None:
    from policies.rewrite import AGGREGATED, Context, PolicyViolation, enforce, verify

    config = with_policies(sqlite_config)
    gateway = Gateway.start(config, create_engine(config))
    try:
        identity = Identity("district_officer", {"district": "南城"})
        view = gateway.view(identity)
        assert view.decisions is not None
        ctx = Context(view.decisions, view.types, identity.claims, view.keys)
        query = "{ health_clinic_visits_group_by(by: [hospital]) { keys { hospital } aggregate { sum { cost } } } }"
        [compiled] = gateway.compile(query, identity=identity)
    finally:
        gateway.close()
    tree = enforce(compiled.tree, ctx)
    assert verify(tree.copy(), ctx)

    def parts(copy: exp.Expr) -> tuple[exp.Select, exp.Select, exp.Select]:
        policy = next(s for s in copy.find_all(exp.Subquery) if s.meta.get("policy") == ("health", "clinic_visits"))
        inner, step = policy.this, policy.find_ancestor(exp.Select)
        holder = next(s for s in copy.find_all(exp.Select) if s.meta.get(AGGREGATED))
        assert isinstance(step, exp.Select) and step is not holder
        return inner, step, holder

    def page(copy: exp.Expr) -> None:  # a page of rows before they are aggregated
        parts(copy)[1].limit(5, copy=False)

    def measure_filter(copy: exp.Expr) -> None:  # visits above a cost, which a difference singles out
        parts(copy)[1].where("t1.cost > 19999", copy=False)

    def window(copy: exp.Expr) -> None:  # rows numbered before they are aggregated
        parts(copy)[1].select(sqlglot.parse_one("ROW_NUMBER() OVER (ORDER BY t1.cost) AS __n"), copy=False)

    def renamed(copy: exp.Expr) -> None:  # a column passed on under another's name
        parts(copy)[1].select(exp.alias_(exp.column("cost", "t1"), "hospital2"), copy=False)

    def min_of_group_column(copy: exp.Expr) -> None:  # one row's value of a column groups are cut by
        holder = parts(copy)[2]
        next(holder.find_all(exp.Sum)).replace(exp.Min(this=exp.column("hospital")))

    def grouped_by_measure(copy: exp.Expr) -> None:
        holder = parts(copy)[2]
        holder.set("group", exp.Group(expressions=[exp.column("hospital"), exp.column("cost")]))

    def ungrouped(copy: exp.Expr) -> None:  # a row's cost as an output
        parts(copy)[2].select(exp.alias_(exp.column("cost"), "o0_9"), copy=False)

    def listed(copy: exp.Expr) -> None:  # every row's cost, in one aggregate
        next(parts(copy)[2].find_all(exp.Sum)).replace(exp.ArrayAgg(this=exp.column("cost")))

    def counted_if(copy: exp.Expr) -> None:  # a filter by a measure, inside the aggregate
        condition = exp.If(this=exp.column("cost").eq(exp.Literal.number(1)), true=exp.Literal.number(1))
        next(parts(copy)[2].find_all(exp.Sum)).replace(exp.Sum(this=condition))

    def counted_where(copy: exp.Expr) -> None:  # the same under COUNT, shaped like count(columns:)
        case = exp.Case(ifs=[exp.If(this=exp.column("cost").eq(exp.Literal.number(1)), true=exp.Literal.number(1))])
        next(parts(copy)[2].find_all(exp.Sum)).replace(exp.Count(this=case))

    def keyed(copy: exp.Expr) -> None:  # the patient's key, which would link visits to people
        parts(copy)[0].select(exp.alias_(exp.column("id_card", "raw"), "__key_id_card"), copy=False)

    def two_steps(copy: exp.Expr) -> None:
        step = parts(copy)[1]
        step.replace(exp.select("*").from_(step.copy().subquery("b")))

    def no_step(copy: exp.Expr) -> None:  # the table aggregated straight from its policy subquery
        step = parts(copy)[1]
        assert step.parent is not None
        step.parent.replace(step.args["from_"].this.copy())

    for change, message in (
        (page, "single rows are chosen"),
        (measure_filter, "filtered by cost"),
        (window, "single rows are chosen"),
        (renamed, "gives hospital2"),
        (min_of_group_column, "aggregates hospital by value"),
        (grouped_by_measure, "grouped by cost"),
        (ungrouped, "cost leaves ungrouped"),
        (keyed, "aggregate-only but passes on __key_id_card"),
        (listed, "is aggregated by ARRAY_AGG"),
        (counted_if, "is aggregated by SUM"),
        (counted_where, "is aggregated by COUNT"),
        (two_steps, "read row by row"),
        (no_step, "read row by row"),
    ):
        copy = tree.copy()
        change(copy)
        with pytest.raises(PolicyViolation, match=message):
            verify(copy, ctx)


def test_a_policy_the_tables_cannot_take_stops_the_gateway_naming_its_key(
    sqlite_config: Config, tmp_path: Path
) -> None:
    """Found by a red-team review: a row filter over a column the table lacks passed loading and
    failed every request of the role with a stack trace; a file not in UTF-8 crashed loading."""
    central = write_policy(tmp_path / "c.yaml", {"officer": {"public_security.residents": {"row_filter": "nope = 1"}}})
    with pytest.raises(ConfigError, match=r"roles\.officer\.tables\.public_security\.residents\.row_filter: no column"):
        Gateway.start(with_policies(sqlite_config, [central]), create_engine(sqlite_config)).close()
    year_of_text = write_policy(
        tmp_path / "y.yaml", {"officer": {"public_security.residents": {"columns": {"name": "year"}}}}
    )
    with pytest.raises(
        ConfigError, match=r"officer: public_security\.residents\.name is string, which year cannot mask"
    ):
        Gateway.start(with_policies(sqlite_config, [year_of_text]), create_engine(sqlite_config)).close()
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("roles: {}\n# café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_policies([latin])


def test_no_key_material_an_engine_quotes_reaches_the_log(secured: Gateway) -> None:
    """Found by a code review: Trino's statements hold the hash key as text, which the
    hex-only redaction missed. Each engine redacts what it puts in its statements."""
    engine = secured.engine
    tree = exp.select(
        mask(Treatment("hash"), exp.Literal.string("x"), LogicalType("string")),
        tie(exp.Literal.string("x"), LogicalType("string")),
    )
    statement = engine.sql(tree)
    redacted = engine.redact(f"LINE 1: {statement}")
    assert redacted.count("<key>") >= 2 and KEY not in redacted
    assert not re.search(r"[0-9a-f]{32}", redacted)


def test_redaction_removes_key_material_cut_anywhere_and_keeps_a_callers_long_literal(secured: Gateway) -> None:
    """An engine quoting a statement may cut it inside a key block; a caller's literal of 38
    nines is not a key, and was once logged as ``<key>``."""
    engine = secured.engine
    tree = exp.select(mask(Treatment("hash"), exp.Literal.string("x"), LogicalType("string")))
    blocks = re.findall(r"[0-9a-f]{32,}", engine.sql(tree)) or [KEY]
    for block in blocks:
        cut = block[3:-3]
        redacted = engine.redact(f"LINE 1: ...{cut}') || x")
        assert redacted == "LINE 1: ...<key>') || x", redacted
    literal = "cost > 99999999999999999999999999999999999999 is out of range"
    assert engine.redact(literal) == literal
    assert CitygateError("x", detail=literal).detail == literal


# -- issue 19: rules that combine -------------------------------------------------------------


def test_a_floor_denies_every_form_but_the_one_it_names(tmp_path: Path) -> None:
    hashes = write_policy(tmp_path / "c.yaml", {"auditor": {"health.health_records": {"columns": {}}}})
    body = yaml.safe_load(hashes.read_text(encoding="utf-8"))
    body["roles"]["auditor"]["classes"] = {"confidential": "hash"}
    body["roles"]["viewer"] = {"tables": {"health.health_records": {"columns": {"chronic_conditions": "partial(1,0)"}}}}
    body["roles"]["blank"] = {"tables": {"health.health_records": {"columns": {"chronic_conditions": "nullify"}}}}
    hashes.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    classes: dict[str, Any] = {"chronic_conditions": None, "record_id": None}
    denied = load_policies([hashes, POLICY_FILES[1]])
    for role in ("auditor", "viewer"):  # a pseudonym, a partial: forms of the value all the same
        decision = decide(
            denied, role, "health", "health_records", {**classes, "chronic_conditions": SharingClass.CONFIDENTIAL}
        )
        assert decision.columns["chronic_conditions"].kind == "deny" and decision.floor_conflicts, role
    assert decide(denied, "blank", "health", "health_records", classes).columns["chronic_conditions"].kind == "nullify"
    floor = write_policy(
        tmp_path / "f.yaml",
        {},
        [{"department": "health", "columns": {"health_records.chronic_conditions": {"otherwise": "hash"}}}],
    )
    named = load_policies([hashes, floor])
    auditor = decide(
        named, "auditor", "health", "health_records", {**classes, "chronic_conditions": SharingClass.CONFIDENTIAL}
    )
    assert str(auditor.columns["chronic_conditions"]) == "hash" and not auditor.floor_conflicts
    viewer = decide(named, "viewer", "health", "health_records", classes)
    assert str(viewer.columns["chronic_conditions"]) == "hash" and viewer.floor_conflicts


def relations_of(gateway: Gateway, files: list[Path], role: str, root: str) -> set[str]:
    from gateway.execution.views import build_view

    view = build_view(role, load_policies(files), gateway.catalogue, gateway.config)
    return set(view.model.tables[root].relations)


def test_a_relationship_follows_only_a_join_column_the_role_sees_or_a_grant(
    gateway_sqlite: Gateway, tmp_path: Path
) -> None:
    enterprises, visits = "market_regulation_enterprises", "health_clinic_visits"
    assert "legal_representative" not in relations_of(gateway_sqlite, POLICY_FILES, "health_analyst", enterprises)
    assert "resident" in relations_of(gateway_sqlite, POLICY_FILES, "health_analyst", visits)  # a masked key links
    assert "legal_representative" in relations_of(gateway_sqlite, POLICY_FILES, "district_officer", enterprises)
    social = "human_resources_social_insurance"
    assert relations_of(gateway_sqlite, POLICY_FILES, "district_officer", social) == {"employer"}
    # nor from the other end: a resident's enterprises say who represents them as surely
    residents = "public_security_residents"
    assert "enterprises_represented" not in relations_of(gateway_sqlite, POLICY_FILES, "health_analyst", residents)
    assert "social_insurance" not in relations_of(gateway_sqlite, POLICY_FILES, "district_officer", residents)
    assert "enterprises_represented" in relations_of(gateway_sqlite, POLICY_FILES, "district_officer", residents)
    assert "clinic_visits" in relations_of(gateway_sqlite, POLICY_FILES, "health_analyst", residents)
    central = yaml.safe_load(POLICY_FILES[0].read_text(encoding="utf-8"))
    analyst = central["roles"]["health_analyst"]["tables"]
    analyst["market_regulation.enterprises"]["relationships"] = {"legal_representative": "allow"}
    analyst["health.clinic_visits"]["relationships"] = {"resident": "deny"}
    granted = tmp_path / "central.yaml"
    granted.write_text(yaml.safe_dump(central, allow_unicode=True), encoding="utf-8")
    files = [granted, POLICY_FILES[1]]
    assert "legal_representative" in relations_of(gateway_sqlite, files, "health_analyst", enterprises)
    assert "resident" not in relations_of(gateway_sqlite, files, "health_analyst", visits)


def test_k_counts_distinct_patients_not_visits(sqlite_config: Config, city: City, tmp_path: Path) -> None:
    """k = 3 over (hospital, department, day): one group has three visits of two patients."""
    dims = ["hospital", "department_name", "visit_date"]
    rule = {"access": "aggregate_only", "k": 3, "only_listed": True, "group_by": dims}
    rule["columns"] = dict.fromkeys([*dims, "cost"], "allow")
    files = [write_policy(tmp_path / "k.yaml", {"by_rows": {"health.clinic_visits": rule}})]
    body = yaml.safe_load(files[0].read_text(encoding="utf-8"))
    body["roles"]["by_people"] = {"tables": {"health.clinic_visits": {**rule, "k_distinct": "id_card"}}}
    files[0].write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    config = with_policies(sqlite_config, files)
    gateway = Gateway.start(config, create_engine(config))
    try:
        query = "{ health_clinic_visits_group_by(by: [hospital, department_name, visit_date]) { keys { %s } } }"
        patients: dict[tuple[str, ...], set[str]] = {}
        for v in city.dicts("health", "clinic_visits"):
            patients.setdefault((v["hospital"], v["department_name"], str(v["visit_date"])), set()).add(v["id_card"])
        visits = Counter(
            (v["hospital"], v["department_name"], str(v["visit_date"])) for v in city.dicts("health", "clinic_visits")
        )
        by_people = {k for k, ids in patients.items() if len(ids) >= 3}
        by_rows = {k for k, n in visits.items() if n >= 3}
        assert by_rows - by_people  # the data has the case: rows enough, people not
        for role, want in (("by_people", by_people), ("by_rows", by_rows)):
            rows = run(gateway, role, query % " ".join(dims))["health_clinic_visits_group_by"]
            assert {tuple(r["keys"][d] for d in dims) for r in rows} == want, role
    finally:
        gateway.close()


def test_the_last_step_refuses_a_complement_in_an_aggregate_only_filter(
    analyst: tuple[Gateway, Any],
) -> None:
    """The schema offers no `_neq` there; a tree that has one anyway (a compiler bug) is refused."""
    from policies.rewrite import Context, PolicyViolation, enforce, verify

    gateway, _ = analyst
    officer = Identity("district_officer", {"district": "石龙"})
    view = gateway.view(officer)
    assert view.decisions is not None
    ctx = Context(view.decisions, view.types, {"district": "石龙"}, view.keys)
    query = '{ health_clinic_visits_aggregate(where: {diagnosis_code: {_eq: "J06"}}) { aggregate { count } } }'
    [compiled] = gateway.compile(query, identity=officer)
    tree = enforce(compiled.tree, ctx)
    changes: list[Callable[[exp.Expr], exp.Expr]] = [
        lambda eq: exp.NEQ(this=eq.this, expression=eq.expression),
        lambda eq: exp.Not(this=eq),
    ]
    for change in changes:
        copy = tree.copy()
        equal = next(e for e in copy.find_all(exp.EQ) if e.expression == exp.Literal.string("J06"))
        equal.replace(change(equal.copy()))
        with pytest.raises(PolicyViolation, match="aggregate-only but is filtered by"):
            verify(copy, ctx)
