"""`citygate policy check` measures, through the engine, what rules reveal together (issue 19):
a pseudonym over a handful of values is a code book, and a partial mask whose hidden part holds
another visible column narrows an identifier to a few candidates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sqlglot import exp

from gateway.cli.policy import join_keys
from gateway.execution.gateway import Gateway
from policies.decide import decide
from policies.exposure import probes
from policies.model import load_policies
from policies.review import Finding, review
from tests.conftest import REPO

DEMO = [REPO / "policies" / "demo" / "central.yaml", REPO / "policies" / "demo" / "health-floor.yaml"]


def before_the_mend(tmp_path: Path) -> list[Path]:
    """The demo as it was: the supervisor's `confidential: hash` default over chronic
    conditions (here with a floor that allows the hash, as `otherwise: hash` would), and the
    health analyst's birth year beside `id_card` as `partial(6,4)`."""
    central = yaml.safe_load(DEMO[0].read_text(encoding="utf-8"))
    del central["roles"]["supervisor"]["tables"]
    residents = central["roles"]["health_analyst"]["tables"]["public_security.residents"]["columns"]
    residents["birth_date"] = "year"
    floor = yaml.safe_load(DEMO[1].read_text(encoding="utf-8"))
    floor["floors"][0]["columns"]["health_records.chronic_conditions"]["otherwise"] = "hash"
    paths = [tmp_path / "central.yaml", tmp_path / "floor.yaml"]
    for path, body in zip(paths, (central, floor), strict=True):
        path.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    return paths


def check(gateway: Gateway, files: list[Path]) -> list[Finding]:
    tables = {
        (t.department, t.name): gateway.catalogue_settings.sharing_classes(
            t.department, t.name, [c.name for c in t.columns]
        )
        for t in gateway.catalogue.tables
    }
    types = {(t.department, t.name): {c.name: c.type for c in t.columns} for t in gateway.catalogue.tables}
    primary = {(t.department, t.name): t.primary_key for t in gateway.model.tables.values()}  # config or store
    measure = lambda tree: gateway.engine.execute(tree).rows[0]  # noqa: E731
    joins = join_keys(gateway.catalogue_settings.relationships)
    return review(load_policies(files), tables, types, measure, primary=primary, joins=joins)


@pytest.mark.slow
def test_the_check_finds_the_code_book_and_the_narrowed_identity_number(
    gateway_sqlite: Gateway, tmp_path: Path
) -> None:
    findings = check(gateway_sqlite, before_the_mend(tmp_path))
    codebooks = [f.message for f in findings if f.kind == "codebook"]
    assert codebooks == [
        "roles.supervisor sees health.health_records.chronic_conditions as hash over 6 distinct values, fewer "
        "than 50: a code book (one known count names a pseudonym); deny it or allow it"
    ]
    # The birth year beside the 8 hidden digits that are the birth date: one of 366 days, which
    # the check character prunes to about 33 (policies.disclosure measures it).
    [narrowed] = [f.message for f in findings if f.kind == "identifier"]
    assert narrowed.startswith(
        "roles.health_analyst sees public_security.residents.id_card as partial(6,4), which hides 8 of its 18 "
        "characters, birth_date as year: each shown value stands for about 33 raw values"
    )
    # The demo itself, mended, has no code book, no narrowed identifier, no floor overridden.
    assert not [f for f in check(gateway_sqlite, DEMO) if f.kind in ("codebook", "identifier", "floor")]


@pytest.mark.parametrize("engine", ["gateway_sqlite", "gateway_trino"])
def test_the_measurements_agree_across_engines(request: pytest.FixtureRequest, engine: str, tmp_path: Path) -> None:
    gateway: Gateway = request.getfixturevalue(engine)
    policies = load_policies(before_the_mend(tmp_path))
    keys = [("health", "health_records"), ("public_security", "residents")]
    tables = {t: t for t in gateway.catalogue.tables if (t.department, t.name) in keys}
    decisions = {
        role: {
            key: decide(
                policies, role, *key, gateway.catalogue_settings.sharing_classes(*key, [c.name for c in t.columns])
            )
            for key, t in ((k, next(t for t in tables if (t.department, t.name) == k)) for k in keys)
        }
        for role in ("supervisor", "health_analyst")
    }
    types = {(t.department, t.name): {c.name: c.type for c in t.columns} for t in tables}
    measured = {}
    for probe in probes(decisions, types, 50):
        tree = probe.tree
        if probe.kind == "codebook" and tree.find(exp.Column).name == "chronic_conditions":  # type: ignore[union-attr]
            measured["codebook"] = tuple(gateway.engine.execute(tree).rows[0])
    assert measured["codebook"] == (6,)


def test_the_check_names_a_relationship_grant_that_matches_nothing() -> None:
    from policies.model import Policies, RolePolicy, TableRule

    rule = TableRule(relationships={"legal_representative": "allow", "legal_rep": "allow"})
    policies = Policies({"r": RolePolicy(tables={"market_regulation.enterprises": rule})}, {}, "v")
    tables = {("market_regulation", "enterprises"): {"legal_rep_id_card": None}}
    relations = {("market_regulation", "enterprises"): frozenset({"legal_representative", "vehicles"})}
    assert [f.message for f in review(policies, tables, relations=relations)] == [
        "roles.r.tables.market_regulation.enterprises.relationships.legal_rep: no such relationship"
    ]
