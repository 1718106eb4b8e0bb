"""``citygate datagen``, ``trino-catalogs``, ``check`` and ``introspect``: the stores, and the
engine's view of them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gateway.cli.common import DEFAULT_DATA_DIR, Command, config_of, datasets


def cmd_datagen(args: argparse.Namespace) -> int:
    """Generate the demo city (or --profile seed-scale) and write each department into its own store."""
    if args.profile == "seed-scale":
        return int(datasets().seed_scale(args.config, args.scale))
    config = config_of(args) if args.config else None
    return int(
        datasets().datagen(config, Path(args.data_dir).resolve(), args.scale, args.seed, str(args.config), args.force)
    )


def cmd_trino_catalogs(args: argparse.Namespace) -> int:
    """Write one Trino catalog properties file per department."""
    from connectors.trino import write_catalog_files

    for path in write_catalog_files(config_of(args).engine_settings(), Path(args.out)):
        print(path)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Report whether the engine and every department's store answer."""
    from gateway.execution.engines import create_engine

    engine = create_engine(config_of(args))
    try:
        health = engine.health()
    finally:
        engine.close()
    print(f"engine {health.engine}: {'ok' if health.reachable else 'unreachable'}")
    if health.problem:
        print(f"  {health.problem}")
    for department, state in health.departments.items():
        print(f"  {department}: {state}")
    return 0 if health.ok else 1


def cmd_introspect(args: argparse.Namespace) -> int:
    """Print each department's tables and column types as the engine sees them."""
    from gateway.execution.engines import create_engine

    engine = create_engine(config_of(args))
    try:
        catalogue = engine.introspect(args.department or None)
    finally:
        engine.close()
    print(json.dumps(catalogue.describe(), ensure_ascii=False, indent=2))
    return 0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def register(command: Command) -> None:
    """The commands that fill the stores and look at them through the engine."""
    p = command("datagen", cmd_datagen)
    p.add_argument("--config", help="write into the stores this config names (default: SQLite files)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="where SQLite files go without --config")
    p.add_argument("--scale", type=_positive_float, default=1.0, help="multiply the scalable row counts (default 1)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the contract's)")
    p.add_argument("--force", action="store_true", help="write stores that hold tables citygate did not write")
    p.add_argument(
        "--profile",
        choices=("demo", "seed-scale"),
        default="demo",
        help="demo: the demo city; seed-scale: 73 departments, 755 tables, 26.88M rows (default config: "
        "configs/seed-scale.yaml)",
    )

    p = command("trino-catalogs", cmd_trino_catalogs)
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="directory for the .properties files")

    for name, handler in (("check", cmd_health), ("introspect", cmd_introspect)):
        p = command(name, handler)
        p.add_argument("--config", required=True)
        p.add_argument("--engine", choices=("trino", "embedded"), help="override the config's engine")
        if name == "introspect":
            p.add_argument("department", nargs="*")
