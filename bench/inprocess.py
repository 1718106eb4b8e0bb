"""The in-process sections: each compares citygate with a baseline inside one Python process.

- shaping: citygate's row shaping against strawberry's default resolvers over the same rows,
  per response field;
- overhead: the same query through the gateway (in process, without its plan cache, and over
  HTTP) against its compiled SQL sent straight to the engine, on each engine;
- policy: the same query without policies and as ``health_analyst``;
- statements: engine statements per request for nesting depths 1 to 4.
"""

from __future__ import annotations

import contextlib
import functools
import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import strawberry
from strawberry.schema.config import StrawberryConfig

from bench.queries import NESTED, POLICY_QUERIES, SELECTIVE
from bench.stats import interleaved, percentile, ratio_interval, summary, timed
from connectors.base import Engine
from gateway.config import Config
from gateway.execution.gateway import Gateway
from gateway.graphql.shape import shape
from gateway.identity.caller import Identity

REPO = Path(__file__).resolve().parent.parent

# -- shaping: citygate's templates against strawberry's default resolvers -------------------


@strawberry.type
class Resident:
    name: str | None
    district: str | None


@strawberry.type
class Visit:
    visit_id: str
    hospital: str | None
    department_name: str | None
    diagnosis: str | None
    visit_date: str | None
    cost: str | None
    resident: Resident | None


def bench_shaping(gateway: Gateway, runs: int) -> dict[str, Any]:
    query = """{ health_clinic_visits(limit: 2000, order_by: [{visit_id: asc}]) {
        visit_id hospital department_name diagnosis visit_date cost resident { name district } } }"""
    [compiled] = gateway.compile(query)
    result = gateway.engine.execute(compiled.tree)
    response = shape(compiled, result.rows)
    visits = [
        Visit(**{k: v for k, v in row.items() if k != "resident"}, resident=Resident(**row["resident"]))
        for row in response
    ]

    @strawberry.type
    class Query:
        @strawberry.field
        def health_clinic_visits(self) -> list[Visit]:
            return visits

    schema = strawberry.Schema(query=Query, config=StrawberryConfig(auto_camel_case=False))
    plain = query.replace("(limit: 2000, order_by: [{visit_id: asc}])", "")
    fields = sum(6 + 1 + 2 for _ in response)  # six columns, the object, its two columns
    ours = timed(lambda: shape(compiled, result.rows), runs)
    theirs = timed(lambda: schema.execute_sync(plain), max(5, runs // 4))
    assert schema.execute_sync(plain).data == {"health_clinic_visits": response}
    ours_us = statistics.median(ours) * 1000 / fields
    theirs_us = statistics.median(theirs) * 1000 / fields
    return {
        "fields_per_response": fields,
        "citygate_us_per_field": ours_us,
        "strawberry_us_per_field": theirs_us,
        "ratio": theirs_us / ours_us,
        "target": ">= 10x cheaper",
        "met": theirs_us / ours_us >= 10,
        "citygate": summary(ours),
        "strawberry": summary(theirs),
    }


# -- overhead: the gateway against the same SQL straight to the engine ---------------------


def bench_overhead(gateway: Gateway, runs: int, target: float) -> dict[str, Any]:
    """Direct SQL, the gateway in process and over HTTP, interleaved run by run so drift
    (JIT warm-up, caches, a busy neighbour) falls on all three alike."""
    [compiled] = gateway.compile(SELECTIVE)
    engine: Engine = gateway.engine
    text, departments = engine.sql(compiled.tree), compiled.departments
    cold = Gateway(config=gateway.config, engine=engine, model=gateway.model)

    def uncached() -> None:  # parse, validate and compile every time
        cold.planner.clear()
        cold.execute(SELECTIVE)

    actions: dict[str, Callable[[], Any]] = {
        "direct": lambda: engine.run(text, departments),  # the SQL text, straight to the engine
        "gateway": lambda: gateway.execute(SELECTIVE),
        "uncached_plan": uncached,
    }
    with _http_client(gateway) as post:
        actions["http"] = post
        samples = interleaved(actions, runs)
    direct = percentile(samples["direct"], 0.5)
    ratio = percentile(samples["gateway"], 0.5) / direct
    return {
        "engine": engine.name,
        "direct_sql": summary(samples["direct"]),
        "gateway_in_process": summary(samples["gateway"]),
        "gateway_uncached_plan": summary(samples["uncached_plan"]),
        "gateway_over_http": summary(samples["http"]),
        "p50_ratio_in_process": ratio,
        "p50_ratio_uncached_plan": percentile(samples["uncached_plan"], 0.5) / direct,
        "p50_ratio_over_http": percentile(samples["http"], 0.5) / direct,
        "target": f"<= {target}",
        "met": ratio <= target,
    }


@contextlib.contextmanager
def _http_client(gateway: Gateway) -> Iterator[Callable[[], None]]:
    """A real uvicorn on loopback serving ``gateway``, and a function that POSTs the query once."""
    import http.client
    import socket

    import uvicorn

    from gateway.http.app import SERVER_OPTIONS, create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(gateway), host="127.0.0.1", port=port, log_level="warning", **SERVER_OPTIONS)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    body = json.dumps({"query": SELECTIVE}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", port)

    def post() -> None:
        connection.request("POST", "/graphql", body, {"content-type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200
        response.read()

    try:
        yield post
    finally:
        connection.close()
        server.should_exit = True
        thread.join(timeout=10)


def bench_policy(plain: Gateway, secured: Gateway, runs: int) -> list[dict[str, Any]]:
    """Each of :data:`POLICY_QUERIES` without policies and as health_analyst (masked ids, names,
    birth dates), interleaved run by run."""
    identity = Identity("health_analyst", {})
    rows = []
    for name, query in POLICY_QUERIES.items():
        assert "errors" not in secured.execute(query, identity=identity).body
        actions: dict[str, Callable[[], Any]] = {
            "without": functools.partial(plain.execute, query),
            "with": functools.partial(secured.execute, query, identity=identity),
        }
        samples = interleaved(actions, runs)
        ratio = percentile(samples["with"], 0.5) / percentile(samples["without"], 0.5)
        low, high = ratio_interval(samples["with"], samples["without"])
        rows.append(
            {
                "engine": plain.engine.name,
                "query": name,
                "without_policy": summary(samples["without"]),
                "with_policy": summary(samples["with"]),
                "p50_ratio": ratio,
                "p50_ratio_ci95": [low, high],
                "target": "<= 1.05",
                # met only if the whole interval is; undecided (None) if it spans the target
                "met": True if high <= 1.05 else False if low > 1.05 else None,
            }
        )
    return rows


def bench_statements(gateway: Gateway) -> dict[str, Any]:
    counts = {}
    for depth, query in enumerate(NESTED, start=1):
        # Planned first: a plan reads the row counts and fan-outs its estimate needs from the
        # stores once per table and relationship (kept an hour), not once per request.
        gateway.plan(query)
        before = gateway.engine.statements  # type: ignore[attr-defined]
        response = gateway.execute(query)
        assert "errors" not in response.body
        counts[f"depth_{depth}"] = gateway.engine.statements - before  # type: ignore[attr-defined]
    return {"statements_per_request": counts, "target": "1 per root field", "met": set(counts.values()) == {1}}


def services_config(delegate: Literal["auto", "never"]) -> Config:
    """``configs/services.yaml`` as the in-process figures measure it: the work of answering,
    sent from one address without a token. A result cache hit would skip the work, and the
    anonymous rate limit would refuse the load: both are off."""
    from gateway.config import RoleLimits, load_config

    config = load_config(REPO / "configs" / "services.yaml").with_delegate(delegate)
    return config.model_copy(
        update={
            "cache": config.cache.model_copy(update={"enabled": False}),
            "limits": config.limits.model_copy(update={"roles": {"anonymous": RoleLimits(requests_per_minute=0)}}),
        }
    )
