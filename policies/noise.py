"""Noisy aggregates: an aggregate-only table's counts and sums, released with Laplace noise
drawn by OpenDP, so that no answer, and no difference of two answers, gives one row exactly.

What one row can change is what the noise hides. Adding or removing one row changes a count by
at most 1, and a sum of values clamped to ``[lo, hi]`` by at most ``max(|lo|, |hi|)``: that is
the statistic's *sensitivity*. Noise of scale ``sensitivity / epsilon`` makes any answer about
as likely with the row as without it, within a factor of ``e ** epsilon`` (epsilon-differential
privacy). Each statistic released spends its epsilon; the groups of one ``_group_by`` share one
spending, as each row is in one group only; several statistics, or several answers, add up.

The unit this protects is one row of the table: a person with five visits is protected by
five times the epsilon (:func:`release` says what each statistic costs).

Which groups appear is a release too (*partition selection*). A group is released only if its
count with fresh noise reaches a ``threshold`` (:func:`select`, OpenDP's Laplace threshold): a
group of one row is then almost never shown, so its presence tells nothing exact, and the
chance that it is (``delta``) is bounded by the policy. The count that selects costs its
epsilon like any count, and is the count shown when the caller asked for one.

>>> count = Release("count", epsilon=0.5, sensitivity=1, integral=True)
>>> count.scale
2.0
>>> least_threshold(0.5, 5, 1e-6), selection_delta(0.5, 5, 31) <= 1e-6 < selection_delta(0.5, 5, 30)
(31, True)
>>> round(abs(draw(10_000, count) - 10_000)) < 200
True
>>> clamp(exp.column("cost"), (0, 20000)).sql()
'CASE WHEN cost < 0 THEN 0 WHEN cost > 20000 THEN 20000 ELSE cost END'
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import opendp.prelude as dp
from sqlglot import exp

# The Laplace and geometric measurements are in OpenDP's contrib set (not yet vetted by its
# own proofs committee, though each has a written proof); enabling it is required to use them.
dp.enable_features("contrib")

CLAMPED = "policy_clamped"  # meta mark on a bounded column's clamp in a policy subquery


@dataclass(frozen=True)
class Selection:
    """Which groups a count releases: those whose noisy count reaches ``threshold``. Groups of
    fewer than ``floor`` (the rule's k) are left out by the engine before any noise."""

    threshold: int
    floor: int


@dataclass(frozen=True)
class Release:
    """One released statistic: a count, or a sum of a bounded column, and what it costs.

    A count with ``selects`` also decides which groups appear (:func:`select`); ``same`` is
    that count asked for again under another name: the same draw, which costs nothing more."""

    kind: str  # "count", "sum" or "same"
    epsilon: float
    sensitivity: float
    integral: bool  # whole numbers (counts, sums of integers): discrete noise, whole results
    selects: Selection | None = None

    @property
    def scale(self) -> float:
        return self.sensitivity / self.epsilon


def sensitivity(bounds: tuple[float, float]) -> float:
    """What one row can change a sum of values clamped to ``bounds`` by.

    >>> sensitivity((-5, 3)), sensitivity((0, 20000))
    (5, 20000)
    """
    lo, hi = bounds
    return max(abs(lo), abs(hi))


def number(value: float) -> exp.Expr:
    """A bound as a literal: whole numbers without a fraction, which an integer column keeps."""
    return exp.Literal.number(int(value) if float(value).is_integer() else value)


def clamp(value: exp.Expr, bounds: tuple[float, float]) -> exp.Expr:
    """``value`` held within ``bounds``; null stays null (a count of the column counts it not).

    Clamping bounds what one row adds to a sum, which the noise is calibrated to: without it
    one large value would stand out of any noise."""
    lo, hi = bounds
    clamped = exp.Case(
        ifs=[
            exp.If(this=exp.LT(this=value.copy(), expression=number(lo)), true=number(lo)),
            exp.If(this=exp.GT(this=value.copy(), expression=number(hi)), true=number(hi)),
        ],
        default=value,
    )
    clamped.meta[CLAMPED] = bounds
    return clamped


@functools.lru_cache(maxsize=256)
def _measurement(scale: float, integral: bool) -> Any:
    """OpenDP's Laplace measurement of ``scale``: over integers its discrete form (the
    geometric mechanism), over floats the continuous one, both sampled exactly."""
    kind = int if integral else float
    domain = dp.atom_domain(T=kind) if integral else dp.atom_domain(T=float, nan=False)
    return dp.m.make_laplace(domain, dp.absolute_distance(T=kind), scale=scale)


@functools.lru_cache(maxsize=256)
def _threshold_measurement(scale: float, threshold: int) -> Any:
    """OpenDP's Laplace threshold over a map of group -> count: discrete Laplace noise of
    ``scale`` on each count, and only the groups whose noisy count reaches ``threshold``."""
    domain = dp.map_domain(dp.atom_domain(T=int), dp.atom_domain(T=int))
    metric = dp.l01inf_distance(dp.absolute_distance(T=int))
    return dp.m.make_laplace_threshold(domain, metric, scale=scale, threshold=threshold)


# Counts of groups the engine kept (at least ``floor`` each) reach OpenDP lowered by floor - 1:
# one row added or removed then moves a group between absent and a count of 1, or its count by
# 1, exactly the neighbours OpenDP's map is stated for (l0 = l1 = l-infinity = 1). The
# threshold is lowered alike, and the noisy count raised back after (post-processing).
_ONE_ROW = (1, 1, 1)


def selection_delta(epsilon: float, floor: int, threshold: int) -> float:
    """The chance OpenDP's privacy map gives that one row decides whether a group appears:
    the delta of releasing groups of at least ``floor`` rows whose count, with noise of scale
    1/``epsilon``, reaches ``threshold``."""
    lowered = threshold - (floor - 1)
    if lowered < 1:
        return 1.0
    _, delta = _threshold_measurement(1 / epsilon, lowered).map(_ONE_ROW)
    return float(delta)


@functools.lru_cache(maxsize=256)
def least_threshold(epsilon: float, floor: int, delta: float) -> int:
    """The smallest threshold whose :func:`selection_delta` is at most ``delta``."""
    low, high = floor, floor + 1
    while selection_delta(epsilon, floor, high) > delta:  # a delta halves every few steps
        low, high = high, floor + 2 * (high - floor)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if selection_delta(epsilon, floor, middle) <= delta else (middle, high)
    return high


def select(counts: dict[int, int], release: Release) -> dict[int, int]:
    """Of ``counts`` (row -> the engine's exact count), the rows released and their noisy
    counts: OpenDP's Laplace threshold, drawn once for all of one statement's groups."""
    selection = release.selects
    assert selection is not None
    shift = selection.floor - 1
    lowered = {row: count - shift for row, count in counts.items() if count >= selection.floor}
    if not lowered:
        return {}
    measurement = _threshold_measurement(release.scale, selection.threshold - shift)
    return {row: int(noisy) + shift for row, noisy in measurement(lowered).items()}


def privacy_loss(release: Release) -> float:
    """The epsilon OpenDP's own privacy map gives the release's measurement: what the policy
    asked, or less (a check that scale and sensitivity were calibrated as said)."""
    shift: float | int = math.ceil(release.sensitivity) if release.integral else float(release.sensitivity)
    return float(_measurement(release.scale, release.integral).map(shift))


def draw(value: Any, release: Release) -> Any:
    """``value`` with fresh noise for ``release``, in the type the engine gave it (a null stays
    null: nothing was counted). A count is never shown below zero, which only post-processes
    the noisy value and so costs nothing more."""
    if value is None:
        return None
    measurement = _measurement(release.scale, release.integral)
    if release.integral:
        noisy = int(measurement(int(value)))
        return max(noisy, 0) if release.kind == "count" else noisy
    noisy_float = float(measurement(float(value)))
    if isinstance(value, Decimal):
        return Decimal(repr(round(noisy_float, 2)))
    return noisy_float


def noisy_rows(rows: Any, positions: dict[int, dict[int, Release]]) -> list[tuple[Any, ...]]:
    """``rows`` of a statement with noise on each released statistic: ``positions`` maps a
    response node to its statistics' positions in a row (rows are tagged by node first). A
    node with a selecting count keeps only the rows :func:`select` releases."""
    rows = list(rows)
    kept: dict[int, dict[int, int]] = {}
    for node, released in positions.items():
        for position, release in released.items():
            if release.selects is not None:
                counts = {i: int(row[position]) for i, row in enumerate(rows) if row[0] == node}
                kept[node] = select(counts, release)
    out: list[tuple[Any, ...]] = []
    for i, row in enumerate(rows):
        released = positions.get(row[0], {})
        if not released:
            out.append(tuple(row))
            continue
        chosen = kept.get(row[0])
        if chosen is not None and i not in chosen:
            continue  # not selected: the group does not appear
        values = list(row)
        for position, release in released.items():
            if (release.selects is not None or release.kind == "same") and chosen is not None:
                values[position] = chosen[i]
            else:
                values[position] = draw(values[position], release)
        out.append(tuple(values))
    return out


def spend(releases: Any) -> float:
    """What a statement's releases cost together: each statistic its epsilon (sequential
    composition); a statistic's groups share it (parallel: each row is in one group)."""
    return float(sum(r.epsilon for r in releases))
