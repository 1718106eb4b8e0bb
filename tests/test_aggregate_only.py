"""An aggregate-only table answers aggregates of groups of k or more and singles out no row:
no path into it, no filter by a measure, no page, no aggregate per person."""

from __future__ import annotations

from collections import Counter
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from datasets.datagen import City
from gateway.config import Config
from gateway.execution.gateway import Gateway
from gateway.identity.caller import Identity
from tests.conftest import shared_engine
from tests.policy_support import (
    errors,
    run,
    with_policies,
    write_policy,
)


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
    gateway = Gateway.start(config, shared_engine(config))
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
