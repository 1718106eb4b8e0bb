"""Requests per minute, per subject: the generic cell rate algorithm (a token bucket kept as one
number per subject).

A subject allowed ``n`` requests a minute may send ``n`` at once, then one every ``60/n``
seconds; one idle for a minute has its whole allowance again. What is kept per subject is the
moment its allowance would be whole again (the "theoretical arrival time"). It is kept in the
gateway's shared state (:mod:`gateway.state`, ``state.url``): every worker process and every
gateway on one state counts against one allowance, as Kong's and Envoy's cluster-wide limits
do. The clock is the wall clock, the one the gateways share.

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
from collections.abc import Callable

from gateway.state import WINDOW, State

__all__ = ["WINDOW", "Limiter"]


class Limiter:
    """Each subject's allowance, in ``state`` (None: in memory, this process only).
    :class:`gateway.state.StateUnavailable` from :meth:`take` when the state cannot be reached:
    the request is refused, never let through unlimited."""

    def __init__(self, state: State | None = None, clock: Callable[[], float] = time.time) -> None:
        self.state = state if state is not None else State.open("sqlite://")
        self.clock = clock

    def take(self, subject: str, per_minute: int) -> float | None:
        """Count one request of ``subject``: None if it may run, else the seconds until it may."""
        if per_minute <= 0:  # no limit
            return None
        return self.state.take(subject, per_minute, self.clock())
