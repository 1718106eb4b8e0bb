"""Connections kept for reuse by the stores' own routes that have no pool of their own
(PyMySQL, sqlite3): DBUtils' PooledDB, bounded in how long a statement waits for one.
PostgreSQL's route uses psycopg_pool (:mod:`connectors.native`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from dbutils.pooled_db import PooledDB

from catalogue.errors import EngineQueryError


class Kept:
    """PyMySQL and sqlite3 connections kept for reuse by DBUtils' :class:`PooledDB` (neither
    driver has a pool of its own), at most ``size`` open at once.

    A statement waits at most ``wait`` seconds for one of them: PooledDB's own wait has no end,
    so a semaphore of as many slots stands in front of it. A connection that failed is closed
    at once and never given out again: when PooledDB next takes it from its idle ones, ``alive``
    (a look at the connection, no round trip) finds it closed and PooledDB opens a fresh one in
    its place. PooledDB opens connections under its own lock, so a store slow to accept them
    makes its own statements wait, never another store's.
    """

    def __init__(self, connect: Callable[[], Any], alive: Callable[[Any], bool], size: int, wait: float) -> None:
        self._connect = connect
        self._slots = threading.BoundedSemaphore(size)
        self._wait = wait
        self._failed = threading.local()  # why this thread's last connect failed
        self._pool = PooledDB(
            self._open,
            maxconnections=size,
            maxcached=size,
            ping=alive,  # called on a connection taken from the idle ones: reopened if not alive
            reset=False,  # statements run in autocommit: no ROLLBACK round trip on each return
            isfatal=lambda _: False,  # its failover would run a statement twice; _run retries once, here
        )
        self._alive = alive

    def _open(self) -> Any:
        try:
            return self._connect()
        except Exception as error:
            self._failed.error = error  # PooledDB keeps a failed reopen to itself: connection() says why
            raise

    @contextmanager
    def connection(self, fresh: bool = False) -> Iterator[Any]:
        """A kept connection, or with ``fresh`` a new one: the kept ones idle now are closed
        first (one found closed by the store, after a restart or an idle timeout, says the
        others kept as long are likely closed too)."""
        if not self._slots.acquire(timeout=self._wait):
            raise EngineQueryError("the store's connections are all busy; try again")
        try:
            if fresh:
                self._pool.close()  # the idle ones only: those at work come back as they end
            self._failed.error = None
            kept = self._pool.connection(shareable=False)
            try:
                conn = kept.dbapi_connection
                if not self._alive(conn):  # PooledDB could not reopen it: the store's own reason
                    raise self._failed.error or EngineQueryError("the store's connection was closed")
                try:
                    yield conn
                except BaseException:
                    with contextlib.suppress(Exception):
                        conn.close()
                    raise
            finally:
                kept.close()  # back to the idle ones (a closed one is reopened when next taken)
        finally:
            self._slots.release()

    def close(self) -> None:
        self._pool.close()


def pymysql_alive(conn: Any) -> bool:
    return bool(conn.open)


def sqlite_alive(conn: sqlite3.Connection) -> bool:
    try:
        conn.total_changes  # noqa: B018 - a closed connection refuses even this
    except sqlite3.ProgrammingError:
        return False
    return True
