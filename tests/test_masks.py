"""Each mask gives the contract's format on every engine; filters, orderings and groups see
the masked value, never the raw one; and no key material a mask uses reaches a log."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections import Counter
from pathlib import Path

import duckdb
import pytest
import sqlglot
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlglot import exp

from catalogue.errors import CitygateError, ConfigError
from catalogue.sql import partial_sql
from catalogue.types import LogicalType
from connectors.base import Engine
from connectors.embedded import partial_concat
from datasets.datagen import City
from gateway.execution.gateway import Gateway
from policies.masks import mask, tie
from policies.model import Treatment, load_policies
from tests.policy_support import (
    KEY,
    hashed,
    partial,
    run,
    write_policy,
)


@pytest.mark.parametrize(
    ("value", "treatment", "expected"),
    [
        ("441900199001011234", Treatment("partial", (6, 4)), "441900********1234"),
        ("13812345678", Treatment("partial", (3, 4)), "138****5678"),
        ("张伟", Treatment("partial", (1, 0)), "张*"),
        ("欧阳娜娜", Treatment("partial", (1, 0)), "欧***"),
        ("441900199001011234", Treatment("hash"), hashed("441900199001011234")),
        ("张伟", Treatment("hash"), hashed("张伟")),
        ("secret", Treatment("redact"), "[REDACTED]"),
        ("abcdef", Treatment("sql", ("UPPER(SUBSTRING(value, 1, 3)) || '…'",)), "ABC…"),
        # The edges of partial, which each engine writes in its own functions.
        ("0123456789", Treatment("partial", (6, 4)), "**********"),
        ("01234567890", Treatment("partial", (6, 4)), "012345*7890"),
        ("abc", Treatment("partial", (6, 4)), "***"),
        ("", Treatment("partial", (3, 4)), ""),
        ("行1\n行2\n行3", Treatment("partial", (2, 2)), "行1****行3"),
        ("abcdef", Treatment("partial", (0, 2)), "****ef"),
        ("abcdef", Treatment("partial", (2, 0)), "ab****"),
        ("ab😀cd", Treatment("partial", (0, 0)), "*****"),
    ],
)
def test_string_masks_have_the_contracts_formats_on_every_engine(
    secured: Gateway, value: str, treatment: Treatment, expected: str
) -> None:
    tree = exp.select(mask(treatment, exp.Literal.string(value), LogicalType("string")))
    assert secured.engine.execute(tree).rows == [(expected,)]


@pytest.mark.parametrize(
    ("literal", "kind", "text"),
    [  # found by a red-team review: Trino wrote 1.42026E2 and 12:29:06.000000, DuckDB 142.026 and 12:29:06
        ("CAST(142.026 AS DOUBLE)", LogicalType("double"), "142.026000000"),
        ("CAST(-0.5 AS DOUBLE)", LogicalType("double"), "-0.500000000"),
        ("CAST('NaN' AS DOUBLE)", LogicalType("double"), None),  # no DECIMAL: NULL, not an error
        ("CAST('Infinity' AS DOUBLE)", LogicalType("double"), None),
        ("CAST(1e30 AS DOUBLE)", LogicalType("double"), None),
        ("CAST('2012-08-01 12:29:06' AS TIMESTAMP)", LogicalType("timestamp"), "2012-08-01 12:29:06.000000"),
        ("CAST('2012-08-01 12:29:06.25' AS TIMESTAMP)", LogicalType("timestamp"), "2012-08-01 12:29:06.250000"),
        ("CAST(12.50 AS DECIMAL(10, 2))", LogicalType("decimal", 10, 2), "12.50"),
        ("CAST('2015-06-30' AS DATE)", LogicalType("date"), "2015-06-30"),
        ("CAST(42 AS INT)", LogicalType("integer"), "42"),
    ],
)
def test_masks_read_numbers_and_times_as_the_same_text_on_every_engine(
    secured: Gateway, literal: str, kind: LogicalType, text: str | None
) -> None:
    value = sqlglot.parse_one(literal)
    tree = exp.select(mask(Treatment("hash"), value, kind), mask(Treatment("partial", (2, 2)), value, kind))
    want = (hashed(text), partial(text, 2, 2)) if text is not None else (None, None)
    assert secured.engine.execute(tree).rows == [want]


@pytest.mark.slow  # 300 generated values on two engines
@settings(max_examples=300)
@given(value=st.text(max_size=24), first=st.integers(0, 8), last=st.integers(0, 8))
def test_both_formulations_of_partial_give_the_contracts_format(value: str, first: int, last: int) -> None:
    """Over any text (line breaks, combining marks, astral characters, NUL), the portable mask
    and the one DuckDB runs both equal the contract's format."""
    masks = [f(exp.column("v"), first, last).sql("duckdb") for f in (partial_sql, partial_concat)]
    row = _duckdb().execute(f"SELECT {', '.join(masks)} FROM (SELECT ?::VARCHAR AS v)", [value]).fetchone()
    assert row == (partial(value, first, last),) * 2


@functools.cache
def _duckdb() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB for the property's 300 examples (a connection each took most of its time)."""
    return duckdb.connect()


def tie_digest(value: str) -> str:
    tie_key = hmac.new(KEY.encode(), b"citygate tie-break", hashlib.sha256).hexdigest()[:32]
    return hashlib.md5((tie_key + value).encode(), usedforsecurity=False).hexdigest()


def test_rows_tied_on_a_masked_key_come_in_its_keyed_digests_order(secured: Gateway, city: City) -> None:
    """With no ordering of its own, a list orders by the table's key; a role that sees the key
    masked gets the rows in the order of a keyed digest of it: the same on every engine, and
    not the raw order, which would tell what the stars hide."""
    for value in ("441900199001011234", "张伟", ""):
        [(digest,)] = secured.engine.execute(exp.select(tie(exp.Literal.string(value), LogicalType("string")))).rows
        # the hex (DuckDB) or the bytes (Trino, which orders VARBINARY byte by byte, as the hex)
        assert (digest.hex() if isinstance(digest, bytes) else digest) == tie_digest(value)
    data = run(secured, "health_analyst", "{ public_security_residents(limit: 30) { id_card name } }")
    residents = city.dicts("public_security", "residents")
    want = sorted(residents, key=lambda r: tie_digest(r["id_card"]))[:30]
    assert data["public_security_residents"] == [
        {"id_card": partial(r["id_card"], 6, 4), "name": partial(r["name"], 1, 0)} for r in want
    ]
    assert want != sorted(residents, key=lambda r: r["id_card"])[:30]


def test_an_aggregate_over_each_parents_page_counts_under_a_masked_key(secured: Gateway, city: City) -> None:
    """The page of visits cut per resident carries its tie-breaks into the aggregate that
    counts it: the last step lets tie-breaks be grouped over (found by the random queries as a
    masked role), and the counts are the oracle's."""
    query = """{ public_security_residents(limit: 5) { id_card
        clinic_visits_aggregate(limit: 2) { aggregate { count } } } }"""
    data = run(secured, "health_analyst", query)
    visits = Counter(v["id_card"] for v in city.dicts("health", "clinic_visits"))
    residents = sorted(city.dicts("public_security", "residents"), key=lambda r: tie_digest(r["id_card"]))[:5]
    counts = [min(2, visits[r["id_card"]]) for r in residents]
    assert data["public_security_residents"] == [
        {"id_card": partial(r["id_card"], 6, 4), "clinic_visits_aggregate": {"aggregate": {"count": n}}}
        for r, n in zip(residents, counts, strict=True)
    ]
    assert any(visits[r["id_card"]] > 2 for r in residents)  # the page cuts some resident's visits


def test_date_and_number_masks(secured: Gateway) -> None:
    engine: Engine = secured.engine
    date = exp.cast(exp.Literal.string("1990-07-15"), exp.DataType.build("DATE"))
    [(year,)] = engine.execute(exp.select(mask(Treatment("year"), date, LogicalType("date")))).rows
    assert str(year) == "1990-01-01"
    for value, width, expected in ((37264, 1000, 37000), (-7, 5, -10)):
        tree = exp.select(mask(Treatment("bucket", (width,)), exp.Literal.number(value), LogicalType("integer")))
        assert engine.execute(tree).rows == [(expected,)]
    nullified = exp.select(mask(Treatment("nullify"), exp.Literal.number(5), LogicalType("integer")))
    assert engine.execute(nullified).rows == [(None,)]


# Found by a red-team review: sqlglot keeps a quoted type name as text and writes it back as it
# is, so a policy or a department's floor ran this as SQL: another table's identity numbers in
# place of a name, on both engines.
SMUGGLED = (
    'CAST(value AS """VARCHAR"") || (SELECT max(id_card) FROM public_security.public.residents) '
    "|| CAST('' AS VARCHAR\")"
)


@pytest.mark.parametrize(
    ("treatment", "message"),
    [
        ({"sql": SMUGGLED}, "which is not a type it may use"),
        ({"sql": "GREATEST(value, NULL)"}, "calls GREATEST, which is not allowed"),
        ({"sql": "'unterminated"}, "is not an SQL expression"),
    ],
)
def test_a_custom_mask_runs_nothing_but_allowed_functions_of_its_value(
    tmp_path: Path, treatment: dict[str, str], message: str
) -> None:
    central = write_policy(
        tmp_path / "c.yaml", {"analyst": {"public_security.residents": {"columns": {"name": treatment}}}}
    )
    with pytest.raises(ConfigError, match=message):
        load_policies([central])
    floor = {"department": "public_security", "columns": {"residents.name": {"otherwise": treatment}}}
    with pytest.raises(ConfigError, match=message):  # a department's floor is held to the same
        load_policies([write_policy(tmp_path / "f.yaml", {}, [floor])])


def test_filters_orderings_and_groups_see_masked_values(secured: Gateway, city: City) -> None:
    probe = run(
        secured,
        "health_analyst",
        '{ public_security_residents_aggregate(where: {id_card: {_like: "4419001990%"}}) { aggregate { count } } }',
    )
    assert probe["public_security_residents_aggregate"]["aggregate"]["count"] == 0
    starred = run(
        secured,
        "health_analyst",
        '{ public_security_residents_aggregate(where: {id_card: {_like: "441900*%"}}) { aggregate { count } } }',
    )
    assert starred["public_security_residents_aggregate"]["aggregate"]["count"] == 10_000
    groups = run(
        secured, "health_analyst", "{ public_security_residents_group_by(by: [id_card]) { keys { id_card } } }"
    )
    assert all("********" in g["keys"]["id_card"] for g in groups["public_security_residents_group_by"])
    assert len(groups["public_security_residents_group_by"]) < 10_000  # grouping merged what the mask hides


def test_ordering_and_counting_on_masked_columns(secured: Gateway, city: City) -> None:
    data = run(
        secured,
        "health_analyst",
        """{ public_security_residents(order_by: [{id_card: desc}, {name: asc}],
        limit: 50) { id_card name } }""",
    )
    rows = data["public_security_residents"]
    assert [(r["id_card"], r["name"]) for r in rows] == sorted(
        ((r["id_card"], r["name"]) for r in rows), key=lambda p: p[0], reverse=True
    )[:50]
    assert all(r["id_card"][6:14] == "********" for r in rows)
    counted = run(
        secured,
        "supervisor",
        """{ health_clinic_visits_aggregate {
        aggregate { people: count(columns: [id_card], distinct: true) } } }""",
    )
    assert counted["health_clinic_visits_aggregate"]["aggregate"]["people"] == len(
        {v["id_card"] for v in city.dicts("health", "clinic_visits")}
    )


def test_no_key_material_an_engine_quotes_reaches_the_log(secured: Gateway) -> None:
    """Found by a code review: Trino's statements hold the hash key as text, which the
    hex-only redaction missed. Each engine redacts what it puts in its statements."""
    engine = secured.engine
    tree = exp.select(
        mask(Treatment("hash"), exp.Literal.string("x"), LogicalType("string")),
        tie(exp.Literal.string("x"), LogicalType("string")),
    )
    statement = engine.sql(tree)
    redacted = engine.redact(f"LINE 1: {statement}")
    assert redacted.count("<key>") >= 2 and KEY not in redacted
    assert not re.search(r"[0-9a-f]{32}", redacted)


def test_redaction_removes_key_material_cut_anywhere_and_keeps_a_callers_long_literal(secured: Gateway) -> None:
    """An engine quoting a statement may cut it inside a key block; a caller's literal of 38
    nines is not a key, and was once logged as ``<key>``."""
    engine = secured.engine
    tree = exp.select(mask(Treatment("hash"), exp.Literal.string("x"), LogicalType("string")))
    blocks = re.findall(r"[0-9a-f]{32,}", engine.sql(tree)) or [KEY]
    for block in blocks:
        cut = block[3:-3]
        redacted = engine.redact(f"LINE 1: ...{cut}') || x")
        assert redacted == "LINE 1: ...<key>') || x", redacted
    literal = "cost > 99999999999999999999999999999999999999 is out of range"
    assert engine.redact(literal) == literal
    assert CitygateError("x", detail=literal).detail == literal
