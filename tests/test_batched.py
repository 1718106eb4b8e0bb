"""Relationships between stores followed by key (gateway.graphql.parts): the same answers as the
one statement on the engine, as every role, with the keys never shaped into the answer, split
into batches, and a store that does not answer failing only the fields it holds.

Each pair of gateways differs in one setting alone, ``engine.batch_relationships``: ``auto``
cuts a root field whose relationships reach another store into one statement per store and
level, run on the stores themselves; ``never`` runs it whole on the engine (Trino, or DuckDB).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.execution.prepared import Batched
from gateway.identity.caller import Identity
from tests.conftest import free_port, with_store
from tests.policy_support import with_policies
from tests.test_graphql import same

FIXTURES = Path(__file__).parent / "fixtures" / "compile"
DEMO_CITIZEN = "441900197407169777"

# Each role the demo city has, with the claims its policies read.
ROLES: list[tuple[str | None, dict[str, Any]]] = [
    (None, {}),
    ("health_analyst", {}),
    ("district_officer", {"district": "南城"}),
    ("env_inspector", {}),
    ("police", {}),
    ("supervisor", {}),
    ("citizen", {"id_card": DEMO_CITIZEN}),
]

# Relationships between every pair of departments the demo links, nested up to three stores deep,
# with per-parent pages, orderings, filters and aggregates inside the related store.
ACROSS = [
    """{ health_clinic_visits(limit: 60, order_by: [{visit_id: asc}]) {
         visit_id hospital resident { name district gender } } }""",
    """{ public_security_residents(limit: 40, order_by: [{district: asc}, {name: asc}]) {
         name district
         clinic_visits(limit: 3, order_by: [{visit_date: desc}]) { hospital visit_date }
         clinic_visits_aggregate(where: {hospital: {_like: "%医院"}}) { aggregate { count } }
         health_record { updated_at }
         social_insurance { months_paid employer { name district } }
         enterprises_represented(order_by: [{name: asc}]) {
           name vehicles_aggregate { aggregate { count max { seats } } } } } }""",
    """{ transport_vehicles(limit: 50, order_by: [{plate: asc}]) {
         plate seats owner { name district legal_representative { name } } } }""",
    """{ environment_emission_readings(limit: 50, where: {exceeded: {_eq: true}}, order_by: [{reading_id: asc}]) {
         value exceeded site { site_name enterprise { name status } } } }""",
    """{ market_regulation_enterprises(where: {district: {_eq: "南城"}}, limit: 30, order_by: [{name: asc}]) {
         name legal_representative { name clinic_visits_aggregate { aggregate { count } } }
         monitored_sites(distinct_on: [district], order_by: [{district: asc}, {site_id: desc}]) {
           site_id district } } }""",
]


def queries() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(FIXTURES.glob("*.graphql"))] + ACROSS


def started(config: Config) -> Gateway:
    # the result cache off: every request runs its statements, so each compares answers
    config = config.model_copy(update={"cache": config.cache.model_copy(update={"enabled": False})})
    return Gateway.start(config, create_engine(config))


@pytest.fixture(scope="module", params=["trino", "embedded"])
def pair(request: pytest.FixtureRequest, services_config: Config) -> Iterator[tuple[Gateway, Gateway]]:
    """The same policy-enforcing gateway with relationships batched and not, on one engine."""
    config = with_policies(services_config.with_engine(request.param).with_delegate("auto"))
    batched, whole = started(config.with_batching("auto")), started(config.with_batching("never"))
    yield batched, whole
    batched.close()
    whole.close()


def test_every_role_gets_the_same_answer_batched_as_on_the_engine(pair: tuple[Gateway, Gateway]) -> None:
    batched_gateway, whole_gateway = pair
    ran: dict[str, int] = {}
    roles: set[str | None] = set()  # the roles some of whose fields were cut
    # the parts run on the stores either way: against DuckDB's join, four roles of the seven
    # (the time of the suite), each with a row filter or masks of its own
    roles_here = ROLES if batched_gateway.engine.name == "trino" else [ROLES[i] for i in (0, 2, 4, 6)]
    for role, claims in roles_here:
        identity = Identity(role, claims) if role else None
        for query in queries():
            got = batched_gateway.execute(query, identity=identity)
            want = whole_gateway.execute(query, identity=identity)
            assert "batched" not in want.routes.values()
            same(got.body, want.body, f"{role}: {query[:60]!r}")
            for route in got.routes.values():
                ran[route] = ran.get(route, 0) + 1
                if route == "batched":
                    roles.add(role)
    # a comparison between two ways of running: fields were cut, as most roles and as none (19
    # fields as the seven roles when written; the others read one store, or ask what only the
    # engine runs: the hash mask, a case-insensitive comparison, a join before a filter)
    assert ran.get("batched", 0) >= 10 and len(roles) >= min(5, len(roles_here) - 1), (ran, roles)


def test_a_join_key_is_read_for_joining_and_never_shaped(pair: tuple[Gateway, Gateway], city: Any) -> None:
    """health_analyst sees identity numbers as ``partial(6,4)``: the raw number travels from
    the health store to the gateway and on to public security's store, and nowhere else."""
    batched_gateway, _ = pair
    query = "{ health_clinic_visits(limit: 200, order_by: [{visit_id: asc}]) { hospital resident { name } } }"
    response = batched_gateway.execute(query, identity=Identity("health_analyst"))
    assert response.routes == {"health_clinic_visits": "batched"}
    text = json.dumps(response.body, ensure_ascii=False)
    assert response.body["data"]["health_clinic_visits"][0]["resident"]["name"].endswith("*")
    assert not re.search(r"\d{18}|\d{17}X", text)
    raw = {r["id_card"] for r in city.dicts("public_security", "residents")}
    assert not any(value in text for value in raw)


def test_a_join_the_answer_depends_on_goes_to_the_engine(pair: tuple[Gateway, Gateway]) -> None:
    """A filter or an ordering through a relationship into another store needs the join first."""
    batched_gateway, _ = pair
    engine = batched_gateway.engine.name
    query = """{
      filtered: health_clinic_visits(where: {resident: {district: {_eq: "虎门"}}}, limit: 5) {
        visit_id resident { name } }
      ordered: health_clinic_visits(order_by: [{resident: {name: asc}}, {visit_id: asc}], limit: 5) { visit_id }
      nested: health_clinic_visits(limit: 5, order_by: [{visit_id: asc}]) { visit_id resident { name } }
    }"""
    response = batched_gateway.execute(query, identity=Identity("police"))
    assert response.routes == {"filtered": engine, "ordered": engine, "nested": "batched"}, response.body


def test_keys_are_given_in_batches_and_the_answer_is_the_same(services_config: Config) -> None:
    config = services_config.with_delegate("auto")
    config = config.model_copy(update={"engine": config.engine.model_copy(update={"batch_keys": 7})})
    small, whole = started(config), started(config.with_batching("never"))
    try:
        query = """{ health_clinic_visits(limit: 100, order_by: [{visit_id: asc}]) {
          visit_id resident { name enterprises_represented { name } } } }"""
        stores = {id(n): n for n in small.routes.native.values()}.values()
        before = sum(n.statements for n in stores)
        got = small.execute(query)
        ran = sum(n.statements for n in stores) - before
        same(got.body, whole.execute(query).body)
        visits = got.body["data"]["health_clinic_visits"]
        residents = {v["resident"]["name"] for v in visits}  # about one per visit: 100 keys
        assert len(residents) > 50
        # one for the visits, then 7 keys a statement: residents, then their enterprises
        assert ran >= 1 + math.ceil(len(residents) / 7) + 1, ran
        assert got.statements == 1 and got.routes == {"health_clinic_visits": "batched"}
    finally:
        small.close()
        whole.close()


def test_a_store_that_does_not_answer_fails_only_its_fields(services_config: Config) -> None:
    """Public security's store is down: a visit's resident (an object, nullable) is null with
    an error of its own in each visit; the visits stand. A list (non-null) takes its parent."""
    down = with_store(services_config.with_delegate("auto"), "public_security", port=free_port())
    gateway = started(with_store(down, "human_resources", port=free_port()))
    try:
        query = "{ health_clinic_visits(limit: 3, order_by: [{visit_id: asc}]) { visit_id resident { name } } }"
        statement = gateway.prepared(query)[0]
        assert isinstance(statement, Batched)
        body = gateway.execute(query).body
        visits = body["data"]["health_clinic_visits"]
        assert [v["resident"] for v in visits] == [None, None, None] and all(v["visit_id"] for v in visits)
        assert [e["path"] for e in body["errors"]] == [["health_clinic_visits", i, "resident"] for i in range(3)]
        assert {e["extensions"]["code"] for e in body["errors"]} == {"DEPARTMENT_UNAVAILABLE"}
        assert {e["extensions"]["department"] for e in body["errors"]} == {"public_security"}
        listed = gateway.execute(
            "{ market_regulation_enterprises(limit: 2) { name legal_representative { name } } }"
        ).body
        assert listed["data"]["market_regulation_enterprises"][0]["legal_representative"] is None
        employees = gateway.execute("{ market_regulation_enterprises(limit: 2) { insured_employees { id_card } } }")
        assert employees.routes == {"market_regulation_enterprises": "batched"}
        assert employees.body["data"] == {"market_regulation_enterprises": None}
        [error] = employees.body["errors"]
        assert error["path"] == ["market_regulation_enterprises"]
        assert error["extensions"]["code"] == "DEPARTMENT_UNAVAILABLE"
    finally:
        gateway.close()


def test_many_batches_run_within_one_statements_time(services_config: Config) -> None:
    """A thousand parents, one key a statement: each statement is quick, but together they have
    the role's statement limit, as the one statement on the engine would, and no more."""
    config = services_config.with_delegate("auto")
    config = config.model_copy(
        update={
            "engine": config.engine.model_copy(update={"batch_keys": 1}),
            "limits": config.limits.model_copy(update={"statement_seconds": 0.5}),
        }
    )
    gateway = started(config)
    try:
        query = "{ health_clinic_visits(limit: 1000, order_by: [{visit_id: asc}]) { visit_id resident { name } } }"
        stores = {id(n): n for n in gateway.routes.native.values()}.values()
        before = sum(n.statements for n in stores)
        response = gateway.execute(query)
        ran = sum(n.statements for n in stores) - before
        assert response.routes == {"health_clinic_visits": "batched"}
        [error] = response.body["errors"]
        assert error["extensions"]["code"] == "TIMEOUT" and error["path"] == ["health_clinic_visits"]
        assert 1 < ran < 1000, ran  # stopped when the time was up, not after every batch
    finally:
        gateway.close()


def test_the_batched_route_shows_in_metrics(services_config: Config) -> None:
    from prometheus_client import generate_latest

    gateway = started(services_config.with_delegate("auto"))
    try:
        query = "{ health_clinic_visits(limit: 5, order_by: [{visit_id: asc}]) { visit_id resident { name } } }"
        assert gateway.execute(query).routes == {"health_clinic_visits": "batched"}
        text = generate_latest(gateway.metrics.registry).decode()
        labels = 'department="health",engine="delegated",route="batched"'
        assert f"citygate_statement_duration_seconds_count{{{labels}}} 1.0" in text
        assert "citygate_batched_keys_count 1.0" in text and "citygate_batched_keys_sum 5.0" in text
    finally:
        gateway.close()
