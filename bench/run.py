"""citygate's benchmarks, measured side by side in one run; `make bench` runs them.

    python -m bench.run [--quick]

Every figure is a ratio against a baseline measured in the same run on this machine:

- shaping: citygate's row shaping against strawberry's default resolvers over the same rows,
  per response field;
- overhead: the same query through the gateway (in process, and over HTTP) against its
  compiled SQL sent straight to the engine, on Trino and on the embedded engine;
- statements: engine statements per request for nesting depths 1 to 4.

It writes ``bench/results/<date>.json`` and ``bench/results/<date>.md`` and prints the path.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import strawberry
from strawberry.schema.config import StrawberryConfig
from tqdm import tqdm

from connectors.base import Engine, create_engine
from gateway.config import PoliciesConfig, load_config
from gateway.execute import Gateway, Identity
from gateway.shape import shape

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

SELECTIVE = """{ health_clinic_visits(where: {hospital: {_eq: "东华医院"}, visit_date: {_eq: "2015-06-30"}},
  order_by: [{visit_id: asc}], limit: 10) { visit_id hospital department_name diagnosis visit_date cost } }"""

_ROOT = "market_regulation_enterprises(limit: 50, order_by: [{credit_code: asc}])"
NESTED = [
    f"{{ {_ROOT} {{ name }} }}",
    f"{{ {_ROOT} {{ name legal_representative {{ name }} }} }}",
    f"{{ {_ROOT} {{ name legal_representative {{ name clinic_visits {{ visit_date }} }} }} }}",
    f"{{ {_ROOT} {{ name legal_representative {{ name clinic_visits {{ visit_date "
    f"resident {{ health_record {{ blood_type }} }} }} }} }} }}",
]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(action: Callable[[], Any], runs: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        action()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def interleaved(actions: dict[str, Callable[[], Any]], runs: int, warmup: int = 5) -> dict[str, list[float]]:
    """Milliseconds per run of each action, taking turns run by run so that drift (JIT
    warm-up, caches, a busy neighbour) falls on all of them alike."""
    samples: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(warmup):
        for action in actions.values():
            action()
    for _ in range(runs):
        for name, action in actions.items():
            started = time.perf_counter()
            action()
            samples[name].append((time.perf_counter() - started) * 1000)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(samples, 0.5), "p95_ms": percentile(samples, 0.95), "runs": len(samples)}


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
        cold._plans.clear()
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

    from gateway.http import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(gateway), host="127.0.0.1", port=port, log_level="warning"))
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


POLICY_QUERY = """{ health_clinic_visits(where: {hospital: {_eq: "东华医院"}, visit_date: {_eq: "2015-06-30"}},
  order_by: [{visit_id: asc}], limit: 10) { visit_id id_card diagnosis cost resident { name birth_date } } }"""


def bench_policy(plain: Gateway, secured: Gateway, runs: int) -> dict[str, Any]:
    """The same query without policies and as health_analyst (masked ids, names, birth dates),
    interleaved run by run."""
    identity = Identity("health_analyst", {})
    assert "errors" not in secured.execute(POLICY_QUERY, identity=identity).body
    actions: dict[str, Callable[[], Any]] = {
        "without": lambda: plain.execute(POLICY_QUERY),
        "with": lambda: secured.execute(POLICY_QUERY, identity=identity),
    }
    samples = interleaved(actions, runs)
    ratio = percentile(samples["with"], 0.5) / percentile(samples["without"], 0.5)
    return {
        "engine": plain.engine.name,
        "without_policy": summary(samples["without"]),
        "with_policy": summary(samples["with"]),
        "p50_ratio": ratio,
        "target": "<= 1.05",
        "met": ratio <= 1.05,
    }


def bench_statements(gateway: Gateway) -> dict[str, Any]:
    counts = {}
    for depth, query in enumerate(NESTED, start=1):
        before = gateway.engine.statements  # type: ignore[attr-defined]
        response = gateway.execute(query)
        assert "errors" not in response.body
        counts[f"depth_{depth}"] = gateway.engine.statements - before  # type: ignore[attr-defined]
    return {"statements_per_request": counts, "target": "1 per root field", "met": set(counts.values()) == {1}}


# -- report -----------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# citygate benchmarks, {report['date']}", "", f"Machine: {report['machine']}", ""]
    shaping = report["shaping"]
    lines += [
        "## Response shaping per field",
        "",
        "| | µs per field | runs |",
        "|---|---:|---:|",
        f"| citygate templates | {shaping['citygate_us_per_field']:.3f} | {shaping['citygate']['runs']} |",
        f"| strawberry default resolvers | {shaping['strawberry_us_per_field']:.3f} "
        f"| {shaping['strawberry']['runs']} |",
        "",
        f"citygate is **{shaping['ratio']:.1f}×** cheaper per field (target {shaping['target']}: "
        f"{'met' if shaping['met'] else 'missed'}).",
        "",
        "## Gateway overhead against the same SQL sent straight to the engine",
        "",
        "| engine | direct SQL p50 / p95 ms | gateway p50 / p95 ms | no plan cache p50 / p95 ms "
        "| over HTTP p50 / p95 ms | p50 ratio (no plan cache, HTTP) | target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["overhead"]:
        d, g, u, h = (
            row[k] for k in ("direct_sql", "gateway_in_process", "gateway_uncached_plan", "gateway_over_http")
        )
        lines.append(
            f"| {row['engine']} | {d['p50_ms']:.2f} / {d['p95_ms']:.2f} | {g['p50_ms']:.2f} / {g['p95_ms']:.2f} | "
            f"{u['p50_ms']:.2f} / {u['p95_ms']:.2f} | {h['p50_ms']:.2f} / {h['p95_ms']:.2f} | "
            f"{row['p50_ratio_in_process']:.3f} "
            f"({row['p50_ratio_uncached_plan']:.3f}, {row['p50_ratio_over_http']:.3f}) "
            f"| {row['target']} {'met' if row['met'] else 'missed'} |"
        )
    lines += [
        "",
        f"Runs per figure: {report['overhead'][0]['direct_sql']['runs']} (embedded), "
        f"{report['overhead'][-1]['direct_sql']['runs']} (Trino), interleaved.",
    ]
    lines += [
        "",
        "## Policy overhead: the same query without policies and as health_analyst",
        "",
        "| engine | without p50 / p95 ms | with p50 / p95 ms | p50 ratio | target |",
        "|---|---:|---:|---:|---|",
    ]
    for row in report["policy"]:
        w, p = row["without_policy"], row["with_policy"]
        lines.append(
            f"| {row['engine']} | {w['p50_ms']:.2f} / {w['p95_ms']:.2f} | {p['p50_ms']:.2f} / "
            f"{p['p95_ms']:.2f} | {row['p50_ratio']:.3f} | {row['target']} "
            f"{'met' if row['met'] else 'missed'} ({w['runs']} runs) |"
        )
    counts = report["statements"]["statements_per_request"]
    lines += [
        "",
        "## Engine statements per request by nesting depth",
        "",
        "| " + " | ".join(counts) + " |",
        "|" + "---:|" * len(counts),
        "| " + " | ".join(str(v) for v in counts.values()) + " |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, for a smoke test")
    args = parser.parse_args(argv)
    runs = 30 if args.quick else 200
    config = load_config(REPO / "configs" / "services.yaml")
    report: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "overhead": [],
    }
    steps = tqdm(total=6, desc="benchmarks", unit="step", file=sys.stderr)
    embedded = Gateway.start(config.with_engine("embedded"), create_engine(config.with_engine("embedded")))
    trino = Gateway.start(config, create_engine(config))
    demo = REPO / "policies" / "demo"
    secured_config = config.model_copy(
        update={
            "policies": PoliciesConfig(
                files=[demo / "central.yaml", demo / "health-floor.yaml"], hash_key="bench-hash-key-0123456789"
            )
        }
    )
    try:
        steps.set_description("shaping vs strawberry")
        report["shaping"] = bench_shaping(embedded, runs)
        steps.update()
        steps.set_description("overhead on the embedded engine")
        report["overhead"].append(bench_overhead(embedded, runs, 1.5))
        steps.update()
        steps.set_description("overhead on Trino")
        report["overhead"].append(bench_overhead(trino, max(30, runs // 2), 1.10))
        steps.update()
        steps.set_description("policy overhead")
        report["policy"] = []
        for engine_kind, plain, count in (("embedded", embedded, runs), ("trino", trino, max(30, runs // 2))):
            secured_kind = secured_config.with_engine(engine_kind)  # type: ignore[arg-type]
            secured = Gateway.start(secured_kind, create_engine(secured_kind))
            try:
                report["policy"].append(bench_policy(plain, secured, count))
            finally:
                secured.close()
        steps.update()
        steps.set_description("statements per depth")
        report["statements"] = bench_statements(trino)
        steps.update()
    finally:
        embedded.close()
        trino.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / dt.date.today().isoformat()
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=_jsonable))
    stem.with_suffix(".md").write_text(markdown(report))
    steps.update()
    steps.close()
    print(markdown(report))
    print(f"report: {stem.with_suffix('.md')}")
    return 0


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)  # type: ignore[arg-type]
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
