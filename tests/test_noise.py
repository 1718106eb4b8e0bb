"""Noisy aggregates (policies/noise.py and its path through the gateway): counts and sums carry
Laplace noise of the scale the policy's epsilon and bounds give, sums read clamped values, each
noisy answer spends the role's budget, and the cache repeats a draw rather than drawing again.

The statistical tests compare means and spreads of many draws with the noise's own scale, at
about six standard errors: a wrong scale (twice or half) fails them, chance alone almost never."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import statistics
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from catalogue.errors import ConfigError, NoiseRequiredError
from datasets.datagen import City
from datasets.demo import issue_token
from gateway.config import CacheConfig, Config
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.execution.prepared import Statement
from gateway.execution.privacy import PrivacyBudgets
from gateway.http.app import create_app
from gateway.identity.caller import Identity
from gateway.state import State
from policies.model import PrivacyBudget
from policies.noise import Release, draw, privacy_loss
from policies.rewrite import Context, NoiseRequired, PolicyViolation, enforce, spends
from tests.conftest import free_port, shared_engine, shared_secure_demo, with_store
from tests.policy_support import ENGINES, engine_config, engines_slow_on, errors, run, type_fields, with_policies
from tests.test_routes import Relay, trino_at

DIMS = ["hospital", "department_name", "diagnosis_code", "visit_date"]
RULE: dict[str, Any] = {
    "access": "aggregate_only",
    "k": 5,
    "only_listed": True,
    "group_by": DIMS,
    "columns": dict.fromkeys([*DIMS, "cost"], "allow"),
}
EPSILON = 0.5
BOUND = 20000


def policy_file(path: Path, epsilon: float = EPSILON, bound: float = BOUND, budget: float = 1e6) -> Path:
    """``exact``: aggregate-only with k = 5; ``noisy``: the same with noise and a budget."""
    noisy = {**RULE, "noise": {"epsilon": epsilon, "bounds": {"cost": [0, bound]}}}
    body = {
        "roles": {
            "exact": {"tables": {"health.clinic_visits": RULE}},
            "noisy": {
                "privacy_budget": {"epsilon": budget, "period": "1d"},
                "tables": {"health.clinic_visits": noisy},
            },
        }
    }
    path.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    return path


def stored(data_dir: Path) -> State:
    """The shared state a gateway with ``data_dir`` keeps (as another process would open it)."""
    return State.open(f"sqlite:///{data_dir / 'state.db'}")


def start(config: Config, files: list[Path], tmp_path: Path, cache: bool = False) -> Gateway:
    config = with_policies(config, files).model_copy(update={"data_dir": tmp_path, "cache": CacheConfig(enabled=cache)})
    return Gateway.start(config, shared_engine(config))


@pytest.fixture(scope="module")
def uncached(sqlite_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Noisy and exact roles on SQLite with the result cache off: each request draws afresh."""
    tmp = tmp_path_factory.mktemp("noise")
    gateway = start(sqlite_config, [policy_file(tmp / "noise.yaml")], tmp)
    yield gateway
    gateway.close()


TOTAL = "{ health_clinic_visits_aggregate { aggregate { count sum { cost } } } }"


def total(gateway: Gateway, role: str, query: str = TOTAL) -> tuple[int, float]:
    aggregate = run(gateway, role, query)["health_clinic_visits_aggregate"]["aggregate"]
    return aggregate["count"], float(aggregate["sum"]["cost"])


def check_draws(draws: list[float], truth: float, scale: float) -> None:
    """The mean within six standard errors of the truth (a Laplace of scale b has variance
    2 b^2), and the mean absolute error within six of b (its absolute value is exponential,
    with mean b and standard deviation b): noise of twice or half the scale fails."""
    n = len(draws)
    assert abs(statistics.fmean(draws) - truth) < 6 * math.sqrt(2 * scale**2 / n), (statistics.fmean(draws), truth)
    spread = statistics.fmean(abs(d - truth) for d in draws) / scale
    assert abs(spread - 1) < 6 / math.sqrt(n), spread


@pytest.mark.slow
def test_noisy_counts_and_sums_center_on_the_truth_with_the_policys_spread(uncached: Gateway, city: City) -> None:
    visits = list(city.dicts("health", "clinic_visits"))
    true_count, true_sum = len(visits), float(sum(min(max(v["cost"], 0), BOUND) for v in visits))
    count, exact_sum = total(uncached, "exact", TOTAL)
    assert count == true_count
    assert exact_sum == pytest.approx(true_sum)
    draws = [total(uncached, "noisy") for _ in range(300)]
    counts, sums = [c for c, _ in draws], [s for _, s in draws]
    assert sum(c != true_count for c in counts) > 150  # a draw of 0 has probability tanh(1/4), 0.24
    assert all(isinstance(c, int) for c in counts)
    check_draws([float(c) for c in counts], true_count, 1 / EPSILON)
    check_draws(sums, true_sum, BOUND / EPSILON)


def test_each_group_gets_its_own_noise(uncached: Gateway, city: City) -> None:
    query = "{ health_clinic_visits_group_by(by: [hospital]) { keys { hospital } aggregate { count } } }"
    truth = Counter(v["hospital"] for v in city.dicts("health", "clinic_visits"))
    errors_by_group: list[float] = []
    for _ in range(50):
        groups = run(uncached, "noisy", query)["health_clinic_visits_group_by"]
        assert {g["keys"]["hospital"] for g in groups} == set(truth)
        errors_by_group += [g["aggregate"]["count"] - truth[g["keys"]["hospital"]] for g in groups]
    check_draws(errors_by_group, 0.0, 1 / EPSILON)


# Where a noisy statement runs on each engine: health.clinic_visits is one PostgreSQL database,
# so delegated on the services; SQLite cannot hold its decimal cost exactly, so never on SQLite.
ROUTE = {
    "embedded_sqlite": "embedded",
    "embedded_services": "embedded",
    "trino": "trino",
    "delegated": "delegated",
    "sqlite_delegated": "embedded",
}
KEYS_ROUTE = {**ROUTE, "sqlite_delegated": "delegated"}  # counts and text keys alone: SQLite runs them too


@pytest.mark.parametrize("engine", ENGINES)
def test_a_noisy_sum_reads_values_clamped_to_the_bounds(
    engine: str, sqlite_config: Config, services_config: Config, city: City, tmp_path: Path
) -> None:
    """Bounds [0, 1000] and epsilon 100: noise of scale 10, while clamping moves the sum by
    hundreds of millions. Checked on every engine and route, since the clamp is SQL each one
    runs (on the delegated route, PostgreSQL's own)."""
    files = [policy_file(tmp_path / "clamp.yaml", epsilon=100, bound=1000)]
    gateway = start(engine_config(engine, sqlite_config, services_config), files, tmp_path)
    try:
        visits = list(city.dicts("health", "clinic_visits"))
        clamped = float(sum(min(max(v["cost"], 0), 1000) for v in visits))
        raw = float(sum(v["cost"] for v in visits))
        assert raw - clamped > 1e8
        response = gateway.execute(TOTAL, identity=Identity("noisy"))
        assert response.routes == {"health_clinic_visits_aggregate": ROUTE[engine]}
        assert response.epsilon == {"health_clinic_visits_aggregate": 200.0}
        noisy = float(response.body["data"]["health_clinic_visits_aggregate"]["aggregate"]["sum"]["cost"])
        assert abs(noisy - clamped) < 6 * math.sqrt(2) * 10
        [statement] = gateway.prepared(TOTAL, identity=Identity("noisy"))
        assert isinstance(statement, Statement) and "CASE WHEN" in statement.text
    finally:
        gateway.close()


SALARIES = """{ human_resources_social_insurance_aggregate {
  aggregate { count sum { monthly_salary months_paid } } } }"""


@pytest.mark.parametrize("engine", ["embedded_services", "trino", "delegated"])
def test_a_noisy_sum_on_mariadb_reads_values_clamped_to_the_bounds(
    engine: str, sqlite_config: Config, services_config: Config, city: City, tmp_path: Path
) -> None:
    """The same on a MariaDB table, a decimal and a whole-number column: on the delegated route
    the clamp is MariaDB's own SQL, and MariaDB sums whole numbers as decimals."""
    rule = {
        "access": "aggregate_only",
        "k": 5,
        "only_listed": True,
        "group_by": ["last_paid"],
        "columns": {"last_paid": "allow", "monthly_salary": "allow", "months_paid": "allow"},
        "noise": {"epsilon": 100, "bounds": {"monthly_salary": [0, 10000], "months_paid": [0, 100]}},
    }
    body = {
        "roles": {"noisy": {"privacy_budget": {"epsilon": 1e6}, "tables": {"human_resources.social_insurance": rule}}}
    }
    path = tmp_path / "salaries.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    gateway = start(engine_config(engine, sqlite_config, services_config), [path], tmp_path)
    try:
        people = list(city.dicts("human_resources", "social_insurance"))
        salaries = float(sum(min(p["monthly_salary"], 10000) for p in people))
        months = sum(min(p["months_paid"], 100) for p in people)
        assert float(sum(p["monthly_salary"] for p in people)) - salaries > 1e7
        assert sum(p["months_paid"] for p in people) - months > 1e5
        response = gateway.execute(SALARIES, identity=Identity("noisy"))
        assert response.routes == {"human_resources_social_insurance_aggregate": ROUTE[engine]}
        aggregate = response.body["data"]["human_resources_social_insurance_aggregate"]["aggregate"]
        assert aggregate["count"] == len(people)  # noise of scale 0.01: exact but once in e^100
        assert abs(float(aggregate["sum"]["monthly_salary"]) - salaries) < 6 * math.sqrt(2) * 100
        noisy_months = aggregate["sum"]["months_paid"]  # a BigInt: a string of a whole number
        assert str(int(noisy_months)) == str(noisy_months)  # discrete noise, never a fraction
        assert abs(int(noisy_months) - months) < 6 * math.sqrt(2) * 1
        [statement] = gateway.prepared(SALARIES, identity=Identity("noisy"))
        assert isinstance(statement, Statement) and "CASE WHEN" in statement.text
    finally:
        gateway.close()


# -- on every route: delegated to the store, the engine, the engine's fallback ------------------


def test_a_noisy_aggregate_answered_on_the_delegated_route_is_noised_and_spends_the_budget(
    services_config: Config, city: City, tmp_path: Path
) -> None:
    """Through HTTP as a token's role, with the audit trail on: each record says the statement
    ran on PostgreSQL itself and what it spent; the draws have the policy's spread there too."""
    config = shared_secure_demo(services_config.with_delegate("auto"), tmp_path)
    assert config.policies is not None
    policies = config.policies.model_copy(update={"files": [policy_file(tmp_path / "noise.yaml")]})
    config = config.model_copy(update={"policies": policies, "data_dir": tmp_path, "cache": CacheConfig(enabled=False)})
    token = {"authorization": "Bearer " + issue_token(tmp_path, "noisy", {}, 600)}
    visits = list(city.dicts("health", "clinic_visits"))
    true_count, true_sum = len(visits), float(sum(min(max(v["cost"], 0), BOUND) for v in visits))
    gateway = Gateway.start(config, shared_engine(config))
    try:
        with TestClient(create_app(gateway)) as client:
            answers = [client.post("/graphql", json={"query": TOTAL}, headers=token).json() for _ in range(60)]
    finally:
        gateway.close()
    assert config.audit is not None and config.audit.path is not None
    records = [json.loads(line) for line in config.audit.path.read_text(encoding="utf-8").splitlines()]
    key = "health_clinic_visits_aggregate"
    assert [(r["role"], r["routes"], r["epsilon"]) for r in records] == [("noisy", {key: "delegated"}, {key: 1.0})] * 60
    # spent once per answer, and kept where a restart reads it
    left = PrivacyBudgets(stored(tmp_path)).left("noisy", PrivacyBudget(epsilon=1e6))
    assert left == pytest.approx(1e6 - 60)
    counts = [a["data"][key]["aggregate"]["count"] for a in answers]
    sums = [float(a["data"][key]["aggregate"]["sum"]["cost"]) for a in answers]
    assert true_sum not in sums
    check_draws([float(c) for c in counts], true_count, 1 / EPSILON)
    check_draws(sums, true_sum, BOUND / EPSILON)


def test_a_noisy_statement_that_fails_on_its_store_gives_its_spending_back(
    services_config: Config, tmp_path: Path
) -> None:
    """The health database reached through a relay, which stops once the statement's route is
    chosen: the second run fails on the store itself and spends nothing."""
    pg = services_config.departments["health"].store
    relay = Relay(free_port(), (pg.host, pg.port))  # type: ignore[union-attr]
    config = with_store(services_config.with_delegate("auto"), "health", port=relay.port)
    gateway = start(config, [policy_file(tmp_path / "p.yaml", budget=2.0)], tmp_path)
    budget = PrivacyBudget(epsilon=2.0)
    try:
        assert gateway.execute(TOTAL, identity=Identity("noisy")).routes == {
            "health_clinic_visits_aggregate": "delegated"
        }
        assert gateway.privacy.left("noisy", budget) == pytest.approx(1.0)
        relay.close()
        response = gateway.execute(TOTAL, identity=Identity("noisy"))
        assert response.routes == {"health_clinic_visits_aggregate": "delegated"}, response.body
        [error] = response.body["errors"]
        assert error["extensions"]["code"] == "DEPARTMENT_UNAVAILABLE", error
        assert response.epsilon == {}
        assert gateway.privacy.left("noisy", budget) == pytest.approx(1.0)
        assert PrivacyBudgets(stored(tmp_path)).left("noisy", budget) == pytest.approx(1.0)
    finally:
        relay.close()
        gateway.close()


def test_a_noisy_statement_the_engine_cannot_run_spends_once_on_its_fallback(
    services_config: Config, city: City, tmp_path: Path
) -> None:
    """Not delegated (health says ``delegate: false``), with Trino unreachable: the engine's
    failed run gives back what it spent, the embedded fallback spends it again and adds noise."""
    departments = dict(services_config.departments)
    departments["health"] = departments["health"].model_copy(update={"delegate": False})
    config = services_config.with_delegate("auto").model_copy(update={"departments": departments})
    gateway = start(config, [policy_file(tmp_path / "p.yaml", budget=10.0)], tmp_path)
    dead = trino_at(gateway.config, free_port(), fallback="embedded")
    down = dataclasses.replace(gateway, config=dead, engine=create_engine(dead), native=None)
    visits = list(city.dicts("health", "clinic_visits"))
    true_sum = float(sum(min(max(v["cost"], 0), BOUND) for v in visits))
    try:
        response = down.execute(TOTAL, identity=Identity("noisy"))
        assert "errors" not in response.body, response.body
        assert response.routes == {"health_clinic_visits_aggregate": "embedded"}
        assert response.epsilon == {"health_clinic_visits_aggregate": 1.0}
        assert down.privacy.left("noisy", PrivacyBudget(epsilon=10.0)) == pytest.approx(9.0)
        aggregate = response.body["data"]["health_clinic_visits_aggregate"]["aggregate"]
        assert float(aggregate["sum"]["cost"]) != true_sum
    finally:
        down.routes.close()
        down.engine.close()
        gateway.close()


def test_a_noisy_group_by_past_max_rows_spends_its_epsilon(sqlite_config: Config, tmp_path: Path) -> None:
    """Whether more groups than ``max_rows`` passed the noisy selection is what the rows say:
    given back on RESULT_TOO_LARGE, the spending made that answer an exact signal for free."""
    limits = sqlite_config.limits.model_copy(update={"max_rows": 3})  # the demo has 6 hospitals
    config = sqlite_config.model_copy(update={"limits": limits})
    gateway = start(config, [policy_file(tmp_path / "p.yaml", budget=2.0)], tmp_path)
    budget = PrivacyBudget(epsilon=2.0)
    try:
        response = gateway.execute(BY_HOSPITAL, identity=Identity("noisy"))
        [error] = response.body["errors"]
        assert error["extensions"]["code"] == "RESULT_TOO_LARGE", error
        assert response.epsilon == {"health_clinic_visits_group_by": EPSILON}  # as the audit record says
        assert gateway.privacy.left("noisy", budget) == pytest.approx(2.0 - EPSILON)
        assert PrivacyBudgets(stored(tmp_path)).left("noisy", budget) == pytest.approx(2.0 - EPSILON)
    finally:
        gateway.close()


def day_with_one_visit(city: City) -> tuple[str, Any, Decimal]:
    """A hospital and a day with exactly one visit, and that visit's cost."""
    visits = list(city.dicts("health", "clinic_visits"))
    days = Counter((v["hospital"], v["visit_date"]) for v in visits)
    hospital, day = sorted(k for k, n in days.items() if n == 1)[0]
    [cost] = [v["cost"] for v in visits if (v["hospital"], v["visit_date"]) == (hospital, day)]
    return hospital, day, cost


@pytest.mark.slow  # 80 noisy answers
def test_differencing_two_large_sums_yields_one_visit_exactly_without_noise_and_not_with_it(
    uncached: Gateway, city: City
) -> None:
    """Visits at a hospital up to a day, minus those before it: each sum covers thousands of
    visits, far above k, and their difference is the one visit of that day."""
    hospital, day, cost = day_with_one_visit(city)
    query = (
        '{ health_clinic_visits_aggregate(where: {hospital: {_eq: "%s"}, visit_date: {%s: "%s"}}) '
        "{ aggregate { sum { cost } } } }"
    )

    def difference(role: str) -> Decimal:
        up_to = run(uncached, role, query % (hospital, "_lte", day))["health_clinic_visits_aggregate"]["aggregate"]
        before = run(uncached, role, query % (hospital, "_lt", day))["health_clinic_visits_aggregate"]["aggregate"]
        return Decimal(up_to["sum"]["cost"]) - Decimal(before["sum"]["cost"])

    assert difference("exact") == cost  # the attack works on a grant without noise
    guesses = [difference("noisy") for _ in range(40)]
    assert cost not in guesses
    # Each guess is the cost plus the difference of two draws of scale b = 40,000: off by 1.5 b
    # on average, with a standard error of 0.21 b over 40 guesses. A quarter of b is six below.
    assert statistics.fmean(float(abs(g - cost)) for g in guesses) > 0.25 * BOUND / EPSILON


@pytest.mark.parametrize("engine", ["embedded_sqlite", "delegated"])
def test_a_cached_noisy_answer_is_the_same_draw_and_spends_nothing(
    engine: str, sqlite_config: Config, services_config: Config, tmp_path: Path
) -> None:
    config = engine_config(engine, sqlite_config, services_config)
    gateway = start(config, [policy_file(tmp_path / "p.yaml", budget=1.0)], tmp_path, cache=True)
    try:
        budget = PrivacyBudget(epsilon=1.0)
        fresh = gateway.execute(TOTAL, identity=Identity("noisy"))
        assert fresh.routes == {"health_clinic_visits_aggregate": ROUTE[engine]}
        assert fresh.cache == {"health_clinic_visits_aggregate": "miss"}
        first = total(gateway, "noisy")
        assert gateway.privacy.left("noisy", budget) == pytest.approx(0.0)  # a count and a sum: 2 x 0.5
        for _ in range(5):  # asked again, the cache answers: the same draw, no new spending
            assert total(gateway, "noisy") == first
        again = gateway.execute(TOTAL, identity=Identity("noisy"))
        assert again.cache == {"health_clinic_visits_aggregate": "hit"} and again.epsilon == {}  # the audit's account
        assert gateway.privacy.left("noisy", budget) == pytest.approx(0.0)
        # another question needs a fresh draw, which the budget no longer has
        [error] = errors(gateway, "noisy", "{ health_clinic_visits_aggregate { aggregate { count } } }")
        assert error["extensions"]["code"] == "PRIVACY_BUDGET_EXHAUSTED"
        assert total(gateway, "noisy") == first  # what was answered still is
    finally:
        gateway.close()


COUNT = "{ health_clinic_visits_aggregate { aggregate { count } } }"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_noisy_role_and_an_exact_one_never_share_a_cached_answer(
    engine: str, sqlite_config: Config, services_config: Config, city: City, tmp_path: Path
) -> None:
    """The two roles' statements for a count are the same text (the noise is drawn after the
    statement runs), so a cache keyed by the text alone served the exact role a noisy draw and
    the noisy role the exact count, spending nothing. Each is its own release now: asked in
    either order, the exact role gets the truth, the noisy role a fresh draw that spends."""
    config = engine_config(engine, sqlite_config, services_config)
    true_count = len(list(city.dicts("health", "clinic_visits")))
    budget = PrivacyBudget(epsilon=100.0)
    for first, second in (("exact", "noisy"), ("noisy", "exact")):
        (tmp_path / first).mkdir()
        gateway = start(config, [policy_file(tmp_path / f"{first}.yaml", budget=100.0)], tmp_path / first, cache=True)
        try:
            answers = {}
            for role in (first, second):
                response = gateway.execute(COUNT, identity=Identity(role))
                assert response.cache == {"health_clinic_visits_aggregate": "miss"}, (role, response.cache)
                answers[role] = response.body["data"]["health_clinic_visits_aggregate"]["aggregate"]["count"]
            [exact] = gateway.prepared(COUNT, identity=Identity("exact"))
            [noisy] = gateway.prepared(COUNT, identity=Identity("noisy"))
            assert isinstance(exact, Statement) and isinstance(noisy, Statement)
            assert noisy.text == exact.text  # the same statement: only the release tells them apart
            assert noisy.release != exact.release
            assert answers["exact"] == true_count
            assert gateway.privacy.left("noisy", budget) == pytest.approx(100.0 - EPSILON)
            # each role's own entry answers it again: the exact count, and the noisy role's own draw
            assert run(gateway, "exact", COUNT)["health_clinic_visits_aggregate"]["aggregate"]["count"] == true_count
            again = run(gateway, "noisy", COUNT)["health_clinic_visits_aggregate"]["aggregate"]["count"]
            assert again == answers["noisy"]
            assert gateway.privacy.left("noisy", budget) == pytest.approx(100.0 - EPSILON)
        finally:
            gateway.close()


def test_the_budget_refuses_past_its_limit_and_renews_after_the_period(sqlite_config: Config, tmp_path: Path) -> None:
    gateway = start(sqlite_config, [policy_file(tmp_path / "p.yaml", budget=2.0)], tmp_path)
    now = [1_800_000_000.0]  # 2027-01-15T08:00:00Z
    gateway.privacy = gateway.runner.privacy = PrivacyBudgets(gateway.state, clock=lambda: now[0])
    try:
        assert gateway.execute(TOTAL, identity=Identity("noisy")).epsilon == {"health_clinic_visits_aggregate": 1.0}
        total(gateway, "noisy")  # 2.0: the whole budget, exactly
        [error] = errors(gateway, "noisy", TOTAL)
        assert error["extensions"] == {"code": "PRIVACY_BUDGET_EXHAUSTED", "renews": "2027-01-16T00:00:00Z"}
        assert "noisy has spent its privacy budget (epsilon 2 per 1d)" in error["message"]
        assert total(gateway, "exact")  # another role's budget is its own (this one has none)
        # a restart reads what was spent: it renews no budget
        again = PrivacyBudgets(stored(tmp_path), clock=lambda: now[0])
        assert again.left("noisy", PrivacyBudget(epsilon=2.0)) == pytest.approx(0.0)
        now[0] += 16 * 3600  # the next day, 00:00 UTC
        total(gateway, "noisy")
    finally:
        gateway.close()


def test_a_noisy_table_offers_counts_and_bounded_sums_only(uncached: Gateway) -> None:
    assert type_fields(uncached, "exact", "health_clinic_visits_aggregate_fields") == {
        "count",
        "sum",
        "avg",
        "min",
        "max",
    }
    assert type_fields(uncached, "noisy", "health_clinic_visits_aggregate_fields") == {"count", "sum"}
    assert type_fields(uncached, "noisy", "health_clinic_visits_sum_fields") == {"cost"}
    order = uncached.view(Identity("noisy")).model.schema.get_type("health_clinic_visits_group_by_order_by")
    assert set(order.fields) == set(DIMS)  # type: ignore[union-attr]  # by keys, never by an exact aggregate
    [error] = errors(uncached, "noisy", "{ health_clinic_visits_aggregate { aggregate { max { cost } } } }")
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


@pytest.mark.parametrize(
    "query",
    [
        "{ health_clinic_visits_aggregate { aggregate { max { cost } } } }",
        "{ health_clinic_visits_aggregate { aggregate { min { cost } } } }",
        "{ health_clinic_visits_aggregate { aggregate { avg { cost } } } }",
        "{ health_clinic_visits_group_by(by: [hospital], order_by: [{aggregate: {count: desc}}])"
        " { keys { hospital } } }",
    ],
)
def test_the_last_step_refuses_what_a_noisy_table_does_not_release(uncached: Gateway, query: str) -> None:
    """Compiled for the exact role, whose schema offers them, and rewritten under the noisy one:
    refused as unspent (no count selects its groups), and by the last step itself too."""
    from policies.rewrite import RULES, verify

    [compiled] = uncached.compile(query, identity=Identity("exact"))
    view = uncached.view(Identity("noisy"))
    assert view.decisions is not None
    ctx = Context(view.decisions, view.types, {}, view.keys)
    with pytest.raises(NoiseRequired):
        enforce(compiled.tree, ctx)
    tree = compiled.tree.copy()
    for rule in RULES[: RULES.index(spends)]:
        tree = rule(tree, ctx)
    with pytest.raises(PolicyViolation, match="has noise"):
        verify(tree, ctx)


def test_the_last_step_refuses_a_noisy_sum_of_unclamped_values(uncached: Gateway) -> None:
    from sqlglot import exp

    from policies.noise import CLAMPED
    from policies.rewrite import verify

    view = uncached.view(Identity("noisy"))
    assert view.decisions is not None
    ctx = Context(view.decisions, view.types, {}, view.keys)
    [compiled] = uncached.compile(TOTAL, identity=Identity("noisy"))
    tree = enforce(compiled.tree, ctx)
    [clamp] = [n for n in tree.find_all(exp.Case) if n.meta.get(CLAMPED)]
    clamp.replace(clamp.args["default"].copy())  # the raw cost, unbounded
    with pytest.raises(PolicyViolation, match=r'has noise, which SUM\("cost"\) is not released with'):
        verify(tree, ctx)


def test_opendp_s_privacy_map_agrees_with_the_policys_epsilon() -> None:
    for release in (Release("count", 0.5, 1, True), Release("sum", 0.5, 20000, False), Release("sum", 0.1, 7, True)):
        assert privacy_loss(release) == pytest.approx(release.epsilon)
    assert draw(None, Release("count", 0.5, 1, True)) is None
    assert isinstance(draw(Decimal("10.00"), Release("sum", 0.5, 100, False)), Decimal)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda rule, role: rule.update(access="allow"), "noise is for aggregate_only tables"),
        (lambda rule, role: role.pop("privacy_budget"), "needs a privacy_budget"),
        (lambda rule, role: rule["noise"]["bounds"].update(hospital=[0, 1]), "hospital is in group_by"),
        (lambda rule, role: rule["noise"]["bounds"].update(cost=[5, 1]), "5.0 is more than 1.0"),
        (lambda rule, role: role["privacy_budget"].update(period="1w"), "30m, 12h, 1d"),
        (lambda rule, role: rule["noise"].update(epsilon=0), "greater than 0"),
    ],
)
def test_a_noisy_rule_that_cannot_hold_is_refused_at_load(
    sqlite_config: Config, tmp_path: Path, change: Any, message: str
) -> None:
    path = policy_file(tmp_path / "bad.yaml")
    body = yaml.safe_load(path.read_text(encoding="utf-8"))
    role = body["roles"]["noisy"]
    change(role["tables"]["health.clinic_visits"], role)
    path.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        start(sqlite_config, [path], tmp_path).close()


def test_bounds_must_fit_their_column(sqlite_config: Config, tmp_path: Path) -> None:
    path = policy_file(tmp_path / "bad.yaml")
    body = yaml.safe_load(path.read_text(encoding="utf-8"))
    rule = body["roles"]["noisy"]["tables"]["health.clinic_visits"]
    rule["group_by"] = ["hospital"]
    rule["columns"]["visit_id"] = "allow"
    rule["noise"]["bounds"] = {"diagnosis_code": [0, 1]}
    rule["columns"]["diagnosis_code"] = "allow"
    path.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match="bounds are for number columns"):
        start(sqlite_config, [path], tmp_path).close()
    rule["noise"]["bounds"] = {"visit_id": [0, 1.5]}
    path.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match="whole numbers for whole-number columns"):
        start(sqlite_config, [path], tmp_path).close()


@pytest.mark.slow  # 40 generated queries
def test_what_the_noisy_schema_offers_the_last_step_accepts(uncached: Gateway) -> None:
    """Queries generated from the noisy role's own schema of the noisy table: none is refused by
    the policy's last step (the schema offers nothing it refuses) or fails inside."""
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis_graphql import queries

    from tests.test_fuzz import SCALARS

    identity = Identity("noisy")
    schema = uncached.view(identity).model.schema
    answered: list[str] = []

    @seed(19)
    @settings(
        max_examples=40,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        query=queries(
            schema,
            fields=["health_clinic_visits_aggregate", "health_clinic_visits_group_by"],
            custom_scalars=SCALARS,
        )
    )
    def accepted(query: object) -> None:
        assert isinstance(query, str)
        body = uncached.execute(query, identity=identity).body
        codes = {e.get("extensions", {}).get("code") for e in body.get("errors", [])}
        assert not codes & {None, "INTERNAL", "POLICY_REFUSED"}, (query, body)
        if not codes:
            answered.append(query)

    accepted()
    assert len(answered) >= 10 and any("sum" in q for q in answered), answered


# -- presence: which groups appear is a noisy release too ----------------------------------------

FIRST, LAST = dt.date(2014, 1, 1), dt.date(2014, 12, 31)
PRESENT = """{ health_clinic_visits_group_by(by: [hospital],
  where: {hospital: {_eq: "%s"}, department_name: {_eq: "%s"}, diagnosis_code: {_eq: "%s"},
    visit_date: {_gte: "%s", _lte: "%s"}}) { keys { hospital } } }"""


def rarest(city: City) -> tuple[tuple[str, str, str], list[dt.date]]:
    """The hospital, department and diagnosis with the fewest visits, and their visits' dates
    between FIRST and LAST (a date twice for two visits that day)."""
    visits = list(city.dicts("health", "clinic_visits"))
    sizes = Counter((v["hospital"], v["department_name"], v["diagnosis_code"]) for v in visits)
    target = min(sorted(sizes), key=sizes.__getitem__)
    dates = [v["visit_date"] for v in visits if (v["hospital"], v["department_name"], v["diagnosis_code"]) == target]
    return target, sorted(d for d in dates if FIRST <= d <= LAST)


class Refused(Exception):
    """The gateway answered PRIVACY_BUDGET_EXHAUSTED: the attacker cannot ask on."""


def recover(present: Any, first: dt.date, last: dt.date) -> set[dt.date]:
    """Issue 29's attack: the dates of a handful of visits from whether a group of them appears,
    by binary search. With k, a window holds k visits or more exactly when its group appears:
    from a start ``a``, the least end that holds k is the date of the k-th visit from ``a``, and
    the latest start that still holds k before that end is the date of the first. Moving past
    that first visit, the next pair, and so on."""
    day = dt.timedelta(days=1)
    found: set[dt.date] = set()
    a = first
    while a <= last and present(a, last):
        lo, hi = a, last
        while lo < hi:  # the least end
            middle = lo + (hi - lo) // 2
            lo, hi = (lo, middle) if present(a, middle) else (middle + day, hi)
        end = lo
        lo, hi = a, end
        while lo < hi:  # the latest start
            middle = lo + (hi - lo + day) // 2
            lo, hi = (middle, hi) if present(middle, end) else (lo, middle - day)
        found |= {lo, end}
        a = lo + day
    return found


@pytest.mark.parametrize("engine", engines_slow_on("sqlite_delegated"))
def test_presence_by_binary_search_now_spends_and_the_budget_runs_out_long_before_recovery(
    engine: str, sqlite_config: Config, services_config: Config, city: City, tmp_path: Path
) -> None:
    """On k alone, keys-only questions about a date window give a department's visit dates
    exactly, for free. With noise each question spends, the budget stops the attack after a
    twentieth of its questions, and what those answers say is not what k alone said."""
    (hospital, department, code), dates = rarest(city)
    exact: list[tuple[dt.date, dt.date, bool]] = []

    def oracle(a: dt.date, b: dt.date) -> bool:  # what each question answered on k = 5 alone
        exact.append((a, b, sum(a <= d <= b for d in dates) >= RULE["k"]))
        return exact[-1][2]

    assert recover(oracle, FIRST, LAST) == set(dates)  # the attack works on k alone...
    assert len(set(dates)) >= 10 and len(exact) > 100  # ...in over a hundred questions
    budget = PrivacyBudget(epsilon=10.0)  # twenty questions at epsilon 0.5
    gateway = start(
        engine_config(engine, sqlite_config, services_config), [policy_file(tmp_path / "p.yaml", budget=10.0)], tmp_path
    )
    now = [1_800_000_000.0]
    gateway.privacy = gateway.runner.privacy = PrivacyBudgets(gateway.state, clock=lambda: now[0])
    key = "health_clinic_visits_group_by"

    def present(a: dt.date, b: dt.date) -> bool:
        response = gateway.execute(PRESENT % (hospital, department, code, a, b), identity=Identity("noisy"))
        if "errors" in response.body:
            [error] = response.body["errors"]
            assert error["extensions"]["code"] == "PRIVACY_BUDGET_EXHAUSTED", error
            raise Refused
        assert response.routes == {key: ROUTE[engine]}
        assert response.epsilon == {key: EPSILON}  # keys only, and spent all the same
        return bool(response.body["data"][key])

    try:
        # Every question the attack asked on k alone, whatever the answers: twenty are answered.
        answers: list[bool] = []
        for a, b, _ in exact:
            try:
                answers.append(present(a, b))
            except Refused:
                break
        assert len(answers) == 20
        assert gateway.privacy.left("noisy", budget) == pytest.approx(0.0)
        # On k alone, at least five of those windows held k visits. Here a window of at most
        # 16 visits appears only if its count (lowered by k - 1 = 4 to at most 12) plus noise
        # of scale 2 reaches the threshold 31 (27 lowered): a noise of 15 or more, of
        # probability e^-7.5 / (1 + e^-0.5) < 3.6e-4 each. Three of twenty appearing:
        # C(20, 3) * (3.6e-4)^3 < 6e-8. So the answers are not k's.
        assert sum(p for _, _, p in exact[:20]) >= 5
        assert sum(answers) <= 2
        # The attack itself, with a budget renewed: asking adaptively, it learns no date.
        now[0] += 86400
        try:
            recovered: set[dt.date] | None = recover(present, FIRST, LAST)
        except Refused:
            recovered = None
        assert recovered != set(dates)
    finally:
        gateway.close()


def readers_file(path: Path) -> Path:
    """``reader`` reads visits and residents row by row; ``noisy`` reads visits only as noisy
    aggregates (and residents as ``reader`` does)."""
    residents = {"only_listed": True, "columns": {"id_card": "allow", "name": "allow"}}
    visits = {"only_listed": True, "columns": dict.fromkeys([*DIMS, "id_card", "cost"], "allow")}
    noisy = {**RULE, "noise": {"epsilon": EPSILON, "bounds": {"cost": [0, BOUND]}}}
    body = {
        "roles": {
            "reader": {"tables": {"health.clinic_visits": visits, "public_security.residents": residents}},
            "noisy": {
                "privacy_budget": {"epsilon": 10.0},
                "tables": {"health.clinic_visits": noisy, "public_security.residents": residents},
            },
        }
    }
    path.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    return path


DEPENDING = {
    "a filter through a relationship": "{ public_security_residents(limit: 3,"
    ' where: {clinic_visits: {diagnosis_code: {_eq: "O80"}}}) { name } }',
    "a count of a relationship": "{ public_security_residents(limit: 3) { name clinic_visits_aggregate"
    " { aggregate { count } } } }",
    "rows": "{ health_clinic_visits(limit: 3) { visit_date } }",
    "a group's keys with no count": "{ health_clinic_visits_group_by(by: [hospital]) { keys { hospital } } }",
    "groups ordered by their exact count": "{ health_clinic_visits_group_by(by: [hospital],"
    " order_by: [{aggregate: {count: desc}}], limit: 1) { keys { hospital } } }",
}


@pytest.mark.parametrize("shape", list(DEPENDING))
def test_an_answer_depending_on_noisy_rows_without_spending_is_refused(
    shape: str, sqlite_config: Config, tmp_path: Path
) -> None:
    """The noisy role's schema offers none of these (no relationship reaches an aggregate-only
    table, and its aggregates count their groups); compiled for a role that reads the rows and
    run under the noisy role's policy, each is refused with its own code, spending nothing."""
    from gateway.execution.budget import RowBudget
    from gateway.execution.prepared import prepare

    gateway = start(sqlite_config, [readers_file(tmp_path / "readers.yaml")], tmp_path)
    try:
        [compiled] = gateway.compile(DEPENDING[shape], identity=Identity("reader"))
        view = gateway.view(Identity("noisy"))
        assert view.decisions is not None and view.privacy is not None
        with pytest.raises(NoiseRequired, match=r"health\.clinic_visits"):
            enforce(compiled.tree, Context(view.decisions, view.types, {}, view.keys))
        error, _, _ = gateway.runner._run(prepare(compiled, view, {}, gateway.routes), view, RowBudget(1000))
        assert isinstance(error, NoiseRequiredError) and error.code == "NOISE_REQUIRED"
        assert "health.clinic_visits" in error.message and "_group_by" in error.message
        assert gateway.privacy.left("noisy", view.privacy) == pytest.approx(10.0)
    finally:
        gateway.close()


def test_an_exact_count_read_anywhere_but_the_rows_the_gateway_noises_is_refused(uncached: Gateway) -> None:
    """The statement's counts are exact until the gateway adds noise to the rows it returns: a
    tree that filters those rows by a count, in the statement, would answer by the exact one."""
    from sqlglot import exp

    [compiled] = uncached.compile(BY_HOSPITAL, identity=Identity("noisy"))
    view = uncached.view(Identity("noisy"))
    assert view.decisions is not None
    ctx = Context(view.decisions, view.types, {}, view.keys)
    enforce(compiled.tree, ctx)  # as compiled: accepted
    tree = compiled.tree.copy()
    [arm] = [t.parent.parent for t in tree.find_all(exp.Table) if t.name == "n0" and t.parent is not None]
    assert isinstance(arm, exp.Select)
    arm.where(exp.column("o0_1") >= 1000, copy=False)  # a hospital appears if it has 1,000 visits, exactly
    with pytest.raises(NoiseRequired):
        enforce(tree, ctx)


SELECTING = PrivacyBudget(epsilon=1e6)


def k_one_file(path: Path, **noise: Any) -> Path:
    """``exact``: aggregate-only with k = 1, so groups of one row reach the gateway; ``noisy``:
    the same with noise (``noise`` adds to it)."""
    rule = {**RULE, "k": 1}
    body = {
        "roles": {
            "exact": {"tables": {"health.clinic_visits": rule}},
            "noisy": {
                "privacy_budget": {"epsilon": SELECTING.epsilon},
                "tables": {"health.clinic_visits": {**rule, "noise": {"epsilon": EPSILON, **noise}}},
            },
        }
    }
    path.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    return path


BY_HOSPITAL = "{ health_clinic_visits_group_by(by: [hospital]) { keys { hospital } aggregate { count } } }"
SINGLES = """{ health_clinic_visits_group_by(by: [hospital, department_name, diagnosis_code, visit_date],
  where: {hospital: {_eq: "%s"}}) { keys { visit_date department_name diagnosis_code } } }"""


@pytest.mark.parametrize("engine", engines_slow_on("sqlite_delegated"))
def test_partition_selection_keeps_large_groups_and_almost_never_a_group_of_one(
    engine: str, sqlite_config: Config, services_config: Config, city: City, tmp_path: Path
) -> None:
    """k = 1 and epsilon 0.5, with the default delta 1e-6: the threshold is 27.

    A hospital's ~5,000 visits are dropped only if the noise (scale 2) is below -4,900: e^-2450.
    Of one hospital's ~4,700 groups (visits by department, diagnosis and day), over 4,500 hold
    one visit; each appears with probability at most delta (OpenDP's map: 8.6e-7), so about
    0.005 of them on average, and four or more with probability below 0.005^4 / 4! < 3e-11."""
    gateway = start(engine_config(engine, sqlite_config, services_config), [k_one_file(tmp_path / "k1.yaml")], tmp_path)
    visits = list(city.dicts("health", "clinic_visits"))
    try:
        sizes = Counter(v["hospital"] for v in visits)
        response = gateway.execute(BY_HOSPITAL, identity=Identity("noisy"))
        assert response.routes == {"health_clinic_visits_group_by": KEYS_ROUTE[engine]}
        assert response.epsilon == {"health_clinic_visits_group_by": EPSILON}  # the count shown is the one that selects
        groups = response.body["data"]["health_clinic_visits_group_by"]
        assert {g["keys"]["hospital"] for g in groups} == set(sizes)
        assert all(abs(g["aggregate"]["count"] - sizes[g["keys"]["hospital"]]) < 60 for g in groups)  # 30 scales
        hospital = sorted(sizes)[0]
        days = Counter(
            (v["department_name"], v["diagnosis_code"], v["visit_date"]) for v in visits if v["hospital"] == hospital
        )
        singles = {g for g, n in days.items() if n == 1}
        assert len(singles) > 4500
        exact = run(gateway, "exact", SINGLES % hospital)["health_clinic_visits_group_by"]
        assert len(exact) == len(days)  # on k = 1 alone, every group appears
        response = gateway.execute(SINGLES % hospital, identity=Identity("noisy"))
        assert response.epsilon == {"health_clinic_visits_group_by": EPSILON}  # keys only: spent
        released = {
            (g["keys"]["department_name"], g["keys"]["diagnosis_code"], dt.date.fromisoformat(g["keys"]["visit_date"]))
            for g in response.body["data"]["health_clinic_visits_group_by"]
        }
        assert released != set(days)
        assert len(released & singles) <= 3
    finally:
        gateway.close()


ONE_DAY = """{ health_clinic_visits_aggregate(where: {hospital: {_eq: "%s"}, visit_date: {_eq: "%s"}})
  { aggregate { sum { cost } } } }"""


def test_a_whole_aggregate_is_selected_too_and_a_sum_alone_pays_for_its_selection(
    sqlite_config: Config, city: City, tmp_path: Path
) -> None:
    """A whole aggregate is one group: over one visit, whether it comes back (or counts 0) is
    the same noisy decision, paid for with the sum. The day's one visit appears with
    probability at most delta (8.6e-7) per answer, so in none of 20 but once in 58,000 runs."""
    hospital, day, _ = day_with_one_visit(city)
    one = ONE_DAY % (hospital, day)
    gateway = start(sqlite_config, [k_one_file(tmp_path / "k1.yaml", bounds={"cost": [0, BOUND]})], tmp_path)
    key = "health_clinic_visits_aggregate"
    try:
        assert run(gateway, "exact", one)[key]["aggregate"]["sum"]["cost"] is not None  # k = 1 alone shows it
        for _ in range(20):
            response = gateway.execute(one, identity=Identity("noisy"))
            assert response.epsilon == {key: 2 * EPSILON}  # the count that selects, and the sum
            assert response.body["data"][key]["aggregate"]["sum"]["cost"] is None
        whole = gateway.execute(TOTAL, identity=Identity("noisy"))
        assert whole.epsilon == {key: 2 * EPSILON}  # count and sum: the count shown is the one that selects
        assert whole.body["data"][key]["aggregate"]["count"] > 29_000
    finally:
        gateway.close()


@pytest.mark.slow  # 100,000 draws
def test_select_is_opendps_threshold_with_the_policys_delta() -> None:
    """:func:`select` on counts directly. 100,000 groups of one at delta 1e-6 (threshold 27 at
    epsilon 0.5): 0.09 appear on average, six or more with probability below 0.09^6 / 6! < 1e-9.
    Groups of 10,000 are kept (a noise below -9,973: e^-4986)."""
    from policies.noise import Selection, least_threshold, select, selection_delta

    threshold = least_threshold(EPSILON, 1, 1e-6)
    assert threshold == 27
    assert selection_delta(EPSILON, 1, threshold) <= 1e-6 < selection_delta(EPSILON, 1, threshold - 1)
    assert least_threshold(EPSILON, 5, 1e-6) == threshold + 4  # groups under k never arrive: the same margin
    release = Release("count", EPSILON, 1, True, selects=Selection(threshold, 1))
    assert len(select(dict.fromkeys(range(100_000), 1), release)) <= 5
    kept = select(dict.fromkeys(range(100), 10_000), release)
    assert set(kept) == set(range(100))
    assert all(abs(n - 10_000) < 100 for n in kept.values())
    floor = Release("count", EPSILON, 1, True, selects=Selection(threshold + 4, 5))
    assert select({0: 4, 1: 3}, floor) == {}  # below k: never, whatever the noise


@pytest.mark.parametrize("engine", ["embedded_sqlite", "delegated"])
def test_a_noisy_group_by_is_paged_after_its_groups_are_selected_and_a_page_replays_the_cached_release(
    engine: str, sqlite_config: Config, services_config: Config, city: City, tmp_path: Path
) -> None:
    """The page is cut from the released groups: on the same statement, the cache answers every
    page from one release, which was paid for once."""
    config = engine_config(engine, sqlite_config, services_config)
    gateway = start(config, [k_one_file(tmp_path / "k1.yaml")], tmp_path, cache=True)
    key = "health_clinic_visits_group_by"
    try:
        whole = gateway.execute(BY_HOSPITAL, identity=Identity("noisy"))
        assert whole.epsilon == {key: EPSILON}
        paged = BY_HOSPITAL.replace(
            "(by: [hospital])", "(by: [hospital], order_by: [{hospital: desc}], limit: 2, offset: 1)"
        )
        ordered = BY_HOSPITAL.replace("(by: [hospital])", "(by: [hospital], order_by: [{hospital: desc}])")
        first = gateway.execute(ordered, identity=Identity("noisy"))
        page = gateway.execute(paged, identity=Identity("noisy"))
        assert page.cache == {key: "hit"} and page.epsilon == {}
        assert page.body["data"][key] == first.body["data"][key][1:3]
        names = sorted({v["hospital"] for v in city.dicts("health", "clinic_visits")}, reverse=True)
        assert [g["keys"]["hospital"] for g in page.body["data"][key]] == names[1:3]
    finally:
        gateway.close()


@pytest.mark.parametrize(
    ("noise", "message"),
    [
        ({"threshold": 10}, r"noise.threshold: 10 lets one row decide whether a group appears .* use at least 27"),
        ({"delta": 0.01}, "delta"),
        ({"delta": 0}, "delta"),
        ({"threshold": 0}, "threshold"),
    ],
)
def test_a_selection_that_cannot_hold_its_delta_is_refused_at_load(
    sqlite_config: Config, tmp_path: Path, noise: dict[str, Any], message: str
) -> None:
    path = k_one_file(tmp_path / "bad.yaml", **noise)
    with pytest.raises(ConfigError, match=message) as refused:
        start(sqlite_config, [path], tmp_path).close()
    assert str(path) in refused.value.message and "roles.noisy.tables" in refused.value.message


def test_a_policy_threshold_above_the_least_is_the_one_used(sqlite_config: Config, tmp_path: Path) -> None:
    """Threshold 6,000 on groups of ~5,000: no hospital appears (a noise above 1,000 at scale 2)."""
    gateway = start(sqlite_config, [k_one_file(tmp_path / "high.yaml", threshold=6000)], tmp_path)
    try:
        response = gateway.execute(BY_HOSPITAL, identity=Identity("noisy"))
        assert response.body["data"]["health_clinic_visits_group_by"] == []
        assert response.epsilon == {"health_clinic_visits_group_by": EPSILON}
    finally:
        gateway.close()


def test_groups_sized_by_people_are_selected_by_a_noisy_count_of_people(sqlite_config: Config, tmp_path: Path) -> None:
    """With ``k_distinct``, a group needs k patients: the count that selects counts patients.
    Each hospital has 4,900 to 5,100 visits by 3,850 to 4,050 patients; at a threshold of 4,500
    every hospital would appear by its visits and none does by its patients (a noise of 450 at
    scale 2). The count shown is a draw of its own (of visits), so the answer spends twice."""
    from sqlglot import exp

    from catalogue.names import SELECTS

    path = tmp_path / "people.yaml"
    rule = {**RULE, "k_distinct": "id_card", "columns": {**RULE["columns"], "id_card": "deny"}}
    noise = {"epsilon": EPSILON, "threshold": 4500}
    body = {
        "roles": {
            "noisy": {"privacy_budget": {"epsilon": 1e6}, "tables": {"health.clinic_visits": {**rule, "noise": noise}}}
        }
    }
    path.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    gateway = start(sqlite_config, [path], tmp_path)
    try:
        [compiled] = gateway.compile(BY_HOSPITAL, identity=Identity("noisy"))
        view = gateway.view(Identity("noisy"))
        assert view.decisions is not None
        tree = enforce(compiled.tree, Context(view.decisions, view.types, {}, view.keys))
        [selecting] = [c for c in tree.find_all(exp.Count) if c.meta.get(SELECTS)]
        assert isinstance(selecting.this, exp.Distinct) and selecting.this.sql() == 'DISTINCT a."__entity_id_card"'
        response = gateway.execute(BY_HOSPITAL, identity=Identity("noisy"))
        assert response.epsilon == {"health_clinic_visits_group_by": 2 * EPSILON}
        assert response.body["data"]["health_clinic_visits_group_by"] == []
    finally:
        gateway.close()
