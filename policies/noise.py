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

>>> count = Release("count", epsilon=0.5, sensitivity=1, integral=True)
>>> count.scale
2.0
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
class Release:
    """One released statistic: a count, or a sum of a bounded column, and what it costs."""

    kind: str  # "count" or "sum"
    epsilon: float
    sensitivity: float
    integral: bool  # whole numbers (counts, sums of integers): discrete noise, whole results

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
    response node to its statistics' positions in a row (rows are tagged by node first)."""
    out: list[tuple[Any, ...]] = []
    for row in rows:
        released = positions.get(row[0])
        if not released:
            out.append(tuple(row))
            continue
        values = list(row)
        for position, release in released.items():
            values[position] = draw(values[position], release)
        out.append(tuple(values))
    return out


def spend(releases: Any) -> float:
    """What a statement's releases cost together: each statistic its epsilon (sequential
    composition); a statistic's groups share it (parallel: each row is in one group)."""
    return float(sum(r.epsilon for r in releases))
