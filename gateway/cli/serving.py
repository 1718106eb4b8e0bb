"""``citygate demo``, ``serve`` and ``token``: serving the gateway over HTTP."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from catalogue.errors import CitygateError
from gateway.cli.common import DEFAULT_DATA_DIR, Command, config_of, datasets, gateway_of, identity_of


def _reloader(gateway: Any) -> Callable[[int, object], None]:
    """The SIGHUP handler: it only asks a thread of its own to read the policy files again.

    A handler runs on the main thread between any two bytecodes, so one that reloaded itself
    could find the gateway's lock held by the very code it interrupted, or by a reload that a
    second signal interrupted: the event loop waited on it for good. Signals that come while a
    reload runs make one more reload after it."""
    wanted = threading.Event()

    def reload_when_asked() -> None:
        while True:
            wanted.wait()
            wanted.clear()
            try:
                gateway.reload_policies()
            except CitygateError as error:
                logging.getLogger("citygate").error("policy reload failed, the old policies stay: %s", error.message)
            except Exception:  # the thread must outlive any failure, or later signals do nothing
                logging.getLogger("citygate").exception("policy reload failed, the old policies stay")

    threading.Thread(target=reload_when_asked, name="citygate-reload", daemon=True).start()
    return lambda signum, frame: wanted.set()


def _serve(args: argparse.Namespace, banner: str, epilogue: str = "", example: str = "", demo: Any = None) -> int:
    import signal

    import uvicorn

    from gateway.execution.engines import create_engine
    from gateway.execution.gateway import Gateway
    from gateway.http.app import create_app, server_options
    from gateway.observe import logs

    logs.configure(args.log_format, args.log_level)
    if args.workers is not None and args.workers < 1:
        raise CitygateError("--workers: give 1 or more")
    if (args.workers or 1) > 1:
        return _serve_workers(args, banner + epilogue, example)
    if getattr(args, "config", None):  # a deployment: it fails closed (Config.served)
        config, warnings = config_of(args).served()
        for warning in warnings:
            print(f"citygate: warning: {warning}", file=sys.stderr)
        gateway = Gateway.start(config, create_engine(config))
    else:
        gateway = gateway_of(args, recording=True)
    for department, why in gateway.unavailable.items():
        print(f"citygate: warning: {department} is left out of the schema: {why}", file=sys.stderr)

    if gateway.policies is not None:
        signal.signal(signal.SIGHUP, _reloader(gateway))
    address = f"http://{args.host}:{args.port}/graphql"
    console = f"http://{args.host}:{args.port}/console"
    print(banner.format(address=address, console=console, engine=gateway.engine.name) + epilogue, file=sys.stderr)
    try:
        app = create_app(gateway, example=example, demo=demo)
        options = server_options(gateway.config.limits)
        uvicorn.run(app, host=args.host, port=args.port, log_config=None, **options)
    finally:
        gateway.close()  # writes the audit records still queued
    return 0


def _serve_workers(args: argparse.Namespace, banner: str, example: str) -> int:
    """``--workers N``: uvicorn's supervisor runs N worker processes on one port, each with its
    own gateway (gateway/cli/workers.py). The configuration is checked here first, so a bad one
    fails once, with its message, before any worker starts."""
    import os

    import uvicorn

    from gateway.cli import workers
    from gateway.http.app import SERVER_OPTIONS
    from gateway.http.wire import WorkerProtocol

    if getattr(args, "config", None):
        _, warnings = config_of(args).served()
        for warning in warnings:
            print(f"citygate: warning: {warning}", file=sys.stderr)
    os.environ[workers.WORKER] = workers.spec(args, example)
    address = f"http://{args.host}:{args.port}/graphql"
    console = f"http://{args.host}:{args.port}/console"
    engine = args.engine or (config_of(args).engine.kind if getattr(args, "config", None) else "embedded")
    print(banner.format(address=address, console=console, engine=engine), file=sys.stderr)
    print(f"citygate: {args.workers} worker processes", file=sys.stderr)
    uvicorn.run(
        "gateway.cli.workers:app",
        factory=True,
        workers=args.workers,
        host=args.host,
        port=args.port,
        log_config=None,
        # each worker bounds its connections by its configuration's limits (workers.app)
        **{**SERVER_OPTIONS, "http": WorkerProtocol},
    )
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Print a token that `citygate demo` with the same --data-dir accepts (demo only)."""
    identity = identity_of(args)
    assert identity is not None
    chosen = args.data_dir != str(DEFAULT_DATA_DIR)
    data_dir = Path(args.data_dir).resolve()
    print(datasets().demo_token(data_dir, chosen, identity.role, dict(identity.claims), args.ttl))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Serve the demo city on the embedded engine (built under --data-dir on first run)."""
    banner = (
        "citygate demo: the demo city on the {engine} engine\n"
        "  GraphiQL:  {address}  (open it in a browser; the console, with the catalogue: {console})\n"
        "  POST:      curl -s {address} -H 'content-type: application/json' "
        '-d \'{{"query": "{{ transport_stations(limit: 3) {{ name district }} }}"}}\'\n'
        "Tokens: citygate token --role health_analyst   (roles: anonymous without a token, health_analyst,\n"
        "        district_officer --claim district=南城, env_inspector, police, supervisor,\n"
        "        citizen --claim id_card=441900197407169777); paste it\n"
        "        once in the Token box at the top of GraphiQL or the console\n"
        "        (or pick a demo role in that bar: the demo's pages offer each role's token)\n"
        "GraphiQL opens with a query anonymous can run; as health_analyst, with this one:\n\n"
    )
    demo = datasets().demo_page(Path(args.data_dir).resolve())
    return _serve(args, banner, datasets().EXAMPLE_QUERY, example=datasets().ANONYMOUS_EXAMPLE, demo=demo)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a configured deployment on its engine."""
    return _serve(args, "citygate: serving on the {engine} engine at {address}")


def register(command: Command) -> None:
    """The commands that serve a gateway, and the demo's tokens."""
    from gateway.cli.workers import default_workers

    def serving(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
        p.add_argument("--log-format", choices=("json", "text"), default="json", help="log lines (default json)")
        p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")

    p = command("demo", cmd_demo)
    serving(p)
    p.add_argument("--workers", type=int, default=None, help="processes serving the port (default 1)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="where the demo city's SQLite files live")

    p = command("serve", cmd_serve)
    serving(p)
    p.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="processes serving the port, sharing the audit trail and the state (default: one per core, at most 8)",
    )
    p.add_argument("--config", required=True)
    p.add_argument("--engine", choices=("trino", "embedded"), help="override the config's engine")

    p = command("token", cmd_token)
    p.add_argument("--role", required=True)
    p.add_argument("--claim", action="append", metavar="NAME=VALUE", help="a claim policies may use (repeatable)")
    p.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid (default 3600)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="the demo's data directory")
