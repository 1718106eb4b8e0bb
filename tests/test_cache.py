"""The result cache holds to the policies: callers share an entry only when the engine would
give them the same rows; a repeated request skips parse, validation, compile and the engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from catalogue.errors import CitygateError
from gateway.config import CacheConfig, Config, TokenGuard
from gateway.execution.cache import ResultCache
from gateway.execution.gateway import Gateway
from gateway.execution.plans import Response
from gateway.http.app import Edge, create_app
from gateway.identity.caller import Identity
from tests.conftest import shared_engine
from tests.policy_support import POLICY_FILES, with_policies

RESIDENTS = "{ public_security_residents(limit: 5, order_by: [{registered_at: asc}]) { id_card phone } }"
STATIONS = "{ transport_stations(limit: 3, order_by: [{station_id: asc}]) { name district } }"


def start(config: Config, **cache: Any) -> Gateway:
    config = config.model_copy(update={"cache": CacheConfig(**cache)})
    return Gateway.start(config, shared_engine(config))


@pytest.fixture(scope="module", params=["embedded_sqlite", "trino"])
def secured(request: pytest.FixtureRequest, sqlite_config: Config, services_config: Config) -> Iterator[Gateway]:
    config = with_policies(sqlite_config if request.param == "embedded_sqlite" else services_config)
    gateway = start(config)
    yield gateway
    gateway.close()


def ask(gateway: Gateway, query: str, role: str, **claims: Any) -> Response:
    response = gateway.execute(query, identity=Identity(role, claims))
    assert "errors" not in response.body, response.body
    return response


def test_a_masked_role_never_gets_a_raw_roles_cached_rows(secured: Gateway) -> None:
    secured.results.clear()
    raw = ask(secured, RESIDENTS, "police")
    again = ask(secured, RESIDENTS, "police")
    assert (raw.cache, again.cache) == ({"public_security_residents": "miss"}, {"public_security_residents": "hit"})
    assert again.statements == 0 and again.body == raw.body
    masked = ask(secured, RESIDENTS, "health_analyst")
    assert masked.cache == {"public_security_residents": "miss"} and masked.statements == 1
    raw_rows = raw.body["data"]["public_security_residents"]
    masked_rows = masked.body["data"]["public_security_residents"]
    assert len(raw_rows) == len(masked_rows) == 5
    # The analyst orders by the year of registration (ties by a keyed digest): other rows than
    # the police's, each masked.
    assert all("*" not in r["id_card"] and r["phone"] for r in raw_rows)
    assert all(m["id_card"][6:14] == "*" * 8 and m["phone"] is None for m in masked_rows)
    assert len(secured.results) == 2


def test_roles_with_the_same_effective_policy_share_an_entry(secured: Gateway) -> None:
    secured.results.clear()
    first = ask(secured, STATIONS, "anonymous")  # published: every role sees stations raw
    second = ask(secured, STATIONS, "health_analyst")
    assert (first.cache["transport_stations"], second.cache["transport_stations"]) == ("miss", "hit")
    assert first.body == second.body and len(secured.results) == 1


def test_claims_share_an_entry_only_when_the_row_filter_binds_the_same(secured: Gateway) -> None:
    secured.results.clear()
    query = "{ public_security_residents(limit: 3, order_by: [{registered_at: asc}]) { district } }"
    humen = ask(secured, query, "district_officer", district="虎门", sub="a", exp=1)
    nancheng = ask(secured, query, "district_officer", district="南城", sub="b", exp=2)
    humen_again = ask(secured, query, "district_officer", district="虎门", sub="c", exp=3)
    assert {r["district"] for r in humen.body["data"]["public_security_residents"]} == {"虎门"}
    assert {r["district"] for r in nancheng.body["data"]["public_security_residents"]} == {"南城"}
    assert [r.cache["public_security_residents"] for r in (humen, nancheng, humen_again)] == ["miss", "miss", "hit"]
    assert humen_again.body == humen.body and humen_again.claims == {"district": "虎门"}


def test_ttl_per_department_and_departments_that_forbid_caching(sqlite_config: Config) -> None:
    departments = dict(sqlite_config.departments)
    departments["public_security"] = departments["public_security"].model_copy(update={"cache_ttl_seconds": 0.0})
    departments["transport"] = departments["transport"].model_copy(update={"cache_ttl_seconds": 0.4})
    gateway = start(sqlite_config.model_copy(update={"departments": departments}), ttl_seconds=60)
    try:
        both = "{ transport_stations(limit: 1) { name } public_security_residents(limit: 1) { name } }"
        first, second = gateway.execute(both), gateway.execute(both)
        assert first.cache == {"transport_stations": "miss", "public_security_residents": "off"}
        assert second.cache == {"transport_stations": "hit", "public_security_residents": "off"}
        assert second.statements == 1 and second.body == first.body
        time.sleep(0.5)
        assert gateway.execute(both).cache["transport_stations"] == "miss"  # expired
        health = "{ health_clinic_visits(limit: 1) { visit_id } }"
        assert [gateway.execute(health).cache["health_clinic_visits"] for _ in range(2)] == ["miss", "hit"]
    finally:
        gateway.close()


def test_the_cache_is_bounded_by_entries_and_bytes(sqlite_config: Config) -> None:
    gateway = start(sqlite_config, max_entries=3, max_bytes=64 * 1024)
    try:
        for limit in range(1, 7):
            gateway.execute(f"{{ transport_stations(limit: {limit}) {{ name }} }}")
        assert len(gateway.results) == 3
        big = gateway.execute("{ health_clinic_visits(limit: 2000) { visit_id hospital diagnosis } }")
        assert big.cache == {"health_clinic_visits": "off"}  # far over an eighth of 64 KiB: not kept
        assert gateway.results.bytes <= 64 * 1024
    finally:
        gateway.close()


def test_plans_and_documents_are_bounded_by_their_size_in_memory(sqlite_config: Config) -> None:
    """Found by a red-team review: the plan and document caches counted entries, so distinct
    requests of a megabyte each (55,000 aliases) kept some 80 MB apiece."""
    budget = 2 << 20
    gateway = start(sqlite_config, plan_bytes=budget)
    try:
        alias = "a" * 200
        for n in range(30):  # each plan some 500 KB and each document some 150 KB, as estimated
            fields = " ".join(f"{alias}{i}: transport_stations(limit: {n + 1}) {{ name }}" for i in range(5))
            assert "errors" not in gateway.execute("{ " + fields + " }").body
        assert 0 < len(gateway.planner.plans) < 30 and gateway.planner.plans.currsize <= budget
        assert 0 < len(gateway.planner.documents) < 30 and gateway.planner.documents.currsize <= budget
        for n in range(3):  # refused, and weighed by their text all the same (found by a code review)
            flood = f"# {n}\n{{ " + " ".join(f"a{i}: __typename" for i in range(55_000)) + " }"
            [error] = gateway.execute(flood).body["errors"]
            assert error["extensions"]["code"] == "GRAPHQL_PARSE_FAILED" and "20000 tokens" in error["message"]
        documents = gateway.planner.documents
        assert documents.currsize <= budget and not any(len(k[0]) > 100_000 for k in documents)
    finally:
        gateway.close()


def test_a_plan_the_cache_let_go_is_not_kept_alive_by_its_last_answer(sqlite_config: Config) -> None:
    """Found by the lead's last read: a plan's last answer (its memo) names the plan, so memos
    kept in a weak mapping by plan kept every plan ever answered from the cache alive, past the
    plan cache's budget. Memos are kept by bytes, and a plan the caches let go is freed."""
    import gc
    import weakref

    budget = 1 << 20
    gateway = start(sqlite_config, plan_bytes=budget)
    try:
        made = []  # this gateway's plans (other tests' gateways in this process have their own)
        for n in range(60):  # each answered twice: the second time wholly from the cache, memoised
            query = f"{{ transport_stations(limit: {n + 1}, order_by: [{{station_id: asc}}]) {{ name }} }}"
            first = gateway.execute(query)
            assert first.plan is not None and first.body == gateway.execute_cached(query).body  # type: ignore[union-attr]
            made.append(weakref.ref(first.plan))
            del first
        gc.collect()
        alive = sum(1 for plan in made if plan() is not None)
        memos = gateway.runner._memos
        kept = len(gateway.planner.plans) + len(memos)  # at most: each cache holds the other's too
        assert 0 < len(gateway.planner.plans) < 60 and 0 < len(memos) < 60
        assert alive <= kept + 2, (alive, kept)  # a response or two may still hold one
        assert memos.currsize <= budget
    finally:
        gateway.close()


def at_once(callers: int, ask: Callable[[], Any]) -> list[Any]:
    """``ask`` from ``callers`` threads released together."""
    barrier = threading.Barrier(callers)

    def released() -> Any:
        barrier.wait()
        return ask()

    with ThreadPoolExecutor(callers) as pool:
        futures = [pool.submit(released) for _ in range(callers)]
        return [f.exception() or f.result() for f in futures]


def test_callers_missing_the_same_entry_at_once_share_one_run() -> None:
    cache = ResultCache(CacheConfig(ttl_seconds=60), {"health": None, "transport": 0.0})
    runs: list[str] = []

    def slow(sql: str, fail: bool = False) -> Callable[[], Sequence[Any]]:
        def run() -> Sequence[Any]:
            runs.append(sql)
            time.sleep(0.3)  # long enough for every other caller to arrive and wait
            if fail:
                raise CitygateError("the store is down")
            return [(sql,)]

        return run

    answers = at_once(8, lambda: cache.fetch("embedded", "SELECT 1", ["health"], slow("SELECT 1")))
    assert runs == ["SELECT 1"]
    assert sorted(source for _, source in answers) == ["hit"] * 7 + ["miss"]
    assert all(rows is answers[0][0] for rows, _ in answers)  # the one run's rows, shared
    # A department that forbids caching: each caller reads its store.
    runs.clear()
    answers = at_once(4, lambda: cache.fetch("embedded", "SELECT 2", ["transport"], slow("SELECT 2")))
    assert runs == ["SELECT 2"] * 4 and {source for _, source in answers} == {"off"}
    # A failed run fails every caller that waited for it, and the next caller runs it again.
    runs.clear()
    errors = at_once(4, lambda: cache.fetch("embedded", "SELECT 3", ["health"], slow("SELECT 3", fail=True)))
    assert runs == ["SELECT 3"] and all(isinstance(e, CitygateError) for e in errors)
    assert cache.fetch("embedded", "SELECT 3", ["health"], slow("SELECT 3")) == ([("SELECT 3",)], "miss")


def test_concurrent_requests_for_an_expired_answer_run_one_statement(sqlite_config: Config) -> None:
    gateway = start(sqlite_config)
    try:
        query = "{ health_clinic_visits(order_by: [{cost: desc}], limit: 5) { visit_id cost } }"
        before = gateway.engine.statements  # type: ignore[attr-defined]
        responses = at_once(8, lambda: gateway.execute(query))
        assert gateway.engine.statements - before == 1  # type: ignore[attr-defined]
        assert sorted(r.cache["health_clinic_visits"] for r in responses) == ["hit"] * 7 + ["miss"]
        assert len({str(r.body) for r in responses}) == 1
    finally:
        gateway.close()


def test_disabled_cache_runs_every_request(sqlite_config: Config) -> None:
    gateway = start(sqlite_config, enabled=False)
    try:
        assert [gateway.execute(STATIONS).statements for _ in range(2)] == [1, 1]
        assert len(gateway.results) == 0
    finally:
        gateway.close()


def lookups(client: TestClient) -> dict[tuple[str, str], float]:
    counts: dict[tuple[str, str], float] = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("citygate_cache_lookups_total{"):
            labels, value = line.removeprefix("citygate_cache_lookups_total").rsplit(" ", 1)
            parts = dict(p.split("=") for p in labels.strip("{}").split(","))
            counts[(parts["cache"].strip('"'), parts["result"].strip('"'))] = float(value)
    return counts


def test_a_repeated_request_skips_parse_validation_compile_and_engine(sqlite_config: Config) -> None:
    gateway = start(sqlite_config)
    try:
        with TestClient(create_app(gateway)) as client:
            query = {"query": "{ environment_monitored_sites(limit: 4, order_by: [{site_id: asc}]) { site_name } }"}
            first = client.post("/graphql", json=query).json()
            before = lookups(client)
            assert before[("document", "miss")] == 1 and before[("result", "miss")] == 1
            for _ in range(5):
                assert client.post("/graphql", json=query).json() == first
            after = lookups(client)
        assert after[("document", "miss")] == 1 and after[("document", "hit")] == 0  # no parse, no validation
        assert after[("plan", "miss")] == 1 and after[("plan", "hit")] == 5  # no compile
        assert after[("result", "miss")] == 1 and after[("result", "hit")] == 5  # no engine
        # Variables change the compiled statement but not the document: parsed and validated once.
        document = "query($n: Int) { transport_stations(limit: $n) { name } }"
        for n in (1, 2, 1):
            gateway.execute(document, {"n": n})
        key = (document, None, gateway.policy_version, ())  # no claim the role requires is missing
        assert key in gateway.planner.documents
    finally:
        gateway.close()


@pytest.fixture
def admin_client(sqlite_config: Config, tmp_path: Path) -> Iterator[tuple[TestClient, Gateway, Path]]:
    files = [tmp_path / p.name for p in POLICY_FILES]
    for source, copy in zip(POLICY_FILES, files, strict=True):
        copy.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    config = with_policies(sqlite_config, files).model_copy(
        update={
            "admin": TokenGuard(token="admin-token-for-tests-0001"),
            "metrics": TokenGuard(token="scrape-token-for-tests-01"),
        }
    )
    gateway = Gateway.start(config, shared_engine(config))
    with TestClient(create_app(gateway)) as client:
        yield client, gateway, files[0]
    gateway.close()


ADMIN = {"authorization": "Bearer admin-token-for-tests-0001"}


def test_admin_clears_the_cache_by_department(admin_client: tuple[TestClient, Gateway, Path]) -> None:
    client, gateway, _ = admin_client
    gateway.execute(STATIONS)
    gateway.execute("{ health_clinic_visits_aggregate { aggregate { count } } }", identity=Identity("health_analyst"))
    assert len(gateway.results) == 2
    assert client.post("/admin/cache/clear").status_code == 401
    assert client.post("/admin/cache/clear", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/admin/cache/clear?department=nowhere", headers=ADMIN).status_code == 404
    cleared = client.post("/admin/cache/clear?department=health", headers=ADMIN)
    assert cleared.json() == {"cleared": 1, "department": "health"}
    assert gateway.execute(STATIONS).cache == {"transport_stations": "hit"}
    assert client.post("/admin/cache/clear", headers=ADMIN).json()["cleared"] == 1
    assert client.post("/admin/nothing", headers=ADMIN).status_code == 404


def test_policy_reload_takes_effect_and_a_bad_file_changes_nothing(
    admin_client: tuple[TestClient, Gateway, Path],
) -> None:
    client, gateway, central = admin_client
    query = "{ health_health_records(limit: 1) { blood_type } }"
    analyst = Identity("health_analyst")
    assert "errors" not in gateway.execute(query, identity=analyst).body
    version = gateway.policy_version
    text = central.read_text(encoding="utf-8")
    central.write_text(text.replace("{blood_type: allow, chronic_conditions: allow}", "{chronic_conditions: allow}"))
    reloaded = client.post("/admin/policies/reload", headers=ADMIN)
    assert reloaded.status_code == 200 and reloaded.json()["policy_version"] != version
    refused = gateway.execute(query, identity=analyst).body
    assert refused["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    central.write_text("roles: [not, a, mapping]")
    broken = client.post("/admin/policies/reload", headers=ADMIN)
    assert broken.status_code == 422 and str(central) in broken.json()["errors"][0]["message"]
    assert gateway.execute(query, identity=analyst).body == refused  # the reloaded policies stand


def test_a_worker_reads_edited_policy_files_before_its_next_request(
    admin_client: tuple[TestClient, Gateway, Path],
) -> None:
    """`serve --workers N`: an admin reload reaches one worker; every other one looks at the
    policy files before each request, so none answers under replaced policies, not even from
    its cache of plans and rows (the balancer once got the old answer from a second worker)."""
    _, gateway, central = admin_client
    gateway.follows_files = True
    query = "{ health_health_records(limit: 1, order_by: [{record_id: asc}]) { blood_type } }"
    analyst = Identity("health_analyst")
    gateway.results.clear()
    assert "errors" not in gateway.execute(query, identity=analyst).body
    assert gateway.execute_cached(query, None, None, analyst) is not None  # plan and rows are cached
    text = central.read_text(encoding="utf-8")
    central.write_text(text.replace("{blood_type: allow, chronic_conditions: allow}", "{chronic_conditions: allow}"))
    assert gateway.execute_cached(query, None, None, analyst) is None  # not from the cache: read first
    refused = gateway.execute(query, identity=analyst).body
    assert refused["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    version = gateway.policy_version
    central.write_text("roles: [not, a, mapping]")  # an editor's half-written save
    assert gateway.execute(query, identity=analyst).body == refused  # the last good policies stand
    assert gateway.policy_version == version
    central.write_text(text)
    assert "errors" not in gateway.execute(query, identity=analyst).body  # read once it loads again
    gateway.follows_files = False  # a single process reads them when told (SIGHUP, the admin call)
    central.write_text(text.replace("{blood_type: allow, chronic_conditions: allow}", "{chronic_conditions: allow}"))
    assert "errors" not in gateway.execute(query, identity=analyst).body


def test_a_workers_ready_reply_goes_once_the_policy_files_change(
    admin_client: tuple[TestClient, Gateway, Path],
) -> None:
    """The edge keeps a repeated request's reply to send again (the hot path): in a worker it
    stands only while the policy files are the ones the worker read."""
    client, gateway, central = admin_client
    gateway.follows_files = True
    body = {"query": "{ transport_stations(limit: 1, order_by: [{station_id: asc}]) { name } }"}
    answers = [client.post("/graphql", json=body) for _ in range(3)]  # the last ones: the ready reply
    assert all(a.status_code == 200 and a.json() == answers[0].json() for a in answers), answers[0].text
    text = central.read_text(encoding="utf-8")
    denied = "    classes: {shared: deny}\n    tables:\n      transport.stations: {access: deny}\n"
    central.write_text(text.replace("    classes: {shared: deny}\n", denied, 1))  # anonymous's own rule
    refused = client.post("/graphql", json=body).json()
    assert refused["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED", refused


def test_metrics_need_the_scrape_token_when_one_is_set(admin_client: tuple[TestClient, Gateway, Path]) -> None:
    client, _, _ = admin_client
    client.post("/graphql", json={"query": STATIONS})
    client.post("/graphql", json={"query": "{ nope }"})
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"authorization": "Bearer nope"}).status_code == 401
    scraped = client.get("/metrics", headers={"authorization": "Bearer scrape-token-for-tests-01"})
    assert scraped.status_code == 200
    text = scraped.text
    assert 'citygate_requests_total{outcome="ok"}' in text and 'citygate_requests_total{outcome="refused"}' in text
    assert (
        'citygate_statement_duration_seconds_count{department="transport",engine="delegated",route="delegated"}' in text
    )
    assert "citygate_audit_backlog 0.0" in text


def test_introspection_is_answered_once_per_role_and_policy_version(sqlite_config: Config) -> None:
    config = with_policies(sqlite_config)
    gateway = Gateway.start(config, shared_engine(config))
    try:
        query = "{ __schema { queryType { fields { name } } } }"

        def roots(role: str) -> tuple[set[str], Response]:
            response = gateway.execute(query, identity=Identity(role))
            fields = response.body["data"]["__schema"]["queryType"]["fields"]
            return {f["name"] for f in fields}, response

        anonymous, first = roots("anonymous")
        again, second = roots("anonymous")
        police, _ = roots("police")
        assert anonymous == again and first.encoded is second.encoded  # the second from the cache
        assert police != anonymous
        assert set(gateway.view(Identity("police")).model.roots) == police
        assert set(gateway.view(Identity("anonymous")).model.roots) == anonymous
        gateway.reload_policies()
        assert roots("anonymous")[1].encoded is not first.encoded  # recomputed after a reload
    finally:
        gateway.close()


def hide_station_names(central: Path) -> None:
    """Change the policy copy: anonymous no longer sees stations' names."""
    policy = yaml.safe_load(central.read_text(encoding="utf-8"))
    policy["roles"]["anonymous"]["tables"] = {"transport.stations": {"columns": {"name": "deny"}}}
    central.write_text(yaml.safe_dump(policy, allow_unicode=True), encoding="utf-8")


def test_a_reply_made_before_a_reload_is_not_sent_again_after_it(
    admin_client: tuple[TestClient, Gateway, Path],
) -> None:
    """Found by a red-team review: a reload landing between a request's answer and the edge
    keeping it as a ready reply stamped the old answer with the new policy version, and it was
    sent again for as long as its rows stayed cached."""
    client, gateway, central = admin_client
    edge = client.app
    assert isinstance(edge, Edge)
    body = {"query": "{ transport_stations(limit: 2, order_by: [{station_id: asc}]) { name } }"}
    assert "errors" not in client.post("/graphql", json=body).json()  # its plan and rows are cached now
    answer = edge.answer_json

    async def then_reload(raw: bytes, exchange: Any) -> Any:
        reply = await answer(raw, exchange)
        hide_station_names(central)
        gateway.reload_policies()
        return reply

    edge.answer_json = then_reload  # type: ignore[method-assign]
    assert "errors" not in client.post("/graphql", json=body).json()  # answered under the old policy
    edge.answer_json = answer  # type: ignore[method-assign]
    after = client.post("/graphql", json=body).json()
    assert after["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


def test_sighup_asks_for_a_reload_and_never_waits_for_the_gateway(
    admin_client: tuple[TestClient, Gateway, Path],
) -> None:
    """Found by a red-team review: the handler reloaded on the main thread, so a signal landing
    while that thread held the gateway's lock (or during another reload) waited on it for good."""
    from gateway.cli.serving import _reloader

    _, gateway, central = admin_client
    handler = _reloader(gateway)
    version = gateway.policy_version
    hide_station_names(central)
    with gateway._lock:  # the code the signal interrupts holds the lock
        for _ in range(50):
            handler(1, None)  # returns at once
    deadline = time.monotonic() + 10
    while gateway.policy_version == version and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway.policy_version != version
