"""The ``citygate`` command line.

Every failure the user can fix ends as one line, ``citygate: error: ...``, naming the file,
key or department to check, and exit status 2; never a stack trace.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.errors import CitygateError

DEFAULT_DATA_DIR = Path(".citygate") / "demo"


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from gateway.config import load_config

    config = load_config(args.config)
    engine = getattr(args, "engine", None)
    return config.with_engine(engine) if engine else config


def cmd_datagen(args: argparse.Namespace) -> int:
    """Generate the demo city and write each department into its own store."""
    from tqdm import tqdm

    from catalogue.demo_city import TABLES
    from connectors import stores
    from gateway.config import SqliteStore
    from gateway.datagen import generate

    if args.config:
        config = _load(args)
        targets = {name: d.store for name, d in config.departments.items()}
    else:
        data_dir = Path(args.data_dir).resolve()
        departments = sorted({t.department for t in TABLES})
        targets = {d: SqliteStore(kind="sqlite", path=data_dir / f"{d}.db") for d in departments}
    unknown = [t for t in {t.department for t in TABLES} if t not in targets]
    if unknown:
        raise CitygateError(f"{args.config}: departments: the demo city needs departments {sorted(unknown)}")

    started = time.monotonic()
    print(f"generating the demo city at scale {args.scale} (seed {args.seed}) ...", file=sys.stderr)
    city = generate(scale=args.scale, seed=args.seed)
    print(f"generated {city.total_rows:,} rows in {time.monotonic() - started:.1f} s", file=sys.stderr)
    with tqdm(
        total=city.total_rows,
        unit="row",
        unit_scale=True,
        desc="loading",
        file=sys.stderr,
        disable=None,
        mininterval=0.5,
    ) as bar:
        for department, store in targets.items():
            tables = [(spec, city.rows(spec.department, spec.name)) for spec in TABLES if spec.department == department]
            if not tables:
                continue
            bar.set_description(f"loading {department} ({store.kind})")
            stores.load(department, store, tables, bar.update)
    print(
        f"loaded {city.total_rows:,} rows into {len(targets)} stores in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    return 0


def cmd_trino_catalogs(args: argparse.Namespace) -> int:
    """Write one Trino catalog properties file per department."""
    from connectors.trino import write_catalog_files

    for path in write_catalog_files(_load(args), Path(args.out)):
        print(path)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Report whether the engine and every department's store answer."""
    from connectors.base import create_engine

    engine = create_engine(_load(args))
    try:
        health = engine.health()
    finally:
        engine.close()
    print(f"engine {health.engine}: {'ok' if health.departments or health.ok else 'unreachable'}")
    for department, state in health.departments.items():
        print(f"  {department}: {state}")
    return 0 if health.ok else 1


def cmd_introspect(args: argparse.Namespace) -> int:
    """Print each department's tables and column types as the engine sees them."""
    from connectors.base import create_engine

    engine = create_engine(_load(args))
    try:
        catalogue = engine.introspect(args.department or None)
    finally:
        engine.close()
    print(json.dumps(catalogue.describe(), ensure_ascii=False, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="citygate", description="A federated GraphQL gateway over a city's departments."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        doc = (handler.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc, description=doc)
        p.set_defaults(handler=handler)
        return p

    p = command("datagen", cmd_datagen)
    p.add_argument("--config", help="write into the stores this config names (default: SQLite files)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="where SQLite files go without --config")
    p.add_argument("--scale", type=_positive_float, default=1.0, help="multiply the scalable row counts (default 1)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the contract's)")

    p = command("trino-catalogs", cmd_trino_catalogs)
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="directory for the .properties files")

    for name, handler in (("check", cmd_check), ("introspect", cmd_introspect)):
        p = command(name, handler)
        p.add_argument("--config", required=True)
        p.add_argument("--engine", choices=("trino", "embedded"), help="override the config's engine")
        if name == "introspect":
            p.add_argument("department", nargs="*")
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "seed", 0) is None:
        from gateway.datagen import DEFAULT_SEED

        args.seed = DEFAULT_SEED
    try:
        return int(args.handler(args))
    except CitygateError as error:
        print(f"citygate: error: {error.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("citygate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
