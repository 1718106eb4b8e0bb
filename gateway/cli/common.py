"""What the ``citygate`` commands share: the configuration or the demo city they run on, the
gateway over it, the role a command acts as, and the options that say so."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from catalogue.errors import CitygateError

DEFAULT_DATA_DIR = Path(".citygate") / "demo"

# How a module adds a command to the parser: ``command(name, handler)`` gives the sub-parser,
# its help being the handler's docstring.
Command = Callable[[str, Callable[[argparse.Namespace], int]], argparse.ArgumentParser]


def config_of(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The deployment config ``--config`` names, on the engine ``--engine`` names, if any."""
    from gateway.config import load_config

    config = load_config(args.config)
    engine = getattr(args, "engine", None)
    return config.with_engine(engine) if engine else config


def datasets() -> Any:
    """The demo city and the data generators (``datasets/``). They use the gateway and live
    apart from it, so the command line reaches them here, and only here, by name."""
    return importlib.import_module("datasets.commands")


def gateway_of(args: argparse.Namespace, recording: bool = False, prove: bool = True):  # type: ignore[no-untyped-def]
    """The gateway over ``--config``, or over the embedded demo city when there is none;
    ``recording``: it serves requests, so it writes the audit trail (the offline commands do not);
    ``prove=False``: one that starts with masks not proven on every route (`policy check`)."""
    from gateway.execution.engines import create_engine
    from gateway.execution.gateway import Gateway

    config = config_of(args) if getattr(args, "config", None) else datasets().demo(Path(args.data_dir).resolve())
    return Gateway.start(config, create_engine(config), recording=recording, prove=prove)


def identity_of(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The role ``--role`` names, with its ``--claim`` values; None without ``--role``."""
    from gateway.identity.caller import Identity

    if not getattr(args, "role", None):
        return None
    claims = {}
    for pair in args.claim or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CitygateError(f"--claim {pair!r}: write name=value")
        claims[name] = value
    return Identity(args.role, claims)


def demo_or_config(p: argparse.ArgumentParser) -> None:
    """The options of a command that runs on a deployment's config, or on the demo city."""
    p.add_argument("--config", help="a deployment config (default: the embedded demo city)")
    p.add_argument("--engine", choices=("trino", "embedded"), help="override the config's engine")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="the demo city's SQLite files")


def as_role(p: argparse.ArgumentParser) -> None:
    """The options of a command that can act as a role."""
    p.add_argument("--role", help="as this role sees it (with policies configured)")
    p.add_argument("--claim", action="append", metavar="NAME=VALUE", help="a claim of the role (repeatable)")
