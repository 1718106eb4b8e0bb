"""GraphQL -> SQL golden fixtures, run on every engine and compared with the Python oracle.

Each ``tests/fixtures/compile/<name>.graphql`` has its compiled SQL beside it in
``<name>.sql`` (the logical tree, before an engine locates its tables). Set
CITYGATE_UPDATE_GOLDEN=1 to rewrite the ``.sql`` files after an intended compiler change,
and read the diff.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
from graphql import print_schema

from gateway.execution.gateway import Gateway
from tests.oracle import Oracle

FIXTURES = Path(__file__).parent / "fixtures" / "compile"
CASES = sorted(p.stem for p in FIXTURES.glob("*.graphql"))


def load(name: str) -> tuple[str, dict[str, Any]]:
    text = (FIXTURES / f"{name}.graphql").read_text(encoding="utf-8")
    variables: dict[str, Any] = {}
    for line in text.splitlines():
        if line.startswith("# variables:"):
            variables = json.loads(line.split(":", 1)[1])
    return text, variables


def same(got: Any, want: Any, path: str = "") -> None:
    """Equal, with floats (averages, sums of doubles) to 1e-9 relative: engines add in any order."""
    if isinstance(want, float) and isinstance(got, float):
        assert math.isclose(got, want, rel_tol=1e-9), f"{path}: {got} != {want}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), f"{path}: keys {list(got)} != {list(want)}"
        for key in want:
            same(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: {len(got)} items != {len(want)}"
        for index, (g, w) in enumerate(zip(got, want, strict=True)):
            same(g, w, f"{path}[{index}]")
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


@pytest.mark.parametrize("name", CASES)
def test_golden_sql(gateway_sqlite: Gateway, name: str) -> None:
    query, variables = load(name)
    compiled = gateway_sqlite.compile(query, variables)
    text = "".join(f"-- {c.key}\n{c.tree.sql(dialect='duckdb', pretty=True)};\n\n" for c in compiled)
    golden = FIXTURES / f"{name}.sql"
    if os.environ.get("CITYGATE_UPDATE_GOLDEN") == "1":
        golden.write_text(text, encoding="utf-8")
    assert golden.exists(), f"no golden SQL for {name}; run with CITYGATE_UPDATE_GOLDEN=1 and review it"
    assert text == golden.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", CASES)
def test_fixture_rows_equal_the_oracle(gateway: Gateway, oracle: Oracle, name: str) -> None:
    query, variables = load(name)
    response = gateway.execute(query, variables)
    assert "errors" not in response.body, response.body
    same(response.body["data"], oracle.execute(query, variables))
    # one statement per root field; root fields that compile to the same one share its run
    assert response.statements == len({gateway.engine.sql(c.tree) for c in gateway.compile(query, variables)})


def test_every_engine_serves_the_same_schema(
    gateway_sqlite: Gateway, gateway_services: Gateway, gateway_trino: Gateway
) -> None:
    sdl = [print_schema(g.model.schema) for g in (gateway_sqlite, gateway_services, gateway_trino)]
    assert sdl[0] == sdl[1] == sdl[2]
    assert "health_clinic_visits_group_by(" in sdl[0] and "clinic_visits_aggregate(" in sdl[0]


def test_three_levels_over_a_thousand_parents_is_one_statement(gateway: Gateway, oracle: Oracle) -> None:
    query = """{
      market_regulation_enterprises(limit: 1000, order_by: [{credit_code: asc}]) {
        credit_code
        legal_representative { name clinic_visits(order_by: [{visit_id: asc}]) { visit_id cost } }
      }
    }"""
    engine = gateway.engine
    gateway.plan(query)  # the cost estimate's first read of the tables' sizes is not the query's
    stores = {id(n): n for n in gateway.routes.native.values()}.values()
    before, before_stores = engine.statements, sum(n.statements for n in stores)  # type: ignore[attr-defined]
    response = gateway.execute(query)
    ran = engine.statements - before, sum(n.statements for n in stores) - before_stores  # type: ignore[attr-defined]
    # On PostgreSQL and MariaDB, one statement per store and level: enterprises, their
    # representatives, their visits; SQLite holds no decimal (the cost) as the engines do.
    if gateway.planner.batch and gateway.routes.delegating and gateway.engine.name == "trino":
        assert response.routes == {"market_regulation_enterprises": "batched"}
        assert ran == (0, 3)
    else:
        assert response.routes["market_regulation_enterprises"] == gateway.engine.name
        assert ran == (1, 0)
    assert "errors" not in response.body
    enterprises = response.body["data"]["market_regulation_enterprises"]
    assert len(enterprises) == 1000
    assert sum(len(e["legal_representative"]["clinic_visits"]) for e in enterprises) > 1000
    same(response.body["data"], oracle.execute(query))


@pytest.mark.parametrize("direction", ["asc_nulls_first", "desc"])  # `desc` puts nulls first
def test_a_page_ordered_nulls_first_holds_the_rows_after_the_nulls(
    gateway: Gateway, oracle: Oracle, direction: str
) -> None:
    """A root page is a top-N. Through PostgreSQL, DuckDB's top-N on a key ordered nulls first
    returned the rows whose key is null and nothing else (duckdb/duckdb-postgres#564)."""
    everything = "{ health_health_records(order_by: [{record_id: asc}]) { chronic_conditions } }"
    nulls = sum(r["chronic_conditions"] is None for r in oracle.execute(everything)["health_health_records"])
    assert nulls > 3
    straddling = f"""{{ health_health_records(order_by: [{{chronic_conditions: {direction}}}, {{record_id: desc}}],
      offset: {nulls - 3}, limit: 6) {{ record_id chronic_conditions }} }}"""
    no_nulls = f"{{ health_health_records(order_by: [{{record_id: {direction}}}], limit: 4) {{ record_id }} }}"
    on_mariadb = f"""{{ market_regulation_enterprises(order_by: [{{registered_capital: {direction}}},
      {{credit_code: asc}}], offset: 2, limit: 4) {{ credit_code registered_capital }} }}"""
    for query in (straddling, no_nulls, on_mariadb):
        response = gateway.execute(query)
        assert "errors" not in response.body, response.body
        same(response.body["data"], oracle.execute(query))
    page = gateway.execute(straddling).body["data"]["health_health_records"]
    assert [r["chronic_conditions"] is None for r in page] == [True] * 3 + [False] * 3


def test_shaping_the_same_compiled_field_twice_gives_the_same_answer(gateway_sqlite: Gateway) -> None:
    from gateway.graphql.shape import shape

    [compiled] = gateway_sqlite.compile("{ transport_stations(limit: 3) { name } }")
    result = gateway_sqlite.engine.execute(compiled.tree)
    first = shape(compiled, result.rows)
    second = shape(compiled, result.rows)
    assert first == second and len(second) == 3 and first is not second


def test_schema_describes_sharing_classes(gateway_sqlite: Gateway) -> None:
    sdl = print_schema(gateway_sqlite.model.schema)
    assert '"""sharing class: confidential (保密)"""\n  phone: String' in sdl
    assert '"""sharing class: published (发布)"""\n  district: String' in sdl


def test_a_repeated_request_reuses_its_plan_and_new_values_get_their_own(gateway_sqlite: Gateway) -> None:
    query = "query ($d: String!) { transport_stations(where: {district: {_eq: $d}}) { station_id } }"
    first = gateway_sqlite.plan(query, {"d": "虎门"})
    assert gateway_sqlite.plan(query, {"d": "虎门"}) is first
    other = gateway_sqlite.plan(query, {"d": "长安"})
    assert other is not first
    assert gateway_sqlite.execute(query, {"d": "虎门"}).body == {
        "data": {"transport_stations": [{"station_id": 6}, {"station_id": 14}, {"station_id": 22}]}
    }
    assert gateway_sqlite.execute(query, {"d": "长安"}).body == {
        "data": {"transport_stations": [{"station_id": 7}, {"station_id": 15}, {"station_id": 23}]}
    }


# Found by a red-team review: Trino handed PostgreSQL its LIKE without ESCAPE, so `\` escaped
# there and nowhere else; Trino read a timestamp literal as TIMESTAMP(3), rounding .9999 s up.
EDGES = {
    "a backslash escapes a wildcard": (
        "query ($p: String!) { transport_stations_aggregate(where: {name: {_like: $p}}) { aggregate { count } } }",
        {"p": "%\\_站"},
    ),
    "an escaped percent sign is one": (
        "query ($p: String!) { transport_stations(where: {name: {_nlike: $p}}, limit: 3) { name } }",
        {"p": "%\\%%"},
    ),
    "sub-millisecond timestamps": (
        "query ($t: Timestamp!) { environment_emission_readings_aggregate("
        "where: {measured_at: {_gt: $t}}) { aggregate { count } } }",
        {"t": "2015-01-01T00:09:13.9999"},
    ),
}


@pytest.mark.parametrize("name", EDGES)
def test_edges_of_patterns_and_times_answer_alike_on_every_engine(gateway: Gateway, oracle: Oracle, name: str) -> None:
    query, variables = EDGES[name]
    response = gateway.execute(query, variables)
    assert "errors" not in response.body, response.body
    same(response.body["data"], oracle.execute(query, variables))


def test_a_backslash_escaping_nothing_and_a_bigint_past_64_bits_are_the_callers_error(
    gateway: Gateway,
) -> None:
    for pattern in ("%\\", "%\\站"):  # a lone one, and one before a character it cannot escape
        lone = gateway.execute(
            "query ($p: String!) { transport_stations(where: {name: {_like: $p}}) { name } }", {"p": pattern}
        )
        assert lone.body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"  # not a department that is down
    huge = gateway.execute(
        "query ($v: BigInt!) { health_clinic_visits(where: {visit_id: {_eq: $v}}) { visit_id } }",
        {"v": "9223372036854775808"},
    ).body
    assert "64-bit" in huge["errors"][0]["message"]


def test_a_null_in_a_group_ordering_orders_by_nothing(gateway_sqlite: Gateway) -> None:
    """Found by tests/test_fuzz.py: each of these once failed inside the compiler (INTERNAL)."""
    group = "market_regulation_enterprises_group_by(by: [district], order_by: [{district: asc}])"
    plain = "{ g: " + group + " { keys { district } aggregate { count } } }"
    want = gateway_sqlite.execute(plain).body
    for ordering in (
        "{aggregate: {count: null}}",
        "{aggregate: {sum: null}}",
        "{aggregate: {sum: {registered_capital: null}}}",
        "{aggregate: null, district: null}",
    ):
        query = plain.replace("[{district: asc}]", f"[{ordering}, {{district: asc}}]")
        assert gateway_sqlite.execute(query).body == want, ordering


PATTERNS = (
    "query ($p: String!) { public_security_residents_aggregate(where: {id_card: {_like: $p}}) { aggregate { count } } }"
)


@pytest.mark.parametrize(
    "pattern",
    [
        "%_%_%_%_%_%_%_X",  # once 22 s on DuckDB at k=6: a run of wildcards is now matched as `_______%`
        "%_%_%_%_%_%_%_%_1",  # the same, matching
        "%0%0%0X",  # the most `%` a pattern may hold, each before the column's most common digit
        "%0_%9%_%1_4",
    ],
)
def test_a_hostile_pattern_the_api_accepts_runs_in_bounded_time(gateway: Gateway, oracle: Oracle, pattern: str) -> None:
    started = time.perf_counter()
    response = gateway.execute(PATTERNS, {"p": pattern})
    took = time.perf_counter() - started
    assert "errors" not in response.body, response.body
    same(response.body["data"], oracle.execute(PATTERNS, {"p": pattern}))
    assert took < 2, f"{pattern!r} took {took:.2f} s"


def test_a_pattern_past_the_bounds_is_the_callers_error(gateway_sqlite: Gateway) -> None:
    for pattern, says in (("%0%0%0%0X", "at most 3 `%` wildcards"), ("4" * 257 + "%", "at most 256 characters")):
        [error] = gateway_sqlite.execute(PATTERNS, {"p": pattern}).body["errors"]
        assert error["extensions"]["code"] == "BAD_USER_INPUT" and says in error["message"], error


def test_a_value_past_its_columns_type_is_the_callers_error_before_any_engine(gateway: Gateway) -> None:
    query = "query ($v: Decimal!) { health_clinic_visits_aggregate(where: {cost: {_gt: $v}}) { aggregate { count } } }"
    [error] = gateway.execute(query, {"v": "9" * 38}).body["errors"]  # once ENGINE_ERROR, a cast overflow
    assert error["extensions"]["code"] == "BAD_USER_INPUT" and "decimal(10,2)" in error["message"], error
    for fits in ("99999999.99", "-99999999.999", "0", "0.001"):
        assert "errors" not in gateway.execute(query, {"v": fits}).body, fits
