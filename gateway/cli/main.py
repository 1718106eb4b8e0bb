"""The ``citygate`` command line.

Every failure the user can fix ends as one line, ``citygate: error: ...``, naming the file,
key or department to check, and exit status 2; never a stack trace. Each group of commands is
a module of its own (:mod:`~gateway.cli.stores`, :mod:`~gateway.cli.serving`,
:mod:`~gateway.cli.describe`, :mod:`~gateway.cli.policy`, :mod:`~gateway.cli.supervision`),
with what they share in :mod:`~gateway.cli.common`; ``explain`` is here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from catalogue.errors import CitygateError
from gateway.cli import describe, policy, serving, stores, supervision
from gateway.cli.common import as_role, datasets, demo_or_config, gateway_of, identity_of

if TYPE_CHECKING:
    from gateway.execution.prepared import Batched, Statement
    from gateway.execution.views import View
    from gateway.graphql.compile import Compiled


def cmd_explain(args: argparse.Namespace) -> int:
    """Print each root field's route, and the SQL it runs there: on its store, in the store's
    dialect, when it is delegated; and on each engine."""
    from gateway.execution.engines import create_engine
    from gateway.execution.prepared import Batched, Statement

    query = sys.stdin.read() if args.query == "-" else args.query
    if query.startswith("@"):
        query = Path(query[1:]).read_text(encoding="utf-8")
    try:
        variables = json.loads(args.variables) if args.variables else None
    except ValueError:
        raise CitygateError("--variables is not valid JSON") from None
    gateway = gateway_of(args)
    try:
        identity = identity_of(args)
        prepared = gateway.prepared(query, variables, identity=identity)
        compiled = [statement.compiled for statement in prepared]
        view = gateway.view(identity)
        cost = gateway.plan(query, variables, identity=identity).cost
        most = gateway.limits(view.role).max_cost
        print(f"-- rows its statements may read at worst: {cost:,} (its role may: {most:,})")
        engines = [gateway.engine]
        other = "embedded" if gateway.engine.name == "trino" else "trino"
        if all(d.store.kind != "sqlite" for d in gateway.config.departments.values()):
            engines.append(create_engine(gateway.config.with_engine(other)))
        for made in prepared:
            key = made.compiled.key
            if isinstance(made, Batched):
                _print_batched(key, made)
            # what each engine runs, or would run were the field not cut between stores
            statement = made.whole if isinstance(made, Batched) else made
            if not isinstance(statement, Statement):
                print(f"-- {key}: not run: {gateway.engine.redact(statement.error.message)}\n")
                continue
            _print_route(key, statement)
            for engine in engines:
                print(f"-- {key} on {engine.name} ({engine.dialect})")
                # The text that runs when the route is this engine's; else the same tree there.
                # The hash key and the tie-break key travel inside the statement; not on a screen.
                runs = statement.route.engine is engine
                print(engine.redact(statement.text if runs else engine.sql(statement.rewritten)) + ";\n")
        _print_decisions(view, compiled)
        if len(engines) == 1:
            print(
                f"-- {other}: not available for this configuration (SQLite stores are read by the embedded engine only)"
            )
    finally:
        gateway.close()
    return 0


def _print_decisions(view: View, compiled: list[Compiled]) -> None:
    """The role's decisions on the tables ``compiled`` reads: what `explain --role` adds."""
    from policies.noise import least_threshold

    if view.decisions is None:
        return
    print(f"-- policy decisions for role {view.role}:")
    for (department, table), decision in sorted(view.decisions.items()):
        if any(department == d for c in compiled for d in c.departments):
            shown = ", ".join(f"{c}: {t}" for c, t in decision.columns.items())
            extra = f"; row filter: {decision.row_filter}" if decision.row_filter else ""
            extra += f"; aggregate only, k={decision.k}" if decision.access == "aggregate_only" else ""
            if decision.access == "aggregate_only" and decision.k_distinct is not None:
                extra += f" distinct {decision.k_distinct}"
            if decision.noise is not None:
                bounds = ", ".join(f"{c} in [{lo:g}, {hi:g}]" for c, (lo, hi) in decision.noise.bounds.items())
                extra += f"; noise epsilon {decision.noise.epsilon:g} per count or sum{'; ' if bounds else ''}"
                extra += bounds
                noise = decision.noise
                threshold = noise.threshold or least_threshold(noise.epsilon, decision.k, noise.delta)
                extra += f"; groups shown from a noisy count of {threshold} (delta {noise.delta:g})"
            print(f"--   {department}.{table} ({decision.access}{extra}): {shown}")


def _print_batched(key: str, batched: Batched) -> None:
    """A root field cut between stores: each part's text, which runs on its store."""
    from gateway.execution.prepared import Statement

    print(f"-- {key}: route batched, one statement per store and level, joined by key in the gateway")
    for index, statement in enumerate(batched.statements):
        print(f"-- {key}, {batched.label(index)}")
        if isinstance(statement, Statement):
            print(statement.route.engine.redact(statement.text) + ";\n")


def _print_route(key: str, statement: Statement) -> None:
    """A root field's route, and its store's own SQL (the text that runs) when it is delegated."""
    route = statement.route
    if route.store:
        print(f"-- {key}: route delegated, to {route.store} ({route.engine.dialect})")
        print(route.engine.redact(statement.text) + ";\n")
    else:
        print(f"-- {key}: route {route.name} (it reads more than one store, or needs the engine)")


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

    stores.register(command)
    serving.register(command)
    describe.register(command)

    p = command("explain", cmd_explain)
    p.add_argument("query", help="the GraphQL query, @FILE, or - for standard input")
    p.add_argument("--variables", help="variables as a JSON object")
    demo_or_config(p)
    as_role(p)

    policy.register(command)
    supervision.register(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "seed", 0) is None:
        args.seed = datasets().DEFAULT_SEED
    try:
        return int(args.handler(args))
    except CitygateError as error:
        print(f"citygate: error: {error.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("citygate: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: a line saying so, not a traceback (CITYGATE_DEBUG=1 shows it)
        if os.environ.get("CITYGATE_DEBUG"):
            raise
        print(
            f"citygate: unexpected error ({type(error).__name__}: {error}); run again with CITYGATE_DEBUG=1 "
            "to see where, and report it",
            file=sys.stderr,
        )
        return 70  # EX_SOFTWARE
