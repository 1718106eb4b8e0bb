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
    """At most ``each`` slots per caller at once, from threads. With ``parallelism`` (the CPUs an
    engine computes on), a caller has ``each`` only while it is alone; while ``n`` callers have
    slots held or awaited, each may hold at most ``max(2, parallelism // n)`` (two: a request's
    root fields still run side by side, as its idle p50 assumes): slots a caller
    already holds are not taken back, but it starts no more until it is under that share. So a
    caller flooding an engine with short statements leaves the others their part of its CPUs,
    rather than the part its number of statements would take. A caller's entry lives while any
    of its slots is held or awaited, so the table holds only callers now at work.

    >>> shares = Shares(1)
    >>> with shares.hold("a", 0.1) as first, shares.hold("b", 0.1) as other, shares.hold("a", 0.1) as second:
    ...     first, other, second
    (True, True, False)
    >>> shared = Shares(8, parallelism=2)
    >>> [shared.acquire("a", 0) for _ in range(3)], shared.acquire("b", 0), shared.acquire("a", 0)
    ([True, True, True], True, False)
    >>> shared.acquire("b", 0), shared.acquire("b", 0)
    (True, False)
    """

    def __init__(self, each: int, parallelism: int | None = None) -> None:
        self.each = each
        self.parallelism = parallelism
        self._changed = threading.Condition()
        self._callers: dict[str, list[int]] = {}  # caller -> [slots held, slots awaited]

    @contextlib.contextmanager
    def hold(self, caller: str, timeout: float) -> Iterator[bool]:
        """A slot of ``caller``'s, waited for at most ``timeout`` seconds: True if it is held."""
        held = self.acquire(caller, timeout)
        try:
            yield held
        finally:
            if held:
                self.release(caller)

    def _share(self) -> int:
        if self.parallelism is None or len(self._callers) <= 1:
            return self.each
        return max(2, min(self.each, self.parallelism // len(self._callers)))

    def acquire(self, caller: str, timeout: float) -> bool:
        """Take a slot of ``caller``'s, waiting at most ``timeout`` seconds; each True needs a
        :meth:`release`."""
        with self._changed:
            state = self._callers.setdefault(caller, [0, 0])
            state[1] += 1
            held = self._changed.wait_for(lambda: state[0] < self._share(), timeout)
            state[1] -= 1
            if held:
                state[0] += 1
            elif state == [0, 0]:
                del self._callers[caller]
                self._changed.notify_all()  # one caller fewer: the others' shares grow
            return held

    def release(self, caller: str) -> None:
        with self._changed:
            state = self._callers[caller]
            state[0] -= 1
            if state == [0, 0]:
                del self._callers[caller]
            self._changed.notify_all()


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
