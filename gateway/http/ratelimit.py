"""Requests per minute, per subject: the generic cell rate algorithm (a token bucket kept as one
number per subject).

A subject allowed ``n`` requests a minute may send ``n`` at once, then one every ``60/n``
seconds; one idle for a minute has its whole allowance again. What is kept per subject is the
moment its allowance would be whole again (the "theoretical arrival time"), in a cache bounded
by size and forgetting a subject after a minute, when it would be whole anyway: many distinct
subjects cost bounded memory, and a forgotten one loses nothing.

>>> clock = [0.0]
>>> limiter = Limiter(clock=lambda: clock[0])
>>> [limiter.take("u-1", 2) for _ in range(3)]
[None, None, 30.0]
>>> limiter.take("u-2", 2) is None
True
>>> clock[0] = 30.0
>>> limiter.take("u-1", 2) is None
True
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

from cachetools import TTLCache

WINDOW = 60.0  # seconds: the limits are per minute
SUBJECTS = 100_000  # subjects remembered at once; the least recently seen go first


class Limiter:
    """Each subject's allowance. Used from the event loop only, so it takes no lock."""

    def __init__(self, subjects: int = SUBJECTS, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._due: TTLCache[Hashable, float] = TTLCache(maxsize=subjects, ttl=WINDOW, timer=self._now)

    def _now(self) -> float:
        return self.clock()

    def take(self, subject: Hashable, per_minute: int) -> float | None:
        """Count one request of ``subject``: None if it may run, else the seconds until it may."""
        if per_minute <= 0:  # no limit
            return None
        now = self.clock()
        interval = WINDOW / per_minute
        due = max(self._due.get(subject, now), now) + interval
        if due - now > WINDOW:
            return due - WINDOW - now
        self._due[subject] = due
        return None
