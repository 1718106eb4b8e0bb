"""Refusals of the throttle before identity: the first of a network's in each window recorded
whole, the rest counted, and the count recorded once.

A request the throttle refuses before the gateway knows who it is (a network refused for its
bad tokens, an anonymous caller over its allowance) reads nothing, yet each one's record was
written and flushed: a flood of bad tokens wrote about 1 KB of trail and one fsync per request,
3,000 a second from one client, so the flood itself was a way to fill the disk and to keep it
busy. Now each network (its prefix, as the limits count it) gets one whole record per
:data:`~gateway.state.WINDOW` for such refusals; the others of that window go unrecorded, are
counted in ``citygate_audit_unrecorded_refusals_total``, and the window's count is recorded as
one ``throttled`` record when the window is over (at the next audited request after it, or at
shutdown). The access log keeps a line for each. A request that gets past the throttle, or whose
caller is known (a token's subject), is recorded whole, every time.

>>> now = [0.0]
>>> floods = Floods(lambda: now[0])
>>> [floods.refused("198.51.100.7/32") for _ in range(3)]  # the first recorded, the rest counted
[[], None, None]
>>> now[0] = 61.0
>>> [counted] = floods.refused("198.51.100.7/32")  # a new window: recorded, after the last one's count
>>> counted["event"], counted["network"], counted["count"]
('throttled', '198.51.100.7/32', 2)
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.observe.audit_chain import timestamp
from gateway.state import WINDOW

NETWORKS = 100_000  # networks followed at once; past it the oldest window is closed early


@dataclass(slots=True)
class _Window:
    began: float  # the clock's (the limiter's): when its recorded refusal came
    count: int = 0  # refusals since, not recorded
    first: float = 0.0  # wall time of the first and the last of them
    last: float = 0.0


class Floods:
    """The throttle's refusals before identity, per network (:meth:`refused`), and the records
    that count those left unrecorded (:meth:`due`, :meth:`rest`). ``clock``: the limiter's."""

    def __init__(self, clock: Callable[[], float], window: float = WINDOW, networks: int = NETWORKS) -> None:
        self.clock = clock
        self.window = window
        self.networks = networks
        self.windows: OrderedDict[str, _Window] = OrderedDict()  # the oldest window first

    def refused(self, network: str) -> list[dict[str, Any]] | None:
        """A refusal from ``network``: None when it goes unrecorded (counted), else the records
        to write before its own (the count of the network's last window, if any went
        unrecorded, or of a window closed early to make room)."""
        now = self.clock()
        open_ = self.windows.get(network)
        if open_ is not None and now - open_.began < self.window:
            moment = time.time()
            open_.first = open_.first or moment
            open_.last = moment
            open_.count += 1
            return None
        counted = [_summary(network, open_)] if open_ is not None and open_.count else []
        self.windows.pop(network, None)
        if len(self.windows) >= self.networks:
            counted += self._close(1)
        self.windows[network] = _Window(now)
        return counted

    def due(self) -> list[dict[str, Any]]:
        """The records of the windows that are over and left refusals unrecorded."""
        if not self.windows:  # every audited request asks: nothing to do is the common case
            return []
        now = self.clock()
        over = 0
        for window in self.windows.values():  # the oldest first: stop at the first still open
            if now - window.began < self.window:
                break
            over += 1
        return self._close(over) if over else []

    def rest(self) -> list[dict[str, Any]]:
        """Every window's record, over or not (at shutdown)."""
        return self._close(len(self.windows))

    def _close(self, n: int) -> list[dict[str, Any]]:
        closed = []
        for _ in range(n):
            network, window = self.windows.popitem(last=False)
            if window.count:
                closed.append(_summary(network, window))
        return closed


def _summary(network: str, window: _Window) -> dict[str, Any]:
    """The record of a window's unrecorded refusals (an ``event`` record: `audit verify` prints
    its ``reason``)."""
    return {
        "time": time.time(),
        "event": "throttled",
        "reason": (
            f"{window.count} more requests from {network} refused 429 RATE_LIMITED by the throttle before"
            f" identity, {timestamp(window.first)} to {timestamp(window.last)}, counted here, not recorded one by one"
        ),
        "network": network,
        "count": window.count,
        "first": timestamp(window.first),
        "last": timestamp(window.last),
        "outcome": "refused",
        "status": 429,
        "errors": ["RATE_LIMITED"],
    }
