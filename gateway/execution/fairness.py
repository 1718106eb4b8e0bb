"""Fair shares: no one caller can hold more than a bounded part of the gateway.

A caller is a token's subject, or, for a request without one, the role and the client's
address. At the edge a caller has at most :data:`REQUESTS_AT_ONCE` requests in the works (the
others wait their turn without holding a thread); a request runs at most
:data:`ROOT_FIELDS_AT_ONCE` of its root fields side by side, and a caller's requests together at
most :data:`CALLER_ROOT_FIELDS`; and a caller's statements hold at most
:data:`STATEMENTS_AT_ONCE` of the engine's threads. So a caller flooding the gateway waits
behind itself, while everyone else's work finds threads free.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import AsyncIterator, Iterator

from catalogue.errors import EngineUnavailableError

REQUESTS_AT_ONCE = 4
ROOT_FIELDS_AT_ONCE = 4  # of one request
CALLER_ROOT_FIELDS = 8  # of all of one caller's requests, of the gateway's 32 threads for them
STATEMENTS_AT_ONCE = 8

CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("citygate_caller", default="")


def busy() -> EngineUnavailableError:
    """What a caller hears when its own work took all its share for all the time it had."""
    return EngineUnavailableError("too many of your queries are running now; try again when they end")


class Shares:
    """At most ``each`` slots per caller at once, from threads. A caller's semaphore lives while
    any of its slots is held or awaited, so the table holds only callers now at work.

    >>> shares = Shares(1)
    >>> with shares.hold("a", 0.1) as first, shares.hold("b", 0.1) as other, shares.hold("a", 0.1) as second:
    ...     first, other, second
    (True, True, False)
    """

    def __init__(self, each: int) -> None:
        self.each = each
        self._lock = threading.Lock()
        self._callers: dict[str, tuple[int, threading.Semaphore]] = {}

    @contextlib.contextmanager
    def hold(self, caller: str, timeout: float) -> Iterator[bool]:
        """A slot of ``caller``'s, waited for at most ``timeout`` seconds: True if it is held."""
        held = self.acquire(caller, timeout)
        try:
            yield held
        finally:
            if held:
                self.release(caller)

    def acquire(self, caller: str, timeout: float) -> bool:
        """Take a slot of ``caller``'s, waiting at most ``timeout`` seconds; each True needs a
        :meth:`release`."""
        with self._lock:
            users, semaphore = self._callers.get(caller, (0, threading.Semaphore(self.each)))
            self._callers[caller] = (users + 1, semaphore)
        if semaphore.acquire(timeout=timeout):
            return True
        self._leave(caller)
        return False

    def release(self, caller: str) -> None:
        with self._lock:
            self._callers[caller][1].release()
        self._leave(caller)

    def _leave(self, caller: str) -> None:
        with self._lock:
            users, semaphore = self._callers[caller]
            if users == 1:
                del self._callers[caller]
            else:
                self._callers[caller] = (users - 1, semaphore)


class Admission:
    """The same on the event loop: at most ``each`` requests per caller in the works at once;
    the others wait, holding no thread."""

    def __init__(self, each: int) -> None:
        self.each = each
        self._callers: dict[str, tuple[int, asyncio.Semaphore]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, caller: str) -> AsyncIterator[None]:
        users, semaphore = self._callers.get(caller, (0, asyncio.Semaphore(self.each)))
        self._callers[caller] = (users + 1, semaphore)
        try:
            async with semaphore:
                yield
        finally:
            users, _ = self._callers[caller]
            if users == 1:
                del self._callers[caller]
            else:
                self._callers[caller] = (users - 1, semaphore)
