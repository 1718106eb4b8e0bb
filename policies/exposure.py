"""What rules reveal in combination, measured on the data: code books and clamping bounds.

Each rule can hold while the rules together disclose. A **code book** is a pseudonym (``hash``)
or a partial mask of a column with few distinct values: its hashes are as many as the values,
each group as large as the value's, so one known count (493 records of 高血压) names a hash, and
the hash then names everyone with it. What a role's whole view discloses (unique rows, narrowed
identifiers, dependencies, linkage keys) is :mod:`policies.disclosure`'s.

:func:`probes` gives, per measurement, a one-row query over the raw table (a sqlglot tree, run
by the caller's engine: this package knows no engine) and a judgement of its row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlglot import exp

from catalogue.types import LogicalType
from policies.decide import TableDecision
from policies.model import Policies
from policies.treatments import Treatment

CLAMPED_SHARE = 0.01  # noisy sums: bounds that clamp more of a column's values than this bias them


Judged = TypeVar("Judged")


@dataclass(frozen=True)
class Probe(Generic[Judged]):
    """One measurement: ``tree`` returns one row, ``judge`` turns it into findings (here their
    messages; :mod:`policies.disclosure`'s are whole findings)."""

    department: str
    table: str
    tree: exp.Select
    judge: Callable[[Sequence[Any]], list[Judged]]
    kind: str  # "codebook" or "noise" here; the disclosure checks' own kinds there


def probes(
    decisions: Mapping[str, Mapping[tuple[str, str], TableDecision]],
    types: Mapping[tuple[str, str], Mapping[str, LogicalType]],
    min_distinct: int,
) -> list[Probe[str]]:
    """Every code book measurement the roles' ``decisions`` (role -> table -> decision) call for."""
    found: list[Probe[str]] = []
    for (department, table), _ in sorted(types.items()):
        pseudonyms: dict[str, list[tuple[str, Treatment]]] = {}
        for role, tables in sorted(decisions.items()):
            decision = tables.get((department, table))
            if decision is None or decision.access == "deny":
                continue
            for column, treatment in decision.visible_columns.items():
                if treatment.kind in ("hash", "partial"):
                    pseudonyms.setdefault(column, []).append((role, treatment))
        for column, holders in sorted(pseudonyms.items()):
            found.append(_codebook(department, table, column, holders, min_distinct))
    return found


def _raw(name: str) -> exp.Column:
    return exp.column(exp.to_identifier(name, quoted=True), table="raw")


def _from(department: str, table: str) -> exp.Table:
    return exp.Table(this=exp.to_identifier(table), db=exp.to_identifier(department), alias=exp.TableAlias(this="raw"))


def _codebook(
    department: str, table: str, column: str, holders: list[tuple[str, Treatment]], min_distinct: int
) -> Probe[str]:
    tree = exp.select(exp.Count(this=exp.Distinct(expressions=[_raw(column)]))).from_(_from(department, table))

    def judge(row: Sequence[Any]) -> list[str]:
        distinct = int(row[0] or 0)
        if distinct >= min_distinct:
            return []
        return [
            f"roles.{role} sees {department}.{table}.{column} as {treatment} over {distinct} distinct values, "
            f"fewer than {min_distinct}: a code book (one known count names a pseudonym); deny it or allow it"
            for role, treatment in holders
        ]

    return Probe(department, table, tree, judge, "codebook")


def clamped(policies: Policies, tables: set[tuple[str, str]]) -> list[Probe[str]]:
    """Of each noisy rule's bounds, how many of the column's values they clamp. Bounds wider
    than the data add noise for nothing; narrower ones bias every sum, silently: more than
    :data:`CLAMPED_SHARE` of the values outside them is a finding."""
    found: list[Probe[str]] = []
    for role, policy in sorted(policies.roles.items()):
        for name, rule in sorted(policy.tables.items()):
            department, _, table = name.partition(".")
            if rule.noise is None or (department, table) not in tables:
                continue
            for column, (lo, hi) in sorted(rule.noise.bounds.items()):
                found.append(_clamped(role, department, table, column, (lo, hi)))
    return found


def _clamped(role: str, department: str, table: str, column: str, bounds: tuple[float, float]) -> Probe[str]:
    lo, hi = bounds
    value = _raw(column)
    outside = exp.or_(
        exp.LT(this=value, expression=exp.Literal.number(lo)),
        exp.GT(this=value.copy(), expression=exp.Literal.number(hi)),
    )
    tree = exp.select(
        exp.Count(this=value.copy()),
        exp.Sum(this=exp.Case(ifs=[exp.If(this=outside, true=exp.Literal.number(1))], default=exp.Literal.number(0))),
    ).from_(_from(department, table))

    def judge(row: Sequence[Any]) -> list[str]:
        values, outside_count = int(row[0] or 0), int(row[1] or 0)
        if not values or outside_count <= CLAMPED_SHARE * values:
            return []
        return [
            f"roles.{role}.tables.{department}.{table}.noise.bounds.{column}: {outside_count * 100 // values}% of "
            f"its values lie outside [{lo:g}, {hi:g}] and are clamped, so every noisy sum is biased; widen the bounds"
        ]

    return Probe(department, table, tree, judge, "noise")
