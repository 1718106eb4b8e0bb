"""Trino as a cluster: a coordinator that schedules no splits on itself and one worker.

The cluster runs beside the other services (`make services` or `make trino-cluster`; ports
CITYGATE_TRINO_CLUSTER_PORT, CITYGATE_TRINO_WORKER_PORT and CITYGATE_TRINO_CLUSTER_HTTPS_PORT,
8090, 8091 and 8092 by default) over the same stores as the single node. Its coordinator takes
clients on its HTTPS port only, as the single node does. The golden fixtures (most of them cross departments: joins
through relationships, EXISTS through them, aggregates of related rows) give the same rows on
the cluster, the single node and the oracle, and Trino's own query info shows the splits ran
on the worker.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from catalogue.errors import CitygateError
from connectors.trino import TrinoEngine
from gateway.config import CacheConfig, Config
from gateway.execution.gateway import Gateway
from tests.conftest import unreachable
from tests.oracle import Oracle
from tests.test_graphql import CASES, load, same
from tools.services import Settings

SERVICES = Settings.from_env()
CLUSTER_PORT = SERVICES.cluster_https_port
WORKER_ID = "citygate-trino-worker"  # node.id in the worker's node.properties (tools/services.py)


def uncached(config: Config, port: int) -> Config:
    """``config`` on the Trino at ``port``, without the result cache (every run reaches Trino)
    and with a planning budget that a machine busy with three JVMs does not exceed: this
    module compares engines, not the gateway's speed."""
    trino = config.engine.trino.model_copy(update={"port": port})
    return config.model_copy(
        update={
            "engine": config.engine.model_copy(update={"trino": trino}),
            "cache": CacheConfig(enabled=False),
            "limits": config.limits.model_copy(update={"plan_seconds": 30.0}),
        }
    )


def started(config: Config) -> Iterator[Gateway]:
    engine = TrinoEngine(config.engine_settings())
    try:
        engine.ping()
    except CitygateError as error:
        unreachable(f"Trino on port {config.engine.trino.port}", error)
    gateway = Gateway.start(config, engine)
    yield gateway
    gateway.close()


@pytest.fixture(scope="module")
def cluster(services_config: Config) -> Iterator[Gateway]:
    yield from started(uncached(services_config, CLUSTER_PORT))


@pytest.fixture(scope="module")
def single(services_config: Config) -> Iterator[Gateway]:
    yield from started(uncached(services_config, services_config.engine.trino.port))


def trino_get(path: str) -> Any:
    """Trino's REST API on the coordinator, as the gateway's own user (it sees its own queries)."""
    login = base64.b64encode(f"citygate:{SERVICES.password}".encode()).decode()
    headers = {"X-Trino-User": "citygate", "Authorization": f"Basic {login}"}
    request = urllib.request.Request(f"https://localhost:{CLUSTER_PORT}{path}", headers=headers)
    context = ssl.create_default_context(cafile=str(SERVICES.tls / "ca.pem"))
    with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310 - loopback
        return json.load(response)


def test_the_cluster_has_a_worker_and_a_coordinator_that_runs_no_splits(cluster: Gateway) -> None:
    engine = cluster.engine
    assert isinstance(engine, TrinoEngine)
    nodes = engine._run("SELECT node_id, coordinator, state FROM system.runtime.nodes ORDER BY node_id", []).rows
    assert [tuple(n) for n in nodes] == [
        ("citygate-trino-coordinator", True, "active"),
        (WORKER_ID, False, "active"),
    ]


@pytest.mark.parametrize("name", CASES)
def test_fixtures_give_the_same_rows_on_the_cluster(
    cluster: Gateway, single: Gateway, oracle: Oracle, name: str
) -> None:
    query, variables = load(name)
    on_cluster = cluster.execute(query, variables)
    assert "errors" not in on_cluster.body, on_cluster.body
    same(on_cluster.body["data"], oracle.execute(query, variables))
    on_single = single.execute(query, variables)
    same(on_cluster.body["data"], on_single.body["data"])


def splits_by_node(query_id: str) -> dict[str, int]:
    """Completed drivers (each runs splits of one pipeline) per node, over the query's stages."""
    info = trino_get(f"/v1/query/{query_id}")
    counts: dict[str, int] = {}
    stages = [info["outputStage"]]
    while stages:
        stage = stages.pop()
        stages.extend(stage.get("subStages", []))
        for task in stage["tasks"]:
            node = task["taskStatus"]["nodeId"]
            counts[node] = counts.get(node, 0) + int(task["stats"]["completedDrivers"])
    return counts


def test_splits_run_on_the_worker(cluster: Gateway, record_property: Any) -> None:
    name = "relationships"
    query, variables = load(name)
    marker = f"citygate-cluster-{time.time_ns()}"
    response = cluster.execute(query, variables)
    assert "errors" not in response.body
    engine = cluster.engine
    assert isinstance(engine, TrinoEngine)
    rows = engine._run(
        "SELECT query_id FROM system.runtime.queries WHERE state = 'FINISHED' AND \"user\" = 'citygate' "
        f"AND query LIKE '%legal_rep_id_card%' AND query NOT LIKE '%{marker}%' ORDER BY created DESC LIMIT 1",
        [],
    ).rows
    assert rows, "the coordinator lists no finished query"
    query_id = str(rows[0][0])
    counts = splits_by_node(query_id)
    record_property("splits_by_node", counts)
    print(f"\nquery {query_id}: completed drivers by node {counts}")  # the closing note's figure
    assert counts.get(WORKER_ID, 0) > 0, counts
    # node-scheduler.include-coordinator=false: every task, the output stage's too, ran on the worker
    assert set(counts) == {WORKER_ID}, counts


def test_timing_single_node_and_cluster(cluster: Gateway, single: Gateway, record_property: Any) -> None:
    """Each fixture's time on both, alternating, so that a busy moment of the machine falls on
    both alike; the figures go to the closing note (``-s`` prints them), not to a threshold."""
    # both gateways ran every fixture above: plans are compiled, catalogs loaded on every node
    timings: dict[str, dict[str, float]] = {"single": {}, "cluster": {}}
    for name in CASES:
        query, variables = load(name)
        for label, gateway in (("single", single), ("cluster", cluster)):
            started = time.perf_counter()
            assert "errors" not in gateway.execute(query, variables).body
            timings[label][name] = round(time.perf_counter() - started, 3)
    record_property("fixture_seconds", timings)
    totals = {label: round(sum(t.values()), 3) for label, t in timings.items()}
    rows = [(name, timings["single"][name], timings["cluster"][name]) for name in CASES]
    for name, one, two in [*rows, (f"all {len(CASES)} fixtures", totals["single"], totals["cluster"])]:
        print(f"\n{name:<32} single {one:6.3f} s  cluster {two:6.3f} s", end="")
    print()
    assert all(seconds > 0 for seconds in totals.values())
