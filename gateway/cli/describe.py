"""``citygate schema`` and ``reference``: what the gateway says of itself."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.cli.common import Command, as_role, demo_or_config, gateway_of, identity_of


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the GraphQL schema (SDL)."""
    from graphql import print_schema

    gateway = gateway_of(args)
    try:
        identity = identity_of(args)
        model = gateway.view(identity).model if identity is not None else gateway.model
        print(print_schema(model.schema))
    finally:
        gateway.close()
    return 0


def cmd_reference(args: argparse.Namespace) -> int:
    """Print a reference page made from the code (or write both into a directory)."""
    from catalogue.errors import error_table
    from gateway.reference import config_reference, write

    if args.write:
        for path in write(Path(args.write)):
            print(f"wrote {path}")
        return 0
    print(config_reference() if args.page == "config" else error_table(), end="")
    return 0


def register(command: Command) -> None:
    """The commands that print what the gateway says of itself."""
    p = command("schema", cmd_schema)
    p.add_argument("action", choices=("print",))
    demo_or_config(p)
    as_role(p)

    p = command("reference", cmd_reference)
    p.add_argument("page", choices=("config", "errors"), help="the configuration reference, or the error codes")
    p.add_argument("--write", metavar="DIR", help="write both pages into DIR (docs/) instead of printing one")
