"""Each table's profile (the distinct values of each column as each role is shown it), and the
uniqueness it tells: how many rows of a role's view are alike on all it sees of them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from catalogue.types import LogicalType
from policies.decide import TableDecision
from policies.disclosure.context import (
    PART,
    Decisions,
    Found,
    as_shown,
    quoted,
    raw_table,
    row_level,
    share_of,
    shown_columns,
    sum_when,
    view_of,
)
from policies.exposure import Probe
from policies.model import Checks
from policies.rewrite.context import raw_column
from policies.treatments import Treatment

KEY_SHARE = 0.99  # a shown column with distinct values on this share of rows is a key of the view


# -- profiles: the distinct values of each column as each role is shown it -----------------------


@dataclass
class Profile:
    """What :func:`profile_probe` measured of one table."""

    rows: int = 0
    distinct: dict[tuple[str, Treatment], int] | None = None  # shown form -> distinct values
    lengths: dict[str, tuple[int, int, int]] | None = None  # text column -> (shortest, longest, distinct raw)


def _forms(decisions: Decisions, key: tuple[str, str]) -> list[tuple[str, Treatment]]:
    forms = {
        (c, t)
        for tables in decisions.values()
        if row_level(decision := tables.get(key))
        for c, t in shown_columns(decision).items()
    }
    return sorted(forms, key=lambda f: (f[0], str(f[1])))


def profile_probe(
    decisions: Decisions, key: tuple[str, str], types: Mapping[str, LogicalType]
) -> tuple[Probe[Found], Profile] | None:
    """One query per table: its rows, the distinct values of each column in each form a role is
    shown it, and each text column's shortest and longest value and distinct raw values. Its
    judge fills in the :class:`Profile` it comes with, which the other probes are made from."""
    forms = _forms(decisions, key)
    if not forms:
        return None
    texts = sorted({c for c, _ in forms if types[c].kind == "string"})
    measures: list[exp.Expr] = [exp.Count(this=exp.Star())]
    measures += [exp.Count(this=exp.Distinct(expressions=[as_shown(t, c, types[c])])) for c, t in forms]
    for column in texts:
        length = exp.Length(this=raw_column(column))
        measures += [exp.Min(this=length), exp.Max(this=length.copy())]
        measures.append(exp.Count(this=exp.Distinct(expressions=[raw_column(column)])))
    tree = exp.select(*measures).from_(raw_table(*key))
    found = Profile()

    def judge(row: Sequence[Any]) -> list[Found]:
        values = [int(v or 0) for v in row]
        found.rows = values[0]
        found.distinct = dict(zip(forms, values[1 : 1 + len(forms)], strict=True))
        rest = values[1 + len(forms) :]
        found.lengths = {c: (rest[3 * i], rest[3 * i + 1], rest[3 * i + 2]) for i, c in enumerate(texts)}
        return []

    return Probe(key[0], key[1], tree, judge, "profile"), found


# -- uniqueness ----------------------------------------------------------------------------------


def uniqueness_probe(
    role: str, decision: TableDecision, types: Mapping[str, LogicalType], profile: Profile, checks: Checks
) -> Probe[Found] | None:
    """How many of the role's rows are alike on what it sees of them (keys left out), and the
    smallest class: measured only where the role is shown something masked, since a view
    shown raw identifies by design."""
    shown = shown_columns(decision)
    if not any(t.masked for t in shown.values()) or profile.distinct is None:
        return None
    keys = [c for c, t in shown.items() if profile.distinct.get((c, t), 0) >= KEY_SHARE * profile.rows > 0]
    columns = [c for c in shown if c not in keys]
    if not columns:
        return None
    view = view_of(decision, types, columns).subquery("v")
    parts = [p.alias_or_name for p in view.this.expressions if p.alias_or_name.startswith(PART)]
    group = [exp.column(quoted(c), table="v") for c in columns + parts]
    classes = exp.select(exp.alias_(exp.Count(this=exp.Star()), "n")).from_(view).group_by(*group).subquery("g")
    n = exp.column("n", table="g")
    tree = exp.select(
        exp.Sum(this=n),
        sum_when(exp.EQ(this=n, expression=exp.Literal.number(1))),
        sum_when(exp.LT(this=n.copy(), expression=exp.Literal.number(checks.k)), n.copy()),
        exp.Min(this=n.copy()),
        exp.Count(this=exp.Star()),
    ).from_(classes)
    where = f"{decision.department}.{decision.table}"

    def judge(row: Sequence[Any]) -> list[Found]:
        rows, unique, small, smallest, count = (int(v or 0) for v in row)
        if not rows or small <= checks.max_small_share * rows:
            return []
        left_out = f" ({', '.join(keys)} left out: unique on their own)" if keys else ""
        split = f", split by {', '.join(p.removeprefix(PART) for p in parts)} as its row filter is" if parts else ""
        seen = ", ".join(f"{c} as {shown[c]}" if shown[c].masked else c for c in columns)
        return [
            Found(
                "uniqueness",
                f"roles.{role} sees {where} as {seen}{left_out}{split}: {share_of(unique, rows)} rows are unique "
                f"on it and {share_of(small, rows)} in classes of fewer than {checks.k} ({count:,} classes, the "
                f"smallest of {smallest}), more than {checks.max_small_share:.0%}: what it sees of a row tells that "
                "row apart; show less of a column, or accept it",
                (role,),
                where,
            )
        ]

    return Probe(decision.department, decision.table, tree, judge, "uniqueness")
