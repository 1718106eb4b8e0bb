"""citygate's benchmarks, measured side by side in one run; `make bench` runs them.

    python -m bench.run [--quick] [--sections peer,load,...] [--out DIR]

Every figure is a ratio or a comparison measured in the same run on this machine, with its
p50, p95 (and p99 where a load generator measures it) and its number of runs:

- shaping, overhead, policy, statements: in one process (``bench/inprocess.py``);
- peer: PostGraphile and citygate serving the same query under wrk (``bench/peer.py``);
- hostile: a victim's p50 idle and under each attack (``bench/hostile.py``);
- load: a bounded run of 10,000 requests from 32 connections (``bench/load.py``);
- delegation: the delegated route against PostGraphile, the engines and the raw driver
  (``bench/delegation.py``), citygate with its default worker processes;
- batched: relationships between stores followed by key, against Trino's and the embedded
  engine's joins (``bench/batched.py``);
- durability: every answer after its durable audit record, against the trail off
  (``bench/durability.py``);
- seed: the seed-scale profile (``bench/seed.py``), when that module is there.

It writes ``bench/results/<date>.json``, ``bench/results/<date>.md`` and the plots in
``bench/results/<date>/``, and prints the report's path.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import os
import platform
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SECTIONS = (
    "shaping",
    "overhead",
    "policy",
    "statements",
    "hostile",
    "peer",
    "load",
    "delegation",
    "batched",
    "durability",
    "seed",
)


@dataclass(frozen=True)
class Settings:
    """How much to measure: the full suite, or a quick smoke test of every section."""

    runs: int = 200  # per in-process figure (Trino: half)
    peer_rounds: int = 3
    peer_seconds: float = 5.0
    load_requests: int = 10_000
    load_connections: int = 32

    @classmethod
    def quick(cls) -> Settings:
        return cls(runs=30, peer_rounds=1, peer_seconds=2.0, load_requests=2_000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and shorter loads, for a smoke test")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes (default bench/results)")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    settings = Settings.quick() if args.quick else Settings()

    report: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}",
        "settings": settings.__dict__,
        "failures": {},
    }
    load_before = os.getloadavg()
    with tqdm(total=len(chosen), desc="benchmarks", unit="section", file=sys.stderr) as bar:

        def progress(message: str) -> None:
            bar.set_postfix_str(message[:70], refresh=True)

        with tempfile.TemporaryDirectory(prefix="citygate-bench-") as tmp:
            workdir = Path(tmp)
            for name, action in _plan(chosen, settings, workdir, progress):
                bar.set_description(name)
                try:
                    report.update(action())
                except Exception as error:  # a failed section is reported; the others still run
                    traceback.print_exc()
                    report["failures"][name] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
                bar.update()
    load_after = os.getloadavg()
    report["load_average"] = (
        f"load average {load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end "
        "(other work on the machine shows up in the spreads, not in the ratios)"
    )
    if "load" in report:
        report["load_wrk_output"] = report["load"].pop("wrk_output", "")

    from bench import report as writer  # matplotlib loads only when the report is written

    path = writer.write(report, args.out / dt.date.today().isoformat())
    print(path.read_text(encoding="utf-8"))
    print(f"report: {path}")
    return 1 if report["failures"] else 0


def _plan(
    chosen: list[str], settings: Settings, workdir: Path, progress: Callable[[str], None]
) -> Iterator[tuple[str, Callable[[], dict[str, Any]]]]:
    """The chosen sections in order, each a function returning its part of the report."""
    in_process = [s for s in ("shaping", "overhead", "policy", "statements") if s in chosen]
    if in_process:
        with contextlib.ExitStack() as stack:
            try:
                embedded, trino = stack.enter_context(_gateways())
            except Exception as error:  # the services are down: each in-process section says so
                failed = error
                for name in in_process:
                    yield name, lambda: _raise(failed)
            else:
                yield from _in_process(in_process, settings, embedded, trino, progress)
    if "hostile" in chosen:
        from bench import hostile

        yield "hostile", lambda: {"hostile": hostile.run(max(20, settings.runs // 4), progress)}
    if "peer" in chosen:
        from bench import peer

        yield "peer", lambda: {"peer": peer.run(workdir, settings.peer_rounds, settings.peer_seconds, progress)}
    if "load" in chosen:
        from bench import load

        yield (
            "load",
            lambda: {"load": load.run(workdir, settings.load_requests, settings.load_connections, progress)},
        )
    if "delegation" in chosen:
        from bench import delegation

        yield (
            "delegation",
            lambda: {
                "delegation": delegation.run(
                    workdir, settings.peer_rounds, settings.peer_seconds, settings.runs, progress
                )
            },
        )
    if "batched" in chosen:
        from bench import batched

        yield "batched", lambda: {"batched": batched.run(max(30, settings.runs // 2), progress)}
    if "durability" in chosen:
        from bench import durability

        yield (
            "durability",
            lambda: {"durability": durability.run(workdir, settings.peer_rounds, settings.peer_seconds, progress)},
        )
    if "seed" in chosen:
        yield "seed", lambda: {"seed": _seed(settings.runs, progress)}


@contextlib.contextmanager
def _gateways() -> Iterator[tuple[Any, Any]]:
    """A gateway on each engine over the services, in this process."""
    from bench.inprocess import services_config
    from gateway.execution.engines import create_engine
    from gateway.execution.gateway import Gateway

    # the engines' own figures: every statement on the engine (bench/delegation.py measures the
    # delegated route)
    config = services_config("never")
    embedded = Gateway.start(config.with_engine("embedded"), create_engine(config.with_engine("embedded")))
    try:
        trino = Gateway.start(config, create_engine(config))
        try:
            yield embedded, trino
        finally:
            trino.close()
    finally:
        embedded.close()


def _in_process(
    chosen: Sequence[str], settings: Settings, embedded: Any, trino: Any, progress: Callable[[str], None]
) -> Iterator[tuple[str, Callable[[], dict[str, Any]]]]:
    from bench import inprocess, servers

    runs, trino_runs = settings.runs, max(30, settings.runs // 2)

    def quiet(what: str) -> None:
        """Start a comparison on a quiet machine: Trino compiles and collects for minutes after
        it starts or after a burst of queries, and that would fall on whatever runs then."""
        progress(f"{what}: waiting for the CPUs to go quiet")
        servers.quiesce()
        progress(what)

    if "shaping" in chosen:
        yield "shaping", lambda: {"shaping": inprocess.bench_shaping(embedded, runs)}
    if "overhead" in chosen:

        def overhead() -> dict[str, Any]:
            quiet("embedded engine")
            rows = [inprocess.bench_overhead(embedded, runs, 1.5)]
            quiet("Trino")
            rows.append(inprocess.bench_overhead(trino, trino_runs, 1.10))
            return {"overhead": rows}

        yield "overhead", overhead
    if "policy" in chosen:
        yield "policy", lambda: {"policy": _policy(embedded, trino, runs, trino_runs, quiet)}
    if "statements" in chosen:
        yield "statements", lambda: {"statements": inprocess.bench_statements(trino)}


def _policy(embedded: Any, trino: Any, runs: int, trino_runs: int, quiet: Callable[[str], None]) -> list[Any]:
    from bench import inprocess
    from gateway.config import PoliciesConfig
    from gateway.execution.engines import create_engine
    from gateway.execution.gateway import Gateway

    demo = REPO / "policies" / "demo"
    policies = PoliciesConfig(
        files=[demo / "central.yaml", demo / "health-floor.yaml"], hash_key="bench-hash-key-0123456789"
    )
    rows = []
    for kind, plain, count in (("embedded", embedded, runs), ("trino", trino, trino_runs)):
        config = plain.config.model_copy(update={"policies": policies})
        secured = Gateway.start(config, create_engine(config))
        try:
            quiet(f"{kind} engine")
            rows += inprocess.bench_policy(plain, secured, count)
        finally:
            secured.close()
    return rows


def _raise(error: Exception) -> dict[str, Any]:
    raise error


def _seed(runs: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """The seed-scale section from ``bench/seed.py``, or why it is missing."""
    try:
        seed = importlib.import_module("bench.seed")
    except ImportError as error:
        return {"missing": f"bench.seed cannot be imported ({error})"}
    result: dict[str, Any] = seed.run(runs, progress)
    return result


if __name__ == "__main__":
    sys.exit(main())
