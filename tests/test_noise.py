"""Noisy aggregates (policies/noise.py and its path through the gateway): counts and sums carry
Laplace noise of the scale the policy's epsilon and bounds give, sums read clamped values, each
noisy answer spends the role's budget, and the cache repeats a draw rather than drawing again.

The statistical tests compare means and spreads of many draws with the noise's own scale, at
about six standard errors: a wrong scale (twice or half) fails them, chance alone almost never."""

from __future__ import annotations

import dataclasses
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

from catalogue.errors import ConfigError
from datasets.datagen import City
from datasets.demo import issue_token, secure_demo
from gateway.config import CacheConfig, Config
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.execution.privacy import PrivacyBudgets
from gateway.http.app import create_app
from gateway.identity.caller import Identity
from gateway.state import State
from policies.model import PrivacyBudget
from policies.noise import Release, draw, privacy_loss
from policies.rewrite import Context, NoiseRequired, PolicyViolation, enforce, spends
from tests.conftest import free_port, with_store
from tests.test_policies import ENGINES, engine_config, errors, run, type_fields, with_policies
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
    return Gateway.start(config, create_engine(config))


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
        [compiled] = gateway.compile(TOTAL, identity=Identity("noisy"))
        assert "CASE WHEN" in compiled.sql[compiled.route.key]
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
        [compiled] = gateway.compile(SALARIES, identity=Identity("noisy"))
        assert "CASE WHEN" in compiled.sql[compiled.route.key]
    finally:
        gateway.close()


# -- on every route: delegated to the store, the engine, the engine's fallback ------------------


def test_a_noisy_aggregate_answered_on_the_delegated_route_is_noised_and_spends_the_budget(
    services_config: Config, city: City, tmp_path: Path
) -> None:
    """Through HTTP as a token's role, with the audit trail on: each record says the statement
    ran on PostgreSQL itself and what it spent; the draws have the policy's spread there too."""
    config = secure_demo(services_config.with_delegate("auto"), tmp_path)
    assert config.policies is not None
    policies = config.policies.model_copy(update={"files": [policy_file(tmp_path / "noise.yaml")]})
    config = config.model_copy(update={"policies": policies, "data_dir": tmp_path, "cache": CacheConfig(enabled=False)})
    token = {"authorization": "Bearer " + issue_token(tmp_path, "noisy", {}, 600)}
    visits = list(city.dicts("health", "clinic_visits"))
    true_count, true_sum = len(visits), float(sum(min(max(v["cost"], 0), BOUND) for v in visits))
    gateway = Gateway.start(config, create_engine(config))
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


def day_with_one_visit(city: City) -> tuple[str, Any, Decimal]:
    """A hospital and a day with exactly one visit, and that visit's cost."""
    visits = list(city.dicts("health", "clinic_visits"))
    days = Counter((v["hospital"], v["visit_date"]) for v in visits)
    hospital, day = sorted(k for k, n in days.items() if n == 1)[0]
    [cost] = [v["cost"] for v in visits if (v["hospital"], v["visit_date"]) == (hospital, day)]
    return hospital, day, cost


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
            [exact] = gateway.compile(COUNT, identity=Identity("exact"))
            [noisy] = gateway.compile(COUNT, identity=Identity("noisy"))
            assert noisy.sql == exact.sql  # the same statement: only the release tells them apart
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
    gateway.privacy = PrivacyBudgets(gateway.state, clock=lambda: now[0])
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
