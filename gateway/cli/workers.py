"""`citygate serve --workers N`: N processes serving one port, as `uvicorn --workers` runs them.

Each worker builds its own gateway from what the command was given (its plan and result caches
are its own, warmed by its own requests) and shares the rest through the data dir and the
state: the audit trail (one file, one chain, written under a lock) and the shared state
(`state.url`: privacy budgets, rate limits). uvicorn's supervisor starts the workers, restarts
one that dies and stops them all on SIGTERM; SIGHUP restarts them, which reads the policies
again. An admin call reaches one worker, so each worker looks at the policy files before each request
and reads them again when they changed (`Gateway.follow_files`): a reload through
`/admin/policies/reload` or an edit reaches every worker by its next request. Each worker
bounds its connections by its configuration's `limits.header_seconds` and
`limits.max_connections` (the cap per worker: N workers hold up to N times as many).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

WORKER = "CITYGATE_WORKER"  # what each worker is to serve, as JSON: set by the command, read here


MOST_WORKERS = 8


def default_workers(cores: int | None = None) -> int:
    """One worker per core this process may run on (``cores``: that many), at most
    :data:`MOST_WORKERS`: each holds its own engine and caches, and past that the engine or the
    stores, not the gateway, set the pace. The cores it may run on, not the machine's: a
    container or ``taskset`` given one core runs one worker.

    >>> default_workers(2), default_workers(32)
    (2, 8)
    """
    return max(1, min(len(os.sched_getaffinity(0)) if cores is None else cores, MOST_WORKERS))


def spec(args: Any, example: str) -> str:
    """What a worker needs of the command line, for :data:`WORKER`."""
    return json.dumps(
        {
            "config": str(Path(args.config).resolve()) if getattr(args, "config", None) else None,
            "engine": getattr(args, "engine", None),
            "data_dir": str(Path(args.data_dir).resolve()) if getattr(args, "data_dir", None) else None,
            "example": example,
            "log_format": args.log_format,
            "log_level": args.log_level,
        }
    )


def app() -> Any:
    """The ASGI application of one worker (uvicorn calls it in each worker process)."""
    from gateway.config import load_config
    from gateway.execution.engines import create_engine
    from gateway.execution.gateway import Gateway
    from gateway.http.app import create_app
    from gateway.http.wire import WorkerProtocol
    from gateway.observe import logs

    wanted = json.loads(os.environ[WORKER])
    logs.configure(wanted["log_format"], wanted["log_level"])
    if wanted["config"] is not None:
        config, _ = load_config(wanted["config"]).served()  # the command printed its warnings
        if wanted["engine"]:
            config = config.with_engine(wanted["engine"])
    else:  # the demo city; datasets/ lives apart from the gateway and is reached by name
        config = importlib.import_module("datasets.commands").demo(Path(wanted["data_dir"]))
    # uvicorn calls this before the worker accepts a connection
    WorkerProtocol.bound(config.limits.header_seconds, config.limits.max_connections)
    gateway = Gateway.start(config, create_engine(config))
    gateway.follows_files = gateway.policies is not None  # an admin reload reaches one worker
    return create_app(gateway, example=wanted["example"])
