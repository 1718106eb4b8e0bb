"""What rules reveal in combination, measured on the data: code books and narrowed identifiers.

Each rule can hold while the rules together disclose. Two ways the check measures, through the
engine, for every role (``citygate policy check``):

- a **code book**: a pseudonym (``hash``) or a partial mask of a column with few distinct
  values. Its hashes are as many as the values, each group as large as the value's, so one
  known count (493 records of 高血压) names a hash, and the hash then names everyone with it;
- a **narrowed identifier**: a partial mask whose hidden part holds another column the role
  sees, so that what stays unknown is small. ``id_card`` as ``partial(6,4)`` hides 8 digits,
  which are the birth date: with the birth year visible, one of 366 days remains, and the
  check character prunes those to about 33 people.

:func:`probes` gives, per measurement, a one-row query over the raw table (a sqlglot tree, run
by the caller's engine: this package knows no engine) and a judgement of its row.

>>> from policies.treatments import parse_treatment
>>> candidates(parse_treatment("year"), LogicalType("date"), hidden=8, width=8)
366
>>> candidates(parse_treatment("allow"), LogicalType("string"), hidden=8, width=4)
10000
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from catalogue.types import LogicalType
from policies.decide import TableDecision
from policies.model import Policies
from policies.treatments import Treatment

# Columns whose text a hidden part may hold: their text is the same on every engine.
TEXTUAL = frozenset({"string", "date", "integer", "bigint"})
SHARE = 0.9  # a hidden part "holds" a column when it does on this share of rows or more
CLAMPED_SHARE = 0.01  # noisy sums: bounds that clamp more of a column's values than this bias them


@dataclass(frozen=True)
class Probe:
    """One measurement: ``tree`` returns one row, ``judge`` turns it into findings' messages."""

    department: str
    table: str
    tree: exp.Select
    judge: Callable[[Sequence[Any]], list[str]]
    kind: str  # "codebook" or "inference"


def probes(
    decisions: Mapping[str, Mapping[tuple[str, str], TableDecision]],
    types: Mapping[tuple[str, str], Mapping[str, LogicalType]],
    min_distinct: int,
    min_candidates: int,
) -> list[Probe]:
    """Every measurement the roles' ``decisions`` (role -> table -> decision) call for."""
    found: list[Probe] = []
    for (department, table), kinds in sorted(types.items()):
        pseudonyms: dict[str, list[tuple[str, Treatment]]] = {}
        narrowing: dict[tuple[str, Treatment, str], list[tuple[str, Treatment]]] = {}
        for role, tables in sorted(decisions.items()):
            decision = tables.get((department, table))
            if decision is None or decision.access == "deny":
                continue
            visible = decision.visible_columns
            for column, treatment in visible.items():
                if treatment.kind not in ("hash", "partial"):
                    continue
                pseudonyms.setdefault(column, []).append((role, treatment))
                if treatment.kind != "partial" or kinds[column].kind != "string":
                    continue
                for other, seen in visible.items():
                    if other != column and kinds[other].kind in TEXTUAL and _shows(seen, kinds[other]):
                        narrowing.setdefault((column, treatment, other), []).append((role, seen))
        for column, holders in sorted(pseudonyms.items()):
            found.append(_codebook(department, table, column, holders, min_distinct))
        for (column, treatment, other), holders in sorted(narrowing.items(), key=lambda i: (i[0][0], i[0][2])):
            found.append(_narrowed(department, table, column, treatment, other, kinds[other], holders, min_candidates))
    return found


def _shows(treatment: Treatment, kind: LogicalType) -> bool:
    """Whether the role sees enough of a column for :func:`candidates` to count on it."""
    return treatment.kind in ("raw", "partial") or (treatment.kind == "year" and kind.kind == "date")


def candidates(seen: Treatment, kind: LogicalType, hidden: int, width: int) -> int:
    """How many values a hidden part of ``hidden`` characters may still be, when it holds a
    column of ``width`` characters that the role sees as ``seen``: the column's own unknowns
    (a year leaves 366 days, a partial its hidden digits) times ten for each other character.
    Digits are assumed: a letter would only make more candidates, so this errs toward a finding."""
    own = 1
    if seen.kind == "year" and kind.kind == "date":
        own = 366
    elif seen.kind == "partial":
        own = int(10 ** max(width - int(seen.params[0]) - int(seen.params[1]), 0))
    return own * int(10 ** max(hidden - width, 0))


def _raw(name: str) -> exp.Column:
    return exp.column(exp.to_identifier(name, quoted=True), table="raw")


def _from(department: str, table: str) -> exp.Table:
    return exp.Table(this=exp.to_identifier(table), db=exp.to_identifier(department), alias=exp.TableAlias(this="raw"))


def _codebook(
    department: str, table: str, column: str, holders: list[tuple[str, Treatment]], min_distinct: int
) -> Probe:
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


def _text(column: exp.Expr, kind: LogicalType) -> exp.Expr:
    """A value as an identifier would write it: a date as ``YYYYMMDD``, the rest as text."""
    text = exp.cast(column, exp.DataType(this=exp.DataType.Type.VARCHAR))
    if kind.kind == "date":
        return exp.func("REPLACE", text, exp.Literal.string("-"), exp.Literal.string(""))
    return text


def _narrowed(
    department: str,
    table: str,
    column: str,
    treatment: Treatment,
    other: str,
    kind: LogicalType,
    holders: list[tuple[str, Treatment]],
    min_candidates: int,
) -> Probe:
    first, last = treatment.params
    value = _raw(column)
    hidden = exp.Substring(
        this=value,
        start=exp.Literal.number(first + 1),
        length=exp.Sub(this=exp.Length(this=value), expression=exp.Literal.number(first + last)),
    )
    text = _text(_raw(other), kind)
    holds = exp.GT(this=exp.StrPosition(this=hidden, substr=text), expression=exp.Literal.number(0))
    tree = exp.select(
        exp.Count(this=exp.Star()),
        exp.Sum(this=exp.Case(ifs=[exp.If(this=holds, true=exp.Literal.number(1))], default=exp.Literal.number(0))),
        exp.Min(this=exp.Length(this=value)),
        exp.Max(this=exp.Length(this=text)),
    ).from_(_from(department, table))
    # Values longer than what the mask keeps (a shorter one is starred whole), the other set.
    longer = exp.GT(this=exp.Length(this=value), expression=exp.Literal.number(first + last))
    tree = tree.where(exp.and_(longer, exp.Not(this=exp.Is(this=_raw(other), expression=exp.Null()))))

    def judge(row: Sequence[Any]) -> list[str]:
        rows, hits = int(row[0] or 0), int(row[1] or 0)
        if not rows or hits < SHARE * rows:
            return []
        hidden_chars, width = max(int(row[2] or 0) - first - last, 0), int(row[3] or 0)
        messages = []
        for role, seen in holders:
            count = candidates(seen, kind, hidden_chars, width)
            if count < min_candidates:
                messages.append(
                    f"roles.{role} sees {department}.{table}.{column} as {treatment}, whose {hidden_chars} hidden "
                    f"characters hold {other} on {hits * 100 // rows}% of rows, and sees {other} as {seen}: each "
                    f"value is one of at most {count} candidates, fewer than {min_candidates}; mask more of one "
                    "of them or deny one"
                )
        return messages

    return Probe(department, table, tree, judge, "inference")


def clamped(policies: Policies, tables: set[tuple[str, str]]) -> list[Probe]:
    """Of each noisy rule's bounds, how many of the column's values they clamp. Bounds wider
    than the data add noise for nothing; narrower ones bias every sum, silently: more than
    :data:`CLAMPED_SHARE` of the values outside them is a finding."""
    found: list[Probe] = []
    for role, policy in sorted(policies.roles.items()):
        for name, rule in sorted(policy.tables.items()):
            department, _, table = name.partition(".")
            if rule.noise is None or (department, table) not in tables:
                continue
            for column, (lo, hi) in sorted(rule.noise.bounds.items()):
                found.append(_clamped(role, department, table, column, (lo, hi)))
    return found


def _clamped(role: str, department: str, table: str, column: str, bounds: tuple[float, float]) -> Probe:
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
