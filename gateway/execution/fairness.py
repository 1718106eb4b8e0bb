"""Fair shares: no one caller can hold more than a bounded part of the gateway.

A caller is a token's subject, or, for a request without one, the role and the client's
address. At the edge a caller has at most ``requests_per_caller`` requests in the works, fewer
while others are present (the rest wait their turn without holding a thread); a request runs at
most ``root_fields_per_request`` of its root fields side by side, and a caller's requests
together at most ``root_fields_per_caller``; and a caller's statements hold at most
``statements_per_caller`` of the engine's threads (the numbers are the deployment's
``limits.concurrency``, :class:`gateway.config.ConcurrencyConfig`). So a caller flooding the
gateway waits behind itself, while everyone else's work finds threads free.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

from catalogue.errors import EngineUnavailableError

LINGER_SECONDS = 1.0  # a caller counts as present this long after its last request at the edge

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


@dataclass
class _Turns:
    """One caller's requests at the edge: how many are in the works, and the ones waiting."""

    working: int = 0
    waiting: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)


class Admission:
    """The same on the event loop: at most ``each`` requests per caller in the works at once;
    the others wait in order, holding no thread. With ``parallelism`` (the CPUs the gateway
    computes on), a caller has ``each`` only while it is alone: while ``n`` callers are present,
    each starts no more than ``max(1, parallelism // n)``. A caller stays present for ``linger``
    seconds after its last request ends, so one that asks one request after another (as an
    application does) still counts while it is between two: otherwise a flood would hold its
    whole ``each`` again by the time the next one arrived.

    >>> async def demo():
    ...     admission = Admission(4, parallelism=2, clock=lambda: 0.0)
    ...     async with admission.hold("a"), admission.hold("a"):  # alone: up to 4
    ...         async with admission.hold("b"):  # two present: 1 each; a's two are not taken back
    ...             waiting = asyncio.ensure_future(admission.hold("a").__aenter__())
    ...             await asyncio.sleep(0)
    ...             return waiting.done()
    >>> asyncio.run(demo())
    False
    """

    def __init__(
        self,
        each: int,
        parallelism: int | None = None,
        linger: float = LINGER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.each = each
        self.parallelism = parallelism
        self.linger = linger
        self.clock = clock
        self._callers: dict[str, _Turns] = {}
        self._lingering: collections.OrderedDict[str, float] = collections.OrderedDict()  # oldest first

    def _share(self) -> int:
        if self.parallelism is None:
            return self.each
        now = self.clock()
        while self._lingering and now - next(iter(self._lingering.values())) >= self.linger:
            self._lingering.popitem(last=False)
        present = len(self._callers) + len(self._lingering)
        return self.each if present <= 1 else max(1, min(self.each, self.parallelism // present))

    @contextlib.asynccontextmanager
    async def hold(self, caller: str) -> AsyncIterator[None]:
        turns = self._callers.get(caller)
        if turns is None:
            turns = self._callers[caller] = _Turns()
            self._lingering.pop(caller, None)
        if turns.waiting or turns.working >= self._share():
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            turns.waiting.append(waiter)
            try:
                await waiter  # resolved by _next, with the request already counted as working
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._done(caller, turns)  # its turn came just as the client left
                else:
                    with contextlib.suppress(ValueError):
                        turns.waiting.remove(waiter)
                    self._idle(caller, turns)
                raise
        else:
            turns.working += 1
        try:
            yield
        finally:
            self._done(caller, turns)

    def _done(self, caller: str, turns: _Turns) -> None:
        turns.working -= 1
        share = self._share()
        while turns.waiting and turns.working < share:
            waiter = turns.waiting.popleft()
            if not waiter.done():  # a waiter whose client left is skipped
                turns.working += 1
                waiter.set_result(None)
        self._idle(caller, turns)

    def _idle(self, caller: str, turns: _Turns) -> None:
        if turns.working == 0 and not turns.waiting and self._callers.get(caller) is turns:
            del self._callers[caller]
            self._lingering[caller] = self.clock()
