"""The seed-scale benchmark: the gateway over 73 departments, 755 tables and 26.88 million rows.

    python -m bench.seed [--runs N]

It makes sure the seed-scale city is loaded (`citygate datagen --profile seed-scale`; instant
when it already is, and the generate and load times are recorded when it is not), then, for
each engine in a fresh process of its own (so memory is the gateway's alone):

- start: configuration load, introspection of the 73 departments (and, on the embedded engine,
  attaching the 73 stores), and the GraphQL schema build over all 755 tables;
- memory: the process's resident set after start and after the queries;
- introspection: the full introspection query (graphql-core's ``get_introspection_query``);
- selective: 10 rows by a primary-key range of the largest PostgreSQL and MariaDB tables;
- cross-department: 10 rows and each row's enterprise in another department (a PostgreSQL
  table joined to MariaDB through ``credit_code``), and a resident by ID number with their
  records in another department (the reverse relationship over ``id_card``).

Every figure carries its number of runs. Targets: schema build < 5 s, RSS < 500 MB,
selective query p50 < 200 ms. ``bench/run.py`` calls :func:`run`.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "seed-scale.yaml"
TARGETS = {"schema_build_s": 5.0, "rss_mb": 500.0, "selective_p50_ms": 200.0}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(samples, 0.5), 2),
        "p95_ms": round(percentile(samples, 0.95), 2),
        "runs": len(samples),
    }


def rss_mb() -> float:
    """This process's resident set now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- the queries ----------------------------------------------------------------------------


def workload(seed_plan: Any) -> dict[str, Any]:
    """The tables the queries read, chosen from the plan: the largest of each kind."""
    stores = {d.name: d.store for d in seed_plan.departments}
    tables = sorted(seed_plan.tables, key=lambda t: -t.base_rows)

    def largest(store: str, column: str | None = None) -> Any:
        return next(
            t
            for t in tables
            if stores[t.department] == store
            and t.name not in ("residents", "enterprises")
            and (column is None or column in {c.name for c in t.columns})
        )

    return {
        "selective_postgresql": largest("postgresql"),
        "selective_mariadb": largest("mariadb"),
        "cross_object": largest("postgresql", "credit_code"),  # enterprises live in MariaDB
        "cross_reverse": largest("mariadb", "id_card"),  # residents live in PostgreSQL
        "residents": seed_plan.residents,
    }


def _root(table: Any) -> str:
    return f"{table.department}_{table.name}"


def _scalars(table: Any) -> str:
    return " ".join(c.name for c in table.columns)


def queries(
    seed_plan: Any, resident_ids: list[str], rng: random.Random
) -> dict[str, Callable[[], tuple[str, dict[str, Any]]]]:
    """Name -> a function giving the next (query, variables): a fresh key range or ID each time,
    so neither the plan cache nor a store's result cache answers a repeat."""
    chosen = workload(seed_plan)
    out: dict[str, Callable[[], tuple[str, dict[str, Any]]]] = {}

    def key_range(table: Any, selection: str) -> Callable[[], tuple[str, dict[str, Any]]]:
        query = (
            f"query ($lo: BigInt!, $hi: BigInt!) {{ {_root(table)}(where: {{record_id: {{_gte: $lo, _lt: $hi}}}}, "
            f"order_by: [{{record_id: asc}}]) {{ {selection} }} }}"
        )

        def make() -> tuple[str, dict[str, Any]]:
            low = rng.randrange(1, table.base_rows - 10)
            return query, {"lo": str(low), "hi": str(low + 10)}

        return make

    for name in ("selective_postgresql", "selective_mariadb"):
        out[name] = key_range(chosen[name], _scalars(chosen[name]))
    out["cross_object"] = key_range(
        chosen["cross_object"], "record_id credit_code enterprise { name industry district }"
    )
    reverse = chosen["cross_reverse"]
    residents = _root(chosen["residents"])
    reverse_query = (
        f"query ($id: String!) {{ {residents}_by_pk(id_card: $id) {{ name district "
        f"{_root(reverse)}(order_by: [{{record_id: asc}}]) {{ record_id }} }} }}"
    )
    out["cross_reverse"] = lambda: (reverse_query, {"id": rng.choice(resident_ids)})
    return out


def describe(seed_plan: Any) -> dict[str, str]:
    return {name: f"{t.department}.{t.name} ({t.base_rows:,} rows)" for name, t in workload(seed_plan).items()}


# -- one engine, in its own process ---------------------------------------------------------


def child(engine: str, runs: int) -> dict[str, Any]:
    """Start a gateway on ``engine`` over the seed-scale config and measure it (in this process)."""

    def say(message: str) -> None:
        print(f"[{engine}] {message}", file=sys.stderr, flush=True)

    result, gateway = _start(engine, say)
    try:
        result.update(_introspection(gateway, 3, say))  # about 10-30 s each at 755 tables
        result.update(_queries(gateway, runs, say))
        gc.collect()
        result["rss_mb_after_queries"] = round(rss_mb(), 1)
    finally:
        gateway.close()
    return result


def _start(engine: str, say: Callable[[str], None]) -> tuple[dict[str, Any], Any]:
    from gateway.config import load_config
    from gateway.execution.engines import create_engine
    from gateway.execution.gateway import Gateway
    from gateway.graphql.schema import build_model

    result: dict[str, Any] = {"rss_mb_before": round(rss_mb(), 1)}
    began = time.perf_counter()
    # "delegated": Trino, with each statement that reads one store run on that store; the
    # engines' own figures keep every statement on the engine
    loaded = load_config(CONFIG)
    # the time to prepare a request is measured on its own (schema build, introspection): on a
    # busy machine the first plans of 755 tables may pass the deployment's 2 s
    loaded = loaded.model_copy(update={"limits": loaded.limits.model_copy(update={"plan_seconds": 30.0})})
    config = (
        loaded.with_delegate("auto") if engine == "delegated" else loaded.with_engine(engine).with_delegate("never")  # type: ignore[arg-type]
    )
    result["config_load_s"] = round(time.perf_counter() - began, 3)
    began = time.perf_counter()
    instance = create_engine(config)
    result["engine_create_s"] = round(time.perf_counter() - began, 3)  # embedded: attaching 73 stores
    say(f"engine ready in {result['engine_create_s']} s; introspecting 73 departments")
    began = time.perf_counter()
    gateway = Gateway.start(config, instance)
    result["gateway_start_s"] = round(time.perf_counter() - began, 3)  # introspection + schema build
    result["unavailable_departments"] = sorted(gateway.unavailable)
    result["tables_in_schema"] = len(gateway.model.tables)
    result["root_fields"] = len(gateway.model.roots)
    result["types_in_schema"] = len(gateway.model.schema.type_map)
    builds = []
    for _ in range(3):
        began = time.perf_counter()
        build_model(gateway.catalogue, config.catalogue_settings())
        builds.append((time.perf_counter() - began) * 1000)
    result["schema_build"] = summary(builds)
    gc.collect()
    result["rss_mb_after_start"] = round(rss_mb(), 1)
    say(f"schema of {result['tables_in_schema']} tables; start {result['gateway_start_s']} s")
    return result, gateway


def _introspection(gateway: Any, runs: int, say: Callable[[str], None]) -> dict[str, Any]:
    """The full introspection query, as GraphiQL and code generators send it."""
    from graphql import get_introspection_query

    query = get_introspection_query()
    samples = []
    body: dict[str, Any] = {}
    for _ in range(runs):
        began = time.perf_counter()
        body = gateway.execute(query).body
        samples.append((time.perf_counter() - began) * 1000)
        assert "errors" not in body, body.get("errors")
    say(f"introspection p50 {percentile(samples, 0.5):.0f} ms")
    return {
        "introspection_response_mb": round(len(json.dumps(body["data"])) / 1e6, 2),
        "introspection": summary(samples),
    }


def _queries(gateway: Any, runs: int, say: Callable[[str], None]) -> dict[str, Any]:
    import duckdb

    from datasets.seed_scale import plan
    from datasets.seedgen import reference_sql
    from gateway.execution.prepared import Statement

    ids = duckdb.connect()
    for statement in reference_sql(2000, 1):  # the first 2,000 residents' ID numbers
        ids.execute(statement)
    resident_ids = [row[0] for row in ids.execute("SELECT id_card FROM residents_ref").fetchall()]
    ids.close()
    result: dict[str, Any] = {}
    for name, make in queries(plan(), resident_ids, random.Random(7)).items():
        for _ in range(3):  # warm-up: connections, Trino's plan caches
            query, variables = make()
            checked = gateway.execute(query, variables).body
            assert "errors" not in checked, (name, checked.get("errors"))
        samples, rows = [], []
        for _ in range(runs):
            query, variables = make()
            began = time.perf_counter()
            response = gateway.execute(query, variables).body
            samples.append((time.perf_counter() - began) * 1000)
            data = next(iter(response["data"].values()))
            rows.append(len(data) if isinstance(data, list) else int(data is not None))
        # The same statement sent straight to its route: what the gateway adds on top (a field
        # cut between stores runs several, each given keys: the gateway's own run of them)
        direct = []
        [statement] = gateway.prepared(*make())
        if isinstance(statement, Statement):
            for _ in range(runs):
                query, variables = make()
                [statement] = gateway.prepared(query, variables)
                assert isinstance(statement, Statement)
                began = time.perf_counter()
                statement.route.engine.run(statement.text, statement.compiled.departments)
                direct.append((time.perf_counter() - began) * 1000)
        result[name] = {
            **summary(samples),
            "route": gateway.execute(*make()).routes,
            "rows_per_answer": round(sum(rows) / len(rows), 1),
            "engine_only": summary(direct) if direct else None,
        }
        alone = f"engine alone p50 {result[name]['engine_only']['p50_ms']} ms" if direct else "batched"
        say(f"{name}: p50 {result[name]['p50_ms']} ms, p95 {result[name]['p95_ms']} ms ({alone})")
    return result


def _in_process(engine: str, runs: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """Run :func:`child` in a fresh interpreter, forwarding its progress lines."""
    command = [sys.executable, "-m", "bench.seed", "--child", engine, "--runs", str(runs)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None and process.stdout is not None
    tail: list[str] = []
    for raw in process.stderr:
        line = raw.rstrip()
        tail = [*tail[-20:], line]
        if line.startswith(f"[{engine}]"):
            progress(line)
    output = process.stdout.read()
    if process.wait() != 0:
        return {"error": "\n".join(tail)}
    parsed: dict[str, Any] = json.loads(output)
    return parsed


# -- the whole benchmark ----------------------------------------------------------------------


def run(runs: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """Ensure the seed-scale city is loaded, then measure each engine in its own process."""
    from datasets.seed_scale import plan
    from datasets.seedgen import ensure_loaded
    from gateway.config import load_config

    seed_plan = plan()
    progress("seed-scale: checking that 73 departments / 755 tables / 26.88M rows are loaded")
    load = ensure_loaded(load_config(CONFIG), 1.0, seed_plan, progress=progress)
    report: dict[str, Any] = {
        "departments": len(seed_plan.departments),
        "tables": len(seed_plan.tables),
        "rows": seed_plan.total_rows(),
        "load": load.as_dict(),
        "workload": describe(seed_plan),
        "engines": {},
    }
    for engine in ("trino", "embedded", "delegated"):
        progress(f"seed-scale: measuring the {engine} engine in a fresh process ({runs} runs per query)")
        report["engines"][engine] = _in_process(engine, runs, progress)
    report["targets"] = targets(report["engines"])
    return report


def targets(engines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each target per engine, with the figure it was judged on."""
    verdicts: dict[str, Any] = {}
    for engine, figures in engines.items():
        if "error" in figures:
            verdicts[engine] = {"error": "the engine's measurement failed"}
            continue
        build_s = figures["schema_build"]["p50_ms"] / 1000
        selective = max(figures["selective_postgresql"]["p50_ms"], figures["selective_mariadb"]["p50_ms"])
        verdicts[engine] = {
            "schema_build_s": {"value": round(build_s, 3), "target": "< 5", "met": build_s < TARGETS["schema_build_s"]},
            "gateway_start_s": {"value": figures["gateway_start_s"], "note": "introspection of 73 stores + build"},
            "rss_mb": {
                "value": figures["rss_mb_after_start"],
                "target": "< 500",
                "met": figures["rss_mb_after_start"] < TARGETS["rss_mb"],
            },
            "rss_mb_after_queries": {
                "value": figures["rss_mb_after_queries"],
                "met": figures["rss_mb_after_queries"] < TARGETS["rss_mb"],
            },
            "selective_p50_ms": {
                "value": selective,
                "target": "< 200",
                "met": selective < TARGETS["selective_p50_ms"],
            },
        }
    return verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.seed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="runs per query (default 50)")
    parser.add_argument("--child", choices=("trino", "embedded", "delegated"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help="also write the JSON report here")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.runs)))
        return 0
    report = run(args.runs, lambda message: print(message, file=sys.stderr, flush=True))
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
