"""The `citizen` role (issue 29, item 4; the contract's role table): a person's token carries
their verified identity number as the claim `id_card`, and shows every row about them in every
department, unmasked, and nothing about anyone else, on every route and through every
relationship. Checked against the generator's rows, not the code under test."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from catalogue.errors import ConfigError
from datasets.datagen import City
from datasets.demo import issue_token
from gateway.config import Config
from gateway.execution.gateway import Gateway
from gateway.http.app import create_app
from gateway.identity.caller import Identity
from policies.model import load_policies
from tests.conftest import shared_engine, shared_secure_demo
from tests.policy_support import ENGINES, run, secured_gateway

# The demo's citizen (the Keycloak realm's user `citizen` carries the same number): the first
# resident with two visits or more, a health record with a chronic condition, social insurance
# and two enterprises represented, so that every table has rows about them.
DEMO_CITIZEN = "441900197407169777"

OWN = """{
  public_security_residents { id_card name gender birth_date phone address district registered_at }
  health_clinic_visits(order_by: [{visit_id: asc}])
    { visit_id id_card hospital department_name diagnosis_code diagnosis visit_date cost }
  health_health_records { record_id id_card blood_type chronic_conditions updated_at }
  human_resources_social_insurance { id_card employer_credit_code monthly_salary months_paid last_paid }
  market_regulation_enterprises(order_by: [{credit_code: asc}])
    { credit_code name legal_rep_id_card industry registered_capital established_date district status }
}"""
TABLES = {
    "public_security_residents": ("public_security", "residents", "id_card"),
    "health_clinic_visits": ("health", "clinic_visits", "id_card"),
    "health_health_records": ("health", "health_records", "id_card"),
    "human_resources_social_insurance": ("human_resources", "social_insurance", "id_card"),
    "market_regulation_enterprises": ("market_regulation", "enterprises", "legal_rep_id_card"),
}
BIGINT = {"visit_id", "record_id"}  # GraphQL's BigInt travels as text


def shown(column: str, value: Any) -> Any:
    """A generated value as the API writes it."""
    if isinstance(value, Decimal) or column in BIGINT:
        return str(value)
    if isinstance(value, dt.date):  # dates and times alike
        return value.isoformat()
    return value


def about(city: City, person: str) -> dict[str, list[dict[str, Any]]]:
    """Every row about ``person``, as :data:`OWN` asks for them (ordered as it orders them)."""
    rows = {}
    for root, (department, table, key) in TABLES.items():
        found = [{c: shown(c, v) for c, v in r.items()} for r in city.dicts(department, table) if r[key] == person]
        rows[root] = sorted(found, key=lambda r: str(r.get("visit_id") or r.get("credit_code") or ""))
    rows["health_clinic_visits"].sort(key=lambda r: int(r["visit_id"]))
    return rows


@pytest.fixture(scope="module", params=ENGINES)
def secured(request: pytest.FixtureRequest, sqlite_config: Config, services_config: Config) -> Iterator[Gateway]:
    """A gateway with the demo policies on each route: embedded on SQLite and on the services,
    Trino, and each store's own (delegated)."""
    gateway = secured_gateway(request.param, sqlite_config, services_config)
    yield gateway
    gateway.close()


def test_the_demo_citizen_has_rows_in_every_table(city: City) -> None:
    rows = about(city, DEMO_CITIZEN)
    assert all(rows.values()) and len(rows["health_clinic_visits"]) >= 2, rows
    assert len(rows["market_regulation_enterprises"]) >= 2 and rows["health_health_records"][0]["chronic_conditions"]


def test_a_citizen_reads_every_row_about_them_unmasked_and_nothing_else(secured: Gateway, city: City) -> None:
    assert run(secured, "citizen", OWN, id_card=DEMO_CITIZEN) == about(city, DEMO_CITIZEN)
    # another person's token: their rows, none of the first's
    other = next(r["id_card"] for r in city.dicts("health", "clinic_visits") if r["id_card"] != DEMO_CITIZEN)
    assert run(secured, "citizen", OWN, id_card=other) == about(city, other)


# What anyone may read without a token: a citizen with the claim sees these too
PUBLISHED = """{
  environment_monitored_sites(limit: 2) { site_id site_name }
  environment_emission_readings(limit: 2) { reading_id pollutant }
  transport_stations(limit: 2) { station_id name }
  transport_vehicles(limit: 2) { owner_credit_code vehicle_type seats }
  market_regulation_enterprises_aggregate { aggregate { count } }
  public_security_residents_group_by(by: [district]) { keys { district } }
}"""
SCHEMA = "{ __schema { queryType { fields { name } } } }"


def test_a_citizen_token_without_the_claim_sees_nothing(secured: Gateway) -> None:
    """The contract: "without the claim, nothing". The role requires the claim
    (``requires_claims``): a token without it, or with it empty, gets the view of a role with no
    policy, published tables included, and every field is refused naming the claim."""
    claimed = run(secured, "citizen", PUBLISHED, id_card=DEMO_CITIZEN)
    assert claimed["transport_stations"] and claimed["transport_vehicles"] and claimed["environment_monitored_sites"]
    nobody = secured.execute(SCHEMA, identity=Identity("no_such_role")).body
    for claims in ({}, {"id_card": ""}, {"id_card": "   "}, {"id_card": None}):
        for query in (OWN, PUBLISHED, "{ public_security_residents_aggregate { aggregate { count } } }"):
            body = secured.execute(query, identity=Identity("citizen", claims)).body
            assert set(body) == {"errors"}, body  # no data at all, not even null
            assert {e["extensions"]["code"] for e in body["errors"]} == {"GRAPHQL_VALIDATION_FAILED"}
            assert all(
                "the token has no claim id_card, which the role requires" in e["message"] for e in body["errors"]
            )
            unknown = secured.execute(query, identity=Identity("no_such_role")).body
            assert len(body["errors"]) == len(unknown["errors"])  # each root field, as for a role with no policy
        assert secured.execute(SCHEMA, identity=Identity("citizen", claims)).body == nobody
    assert run(secured, "citizen", PUBLISHED, id_card=DEMO_CITIZEN) == claimed  # the empty view is kept apart
    # a claim that names nobody is a claim: the role's view, and no rows
    nothing: dict[str, list[Any]] = {key: [] for key in TABLES}
    assert run(secured, "citizen", OWN, id_card="441900197407169777' OR '1'='1") == nothing


def test_a_citizen_reaches_nobody_else_by_filter_relationship_or_aggregate(secured: Gateway, city: City) -> None:
    me = DEMO_CITIZEN
    other = next(r for r in city.dicts("public_security", "residents") if r["id_card"] != me)
    asked = secured.execute(
        "query ($id: String!) { public_security_residents(where: {id_card: {_eq: $id}}) { name } }",
        {"id": other["id_card"]},
        identity=Identity("citizen", {"id_card": me}),
    ).body
    assert asked == {"data": {"public_security_residents": []}}
    # a visit's resident, a resident's visits, records, insurance and enterprises: only their own
    visits = run(secured, "citizen", "{ health_clinic_visits { id_card resident { id_card name } } }", id_card=me)[
        "health_clinic_visits"
    ]
    assert visits and {(v["id_card"], v["resident"]["id_card"]) for v in visits} == {(me, me)}
    nested = run(
        secured,
        "citizen",
        """{ public_security_residents { id_card clinic_visits { id_card } health_record { id_card }
        social_insurance { id_card } enterprises_represented { legal_rep_id_card } } }""",
        id_card=me,
    )["public_security_residents"]
    assert len(nested) == 1 and nested[0]["health_record"] == {"id_card": me}
    assert {v["id_card"] for v in nested[0]["clinic_visits"]} == {me}
    assert {e["legal_rep_id_card"] for e in nested[0]["enterprises_represented"]} == {me}
    # from published tables everyone reads: an enterprise is reached only if they represent it
    mine = {e["credit_code"] for e in city.dicts("market_regulation", "enterprises") if e["legal_rep_id_card"] == me}
    owners = run(secured, "citizen", "{ transport_vehicles { owner_credit_code owner { credit_code } } }", id_card=me)
    reached = {v["owner"]["credit_code"] for v in owners["transport_vehicles"] if v["owner"] is not None}
    assert reached <= mine and all(
        (v["owner"] is not None) == (v["owner_credit_code"] in mine) for v in owners["transport_vehicles"]
    )
    employer = run(
        secured, "citizen", "{ human_resources_social_insurance { employer { legal_rep_id_card } } }", id_card=me
    )["human_resources_social_insurance"]
    assert employer and all(e["employer"] is None or e["employer"]["legal_rep_id_card"] == me for e in employer)
    # aggregates count their own rows only
    counts = run(
        secured,
        "citizen",
        """{ health_clinic_visits_aggregate { aggregate { count sum { cost } } }
        public_security_residents_group_by(by: [district]) { keys { district } aggregate { count } } }""",
        id_card=me,
    )
    own_visits = [v for v in city.dicts("health", "clinic_visits") if v["id_card"] == me]
    assert counts["health_clinic_visits_aggregate"]["aggregate"]["count"] == len(own_visits)
    assert Decimal(counts["health_clinic_visits_aggregate"]["aggregate"]["sum"]["cost"]) == sum(
        v["cost"] for v in own_visits
    )
    home = next(r["district"] for r in city.dicts("public_security", "residents") if r["id_card"] == me)
    assert counts["public_security_residents_group_by"] == [{"keys": {"district": home}, "aggregate": {"count": 1}}]


def test_every_read_of_a_citizen_is_in_the_audit_trail(services_config: Config, tmp_path: Path, city: City) -> None:
    data_dir = tmp_path / "audit"
    data_dir.mkdir()
    config = shared_secure_demo(services_config.with_engine("embedded"), data_dir)
    gateway = Gateway.start(config, shared_engine(config))
    token = issue_token(data_dir, "citizen", {"id_card": DEMO_CITIZEN}, 60)
    bare = issue_token(data_dir, "citizen", {}, 60)
    with TestClient(create_app(gateway)) as client:
        answers = [
            client.post("/graphql", json={"query": OWN}, headers={"authorization": f"Bearer {t}"}).json()
            for t in (token, bare)
        ]
        refused = client.post(
            "/graphql",
            json={"query": "{ public_security_residents { id_card } }"},
            headers={"authorization": f"Bearer {token}", "x-citygate-role": "police"},
        )
    gateway.close()
    assert answers[0]["data"] == about(city, DEMO_CITIZEN)
    assert "data" not in answers[1] and len(answers[1]["errors"]) == len(TABLES)  # refused, naming the claim
    assert all("the token has no claim id_card" in e["message"] for e in answers[1]["errors"])
    assert refused.status_code == 403
    assert config.audit is not None and config.audit.path is not None
    records = [json.loads(line) for line in config.audit.path.read_text(encoding="utf-8").splitlines()]
    assert [(r["role"], r["outcome"]) for r in records] == [
        ("citizen", "ok"),
        ("citizen", "refused"),  # without the claim: every field refused, nothing read
        ("police", "forbidden"),  # the role it asked for, refused
    ]
    assert records[2]["subject"] == "demo-citizen"
    first, second = records[0], records[1]
    assert first["subject"] == "demo-citizen" and first["claims"] == {"id_card": DEMO_CITIZEN}
    # refused before anything was planned or read: no table accessed, no rows
    assert second["errors"] == ["GRAPHQL_VALIDATION_FAILED"] and second["access"] == []
    assert first["rows"] == {root: len(rows) for root, rows in about(city, DEMO_CITIZEN).items()}
    assert second["rows"] == {}
    read = {(a["department"], a["table"]): a for a in first["access"]}
    assert set(read) == {(d, t) for d, t, _ in TABLES.values()}
    for department, table, key in TABLES.values():
        access = read[(department, table)]
        assert access["row_filter"] == f"{key} = :claims.id_card"
        assert set(access["columns"].values()) == {"raw"}, access


def test_required_claims_are_names_and_not_asked_of_anonymous_requests(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("roles:\n  citizen:\n    requires_claims: [id-card]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"p.yaml: roles.citizen.requires_claims: claim 'id-card' must be a name"):
        load_policies([path])
    path.write_text("roles:\n  anonymous:\n    requires_claims: [id_card]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"p.yaml: roles.anonymous.requires_claims: a request without a token"):
        load_policies([path])
