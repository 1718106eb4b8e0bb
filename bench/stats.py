"""Timing loops and the summaries every figure of the report is made of.

Every comparison is measured in one run, interleaved: the actions take turns run by run, so
drift (JIT warm-up, caches, a neighbour busy on a 2-core machine) falls on all of them alike.

>>> summary([1.0, 2.0, 3.0, 4.0, 100.0])
{'p50_ms': 3.0, 'p95_ms': 100.0, 'p99_ms': 100.0, 'runs': 5}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def percentile(samples: list[float], q: float) -> float:
    """The sample at quantile ``q`` (nearest rank, no interpolation).

    >>> percentile([5.0, 1.0, 3.0], 0.5)
    3.0
    """
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(samples: list[float]) -> dict[str, Any]:
    """p50, p95 and p99 in milliseconds and the number of runs they come from."""
    return {
        "p50_ms": percentile(samples, 0.5),
        "p95_ms": percentile(samples, 0.95),
        "p99_ms": percentile(samples, 0.99),
        "runs": len(samples),
    }


def timed(action: Callable[[], Any], runs: int, warmup: int = 3) -> list[float]:
    """Milliseconds per run of one action, after ``warmup`` untimed runs."""
    for _ in range(warmup):
        action()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def interleaved(actions: dict[str, Callable[[], Any]], runs: int, warmup: int = 5) -> dict[str, list[float]]:
    """Milliseconds per run of each action, taking turns run by run, in the opposite order every
    other run: whatever the first of a turn leaves behind (a warmer cache, a busier machine)
    falls on each action alike."""
    samples: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(warmup):
        for action in actions.values():
            action()
    forward = list(actions.items())
    for run in range(runs):
        for name, action in forward if run % 2 == 0 else forward[::-1]:
            started = time.perf_counter()
            action()
            samples[name].append((time.perf_counter() - started) * 1000)
    return samples
