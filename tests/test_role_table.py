"""The demo policies, column by column, against the contract's role table (shared/demo-city.md).

Written out by hand from the contract, not derived from the code under test: each role's visible
columns per table, with their treatment (`col` raw, `col=mask`); an absent table is omitted.
"""

from __future__ import annotations

import pytest

from datasets.demo_city import TABLES
from policies.decide import decide
from policies.model import load_policies
from tests.conftest import REPO

PUBLISHED_ENTERPRISE = "credit_code name industry established_date district status"
ENV_AND_TRANSPORT = {
    "environment.monitored_sites": "site_id credit_code site_name district",
    "environment.emission_readings": "reading_id site_id pollutant value unit measured_at exceeded",
    "transport.stations": "station_id name level district",
}

EXPECTED: dict[str, dict[str, str]] = {
    "anonymous": {
        "public_security.residents": "district",
        "health.clinic_visits": "hospital",
        "market_regulation.enterprises": PUBLISHED_ENTERPRISE,
        "transport.vehicles": "owner_credit_code vehicle_type seats",
        **ENV_AND_TRANSPORT,
    },
    "health_analyst": {
        "public_security.residents": "id_card=partial(6,4) name=partial(1,0) gender phone=nullify "
        "district registered_at=year",
        "health.clinic_visits": "visit_id id_card=partial(6,4) hospital department_name diagnosis_code diagnosis "
        "visit_date cost",
        "health.health_records": "record_id id_card=partial(6,4) blood_type chronic_conditions updated_at",
        "market_regulation.enterprises": PUBLISHED_ENTERPRISE,
        "transport.vehicles": "plate owner_credit_code vehicle_type seats registered_date",
        **ENV_AND_TRANSPORT,
    },
    "district_officer": {
        "public_security.residents": "id_card=partial(6,4) name gender phone=partial(3,4) district registered_at",
        "health.clinic_visits": "hospital department_name diagnosis_code visit_date cost",
        "health.health_records": "record_id updated_at",
        "market_regulation.enterprises": PUBLISHED_ENTERPRISE + " legal_rep_id_card=partial(6,4) registered_capital",
        "transport.vehicles": "plate owner_credit_code vehicle_type seats registered_date",
        "human_resources.social_insurance": "employer_credit_code last_paid",
        **ENV_AND_TRANSPORT,
    },
    "env_inspector": {
        "health.clinic_visits": "visit_id hospital department_name visit_date",
        "health.health_records": "record_id updated_at",
        "market_regulation.enterprises": PUBLISHED_ENTERPRISE + " legal_rep_id_card=hash registered_capital",
        "transport.vehicles": "plate owner_credit_code vehicle_type seats registered_date",
        "human_resources.social_insurance": "employer_credit_code last_paid",
        **ENV_AND_TRANSPORT,
    },
    "police": {
        "public_security.residents": "id_card name gender birth_date phone address district registered_at",
        "health.clinic_visits": "visit_id id_card hospital department_name visit_date",
        "health.health_records": "record_id updated_at",
        "market_regulation.enterprises": PUBLISHED_ENTERPRISE + " legal_rep_id_card registered_capital",
        "transport.vehicles": "plate owner_credit_code vehicle_type seats registered_date",
        "human_resources.social_insurance": "id_card employer_credit_code monthly_salary=nullify months_paid last_paid",
        **ENV_AND_TRANSPORT,
    },
    "supervisor": {
        "public_security.residents": "id_card=hash name gender birth_date phone=hash address district registered_at",
        # the health floor: diagnosis and chronic_conditions in no form, not even hashed; nor
        # diagnosis_code, which says the diagnosis, outside an aggregate-only grant
        "health.clinic_visits": "visit_id id_card=hash hospital department_name visit_date cost",
        "health.health_records": "record_id id_card=hash blood_type updated_at",
        "market_regulation.enterprises": PUBLISHED_ENTERPRISE + " legal_rep_id_card=hash registered_capital",
        "transport.vehicles": "plate owner_credit_code vehicle_type seats registered_date",
        "human_resources.social_insurance": "id_card=hash employer_credit_code monthly_salary=hash months_paid "
        "last_paid",
        **ENV_AND_TRANSPORT,
    },
    # every column of the rows about the person, raw; elsewhere only what anonymous sees
    "citizen": {
        "public_security.residents": "id_card name gender birth_date phone address district registered_at",
        "health.clinic_visits": "visit_id id_card hospital department_name diagnosis_code diagnosis visit_date cost",
        "health.health_records": "record_id id_card blood_type chronic_conditions updated_at",
        "market_regulation.enterprises": PUBLISHED_ENTERPRISE + " legal_rep_id_card registered_capital",
        "transport.vehicles": "owner_credit_code vehicle_type seats",
        "human_resources.social_insurance": "id_card employer_credit_code monthly_salary months_paid last_paid",
        **ENV_AND_TRANSPORT,
    },
}
AGGREGATE_ONLY = {("district_officer", "health.clinic_visits"): 5}
ROW_FILTERS = {
    ("district_officer", "public_security.residents"),
    ("district_officer", "market_regulation.enterprises"),
    *(
        ("citizen", table)
        for table in (
            "public_security.residents",
            "health.clinic_visits",
            "health.health_records",
            "human_resources.social_insurance",
            "market_regulation.enterprises",
        )
    ),
}


def parse(spec: str) -> dict[str, str]:
    """``"a b=hash"`` -> ``{"a": "raw", "b": "hash"}``."""
    pairs = {}
    for part in spec.split():
        column, _, treatment = part.partition("=")
        pairs[column] = treatment or "raw"
    return pairs


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_every_role_and_table_matches_the_contract(role: str) -> None:
    policies = load_policies(
        [REPO / "policies" / "demo" / "central.yaml", REPO / "policies" / "demo" / "health-floor.yaml"]
    )
    for spec in TABLES:
        name = f"{spec.department}.{spec.name}"
        decision = decide(policies, role, spec.department, spec.name, {c.name: c.sharing for c in spec.columns})
        seen = {c: str(t) for c, t in decision.visible_columns.items()} if decision.visible else {}
        assert seen == parse(EXPECTED[role].get(name, "")), f"{role} on {name}"
        assert (decision.access == "aggregate_only") == ((role, name) in AGGREGATE_ONLY), name
        if (role, name) in AGGREGATE_ONLY:
            assert decision.k == AGGREGATE_ONLY[(role, name)]
        assert (decision.row_filter is not None) == ((role, name) in ROW_FILTERS), name
        assert not decision.floor_conflicts
