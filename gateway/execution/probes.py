"""Health checks that answer in time: each check runs on a thread of its own, and one that does
not finish within its bound reads as "did not answer" while it goes on.

A store that stopped answering mid-conversation holds a check for as long as its link stays
open: the engine's own ping would then hold the probe, and every department checked after it.
Here checks run side by side, are waited for together up to one bound, and a check still out
from an earlier probe is waited on again rather than started twice, so a silent store costs one
thread, not one per probe.

>>> import time
>>> checks = Checks(within=0.2)
>>> states = checks.run({"quick": lambda: None, "silent": lambda: time.sleep(1)})
>>> states["quick"], states["silent"]
('ok', 'did not answer within 0.2 s')

A route the masks are not proven on takes no statement (:mod:`gateway.execution.unproven`),
whatever its check finds; :func:`mark_unproven` says so in the health a probe shows.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import replace

from catalogue.errors import CitygateError
from connectors.base import Engine, Health
from gateway.execution.routes import Routes
from gateway.state import State, StateUnavailable

log = logging.getLogger("citygate")

CHECK_SECONDS = 3.0  # a probe's checks are waited for this long, together
# The shared state's name among the health checks (no route or department is named so).
STATE_CHECK = "state:"


class Checks:
    """Named checks, each run on its own thread, at most one at a time per name."""

    def __init__(self, within: float = CHECK_SECONDS) -> None:
        self.within = within
        self._out: dict[str, Future[str]] = {}
        self._lock = threading.Lock()

    def run(self, checks: Mapping[str, Callable[[], object]]) -> dict[str, str]:
        """Each check's state: ``"ok"``, the message of the :class:`CitygateError` it raised,
        or that it did not answer within :attr:`within` seconds (all waited for together)."""
        futures = {name: self._start(name, check) for name, check in checks.items()}
        deadline = time.monotonic() + self.within
        states = {}
        for name, future in futures.items():
            try:
                states[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                states[name] = f"did not answer within {self.within:g} s"
        return states

    def everything(self, engine: Engine, routes: Routes, state: State) -> tuple[Health, str | None]:
        """The engine, each department through it and each store's own route, checked side by
        side: a store that stopped answering mid-conversation is named, and holds neither the
        probe nor the others' checks. Beside them the shared state (budgets, rate limits): why it
        cannot be read, or None."""
        checks: dict[str, Callable[[], object]] = {"": engine.ping, STATE_CHECK: functools.partial(_ping, state)}
        checks |= {f"department:{d}": functools.partial(engine.ping_department, d) for d in engine.departments}
        checks |= routes.pings()
        states = self.run(checks)
        held = states.pop(STATE_CHECK)
        reachable = states.pop("") == "ok"
        departments = {d: states.pop(f"department:{d}") for d in engine.departments}
        if not reachable:
            departments = dict.fromkeys(departments, "unknown: the engine does not answer")
        found = {engine.name: "ok" if reachable else "the engine does not answer", **states}
        return Health(engine.name, reachable, departments, routes=found), None if held == "ok" else held

    def _start(self, name: str, check: Callable[[], object]) -> Future[str]:
        with self._lock:
            future = self._out.get(name)
            if future is None or future.done():
                future = self._out[name] = Future()
                threading.Thread(target=_check, args=(future, check), name="citygate-check", daemon=True).start()
        return future


def mark_unproven(health: Health, routes: Mapping[str, str]) -> Health:
    """``health`` with each of ``routes`` (route key -> why the masks are not proven there) not
    ok: a route that answers is not serving until the masks are proven on it. A route never
    checked (the fallback) is named too.

    >>> found = Health("trino", True, routes={"trino": "ok", "delegated:pg": "ok"})
    >>> shown = mark_unproven(found, {"trino": "it did not answer"})
    >>> shown.routes["trino"], shown.routes["delegated:pg"], shown.serving
    ('masks not proven yet: it did not answer', 'ok', True)
    >>> mark_unproven(Health("trino", False, routes={"trino": "the engine does not answer"}), {"trino": "down"}).routes
    {'trino': 'the engine does not answer; masks not proven yet'}
    """
    if not routes:
        return health
    states = dict(health.routes)
    for key, why in routes.items():
        state = states.get(key, "ok")
        states[key] = f"masks not proven yet: {why}" if state == "ok" else f"{state}; masks not proven yet"
    return replace(health, routes=states)


def _ping(state: State) -> None:
    """The shared state read once; what failed (where, the driver's error: no password) is the
    operator's reason, so it becomes the check's message."""
    try:
        state.ping()
    except StateUnavailable as error:
        raise CitygateError(error.detail or error.message) from None


def _check(future: Future[str], check: Callable[[], object]) -> None:
    try:
        check()
    except CitygateError as error:
        future.set_result(error.message)
    except Exception as error:  # a check must say something, never end its thread unheard
        log.warning("a health check failed: %s", error)
        future.set_result(f"failed: {type(error).__name__}")
    else:
        future.set_result("ok")
