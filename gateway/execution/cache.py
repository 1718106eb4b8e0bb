"""The result cache: an answer's rows, keyed by the whole release that made them.

The key is the route, the final SQL text *after* the policy rewrite, and the release. The text
holds most of what decides what a caller may see: the masks, the row filters with the caller's
claims bound as literals, the aggregate thresholds; a masked role can never be served a raw
role's answer, because their statements differ. But noise is drawn after the statement runs,
so the text alone would let a noisy role and an exact one with the same rule share rows: the
exact role would receive noise, and the noisy role exact counts without spending its budget.
The release (:func:`release`) says which: ``exact``, or one noisy role's own draws under its
noise parameters and budget. Noisy answers are cached per role, so a role asking again gets the
same draw back, spends nothing and averages no noise away; no other role ever sees that draw.

Entries live at most as long as the shortest time-to-live of the departments they read
(``departments.<d>.cache_ttl_seconds``, else ``cache.ttl_seconds``); a department with 0 is
never cached. The cache is bounded both by entries and by an estimate of its bytes.

When an entry is missing, the callers asking for it at the same moment (the moment it
expires under load, say) share one run of the statement: the first runs it, the others wait
for its rows, or its error, rather than all running it at once (:meth:`ResultCache.fetch`).

>>> from gateway.config import CacheConfig
>>> cache = ResultCache(CacheConfig(), {"health": 60.0, "public_security": 0.0})
>>> cache.put("embedded", "SELECT 1", ["health"], [(1,)])
True
>>> cache.get("embedded", "SELECT 1"), cache.get("embedded", "SELECT 1", "noise:analyst:0f3a")
([(1,)], None)
>>> cache.put("embedded", "SELECT 2", ["health", "public_security"], [(2,)])
False
>>> cache.clear("health"), cache.get("embedded", "SELECT 1")
(1, None)
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from cachetools import TLRUCache

from gateway.config import CacheConfig


@dataclass(frozen=True, slots=True)
class _Entry:
    rows: Sequence[Any]
    departments: frozenset[str]
    size: int
    ttl: float


EXACT = "exact"
Key = tuple[str, str, str]  # (route key, statement, release)


def release(role: str | None, noise: object, budget: object) -> str:
    """What an answer is released as, beside its statement: ``exact`` without noise; with
    noise, the role's own draws under these noise parameters (each statistic's epsilon and
    sensitivity, by position) and this budget.

    >>> release("analyst", {}, None)
    'exact'
    >>> release("analyst", {1: {4: "count e=0.5"}}, "1.0/1d").startswith("noise:analyst:")
    True
    """
    if not noise:
        return EXACT
    parameters = hashlib.sha256(repr((noise, budget)).encode()).hexdigest()[:16]
    return f"noise:{role}:{parameters}"


def _expires(key: object, entry: _Entry, now: float) -> float:
    return now + entry.ttl


def _size(rows: Sequence[Any]) -> int:
    """A cheap estimate of an answer's bytes (its text form); paid only on a miss."""
    return 64 + len(repr(rows))


class ResultCache:
    """Thread-safe; ``get`` and ``put`` hold one lock only for the dictionary work."""

    def __init__(self, config: CacheConfig, ttls: Mapping[str, float | None]) -> None:
        self.enabled = config.enabled
        self.max_entries = config.max_entries
        self.max_bytes = config.max_bytes
        self._ttl = {d: (config.ttl_seconds if t is None else t) for d, t in ttls.items()}
        self._default = config.ttl_seconds
        self._lock = threading.Lock()
        self._store: TLRUCache[Key, _Entry] = TLRUCache(
            maxsize=config.max_bytes, ttu=_expires, timer=time.monotonic, getsizeof=lambda e: e.size
        )
        self._flights: dict[Key, Future[Sequence[Any]]] = {}  # statements running now

    def ttl(self, departments: Iterable[str]) -> float:
        """How long an answer reading these departments may be kept (0: not at all)."""
        if not self.enabled:
            return 0.0
        return min((self._ttl.get(d, self._default) for d in departments), default=self._default)

    def get(self, engine: str, sql: str | None, released: str = EXACT) -> Sequence[Any] | None:
        if sql is None:
            return None
        try:
            with self._lock:
                entry = self._store[engine, sql, released]  # one lookup (`get` is two), expiry checked
        except KeyError:
            return None
        return entry.rows

    def fetch(
        self,
        engine: str,
        sql: str,
        departments: Sequence[str],
        run: Callable[[], Sequence[Any]],
        released: str = EXACT,
    ) -> tuple[Sequence[Any], str]:
        """The rows of ``sql`` and where they came from: ``hit`` (the cache, or another caller's
        run of the same statement, waited for), ``miss`` (``run`` here, and kept) or ``off``
        (``run`` here, not kept). Only a statement the cache may keep is shared: a department
        that forbids caching has each caller read its store. Only callers of one ``released``
        share rows (:func:`release`)."""
        rows = self.get(engine, sql, released)
        if rows is not None:
            return rows, "hit"
        if self.ttl(departments) <= 0:
            return run(), "off"
        key = (engine, sql, released)
        with self._lock:
            flight = self._flights.get(key)
            if flight is None:
                entry = self._store.get(key)  # kept since the look above
                if entry is not None:
                    return entry.rows, "hit"
                flight = self._flights[key] = Future()
                leading = True
            else:
                leading = False
        if not leading:
            return flight.result(), "hit"
        try:
            rows = run()
            kept = self.put(engine, sql, departments, rows, released)
        except BaseException as error:
            flight.set_exception(error)
            raise
        else:
            flight.set_result(rows)
        finally:
            with self._lock:  # after the put: a caller arriving meanwhile waits or hits
                del self._flights[key]
        return rows, "miss" if kept else "off"

    def put(
        self, engine: str, sql: str, departments: Iterable[str], rows: Sequence[Any], released: str = EXACT
    ) -> bool:
        """Keep ``rows`` if every department allows it and the answer fits; True if kept."""
        names = frozenset(departments)
        ttl = self.ttl(names)
        if ttl <= 0:
            return False
        size = _size(rows)
        if size > self.max_bytes // 8:  # one answer may not push most of the others out
            return False
        entry = _Entry(rows, names, size, ttl)
        with self._lock:
            self._store.expire()
            while len(self._store) >= self.max_entries:
                self._store.popitem()
            self._store[(engine, sql, released)] = entry
        return True

    def clear(self, department: str | None = None) -> int:
        """Drop every entry (or every entry that read ``department``); how many were dropped."""
        with self._lock:
            if department is None:
                count = len(self._store)
                self._store.clear()
                return count
            stale = [key for key, entry in self._store.items() if department in entry.departments]
            for key in stale:
                del self._store[key]
            return len(stale)

    def __len__(self) -> int:
        with self._lock:
            return len(self._store)

    @property
    def bytes(self) -> int:
        with self._lock:
            return int(self._store.currsize)
