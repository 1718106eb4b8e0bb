"""The gateway's shared state: each role's privacy budget and each caller's rate-limit
allowance, in one SQL database that every worker process and every gateway on it shares.

``state.url`` names it: by default an SQLite file under the data dir (WAL mode, so the worker
processes of one machine share it without a server), or ``postgresql://…`` for several
gateways. Every change is one statement in one transaction that checks and changes together
(spend-or-refuse), so two processes can never both spend the last of a budget. What is read
back is checked: a spending that is not a finite number at least zero refuses, never grants.
A database that cannot be reached refuses too (:class:`StateUnavailable`).

>>> state = State.open("sqlite://")  # in memory: one process only (tests, `policy test`)
>>> state.spend("officer", 7, 0.6, 1.0), state.spend("officer", 7, 0.6, 1.0), state.spent("officer", 7)
(True, False, 0.6)
>>> state.take("address:10.0.0.1", 2, now=100.0), state.take("address:10.0.0.1", 2, now=100.0)
(None, None)
>>> state.take("address:10.0.0.1", 2, now=100.0)
30.0
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from catalogue.errors import CitygateError, ConfigError

log = logging.getLogger("citygate.state")

WINDOW = 60.0  # seconds: rate limits are per minute
RETRY = 0.5  # seconds a state that failed is not asked again: what needs it is refused at once

# Both dialects: SQLite 3.35+ and PostgreSQL have ON CONFLICT and RETURNING. The CHECKs keep a
# bad value from being written; what is read is checked again (a file can be edited).
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS citygate_budget (role TEXT PRIMARY KEY, period BIGINT NOT NULL, "
    "spent DOUBLE PRECISION NOT NULL CHECK (spent >= 0))",
    "CREATE TABLE IF NOT EXISTS citygate_rate (subject TEXT PRIMARY KEY, due DOUBLE PRECISION NOT NULL)",
)
# Each change makes sure its row exists, holds it (FOR UPDATE in PostgreSQL; SQLite's BEGIN
# IMMEDIATE holds the whole database), checks what it read in Python, then writes.
_NEW_BUDGET = "INSERT INTO citygate_budget (role, period, spent) VALUES (?, ?, 0) ON CONFLICT (role) DO NOTHING"
_HOLD_BUDGET = "SELECT period, spent FROM citygate_budget WHERE role = ?"
_SET_BUDGET = "UPDATE citygate_budget SET period = ?, spent = ? WHERE role = ?"
_SPENT = "SELECT period, spent FROM citygate_budget WHERE role = ?"
_NEW_RATE = "INSERT INTO citygate_rate (subject, due) VALUES (?, 0) ON CONFLICT (subject) DO NOTHING"
_HOLD_RATE = "SELECT due FROM citygate_rate WHERE subject = ?"
_SET_RATE = "UPDATE citygate_rate SET due = ? WHERE subject = ?"
_FORGET = "DELETE FROM citygate_rate WHERE due < ?"


class StateUnavailable(CitygateError):
    """The state database cannot be read or written, or holds a value that cannot be right:
    what depends on it (a noisy answer, any request under a rate limit) is refused."""

    code = "STATE_UNAVAILABLE"

    def __init__(self, detail: str) -> None:
        super().__init__(
            "the gateway cannot reach its shared state (privacy budgets, rate limits), so it refuses; "
            "try again shortly",
            detail=detail,
        )


class _Database(Protocol):
    hold: str  # what a SELECT ends with to hold its rows until the transaction ends
    serialize: tuple[str, ...]  # what makes two processes creating the schema at once take turns

    def transaction(self) -> Any: ...

    def close(self) -> None: ...


class _SQLite:
    """One connection, used under a lock (SQLite writes one at a time anyway)."""

    hold = ""  # BEGIN IMMEDIATE holds the whole database
    serialize: tuple[str, ...] = ()  # so does it for the schema

    def __init__(self, path: str) -> None:
        self.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
        if path != ":memory:":
            self.connection.execute("PRAGMA journal_mode=WAL")  # readers and one writer, across processes
            self.connection.execute("PRAGMA synchronous=FULL")  # a spending survives a machine crash
        self.lock = threading.Lock()

    @contextmanager
    def transaction(self) -> Iterator[Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]]:
        with self.lock:
            self.connection.execute("BEGIN IMMEDIATE")  # the write lock first: no upgrade deadlock
            try:
                yield lambda sql, args: self.connection.execute(sql, args).fetchall()
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")

    def close(self) -> None:
        self.connection.close()


class _PostgreSQL:
    """A small pool of connections (psycopg, the project's PostgreSQL driver)."""

    hold = " FOR UPDATE"
    # CREATE TABLE IF NOT EXISTS is not safe against itself: two workers starting together
    # both miss the table and one fails on the catalogue's unique index. A transaction-scoped
    # advisory lock (an arbitrary constant, the tables' own) makes them take turns.
    serialize: tuple[str, ...] = ("SELECT pg_advisory_xact_lock(7291001)",)

    def __init__(self, url: str) -> None:
        from psycopg_pool import ConnectionPool

        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=8,
            timeout=2.0,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": 2},
        )
        self.pool.open(wait=False)

    @contextmanager
    def transaction(self) -> Iterator[Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]]:
        with self.pool.connection() as connection, connection.transaction():

            def run(sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
                cursor = connection.execute(sql.replace("?", "%s"), args)
                return cursor.fetchall() if cursor.description is not None else []

            yield run

    def close(self) -> None:
        self.pool.close()


def _spending(role: str, held: Any) -> float:
    """A spending read back, checked: a finite number at least zero, else the state is not
    to be trusted and nothing is spent on it (:class:`StateUnavailable`)."""
    if isinstance(held, bool) or not isinstance(held, int | float) or not math.isfinite(held) or held < 0:
        raise StateUnavailable(f"the privacy budget of role {role} holds {held!r}, which cannot be a spending")
    return float(held)


def _period(role: str, held: Any) -> int:
    """A period read back, checked: an integer (periods are compared, newest wins), else the
    state is not to be trusted (:class:`StateUnavailable`)."""
    if isinstance(held, bool) or not isinstance(held, int):
        raise StateUnavailable(f"the privacy budget of role {role} holds period {held!r}, which cannot be a period")
    return held


class State:
    """The shared state behind one URL; thread-safe."""

    def __init__(self, database: _Database, url: str) -> None:
        self._db = database
        self.url = url
        self.remote = isinstance(database, _PostgreSQL)  # a server: asked off the event loop
        self._takes = 0
        # After a failure, refuse at once for a moment rather than make every request wait for
        # the same timeout.
        self._down: tuple[float, str] | None = None

    @classmethod
    def open(cls, url: str) -> State:
        """``sqlite:///path/to/state.db``, ``sqlite://`` (in memory), or ``postgresql://…``."""
        try:
            if url.startswith("sqlite://"):
                path = url.removeprefix("sqlite://").removeprefix("/") or ":memory:"
                if path != ":memory:":
                    path = "/" + path if url.startswith("sqlite:////") or url.startswith("sqlite:///") else path
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                database: _Database = _SQLite(path)
            elif url.startswith(("postgresql://", "postgres://")):
                database = _PostgreSQL(url)
            else:
                raise ConfigError(f"state.url: {_shown(url)!r} is neither sqlite:///… nor postgresql://…")
            state = cls(database, url)
            state._run(lambda run: [run(sql, ()) for sql in (*database.serialize, *_SCHEMA)])
        except (sqlite3.Error, OSError) as error:
            raise ConfigError(f"state.url: cannot open the state database {_shown(url)}: {error}") from None
        except StateUnavailable as error:
            raise ConfigError(f"state.url: cannot open the state database {_shown(url)}: {error.detail}") from None
        return state

    def _run(self, work: Callable[[Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]], Any]) -> Any:
        """``work`` in one transaction; :class:`StateUnavailable` if the database fails it."""
        down = self._down
        if down is not None and time.monotonic() < down[0]:
            raise StateUnavailable(down[1])
        try:
            with self._db.transaction() as run:
                result = work(run)
        except Exception as error:  # the driver's errors, the pool's timeout, a dropped connection
            if not isinstance(error, sqlite3.Error) and not error.__class__.__module__.startswith("psycopg"):
                raise
            why = f"{_shown(self.url)}: {error.__class__.__name__}: {str(error).strip()}"
            if down is None:
                log.error("the shared state cannot be reached; what depends on it is refused: %s", why)
            self._down = (time.monotonic() + RETRY, why)
            raise StateUnavailable(why) from None
        if down is not None:
            self._down = None
            log.warning("the shared state answers again: %s", _shown(self.url))
        return result

    # -- privacy budgets -------------------------------------------------------------------------

    def spend(self, role: str, period: int, epsilon: float, limit: float) -> bool:
        """Spend ``epsilon`` of ``role``'s budget in ``period`` if what it has spent there and
        ``epsilon`` stay within ``limit``: True; else nothing changes and False.
        :class:`StateUnavailable` if the database fails, or holds a spending that cannot be.

        Only a newer period renews a budget. Gateways' clocks differ by a little: at a period's
        boundary one may already spend in the new period while another still asks for the old
        one. Its spending counts against the newer period the state holds, so the two cannot
        take turns resetting the budget (each reset granting it again), and a gateway whose
        clock is behind never resets a period that has begun."""
        if not (math.isfinite(epsilon) and epsilon >= 0):
            raise ValueError(f"cannot spend epsilon {epsilon}")

        def work(run: Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]) -> bool:
            run(_NEW_BUDGET, (role, period))
            [(held_period, held)] = run(_HOLD_BUDGET + self._db.hold, (role,))
            held_period = _period(role, held_period)
            spent = _spending(role, held) if held_period >= period else 0.0
            if spent + epsilon > limit:
                return False
            run(_SET_BUDGET, (max(held_period, period), spent + epsilon, role))
            return True

        result: bool = self._run(work)
        return result

    def refund(self, role: str, period: int, epsilon: float) -> None:
        """Give back what an answer that was never released spent (never below zero), while the
        state still holds ``period``: once a newer one has begun, what was spent may have been
        counted in either, and giving it back to the newer one could grant more than its budget."""

        def work(run: Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]) -> None:
            [(held_period, held)] = run(_HOLD_BUDGET + self._db.hold, (role,)) or [(None, 0)]
            if held_period == period:
                run(_SET_BUDGET, (period, max(_spending(role, held) - epsilon, 0.0), role))

        self._run(work)

    def adopt(self, role: str, period: int, spent: float) -> None:
        """Count ``spent`` as spent by ``role`` in ``period`` unless more already is (a budget
        kept elsewhere before, taken over: never renewed by the move)."""

        def work(run: Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]) -> None:
            run(_NEW_BUDGET, (role, period))
            [(held_period, held)] = run(_HOLD_BUDGET + self._db.hold, (role,))
            held_period = _period(role, held_period)
            if held_period == period:
                run(_SET_BUDGET, (period, max(_spending(role, held), spent), role))
            elif held_period < period:
                run(_SET_BUDGET, (period, spent, role))

        self._run(work)

    def spent(self, role: str, period: int) -> float:
        """What ``role`` has spent in ``period`` (or in a newer period already begun, which a
        spending in ``period`` would count against); :class:`StateUnavailable` for a value that
        cannot be a spending."""
        rows = self._run(lambda run: run(_SPENT, (role,)))
        if not rows:
            return 0.0
        [(held_period, held)] = rows
        return _spending(role, held) if _period(role, held_period) >= period else 0.0

    # -- rate limits -----------------------------------------------------------------------------

    def take(self, subject: str, per_minute: int, now: float) -> float | None:
        """Count one request of ``subject`` at ``now`` (seconds, the same clock for every
        gateway): None if it may run, else the seconds until it may."""
        interval = WINDOW / per_minute

        def work(run: Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]) -> float | None:
            run(_NEW_RATE, (subject,))
            [(held,)] = run(_HOLD_RATE + self._db.hold, (subject,))
            due: float = held
            if not isinstance(held, int | float) or not math.isfinite(due) or due > now + 2 * WINDOW:
                due = now + WINDOW  # a value that cannot be right: the caller waits a minute
                log.error("the rate limit of %s held a value that cannot be right; it waits a minute", subject)
            due = max(due, now) + interval
            if due - now > WINDOW:
                return due - WINDOW - now
            run(_SET_RATE, (due, subject))
            return None

        self._takes += 1
        if self._takes % 10_000 == 0:  # callers idle for a minute have their whole allowance anyway
            self._run(lambda run: run(_FORGET, (now - WINDOW,)))
        wait: float | None = self._run(work)
        return wait

    def ping(self) -> None:
        """Read the state as a spending would (:class:`StateUnavailable` if it cannot be), for
        the health check behind ``/readyz`` and ``citygate_state_up``. A server that is gone
        fails it within the pool's bounded wait (2 s), and after a failure it is refused at once
        for :data:`RETRY` seconds; the change either way is logged once, by :meth:`_run`."""
        self._run(lambda run: run(_SPENT, ("",)))

    def close(self) -> None:
        self._db.close()


def _shown(url: str) -> str:
    """A URL as logs and errors show it: without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}"
    return url
