"""`citygate policy check` measures what each role's view discloses on the data (issue 29):
identifiers narrowed by their masks and the dates beside them, custom masks by evaluating them,
codes that determine what a floor protects, linkage keys across roles, and rows unique on what
a role sees. Each policy here is a file of its own, so the demo's may change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from catalogue.errors import ConfigError
from gateway.cli.main import main
from gateway.execution.gateway import Gateway
from policies.model import load_policies
from policies.review import Finding
from tests.conftest import REPO
from tests.test_exposure import check

FLOOR = {
    "floors": [
        {
            "department": "health",
            "columns": {"clinic_visits.diagnosis": {"unmasked_for": ["analyst"], "otherwise": "deny"}},
        }
    ]
}


def policy(tmp_path: Path, roles: dict[str, Any], **extra: Any) -> list[Path]:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"roles": roles, **FLOOR, **extra}, allow_unicode=True), encoding="utf-8")
    return [path]


def residents(**columns: Any) -> dict[str, Any]:
    """A role that reads residents' listed columns only."""
    return {"tables": {"public_security.residents": {"only_listed": True, "columns": columns}}}


def found(gateway: Gateway, files: list[Path], kind: str) -> list[str]:
    return [f.message for f in check(gateway, files) if f.kind == kind and not f.accepted]


def test_the_last_four_digits_beside_the_birth_date_rebuild_the_whole_id(
    gateway_sqlite: Gateway, tmp_path: Path
) -> None:
    # The hidden 441900 is the same on every row; the next eight digits are the birth date.
    files = policy(tmp_path, {"r": residents(id_card="partial(0,4)", birth_date="allow")})
    assert found(gateway_sqlite, files, "identifier") == [
        "roles.r sees public_security.residents.id_card as partial(0,4), which hides 14 of its 18 characters, "
        "birth_date as raw: each shown value stands for about 1 raw values, fewer than 1,000 (hidden characters "
        "that are the same on every row, or part of a date it is shown, add none); mask more, or show less of the date"
    ]


def test_the_birth_year_in_the_shown_part_leaves_about_33_candidates(gateway_sqlite: Gateway, tmp_path: Path) -> None:
    # partial(10,4) shows 441900 and the birth year; the month and day are one of 366, and the
    # shown check character keeps one in eleven of those.
    files = policy(tmp_path, {"r": residents(id_card="partial(10,4)", gender="allow")})
    [message] = found(gateway_sqlite, files, "identifier")
    assert "which hides 4 of its 18 characters, birth_date as deny: each shown value stands for about 33 raw" in message


@pytest.mark.parametrize(
    ("mask", "where"),
    [("partial(14,0)", "characters 7 to 14"), ({"sql": "SUBSTRING(value, 7, 8)"}, "characters 7 to 14")],
)
def test_a_mask_that_shows_the_birth_date_whole_is_found(
    gateway_sqlite: Gateway, tmp_path: Path, mask: Any, where: str
) -> None:
    # The custom mask is evaluated, not read: the characters it hides are those whose change
    # leaves what it shows as it is.
    files = policy(tmp_path, {"r": residents(id_card=mask, birth_date="year")})
    messages = found(gateway_sqlite, files, "identifier")
    shown = "partial(14,0)" if isinstance(mask, str) else "sql(SUBSTRING(value, 7, 8))"
    assert messages == [
        f"roles.r sees public_security.residents.id_card as {shown}, which shows birth_date whole ({where}), "
        "while it sees birth_date as year: mask those characters too"
    ]


def test_an_identifier_that_repeats_is_analysed_too(gateway_sqlite: Gateway, tmp_path: Path) -> None:
    """A visit's id_card repeats (about a third of its values are distinct) and is a person's ID
    all the same: a relationship joins on it, and residents' id_card is an identifier. The
    table holds no birth date; the eight characters that read as a date on every row are one."""

    def visits(mask: Any) -> dict[str, Any]:
        columns = {"id_card": mask, "hospital": "allow"}
        return {"tables": {"health.clinic_visits": {"only_listed": True, "columns": columns}}}

    files = policy(tmp_path, {"r": visits({"sql": "SUBSTRING(value, 7, 8)"})})
    assert found(gateway_sqlite, files, "identifier") == [
        "roles.r sees health.clinic_visits.id_card as sql(SUBSTRING(value, 7, 8)), which shows the date in "
        "characters 7 to 14 whole (a birth date, in an identity number), which no column of the table it sees "
        "shows: mask those characters too"
    ]
    # the last four digits alone: about 70 years of 366 days, over 11, as on residents
    assert found(gateway_sqlite, policy(tmp_path, {"r": visits("partial(6,4)")}), "identifier") == []
    [message] = found(gateway_sqlite, policy(tmp_path, {"r": visits("partial(10,4)")}), "identifier")
    assert "which hides 4 of its 18 characters: each shown value stands for about 33 raw values" in message


def test_a_mask_that_hides_enough_is_not_found(gateway_sqlite: Gateway, tmp_path: Path) -> None:
    # partial(6,4) without the birth date: about 70 years of 366 days, over 11
    files = policy(tmp_path, {"r": residents(id_card="partial(6,4)", gender="allow")})
    assert found(gateway_sqlite, files, "identifier") == []


def test_a_code_that_determines_a_label_the_floor_denies_is_found(gateway_sqlite: Gateway, tmp_path: Path) -> None:
    visits = {
        "health.clinic_visits": {"only_listed": True, "columns": {"hospital": "allow", "diagnosis_code": "allow"}}
    }
    files = policy(tmp_path, {"analyst": {}, "auditor": {"tables": visits}})
    assert found(gateway_sqlite, files, "dependency") == [
        "roles.auditor sees health.clinic_visits.diagnosis_code, whose value determines diagnosis on 30,000 of "
        "30,000 rows (12 values shared by two rows or more); health's floor keeps diagnosis from auditor, so "
        "diagnosis_code says what it hides: put diagnosis_code under the floor too, or deny it"
    ]
    # once the floor names the code too, the department has decided: nothing to measure
    rule = {"unmasked_for": ["analyst"], "otherwise": "deny"}
    covered = {"clinic_visits.diagnosis": rule, "clinic_visits.diagnosis_code": rule}
    path = tmp_path / "floor.yaml"
    path.write_text(yaml.safe_dump({"floors": [{"department": "health", "columns": covered}]}), encoding="utf-8")
    body = {"roles": {"analyst": {}, "auditor": {"tables": visits}}}
    (tmp_path / "roles.yaml").write_text(yaml.safe_dump(body), encoding="utf-8")
    assert found(gateway_sqlite, [tmp_path / "roles.yaml", path], "dependency") == []


def test_a_registration_time_two_roles_see_raw_joins_their_views(gateway_sqlite: Gateway, tmp_path: Path) -> None:
    roles = {
        "officer": residents(name="allow", registered_at="allow"),
        "analyst": residents(name="partial(1,0)", registered_at="allow", gender="allow"),
    }
    assert found(gateway_sqlite, policy(tmp_path, roles), "linkage") == [
        "roles.analyst and roles.officer both see public_security.residents.registered_at as raw, with 10,000 of "
        "10,000 values distinct: anyone holding both tokens joins the two views on it; show it to one of them coarser"
    ]
    # its year, which the officer can compute from the raw time, joins nothing
    roles["analyst"] = residents(name="partial(1,0)", registered_at="year", gender="allow")
    assert found(gateway_sqlite, policy(tmp_path, roles), "linkage") == []


def test_a_column_anyone_sees_without_a_token_is_no_linkage_key(gateway_sqlite: Gateway, tmp_path: Path) -> None:
    """What anonymous requests see, anyone joins on without a token (at seed scale, the published
    credit code of a vehicle's owner was reported between every pair of roles)."""
    roles = {
        "officer": residents(name="allow", registered_at="allow"),
        "analyst": residents(name="partial(1,0)", registered_at="allow", gender="allow"),
        "anonymous": residents(registered_at="allow"),
    }
    assert found(gateway_sqlite, policy(tmp_path, roles), "linkage") == []
    roles["anonymous"] = residents(registered_at="year")  # public only as a year: the raw time still joins
    [message] = found(gateway_sqlite, policy(tmp_path, roles), "linkage")
    assert message.startswith("roles.analyst and roles.officer both see public_security.residents.registered_at as raw")


def test_columns_two_roles_see_together_join_their_views_though_none_is_a_key(
    gateway_sqlite: Gateway, tmp_path: Path
) -> None:
    """The issue's finding 4: what the health analyst sees of a resident is unique for nearly
    every one, and a district officer computes each of those columns from the raw values it
    sees: no column alone is a key, together they join the views (and the analyst's row leads
    to the patient's diagnoses)."""
    visits = {
        "health.clinic_visits": {"only_listed": True, "columns": {"id_card": "partial(6,4)", "diagnosis": "allow"}}
    }
    analyst = residents(
        id_card="partial(6,4)", name="partial(1,0)", gender="allow", district="allow", registered_at="year"
    )
    analyst["tables"].update(visits)

    def officer(**changed: str) -> dict[str, Any]:
        columns = {"id_card": "partial(6,4)", "name": "allow", "gender": "allow", "district": "allow"}
        made = residents(**{**columns, "phone": "partial(3,4)", "registered_at": "year", **changed})
        made["tables"]["public_security.residents"]["row_filter"] = "district = :claims.district"
        return made

    seen = "district, gender, id_card as partial(6,4), name as partial(1,0), registered_at as year"
    assert found(gateway_sqlite, policy(tmp_path, {"analyst": analyst, "officer": officer()}), "linkage") == [
        f"roles.analyst and roles.officer both see, or can compute, public_security.residents as {seen}: 9,998 of "
        "10,000 rows are unique on these columns together, so anyone holding both tokens joins the two views row "
        "by row on them; show one of the roles a column of them coarser, or not at all"
    ]
    # one column less is not enough: the last four digits, sex, district and year still join
    [message] = found(
        gateway_sqlite, policy(tmp_path, {"analyst": analyst, "officer": officer(name="deny")}), "linkage"
    )
    assert (
        "public_security.residents as district, gender, id_card as partial(6,4), registered_at as year: 9,920 "
        in message
    )
    # the officer shown the identity number without its last digits: nothing left to join on
    coarser = {"analyst": analyst, "officer": officer(id_card="partial(6,0)")}
    assert found(gateway_sqlite, policy(tmp_path, coarser), "linkage") == []


def test_the_demo_accepts_the_analysts_and_the_officers_joined_views_by_name(gateway_sqlite: Gateway) -> None:
    demo = REPO / "policies" / "demo"
    findings = check(gateway_sqlite, [demo / "central.yaml", demo / "health-floor.yaml"])
    [joined] = [
        f
        for f in findings
        if f.kind == "linkage" and f.roles == ("district_officer", "health_analyst") and f.table.endswith("residents")
    ]
    assert "9,998 of 10,000 rows are unique on these columns together" in joined.message
    assert joined.accepted.startswith("the contract fixes both views")
    assert [f.message for f in findings if not f.accepted] == []


def test_rows_unique_on_what_the_role_sees(gateway_sqlite: Gateway, tmp_path: Path) -> None:
    # what the health analyst saw of a resident: last four ID digits, surname, name
    # length, gender, district
    roles = {"r": residents(id_card="partial(6,4)", name="partial(1,0)", gender="allow", district="allow")}
    [message] = found(gateway_sqlite, policy(tmp_path, roles), "uniqueness")
    assert message.startswith(
        "roles.r sees public_security.residents as id_card as partial(6,4), name as partial(1,0), gender, district: "
        "9,968 of 10,000 rows are unique on it and 9,968 of 10,000 in classes of fewer than 2"
    )
    # a district officer's view is split by the district its row filter reads: one token's rows
    roles = {"r": residents(gender="allow", district="allow", name="partial(1,0)")}
    roles["r"]["tables"]["public_security.residents"]["row_filter"] = "district = :claims.district"
    assert found(gateway_sqlite, policy(tmp_path, roles), "uniqueness") == []


def test_an_accepted_finding_is_reported_with_its_reason_and_a_stale_one_is_found(
    gateway_sqlite: Gateway, tmp_path: Path
) -> None:
    checks = {
        "accept": [
            {
                "finding": "identifier",
                "roles": ["r"],
                "table": "public_security.residents",
                "column": "id_card",
                "because": "the registry's own clerks",
            },
            {"finding": "linkage", "roles": ["r", "s"], "because": "no longer true"},
        ]
    }
    files = policy(tmp_path, {"r": residents(id_card="partial(0,4)", birth_date="allow")}, checks=checks)
    findings = check(gateway_sqlite, files)
    assert [f.accepted for f in findings if f.kind == "identifier"] == ["the registry's own clerks"]
    assert (
        Finding(
            "unmatched",
            "checks.accept[1] (linkage of r, s): the check finds no such finding; remove the entry",
        )
        in findings
    )


def test_the_thresholds_are_the_policy_files_and_errors_name_file_and_key(
    gateway_sqlite: Gateway, tmp_path: Path
) -> None:
    roles = {"r": residents(id_card="partial(10,4)", gender="allow")}
    assert found(gateway_sqlite, policy(tmp_path, roles, checks={"min_candidates": 20}), "identifier") == []
    files = policy(tmp_path, roles, checks={"max_small_share": 2})
    with pytest.raises(ConfigError, match=r"policy.yaml: checks.max_small_share: Input should be less than or equal"):
        load_policies(files)
    files = policy(tmp_path, roles, checks={"accept": [{"finding": "uniqueness", "roles": ["r"]}]})
    with pytest.raises(ConfigError, match=r"policy.yaml: checks.accept.0.because: Field required"):
        load_policies(files)
    twice = tmp_path / "second.yaml"
    twice.write_text(yaml.safe_dump({"checks": {"k": 3}}), encoding="utf-8")
    files = policy(tmp_path, roles, checks={"k": 5})
    with pytest.raises(ConfigError, match=r"second.yaml: checks.k: set in two policy files"):
        load_policies([*files, twice])


def test_the_command_fails_on_a_finding_and_passes_once_it_is_accepted(
    gateway_sqlite: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = gateway_sqlite.config.departments["public_security"].store
    monkeypatch.setenv("CITYGATE_DATA_DIR", str(Path(store.path).parent))  # type: ignore[union-attr]
    roles = {"analyst": residents(id_card="partial(0,4)", birth_date="allow")}
    config = tmp_path / "city.yaml"
    config.write_text(
        f"include: {REPO / 'configs' / 'embedded.yaml'}\n"
        f"policies: {{files: [{tmp_path / 'policy.yaml'}], hash_key: 0123456789abcdef0123}}\n"
    )
    policy(tmp_path, roles)
    assert main(["policy", "check", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "  identifier: roles.analyst sees public_security.residents.id_card as partial(0,4)" in out
    assert "  uniqueness: roles.analyst sees public_security.residents as id_card as partial(0,4)" in out
    because = "the household registry's clerks look residents up by birth date and the last digits"
    accept = [
        {"finding": kind, "roles": ["analyst"], "table": "public_security.residents", "because": because}
        for kind in ("identifier", "uniqueness")
    ]
    policy(tmp_path, roles, checks={"accept": accept})
    assert main(["policy", "check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "accepted (checks.accept):\n" in out and "  identifier: roles.analyst sees" in out
    assert f"    because: {because}" in out
    assert "no findings, 2 accepted; measured in " in out


def test_the_findings_are_the_same_on_trino(gateway_sqlite: Gateway, gateway_trino: Gateway, tmp_path: Path) -> None:
    # Trino groups by no output's name and reports no primary key (the configuration's stands)
    visits = {"health.clinic_visits": {"only_listed": True, "columns": {"diagnosis_code": "allow"}}}
    roles = {
        "analyst": residents(id_card="partial(10,4)", name="partial(1,0)", registered_at="allow", gender="allow"),
        "officer": {"tables": {**residents(name="allow", registered_at="allow")["tables"], **visits}},
        "clerk": residents(id_card={"sql": "SUBSTRING(value, 7, 8)"}, district="allow"),
        # a repeating identifier, with a date no column of its table holds
        "nurse": {"tables": {"health.clinic_visits": {"only_listed": True, "columns": {"id_card": "partial(10,4)"}}}},
    }
    files = policy(tmp_path, roles)
    kinds = ("identifier", "uniqueness", "dependency", "linkage")
    on = {
        name: sorted((f.kind, f.message) for f in check(g, files) if f.kind in kinds)
        for name, g in (("embedded", gateway_sqlite), ("trino", gateway_trino))
    }
    assert on["embedded"] == on["trino"]
    assert any(kind == "identifier" and "health.clinic_visits.id_card" in m for kind, m in on["trino"])
    assert {kind for kind, _ in on["trino"]} == set(kinds)


def test_a_measurement_the_engine_cannot_make_fails_the_check_by_name(gateway_sqlite: Gateway) -> None:
    # a table the catalogue lists but the engine cannot read (a store gone since start-up)
    from catalogue.model import SharingClass
    from catalogue.types import LogicalType
    from gateway.execution.measure import run_all
    from policies.decide import decide
    from policies.disclosure import measure_views
    from policies.model import Checks, Policies, RolePolicy

    policies = Policies({"r": RolePolicy(tables={"health.ghost": {"columns": {"id_card": "partial(6,4)"}}})}, {}, "v")
    ghost = ("health", "ghost")
    decisions = {"r": {ghost: decide(policies, "r", *ghost, {"id_card": SharingClass.SHARED})}}
    types = {ghost: {"id_card": LogicalType("string")}}
    found = measure_views(decisions, types, {}, {}, Checks(), lambda trees: run_all(gateway_sqlite.engine, trees))
    assert [(f.kind, f.message.split(":")[0]) for f in found] == [("unmeasured", "profile of health.ghost")]
