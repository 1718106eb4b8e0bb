"""Masks mean the same on every route, or the gateway does not serve them (issue 28, items 1
and 5): a custom mask is rendered to one meaning or refused at load, and every mask is tried on
every route at start-up and in `citygate policy check` (gateway/execution/proof.py)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from catalogue.errors import ConfigError
from catalogue.sql import Slice
from catalogue.stores import PostgresStore
from datasets.datagen import City
from gateway.cli.policy import _policy_check
from gateway.config import Config
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.execution.prepared import Statement
from gateway.execution.routes import DELEGATED
from gateway.identity.caller import Identity
from policies.model import load_policies
from tests.conftest import shared_engine
from tests.policy_support import ENGINES, POLICY_FILES, engine_config, run, with_policies, write_policy

# What a security officer writes for "the last four digits", and a few more custom masks whose
# functions read differently on some store: LENGTH (bytes on MariaDB), `||` (logical OR on
# MariaDB), `/` (a four-digit DECIMAL on MariaDB, a truncated integer on Trino and PostgreSQL).
CUSTOM = {
    "clerk": {
        "public_security.residents": {"columns": {"id_card": {"sql": "SUBSTRING(value, -4)"}}},
        "market_regulation.enterprises": {
            "columns": {
                "credit_code": "allow",
                "name": {"sql": "LENGTH(value)"},
                "legal_rep_id_card": {"sql": "SUBSTRING(value, 1, 6) || '-****'"},
            }
        },
        "human_resources.social_insurance": {
            "columns": {"employer_credit_code": "allow", "months_paid": {"sql": "value / 12"}}
        },
    },
    # The same masks where the table's key is raw: a list of clerk's breaks ties on a digest of
    # its masked (or denied) key, which no store is given, so it runs on the engine; teller's
    # lists run on the store itself (PostgreSQL, MariaDB, SQLite), its own SQL computing the mask.
    "teller": {
        "public_security.residents": {"columns": {"id_card": "allow", "phone": {"sql": "SUBSTRING(value, -4)"}}},
        "human_resources.social_insurance": {"columns": {"id_card": "allow", "months_paid": {"sql": "value / 12"}}},
    },
    # the built-in partial mask counts characters on MariaDB too (its LENGTH counts bytes)
    "registrar": {"market_regulation.enterprises": {"columns": {"credit_code": "allow", "name": "partial(1,1)"}}},
    # a row filter reads SUBSTRING the same way as a mask: PostgreSQL let no row through here
    "tailed": {
        "public_security.residents": {"row_filter": "SUBSTRING(id_card, -1) = 'X'", "columns": {"district": "allow"}}
    },
}


def gateway_with(
    engine: str, files: list[Path], sqlite_config: Config, services_config: Config, **start: Any
) -> Gateway:
    config = with_policies(engine_config(engine, sqlite_config, services_config), [*POLICY_FILES, *files])
    return Gateway.start(config, shared_engine(config), **start)


@pytest.fixture(scope="module", params=ENGINES)
def clerk(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_config: Config,
    services_config: Config,
) -> Iterator[Gateway]:
    """A gateway on each route whose role ``clerk`` sees :data:`CUSTOM`'s masks."""
    policy = write_policy(tmp_path_factory.mktemp("custom") / "clerk.yaml", CUSTOM)
    gateway = gateway_with(request.param, [policy], sqlite_config, services_config)
    yield gateway
    gateway.close()


STORE_DIALECTS = {"postgresql": "postgres", "mariadb": "mysql", "sqlite": "sqlite"}


def expected_route(gateway: Gateway, department: str, delegable: bool = True) -> str:
    """Where a statement reading ``department`` alone runs, read from the configuration, not
    from the routes: on the department's store in its own SQL (``delegated:postgres``) when the
    gateway delegates and the statement's shape can be (``delegable``), else on the engine."""
    if delegable and gateway.config.engine.delegate == "auto":
        return f"delegated:{STORE_DIALECTS[gateway.config.departments[department].store.kind]}"
    return gateway.config.engine.kind


def answered(gateway: Gateway, role: str, query: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The data of ``query`` as ``role``, and where each root field ran (``delegated:<dialect>``
    for a store's own route, or the engine's name), as the gateway reports it."""
    response = gateway.execute(query, identity=Identity(role, {}))
    assert "errors" not in response.body, response.body
    assert response.plan is not None
    where = {}
    for key, route in response.routes.items():
        statement = response.plan.statements[key]
        dialect = statement.route.engine.dialect if isinstance(statement, Statement) else "?"
        where[key] = f"{route}:{dialect}" if route == DELEGATED else route
    data: dict[str, Any] = response.body["data"]
    return data, where


def test_the_last_four_digits_are_the_last_four_on_every_route_in_lists_filters_orders_and_extremes(
    clerk: Gateway, city: City
) -> None:
    """On each gateway, and on the delegated ones on the store itself (PostgreSQL, where the
    finding was, and SQLite): clerk's aggregates, filters and groups of the masked identity
    number, and teller's list of a phone masked alike. Clerk's list of residents cannot be
    delegated by design (its ties break on a digest of the masked key, :class:`Tie`, which no
    store is given): it runs on the engine, and teller's list, whose key is raw, on the store."""
    residents = list(city.dicts("public_security", "residents"))
    tails = sorted(row["id_card"][-4:] for row in residents)
    listed, where = answered(
        clerk, "clerk", "{ public_security_residents(order_by: [{id_card: asc}], limit: 30) { id_card } }"
    )
    assert [r["id_card"] for r in listed["public_security_residents"]] == tails[:30]
    assert where == {"public_security_residents": expected_route(clerk, "public_security", delegable=False)}
    grouped, where = answered(
        clerk,
        "clerk",
        "{ public_security_residents_group_by(by: [id_card]) { keys { id_card } aggregate { count } } }",
    )
    assert {g["keys"]["id_card"]: g["aggregate"]["count"] for g in grouped["public_security_residents_group_by"]} == {
        tail: tails.count(tail) for tail in set(tails)
    }
    assert where == {"public_security_residents_group_by": expected_route(clerk, "public_security")}
    phones = {row["id_card"]: row["phone"] for row in residents}
    listed, where = answered(
        clerk, "teller", "{ public_security_residents(order_by: [{id_card: asc}], limit: 30) { id_card phone } }"
    )
    assert len(listed["public_security_residents"]) == 30
    assert all(r["phone"] == phones[r["id_card"]][-4:] for r in listed["public_security_residents"])
    assert where == {"public_security_residents": expected_route(clerk, "public_security")}
    common = max(set(tails), key=tails.count)
    counts, where = answered(
        clerk,
        "clerk",
        f"""{{ tail: public_security_residents_aggregate(where: {{id_card: {{_like: "{common}"}}}}) {{
                aggregate {{ count min {{ id_card }} max {{ id_card }} }} }}
              head: public_security_residents_aggregate(where: {{id_card: {{_like: "4419001996%"}}}}) {{
                aggregate {{ count }} }}
              all: public_security_residents_aggregate {{ aggregate {{ min {{ id_card }} max {{ id_card }} }} }} }}""",
    )
    assert counts["tail"]["aggregate"] == {
        "count": tails.count(common),
        "min": {"id_card": common},
        "max": {"id_card": common},
    }
    assert counts["head"]["aggregate"]["count"] == 0  # the birth years are not there to filter on
    assert counts["all"]["aggregate"] == {"min": {"id_card": tails[0]}, "max": {"id_card": tails[-1]}}
    assert where == dict.fromkeys(("tail", "head", "all"), expected_route(clerk, "public_security"))


def test_a_row_filter_lets_the_same_rows_through_on_every_route(clerk: Gateway, city: City) -> None:
    districts = [r["district"] for r in city.dicts("public_security", "residents") if r["id_card"].endswith("X")]
    query = "{ public_security_residents_group_by(by: [district]) { keys { district } aggregate { count } } }"
    found, where = answered(clerk, "tailed", query)
    groups = found["public_security_residents_group_by"]
    assert where == {"public_security_residents_group_by": expected_route(clerk, "public_security")}
    assert {g["keys"]["district"]: g["aggregate"]["count"] for g in groups} == {
        d: districts.count(d) for d in set(districts)
    }


@pytest.mark.parametrize(
    ("row_filter", "reason"),
    [
        ("SUBSTRING(id_card, 0, 6) = '441900'", "SUBSTRING's start must be a whole number other than 0"),
        ("CAST(id_card AS BIGINT) > 0", "may cast only to VARCHAR or TEXT"),
    ],
)
def test_a_row_filter_that_reads_differently_on_some_store_is_refused_at_load(
    tmp_path: Path, row_filter: str, reason: str
) -> None:
    rule = {"row_filter": row_filter, "columns": {"district": "allow"}}
    policy = write_policy(tmp_path / "f.yaml", {"clerk": {"public_security.residents": rule}})
    with pytest.raises(ConfigError, match=reason):
        load_policies([policy])


def test_length_concatenation_and_division_mean_the_same_on_every_route(clerk: Gateway, city: City) -> None:
    """LENGTH and `||` in a list of enterprises, on MariaDB and SQLite themselves on the
    delegated gateways; `/` in clerk's aggregates and groups of months paid and in teller's list
    (whose key is raw), on MariaDB and SQLite themselves too. Clerk's list of social insurance
    cannot be delegated by design (its key is denied to clerk, so its ties break on a digest no
    store is given): it runs on the engine."""
    enterprises = {r["credit_code"]: r for r in city.dicts("market_regulation", "enterprises")}
    shown, where = answered(
        clerk,
        "clerk",
        "{ market_regulation_enterprises(order_by: [{credit_code: asc}], limit: 20) "
        "{ credit_code name legal_rep_id_card } }",
    )
    assert len(shown["market_regulation_enterprises"]) == 20
    for row in shown["market_regulation_enterprises"]:
        raw = enterprises[row["credit_code"]]
        assert int(row["name"]) == len(raw["name"])  # characters, not UTF-8 bytes: 张 is one
        assert row["legal_rep_id_card"] == raw["legal_rep_id_card"][:6] + "-****"
    assert where == {"market_regulation_enterprises": expected_route(clerk, "market_regulation")}
    insured = list(city.dicts("human_resources", "social_insurance"))
    paid: dict[str, set[float]] = {}
    for r in insured:
        paid.setdefault(r["employer_credit_code"], set()).add(r["months_paid"] / 12)
    years, where = answered(
        clerk,
        "clerk",
        "{ human_resources_social_insurance(order_by: [{employer_credit_code: asc}], limit: 20) "
        "{ employer_credit_code months_paid } }",
    )
    for row in years["human_resources_social_insurance"]:
        assert float(row["months_paid"]) in paid[row["employer_credit_code"]]  # the double, not 3.0833
    assert where == {"human_resources_social_insurance": expected_route(clerk, "human_resources", delegable=False)}
    months = [r["months_paid"] for r in insured]
    counted, where = answered(
        clerk,
        "clerk",
        """{ human_resources_social_insurance_group_by(by: [months_paid]) { keys { months_paid } aggregate { count } }
             human_resources_social_insurance_aggregate { aggregate { min { months_paid } max { months_paid } } } }""",
    )
    groups = counted["human_resources_social_insurance_group_by"]
    assert {float(g["keys"]["months_paid"]): g["aggregate"]["count"] for g in groups} == {
        m / 12: months.count(m) for m in set(months)
    }
    extremes = counted["human_resources_social_insurance_aggregate"]["aggregate"]
    assert (float(extremes["min"]["months_paid"]), float(extremes["max"]["months_paid"])) == (
        min(months) / 12,
        max(months) / 12,
    )
    assert set(where.values()) == {expected_route(clerk, "human_resources")}
    by_card = {r["id_card"]: r["months_paid"] for r in insured}
    listed, where = answered(
        clerk,
        "teller",
        "{ human_resources_social_insurance(order_by: [{id_card: asc}], limit: 20) { id_card months_paid } }",
    )
    assert len(listed["human_resources_social_insurance"]) == 20
    for row in listed["human_resources_social_insurance"]:
        assert float(row["months_paid"]) == by_card[row["id_card"]] / 12
    assert where == {"human_resources_social_insurance": expected_route(clerk, "human_resources")}


def test_the_partial_mask_of_a_chinese_name_is_the_same_on_every_route(clerk: Gateway, city: City) -> None:
    """On MariaDB itself on the delegated gateway; SQLite has no RPAD, so on the SQLite gateway
    that delegates, a statement with a partial mask runs on the engine by design."""
    names = {r["credit_code"]: r["name"] for r in city.dicts("market_regulation", "enterprises")}
    found, where = answered(
        clerk,
        "registrar",
        "{ market_regulation_enterprises(order_by: [{credit_code: asc}], limit: 20) { credit_code name } }",
    )
    shown = found["market_regulation_enterprises"]
    sqlite = clerk.config.departments["market_regulation"].store.kind == "sqlite"
    assert where == {"market_regulation_enterprises": expected_route(clerk, "market_regulation", not sqlite)}
    assert len(shown) == 20
    for row in shown:
        name = names[row["credit_code"]]
        assert row["name"] == name[0] + "*" * (len(name) - 2) + name[-1]


@pytest.mark.parametrize(
    ("mask", "reason"),
    [
        ("SUBSTRING(value, 0, 2)", "SUBSTRING's start must be a whole number other than 0"),
        ("SUBSTRING(value, LENGTH(value) - 3)", "SUBSTRING's start must be a whole number other than 0"),
        ("SUBSTRING(value, 2, -1)", "SUBSTRING's length must be a whole number of 0 or more"),
        ("ROUND(value)", "PostgreSQL rounds a double's halves to even"),
        ("value % 7", "SQLite drops a fraction of its operands"),
        ("value / 0", "must divide by a number other than 0"),
        ("CAST(value AS INTEGER)", "may cast only to VARCHAR or TEXT"),
        ("REPLACE(value, '', '*')", "REPLACE must look for a text that is not empty"),
        ("LPAD(value, 3)", "take a fill text that is not empty"),
    ],
)
def test_a_custom_mask_that_reads_differently_on_some_store_is_refused_at_load_with_the_reason(
    tmp_path: Path, mask: str, reason: str
) -> None:
    policy = write_policy(
        tmp_path / "c.yaml", {"clerk": {"public_security.residents": {"columns": {"name": {"sql": mask}}}}}
    )
    with pytest.raises(ConfigError, match=reason):
        load_policies([policy])


# One mask that calls each function a custom mask may call: a function added to the list needs
# one here, and a line in docs/policies.md's table.
EACH_FUNCTION = {
    "UPPER": "UPPER(value)",
    "LOWER": "LOWER(value)",
    "SUBSTRING": "SUBSTRING(value, 1, 2)",
    "LENGTH": "LENGTH(value)",
    "CONCAT": "CONCAT(SUBSTRING(value, 1, 2), '-')",
    "COALESCE": "COALESCE(SUBSTRING(value, 1, 2), '-')",
    "FLOOR": "FLOOR(LENGTH(value) / 2)",
    "CEIL": "CEIL(LENGTH(value) / 2)",
    "ABS": "ABS(LENGTH(value) - 20)",
    "LPAD": "LPAD(SUBSTRING(value, -2), 4, '*')",
    "RPAD": "RPAD(SUBSTRING(value, 1, 2), 4, '*')",
    "TRIM": "TRIM(SUBSTRING(value, 1, 2))",
    "REPLACE": "REPLACE(SUBSTRING(value, 1, 4), '1', '*')",
    "NULLIF": "NULLIF(SUBSTRING(value, 1, 2), '')",
}


def test_the_functions_a_custom_mask_may_call_are_those_it_is_allowed_and_those_the_docs_list() -> None:
    from policies.masks import ALLOWED_FUNCTIONS, parse_custom
    from tests.conftest import REPO

    assert set(EACH_FUNCTION) == set(ALLOWED_FUNCTIONS)
    for name, text in EACH_FUNCTION.items():
        parse_custom(text)  # accepted: no ValueError
        assert name in function_names(parse_custom(text)), name
    docs = (REPO / "docs" / "policies.md").read_text(encoding="utf-8")
    section = docs.split("### Custom masks", 1)[1].split("\n### ", 1)[0]
    table, refused = section.split("These are refused", 1)
    firsts = [re.split(r"(?<!\\)\|", line)[1] for line in table.splitlines() if line.startswith("| `")]
    for name in ALLOWED_FUNCTIONS:  # `NAME` or `NAME(...)` in the first column of a row
        assert any(re.search(rf"`{name}[`(]", cell) for cell in firsts), f"{name} is not in the docs' table"
    # every function the docs say is refused is refused when the policy loads, with its reason
    for name in ("ROUND", "MOD", "GREATEST", "LEAST"):
        assert f"`{name}`" in refused and name not in ALLOWED_FUNCTIONS
        with pytest.raises(ValueError, match=rf"may not use {name}|calls {name}|`%` and MOD"):
            parse_custom(f"{name}(value, 1)" if name != "ROUND" else "ROUND(value)")


def function_names(tree: Any) -> set[str]:
    from sqlglot import exp

    from policies.masks import function_name

    return {function_name(node) for node in tree.walk() if isinstance(node, exp.Func)} | {
        "SUBSTRING" for _ in tree.find_all(Slice)
    }


# UPPER folds only ASCII on SQLite and under PostgreSQL's C collation (the delegated route's);
# the two others show the raw value whole.
UNPROVEN = {
    "clerk": {
        "public_security.residents": {
            "columns": {
                "name": {"sql": "UPPER(value)"},
                "phone": {"sql": "SUBSTRING(value, 1, 100)"},
                "address": {"sql": "CONCAT(value, '')"},
            }
        }
    }
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.slow
def test_policy_check_reports_masks_it_cannot_prove_equal_and_masks_that_show_the_raw_value(
    engine: str,
    tmp_path: Path,
    sqlite_config: Config,
    services_config: Config,
    city: City,
    capsys: pytest.CaptureFixture[str],
) -> None:
    policy = write_policy(tmp_path / "unproven.yaml", UNPROVEN)
    gateway = gateway_with(engine, [policy], sqlite_config, services_config, prove=False)
    try:
        assert gateway.config.policies is not None
        assert _policy_check(gateway, gateway.config.policies) == 1
    finally:
        gateway.close()
    found = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("mask:")]
    key = "roles.clerk.tables.public_security.residents.columns"
    shows_raw = [line for line in found if "shows the raw value" in line]
    differs = [line for line in found if "gives different values" in line]
    if engine in ("delegated", "sqlite_delegated"):  # two routes for one statement on residents
        [line] = differs
        assert f"{key}.name" in line and "delegated:" in line and "'Zoë Ünïcødé'" in line
    else:  # one route: nothing to differ from, but UPPER shows a text of digits as it is
        assert differs == []
        assert any(f"{key}.name" in line and "'441900199604273847'" in line for line in shows_raw)
    expected = ["address", "phone"] if differs else ["address", "name", "phone"]
    assert sorted(line.split(key + ".")[1].split(":")[0] for line in shows_raw) == expected
    assert len(found) == len(shows_raw) + len(differs)
    residents = list(city.dicts("public_security", "residents"))
    values = {r[c] for r in residents for c in ("name", "phone", "address")}
    assert not [v for v in values if any(v in line for line in found)]  # shapes, never the values

    with pytest.raises(ConfigError) as refused:  # the same policies do not serve
        gateway_with(engine, [policy], sqlite_config, services_config)
    assert str(policy) in str(refused.value) and f"{key}.phone" in str(refused.value)


def test_a_reload_with_a_mask_that_shows_the_raw_value_keeps_the_policies_in_force(
    tmp_path: Path, sqlite_config: Config, services_config: Config
) -> None:
    policy = write_policy(tmp_path / "clerk.yaml", CUSTOM)
    gateway = gateway_with("sqlite_delegated", [policy], sqlite_config, services_config)
    try:
        version = gateway.policy_version
        write_policy(policy, UNPROVEN)
        with pytest.raises(ConfigError, match=r"columns\.phone: .* shows the raw value"):
            gateway.reload_policies()
        assert gateway.policy_version == version
        masked = run(gateway, "clerk", "{ public_security_residents(limit: 3) { id_card } }")
        assert all(len(r["id_card"]) == 4 for r in masked["public_security_residents"])
    finally:
        gateway.close()


def test_with_trino_down_the_masks_are_tried_on_the_fallback_and_the_stores(
    tmp_path: Path, services_config: Config
) -> None:
    from tests.conftest import free_port
    from tests.test_routes import trino_at

    policy = write_policy(tmp_path / "unproven.yaml", UNPROVEN)
    config = with_policies(trino_at(services_config, free_port(), fallback="embedded"), [*POLICY_FILES, policy])
    with pytest.raises(ConfigError) as refused:
        Gateway.start(config, create_engine(config))
    message = str(refused.value)
    assert "residents.phone as sql(SUBSTRING(value, 1, 100)) shows the raw value on embedded (fallback)" in message
    assert "columns.name:" in message and "embedded (fallback) and delegated:postgresql://" in message


def clerk_asks(gateway: Gateway, query: str) -> tuple[Any, str]:
    """``query``'s one root field as clerk: its value, or its error when it failed, and the
    route the gateway sent it to."""
    response = gateway.execute(query, identity=Identity("clerk", {}))
    [(key, route)] = response.routes.items()
    if "errors" in response.body:
        [error] = response.body["errors"]
        return error, route
    return response.body["data"][key], route


def until_proven(gateway: Gateway) -> None:
    """Wait for the proof of the routes left unproven (seconds on a busy machine)."""
    deadline = time.monotonic() + 120
    while gateway.routes.unproven and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not gateway.routes.unproven


@pytest.mark.parametrize("fallback", ["embedded", None])
def test_a_route_down_while_the_masks_are_tried_takes_no_statement_until_they_are_proven_there(
    fallback: str | None, tmp_path: Path, services_config: Config, city: City
) -> None:
    """Trino down at start (nothing listens on its port): the masks are tried on the stores
    (and the fallback), and Trino is left unproven. Clerk's list, which no store can run, takes
    the fallback or fails with ENGINE_UNAVAILABLE, still once Trino answers again, until the
    masks are proven on it: its next use asks for that proof, and then the list runs on Trino."""
    from tests.conftest import free_port
    from tests.test_routes import Relay, trino_at

    port = free_port()
    policy = write_policy(tmp_path / "clerk.yaml", CUSTOM)
    config = with_policies(trino_at(services_config, port, fallback=fallback), [*POLICY_FILES, policy])
    query = "{ public_security_residents(order_by: [{id_card: asc}], limit: 30) { id_card } }"
    tails = sorted(row["id_card"][-4:] for row in city.dicts("public_security", "residents"))[:30]
    gateway = Gateway.start(config, create_engine(config))
    relay = None

    def ask() -> tuple[Any, str]:
        value, route = clerk_asks(gateway, query)
        return ([r["id_card"] for r in value] if isinstance(value, list) else value), route

    try:
        assert set(gateway.routes.unproven) == {"trino"}
        down, route = ask()
        if fallback:
            assert (down, route) == (tails, "embedded")
        else:
            assert down["extensions"]["code"] == "ENGINE_UNAVAILABLE"
        relay = Relay(port, (services_config.engine.trino.host, services_config.engine.trino.port))
        unproven, route = ask()  # Trino answers, and is not proven
        if fallback:
            assert (unproven, route) == (tails, "embedded")
        else:
            assert unproven["extensions"]["code"] == "ENGINE_UNAVAILABLE", unproven
            assert "masks are being checked" in unproven["message"] and route == "trino"
        until_proven(gateway)
        assert ask() == (tails, "trino")
    finally:
        if relay is not None:
            relay.close()
        gateway.close()


def test_a_probe_shows_a_route_the_masks_are_not_proven_on_as_not_ok_until_they_are(
    tmp_path: Path, services_config: Config
) -> None:
    """Trino down at start, then answering but not proven, takes no statement: `/readyz` names
    it not ok and why, the instance degraded (the stores' own routes serve), and its
    `citygate_route_up` is 0 the whole time; it read `ok` and 1 as soon as Trino answered. Once
    the masks are proven there: ok, 1, ready."""
    from starlette.testclient import TestClient

    from gateway.http.app import create_app
    from tests.conftest import ADMIN, free_port, with_admin
    from tests.test_routes import Relay, trino_at

    port = free_port()
    policy = write_policy(tmp_path / "clerk.yaml", CUSTOM)
    config = with_admin(with_policies(trino_at(services_config, port), [*POLICY_FILES, policy]))
    gateway = Gateway.start(config, create_engine(config))
    relay = None

    def probe(client: TestClient) -> tuple[int, dict[str, Any], float]:
        ready = client.get("/readyz")
        found = re.search(r'^citygate_route_up\{route="trino"\} (\S+)$', client.get("/metrics").text, re.MULTILINE)
        assert found is not None
        return ready.status_code, ready.json(), float(found.group(1))

    def until(wanted: Callable[[dict[str, Any]], bool], client: TestClient) -> tuple[int, dict[str, Any], float]:
        deadline = time.monotonic() + 120  # a health check stands 2 s; a proof on Trino takes seconds
        while not wanted((seen := probe(client))[1]) and time.monotonic() < deadline:
            time.sleep(0.2)
        return seen

    try:
        assert set(gateway.routes.unproven) == {"trino"} and not gateway.unavailable
        with TestClient(create_app(gateway), headers=ADMIN) as client:
            status, body, up = probe(client)
            assert (status, body["status"], up) == (200, "degraded", 0.0)
            assert body["routes"]["trino"] == "the engine does not answer; masks not proven yet"
            assert all(state == "ok" for key, state in body["routes"].items() if key.startswith(DELEGATED))
            # the proof runs under the reload lock: held here, Trino answers and stays unproven
            with gateway._reloading:
                relay = Relay(port, (services_config.engine.trino.host, services_config.engine.trino.port))
                status, body, up = until(lambda body: body["routes"]["trino"].startswith("masks"), client)
                assert body["routes"]["trino"].startswith("masks not proven yet: "), body
                assert len(body["routes"]["trino"]) > len("masks not proven yet: ")  # and why
                assert (status, body["status"], up) == (200, "degraded", 0.0)
            status, body, up = until(lambda body: body["status"] == "ready", client)
            assert not gateway.routes.unproven
            assert (status, body["status"], body["routes"]["trino"], up) == (200, "ready", "ok", 1.0)
    finally:
        if relay is not None:
            relay.close()
        gateway.close()


def test_policy_check_reports_a_route_the_masks_could_not_be_tried_on(
    tmp_path: Path, services_config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import free_port
    from tests.test_routes import trino_at

    policy = write_policy(tmp_path / "clerk.yaml", CUSTOM)
    config = with_policies(trino_at(services_config, free_port(), fallback="embedded"), [*POLICY_FILES, policy])
    gateway = Gateway.start(config, create_engine(config), prove=False, recording=False)
    try:
        assert config.policies is not None
        assert _policy_check(gateway, config.policies) == 1
    finally:
        gateway.close()
    found = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("mask:")]
    [line] = found  # the masks themselves are proven on the fallback and the stores
    assert line.startswith(
        "mask: masks not tried on trino, which did not answer; a serving gateway sends it no statement until "
        "they are proven there: Trino at "
    )


def test_a_store_down_while_the_masks_are_tried_takes_no_delegated_statement_until_they_are_proven_there(
    tmp_path: Path, services_config: Config, city: City
) -> None:
    """PostgreSQL's own route down at start (nothing listens where the gateway reaches it;
    Trino reaches it by its own catalog): clerk's groups of the masked identity number, which
    are delegated, fail with DEPARTMENT_UNAVAILABLE, still once the store answers again, until
    the masks are proven on it; then they run on it. They are not tried on the engine instead."""
    from tests.conftest import free_port, with_store
    from tests.test_routes import Relay

    port = free_port()
    policy = write_policy(tmp_path / "clerk.yaml", CUSTOM)
    config = with_policies(with_store(services_config, "public_security", port=port), [*POLICY_FILES, policy])
    query = "{ public_security_residents_group_by(by: [id_card]) { keys { id_card } aggregate { count } } }"
    tails = [row["id_card"][-4:] for row in city.dicts("public_security", "residents")]
    gateway = Gateway.start(config, create_engine(config))
    store = f"delegated:postgresql://127.0.0.1:{port}/public_security"
    relay = None

    def ask() -> tuple[Any, str]:
        value, route = clerk_asks(gateway, query)
        return (
            {g["keys"]["id_card"]: g["aggregate"]["count"] for g in value} if isinstance(value, list) else value
        ), route

    try:
        assert set(gateway.routes.unproven) == {store}
        postgres = services_config.departments["public_security"].store
        assert isinstance(postgres, PostgresStore)
        relay = Relay(port, (postgres.host, postgres.port))
        unproven, route = ask()  # the store answers, and is not proven
        assert route == DELEGATED and unproven["extensions"]["code"] == "DEPARTMENT_UNAVAILABLE", unproven
        assert "the masks are tried on its store again once it answers" in unproven["message"]
        until_proven(gateway)
        assert ask() == ({tail: tails.count(tail) for tail in set(tails)}, DELEGATED)
    finally:
        if relay is not None:
            relay.close()
        gateway.close()
