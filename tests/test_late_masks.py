"""Masks computed where a column is projected: a masked column the query only projects is
masked after the filters, the joins and the page, and answers as the generator's rows masked
in Python."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlglot import exp

from datasets.datagen import City
from gateway.execution.gateway import Gateway
from gateway.identity.caller import Identity
from policies.model import Treatment
from tests.policy_support import (
    LATE_QUERIES,
    hashed,
    partial,
    raw_of,
    rewritten,
    run,
)


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
