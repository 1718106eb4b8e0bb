"""A department's floor wins over the central policy, in every form of a value but the one it
names, and the checker reports each conflict."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from catalogue.errors import ConfigError
from catalogue.model import SharingClass
from datasets.datagen import City
from gateway.execution.gateway import Gateway
from gateway.identity.caller import Identity
from policies.decide import decide
from policies.model import load_policies
from tests.policy_support import (
    POLICY_FILES,
    errors,
    run,
    write_policy,
)


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
    from gateway.execution.views import build_view
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
    settings = gateway_sqlite.catalogue_settings
    view = build_view("supervisor", policies, gateway_sqlite.catalogue, settings)
    assert "diagnosis_code" not in view.model.tables["health_clinic_visits"].columns
    tables = {
        (t.department, t.name): settings.sharing_classes(t.department, t.name, [c.name for c in t.columns])
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


def test_the_checker_names_a_floor_for_a_department_that_does_not_exist(tmp_path: Path) -> None:
    from policies.review import review as check

    floor = {"department": "nope", "columns": {"x.y": {"otherwise": "deny"}}}
    policies = load_policies([write_policy(tmp_path / "f.yaml", {}, [floor])])
    findings = check(policies, {("health", "clinic_visits"): {"diagnosis": None}})
    assert [f.message for f in findings] == ["floors.nope: no such department"]


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
