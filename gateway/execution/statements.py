"""Running one statement on the engine within its time: a store that stops answering is left
alone for a while, and a statement that is merely slow fails by itself.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from catalogue.errors import EngineUnavailableError, StatementTimeout, StoreUnavailableError, error_class
from catalogue.model import Catalogue
from catalogue.sql import logical_table
from connectors.base import Cancel, Engine
from connectors.native import NativeEngine
from gateway.execution.fairness import CALLER, Shares, busy
from gateway.settings.limits import ConcurrencyConfig

log = logging.getLogger("citygate")


class SilentAfterRunning(StoreUnavailableError):
    """A store that answered no one-row read once a statement on it had run past its time. The
    statement did read the store: a noisy one keeps what it spent (``Runner._fetch``)."""


@dataclass
class Statements:
    """Where a gateway's statements run: a pool of threads, so that a request waits for one no
    longer than ``limit`` seconds, and the departments found silent meanwhile."""

    engine: Engine
    catalogue: Catalogue
    limit: float  # limits.statement_seconds
    # the threads (statement_threads) and each caller's share of them (statements_per_caller)
    concurrency: ConcurrencyConfig = field(default_factory=ConcurrencyConfig)
    pool: ThreadPoolExecutor = field(init=False)
    unresponsive: dict[str, float] = field(default_factory=dict)  # department -> left alone until
    _probes: dict[str, Future[bool]] = field(default_factory=dict)  # department -> its probe now out
    _lock: threading.Lock = field(default_factory=threading.Lock)
    shares: Shares = field(init=False)  # per caller (fairness), of the engine's CPUs
    running: int = 0  # statements in the engine now

    def __post_init__(self) -> None:
        self.pool = ThreadPoolExecutor(self.concurrency.statement_threads, thread_name_prefix="citygate-statement")
        self.shares = Shares(self.concurrency.statements_per_caller, parallelism=self.engine.parallelism)

    def run(
        self,
        text: str,
        departments: Sequence[str],
        max_rows: int,
        limit: float | None = None,
        engine: Engine | None = None,
        params: Sequence[Any] = (),
    ) -> Sequence[Any]:
        """Run one statement, waiting at most ``limits.statement_seconds`` from its start.

        A store that accepts connections and never answers would otherwise hold the request,
        and a thread, for good (DuckDB's MySQL scanner has no timeout of its own). When the
        time runs out, each department the statement reads is probed with a one-row read: one
        that does not answer that either is left alone for as long again (requests naming it
        fail at once, holding no thread); if all answer, the statement was merely slow, and
        only it fails; either way it is cancelled, so that its thread and the engine's work
        are free again. A statement still queued behind others when the time runs out is
        dropped unrun, and says the gateway is busy. ``limit``: the caller's role's own
        (``limits.roles``), at most the deployment's. ``engine``: where it runs (a route's),
        the gateway's own engine unless given; ``params``: bound to the statement's
        placeholders (a store's statement given keys: :meth:`NativeEngine.run_keyed`)."""
        limit = min(limit, self.limit) if limit is not None else self.limit
        now = time.monotonic()
        silent = sorted(d for d in departments if self.unresponsive.get(d, 0.0) > now)
        if silent:
            names = ", ".join(silent)
            raise StoreUnavailableError(
                silent[0], f"department {names} did not answer within {limit:g} s; tried again soon"
            )
        with self.shares.hold(CALLER.get(), limit) as held:
            if not held:  # the caller's own statements took all its share for all that time
                raise busy()
            return self._run(text, departments, max_rows, limit, engine or self.engine, params)

    def _run(
        self,
        text: str,
        departments: Sequence[str],
        max_rows: int,
        limit: float,
        engine: Engine,
        params: Sequence[Any] = (),
    ) -> Sequence[Any]:
        began: list[float] = []
        cancel = Cancel()

        def run() -> Sequence[Any]:
            began.append(time.monotonic())
            with self._lock:
                self.running += 1
            try:
                if params:
                    assert isinstance(engine, NativeEngine)  # only a store's own statements take keys
                    return engine.run_keyed(text, departments, params, max_rows, cancel).rows
                return engine.run(text, departments, max_rows, cancel).rows
            finally:
                with self._lock:
                    self.running -= 1

        future = self.pool.submit(contextvars.copy_context().run, run)
        try:
            return future.result(timeout=limit)
        except TimeoutError:  # concurrent.futures' own since Python 3.11
            pass
        if not began and future.cancel():
            raise EngineUnavailableError("the gateway is too busy to run the query now; try again")
        try:  # it ran late: it has the rest of its own time
            return future.result(timeout=max(0.0, began[0] + limit - time.monotonic()) if began else limit)
        except TimeoutError:
            pass
        cancel.cancel()
        silent = [d for d in departments if not self._answers(d, engine)]
        if silent:
            until = time.monotonic() + limit
            with self._lock:
                self.unresponsive.update(dict.fromkeys(silent, until))
            raise SilentAfterRunning(silent[0], f"department {', '.join(silent)} did not answer within {limit:g} s")
        raise StatementTimeout(limit)

    def _answers(self, department: str, engine: Engine, within: float = 2.0) -> bool:
        """Whether ``department``'s store gives one row of a table within ``within`` seconds.

        Each probe runs on a thread of its own, never queued behind statements (a pool full of
        slow statements would make a healthy store look silent), and one at a time per
        department: a later probe waits on the one still out."""
        table = next((t for t in self.catalogue.tables if t.department == department), None)
        if table is None:
            return True
        with self._lock:
            probe = self._probes.get(department)
            if probe is None or probe.done():
                probe = self._probes[department] = Future()
                statement = exp.select(exp.Literal.number(1)).from_(logical_table(department, table.name)).limit(1)
                threading.Thread(target=self._probe, args=(probe, statement, engine), daemon=True).start()
        try:
            return probe.result(timeout=within)
        except TimeoutError:
            return False

    def _probe(self, probe: Future[bool], statement: exp.Select, engine: Engine) -> None:
        try:
            engine.execute(statement)
        except StoreUnavailableError:  # it answered that it cannot be reached
            probe.set_result(False)
            return
        except Exception as error:  # the store answered, if only to refuse
            log.debug("probe of %s: %s", statement.sql(), error_class(error))
        probe.set_result(True)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
