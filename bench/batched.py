"""Relationships between stores, followed by key, side by side with the engines' joins.

    python -m bench.batched [--runs N]

In one process over the services (plan cached, result cache off, no token), four requests:
ten clinic visits (one store: the baseline every ratio divides by), the same with each visit's
resident (health -> public security), ten enterprises with their legal representatives
(MariaDB -> PostgreSQL), and ``tests/fixtures/compile/relationships.graphql`` (four
departments, three levels). Each runs three ways, in turns run by run
(:func:`bench.stats.interleaved`): batched (one statement per store and level, on the stores,
joined in the gateway: ``engine.batch_relationships: auto``), whole on Trino, and whole on the
embedded engine (``never``). Every way must give the same answer first.

Targets (issue 32): one cross-store relationship added to a one-store request costs at most 2x
the one-store p50; the four-department fixture at most 5x.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.stats import interleaved, summary

REPO = Path(__file__).resolve().parent.parent

VISITS = """{ health_clinic_visits(where: {hospital: {_eq: "东华医院"}},
  order_by: [{visit_id: asc}], limit: 10) { visit_id hospital visit_date cost } }"""
WITH_RESIDENT = """{ health_clinic_visits(where: {hospital: {_eq: "东华医院"}},
  order_by: [{visit_id: asc}], limit: 10) { visit_id hospital visit_date cost resident { name district } } }"""
ENTERPRISES = """{ market_regulation_enterprises(order_by: [{credit_code: asc}], limit: 10) {
  credit_code name legal_representative { name district } } }"""
FOUR = (REPO / "tests" / "fixtures" / "compile" / "relationships.graphql").read_text(encoding="utf-8")

REQUESTS = {
    "visits": (VISITS, None),
    "visits_with_resident": (WITH_RESIDENT, 2.0),
    "enterprises_with_representative": (ENTERPRISES, 2.0),
    "four_departments": (FOUR, 5.0),
}
WAYS = ("batched", "trino", "embedded")


@contextlib.contextmanager
def _gateways() -> Iterator[dict[str, Any]]:
    from bench.inprocess import services_config
    from gateway.execution.engines import create_engine
    from gateway.execution.gateway import Gateway

    config = services_config("auto")
    configs = {
        "batched": config.with_batching("auto"),
        "trino": config.with_batching("never"),
        "embedded": config.with_engine("embedded").with_batching("never"),
    }
    with contextlib.ExitStack() as stack:
        made = {}
        for way, each in configs.items():
            gateway = Gateway.start(each, create_engine(each))
            stack.callback(gateway.close)
            made[way] = gateway
        yield made


def run(runs: int, progress: Callable[[str], None]) -> dict[str, Any]:
    with _gateways() as gateways:
        figures: dict[str, Any] = {}
        for name, (query, _) in REQUESTS.items():
            answers = {way: gateways[way].execute(query) for way in WAYS}
            bodies = {way: json.dumps(a.body, sort_keys=True, ensure_ascii=False) for way, a in answers.items()}
            if len(set(bodies.values())) != 1 or "errors" in answers["batched"].body:
                raise AssertionError(f"{name}: the ways answer differently:\n{bodies}")
            routes = sorted(set(answers["batched"].routes.values()))
            progress(f"batched: {name} ({runs} runs of each way, in turns)")
            actions: dict[str, Callable[[], Any]] = {w: functools.partial(gateways[w].execute, query) for w in WAYS}
            samples = interleaved(actions, runs)
            figures[name] = {"routes": routes, **{way: summary(samples[way]) for way in WAYS}}
        base = figures["visits"]["batched"]["p50_ms"]
        checks = []
        for name, (_, target) in REQUESTS.items():
            if target is None:
                continue
            ratio = figures[name]["batched"]["p50_ms"] / base
            figures[name]["p50_over_one_store"] = ratio
            figures[name]["trino_over_batched"] = figures[name]["trino"]["p50_ms"] / figures[name]["batched"]["p50_ms"]
            figures[name]["embedded_over_batched"] = (
                figures[name]["embedded"]["p50_ms"] / figures[name]["batched"]["p50_ms"]
            )
            checks.append(
                {
                    "name": f"{name}: batched p50 / one-store p50",
                    "target": f"<= {target:g}",
                    "value": ratio,
                    "met": ratio <= target,
                }
            )
    return {
        "requests": {name: query for name, (query, _) in REQUESTS.items()},
        "ways": {
            "batched": "delegated, relationships between stores followed by key (engine.batch_relationships: auto)",
            "trino": "whole on Trino where a field reads several stores (batch_relationships: never)",
            "embedded": "whole on the embedded engine where a field reads several stores",
        },
        "figures": figures,
        "checks": checks,
    }


def markdown(result: Any) -> list[str]:
    """The report's section."""
    if not isinstance(result, dict) or "figures" not in result:
        return []
    lines = [
        "## Relationships between stores: followed by key, against the engines' joins",
        "",
        "In process, plan cached, result cache off; p50 (p95) in ms, the three ways in turns run by run.",
        "",
        "| request | batched | Trino | embedded | batched / one store |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, figure in result["figures"].items():
        cells = " | ".join(f"{figure[w]['p50_ms']:.2f} ({figure[w]['p95_ms']:.2f})" for w in WAYS)
        lines.append(f"| {name} | {cells} | {figure.get('p50_over_one_store', 1.0):.2f} |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.batched")
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    print(json.dumps(run(args.runs, lambda m: print(m, file=sys.stderr, flush=True)), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
