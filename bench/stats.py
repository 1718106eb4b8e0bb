"""Timing loops and the summaries every figure of the report is made of.

Every comparison is measured in one run, interleaved: the actions take turns run by run, so
drift (JIT warm-up, caches, a neighbour busy on a 2-core machine) falls on all of them alike.

>>> summary([1.0, 2.0, 3.0, 4.0, 100.0])
{'p50_ms': 3.0, 'p95_ms': 100.0, 'p99_ms': 100.0, 'runs': 5}
"""

from __future__ import annotations

import random
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


def ratio_interval(
    numerator: list[float], denominator: list[float], q: float = 0.5, reps: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """A 95 % interval for ``percentile(numerator, q) / percentile(denominator, q)``, by a
    paired bootstrap: runs are drawn with replacement as pairs (run i of each), so drift that
    fell on both actions of a turn stays with them. The median of 200 runs on a noisy
    machine moves by several per cent; a target of a few per cent needs its interval.

    >>> ratio_interval([2.0] * 50, [1.0] * 50)
    (2.0, 2.0)
    >>> draw = random.Random(1)
    >>> slow, fast = [draw.gauss(11, 2) for _ in range(200)], [draw.gauss(10, 2) for _ in range(200)]
    >>> [round(x, 3) for x in (percentile(slow, 0.5) / percentile(fast, 0.5), *ratio_interval(slow, fast))]
    [1.094, 1.052, 1.138]
    """
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError("a paired bootstrap needs as many runs of each, and at least one")
    draw = random.Random(seed)
    runs = range(len(numerator))
    ratios = []
    for _ in range(reps):
        picked = draw.choices(runs, k=len(numerator))
        ratios.append(percentile([numerator[i] for i in picked], q) / percentile([denominator[i] for i in picked], q))
    return percentile(ratios, 0.025), percentile(ratios, 0.975)


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
