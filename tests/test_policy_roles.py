"""Each demo role sees exactly what the contract's role table says, on every engine, checked
against the raw data, and follows only the relationships it may."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from datasets.datagen import City
from gateway.config import Config
from gateway.execution.gateway import Gateway
from gateway.execution.views import build_view
from gateway.identity.caller import Identity
from policies.model import load_policies
from tests.conftest import REPO, shared_engine
from tests.policy_support import (
    POLICY_FILES,
    errors,
    fields_of,
    hashed,
    partial,
    run,
    type_fields,
    with_policies,
)


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


def test_anonymous_sees_only_published_columns(secured: Gateway) -> None:
    data = run(secured, "anonymous", "{ public_security_residents_group_by(by: [district]) { keys { district } } }")
    assert len(data["public_security_residents_group_by"]) == 8
    assert errors(secured, "anonymous", "{ public_security_residents { name } }")[0]["extensions"]["code"] == (
        "GRAPHQL_VALIDATION_FAILED"
    )


def relations_of(gateway: Gateway, files: list[Path], role: str, root: str) -> set[str]:
    view = build_view(role, load_policies(files), gateway.catalogue, gateway.catalogue_settings)
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


def test_the_documented_deny_by_default_start_gives_only_what_the_rules_grant(
    sqlite_config: Config, tmp_path: Path
) -> None:
    """docs/policies.md's starting point for a new role, as the doc writes it: with the two
    open classes turned off, transport_planner's schema holds the stations it is granted and
    nothing else; without that line, every table with a published or shared column."""
    section = (REPO / "docs" / "policies.md").read_text(encoding="utf-8").split("## Sharing classes", 1)[1]
    [snippet] = re.findall(r"```yaml\n(.*?)```", section.split("\n## ", 1)[0], re.DOTALL)
    [(role, rules)] = yaml.safe_load(snippet)["roles"].items()
    assert rules["classes"] == {"published": "deny", "shared": "deny"}

    def policies_with(rules: dict[str, Any], name: str) -> list[Path]:
        central = yaml.safe_load(POLICY_FILES[0].read_text(encoding="utf-8"))
        central["roles"][role] = rules
        path = tmp_path / name
        path.write_text(yaml.safe_dump(central, allow_unicode=True), encoding="utf-8")
        return [path, POLICY_FILES[1]]

    config = with_policies(sqlite_config.with_delegate("never"), policies_with(rules, "central.yaml"))
    gateway = Gateway.start(config, shared_engine(config))
    try:
        assert set(gateway.view(Identity(role)).model.tables) == {"transport_stations"}
        assert fields_of(gateway, role, "transport_stations") == {"station_id", "name", "district"}
        stations = run(gateway, role, "{ transport_stations(limit: 2) { station_id name district } }")
        assert len(stations["transport_stations"]) == 2
        for other in ("{ transport_vehicles { plate } }", "{ environment_monitored_sites { district } }"):
            assert errors(gateway, role, other)[0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        # the `classes` line is what closes the rest: without it, every published or shared table
        files = policies_with({k: v for k, v in rules.items() if k != "classes"}, "open.yaml")
        view = build_view(role, load_policies(files), gateway.catalogue, gateway.catalogue_settings)
        assert "transport_stations" in view.model.tables and len(view.model.tables) > 1
    finally:
        gateway.close()
